"""DDP fine-tuning of `ARMHubertForCTC` on 2 CPU processes without `find_unused_parameters`.

DDP refuses a second step when a parameter got no gradient in the first. A task model without the
weighted layer sum used to carry projection heads 0..L-2 that nothing reads; it must not any more.
"""

import json
from dataclasses import dataclass

import pytest
from helpers import ROOT, TORCHRUN_TWO_PROCESSES, run_offline

from armhubert.training.finetune import parse_run_arguments


def test_ctc_finetuning_runs_under_ddp_on_two_processes_without_unused_parameter_search(tmp_path, tiny_model_dir):
    encoder = tiny_model_dir
    command = [*TORCHRUN_TWO_PROCESSES, ROOT / "scripts" / "finetune_ctc.py", "--model_name_or_path", encoder]
    command += ["--output_dir", tmp_path / "out", "--data_source", ROOT / "data", "--max_train_samples", "8"]
    command += ["--max_eval_samples", "4", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2"]
    command += ["--max_steps", "3", "--logging_steps", "1", "--use_cpu", "--save_strategy", "no", "--report_to", "none"]
    command += ["--disable_tqdm", "true", "--seed", "0", "--ddp_find_unused_parameters", "false"]
    result = run_offline(command, cwd=tmp_path)
    steps = [json.loads(line.replace("'", '"')) for line in result.stdout.splitlines() if line.startswith("{'loss'")]
    # 8 utterances, 2 per process, 2 processes: one step is half an epoch, so both processes took part.
    assert [float(step["epoch"]) for step in steps] == [0.5, 1.0, 1.5]
    assert (tmp_path / "out" / "model.safetensors").exists()


@dataclass
class _NoData:
    pass


@pytest.mark.parametrize(
    "extra, expected", [([], False), (["--layerdrop", "0.1"], True), (["--ddp_find_unused_parameters", "true"], True)]
)
def test_finetuning_asks_ddp_for_no_unused_parameter_search_unless_layers_are_dropped(tmp_path, extra, expected):
    argv = ["--preset", "armhubert-960h", "--output_dir", str(tmp_path), *extra]
    _, _, training_args = parse_run_arguments(_NoData, argv, "finetune_test")
    assert training_args.ddp_find_unused_parameters is expected
