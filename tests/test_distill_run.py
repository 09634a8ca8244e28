"""distill_trainer.py end to end on the bundled corpus with tiny random models (offline, CPU).

Also a torchrun helper: `torchrun --nproc_per_node 2 tests/test_distill_run.py OUT ARGS...` trains
with ARGS and writes each rank's student weights to OUT/rank<r>.safetensors.
"""

import json
import logging
import logging.handlers
import shutil
import sys

import pytest
import torch
import yaml
from helpers import MODEL_FOLDER_FILES, ROOT, TORCHRUN_TWO_PROCESSES, run_offline
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel, TrainerCallback

from armhubert.distill.recipe import load_recipe, recipe_arguments
from armhubert.folders.cards import format_duration
from armhubert.speech.audio import read_audio
from armhubert.speech.librispeech import AudioCollator
from armhubert.training.checkpoints import complete_checkpoints
from configuration_armhubert import PRESETS
from distill_trainer import main, run
from pipeline_armhubert import release_feature_extractor

QUICKSTART = str(ROOT / "conf" / "quickstart.yaml")
CORPUS = ROOT / "data" / "LibriSpeech"
# Small and quick: 1 s crops, no workers, nothing written to the console's TensorBoard.
FAST = ["crop_seconds=0.5", "dataloader_num_workers=0", "report_to=none", "disable_tqdm=true"]
RECIPES = sorted(p.stem for p in (ROOT / "conf").glob("*.yaml") if p.stem.endswith(("100h", "960h")))  # the releases'


def _copy_corpus(tmp_path, splits=("train-clean-100", "dev-clean")):
    for split in splits:
        shutil.copytree(CORPUS / split, tmp_path / "LibriSpeech" / split)
    return tmp_path


def _student_weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _quickstart_args(corpus, out):
    # 8 utterances a step, 5 steps an epoch: 7 steps cross into the second epoch.
    return [
        "--config",
        QUICKSTART,
        f"output_dir={out}",
        f"data_source={corpus}",
        "max_steps=7",
        "per_device_train_batch_size=8",
        "eval_on_start=true",
        "eval_strategy=steps",
        "eval_steps=3",
        "save_strategy=steps",
        "save_steps=3",
        "logging_steps=1",
        *FAST,
    ]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """One uninterrupted quickstart run on a copy of the corpus with one file that cannot be decoded."""
    root = tmp_path_factory.mktemp("quickstart")
    corpus = _copy_corpus(root / "corpus")
    # Its header reads but its audio does not: skipped during training, counted, reported.
    broken = corpus / "LibriSpeech/train-clean-100/1003/103/1003-103-0004.flac"
    broken.write_bytes(broken.read_bytes()[:200])
    handler = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    logging.getLogger("armhubert").addHandler(handler)
    try:
        trainer = run(_quickstart_args(corpus, root / "run"))
    finally:
        logging.getLogger("armhubert").removeHandler(handler)
    warnings = "\n".join(record.getMessage() for record in handler.buffer)
    return trainer, corpus, root / "run", warnings


def test_quickstart_end_to_end(quickstart):
    trainer, _, out, warnings = quickstart
    history = trainer.state.log_history
    evals = [entry for entry in history if "eval_loss" in entry]
    assert [e["step"] for e in evals] == [0, 3, 6, 7]  # the Trainer also evaluates and saves at the end
    assert evals[-1]["eval_loss"] < 0.95 * evals[0]["eval_loss"], evals
    assert {"eval_hint", "eval_rec"} <= set(evals[-1])
    train_logs = [entry for entry in history if "loss" in entry]
    assert len(train_logs) == 7
    for part in ("hint_masked", "hint_unmasked", "rec_masked", "rec_unmasked", "audio_seconds_per_second"):
        assert train_logs[-1][part] > 0, part
    assert train_logs[-1]["unreadable_files"] >= 1  # the first epoch (5 steps) drew every file
    assert "1003-103-0004.flac" in warnings and "unreadable audio file(s) were skipped" in warnings

    # The student folder: safetensors, config with auto_map, code files, feature extractor config.
    for name in (*MODEL_FOLDER_FILES, "distill_recipe.yaml"):
        assert (out / name).is_file(), name
    saved_config = json.loads((out / "config.json").read_text())
    assert saved_config["auto_map"]["AutoModelForCTC"] == "modeling_armhubert.ARMHubertForCTC"
    assert "audio-feature-extraction" in saved_config["custom_pipelines"]
    reloaded = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    student = trainer.accelerator.unwrap_model(trainer.model).eval()
    audio = torch.from_numpy(read_audio(CORPUS / "dev-clean/1002/202/1002-202-0001.flac"))[None]
    with torch.no_grad():
        expected = student(audio, output_hidden_states=True)
        got = reloaded(audio, output_hidden_states=True)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=0, atol=1e-6)
    assert got.last_hidden_state.shape[-1] == trainer.teacher.config.hidden_size  # heads as wide as the teacher

    # Best k (1 in the quickstart) by eval_loss plus the last checkpoint are kept.
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    best = min(evals[1:], key=lambda e: e["eval_loss"])["step"]
    assert checkpoints == sorted({f"checkpoint-{best}", "checkpoint-7"})


def test_teacher_stays_out_of_optimiser_and_checkpoints(quickstart):
    trainer, _, out, _ = quickstart
    student = trainer.accelerator.unwrap_model(trainer.model)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in student.parameters() if p.requires_grad}
    assert not optimised & {id(p) for p in trainer.teacher.model.parameters()}
    assert trainer.teacher.model.training is False and not any(
        p.requires_grad for p in trainer.teacher.model.parameters()
    )
    with safe_open(out / "checkpoint-7" / "model.safetensors", "pt") as stored:
        assert set(stored.keys()) == set(student.state_dict())
    # Weight decay on every parameter but biases (LayerNorm weights included, as the release).
    names = {id(p): n for n, p in student.named_parameters()}
    for group in trainer.optimizer.param_groups:
        assert all(("bias" in names[id(p)]) == (group["weight_decay"] == 0.0) for p in group["params"])
    assert any(
        "layer_norm.weight" in names[id(p)] and g["weight_decay"] == 0.01
        for g in trainer.optimizer.param_groups
        for p in g["params"]
    )


def test_teacher_falls_back_to_two_passes_when_the_doubled_batch_runs_out_of_memory(quickstart, monkeypatch, caplog):
    trainer = quickstart[0]
    passes = trainer._teacher_states
    generator = torch.Generator().manual_seed(0)
    x, attention = 0.1 * torch.randn(2, 4000, generator=generator), torch.ones(2, 4000, dtype=torch.long)
    frames = int(trainer.teacher.model._get_feat_extract_output_lengths(torch.tensor(4000)))
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[:, 2:5] = True

    def out_of_memory_when_doubled(input_values, attention_mask, mask_time_indices=None):
        if input_values.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return passes(input_values, attention_mask, mask_time_indices)

    monkeypatch.setattr(trainer, "_teacher_states", out_of_memory_when_doubled)
    monkeypatch.setattr(trainer, "_teacher_single_pass", True)
    with caplog.at_level(logging.WARNING, logger="armhubert.distill.trainer"):
        clean, masked = trainer.teacher_hidden_states(x, attention, mask)
    assert trainer._teacher_single_pass is False and "running two teacher passes" in caplog.text
    for got, expected in ((clean, passes(x, attention)), (masked, passes(x, attention, mask))):
        assert len(got) == len(expected)
        for layer, (g, e) in enumerate(zip(got, expected)):
            torch.testing.assert_close(g, e, msg=f"layer {layer}")
    assert not torch.equal(clean[-1], masked[-1])  # the mask reached the teacher


def test_resume_continues_exactly(quickstart, tmp_path):
    # Stopped after step 6 (second epoch), resumed: dropout, masks, data order, optimiser and
    # scheduler all continue as in the uninterrupted run.
    full, corpus, _, _ = quickstart
    run(_quickstart_args(corpus, tmp_path / "part"), callbacks=[_StopAt(6)])
    resumed = run(_quickstart_args(corpus, tmp_path / "part") + ["--resume"])
    assert resumed.state.global_step == 7
    expected, got = _student_weights(full), _student_weights(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    last = [entry["loss"] for entry in full.state.log_history if "loss" in entry][-1]
    assert [entry["loss"] for entry in resumed.state.log_history if "loss" in entry][-1] == last


def test_resume_refuses_another_runs_checkpoint_and_saves_the_recipe_it_resumes_with(quickstart, tmp_path, capsys):
    _, corpus, first, _ = quickstart
    checkpoint = complete_checkpoints(first)[-1]
    other = _quickstart_args(corpus, tmp_path / "other") + [
        "student_config.hidden_size=32",
        "--resume",
        str(checkpoint),
    ]
    assert main(other) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"{checkpoint} belongs to a run with student_config=" in error[0], error
    assert not (tmp_path / "other").exists()

    shutil.copytree(first, tmp_path / "again")
    again = _quickstart_args(corpus, tmp_path / "again") + ["max_steps=8", "--learning_rate", "0.001", "--resume"]
    trainer = run(again)
    assert trainer.state.global_step == 8
    saved = yaml.safe_load((tmp_path / "again" / "distill_recipe.yaml").read_text())
    assert saved["learning_rate"] == 0.001 and saved["max_steps"] == 8  # flags are recorded as key=value words
    assert "resume_from_checkpoint" not in saved  # how this process started, not what the run is


def test_the_card_counts_the_audio_training_reads(quickstart):
    trainer, _, folder, _ = quickstart
    cropped = sum(min(n, int(0.5 * 16000)) for n in trainer.train_dataset["num_samples"]) / 16000  # FAST's crop
    card = (folder / "README.md").read_text()
    assert f"{len(trainer.train_dataset)} utterances" in card and format_duration(cropped) in card, card


def _shrunk(recipe, quick):
    """Overrides that keep a recipe's mode and layout but shrink its teacher and student."""
    student_config = dict(quick["student_config"])
    if not PRESETS[recipe["student"]]["layer_reuses_attention_map"][1]:
        student_config["layer_reuses_attention_map"] = [False] * 4
    teacher = "random-wavlm" if "wavlm" in recipe["teacher"] else "random-hubert"
    return [f"teacher={teacher}", f"teacher_config={quick['teacher_config']}", f"student_config={student_config}"]


def test_every_recipe_parses_and_starts(tmp_path):
    """Every recipe parses with the release's batches; one of each kind trains a step with shrunk models."""
    quick = yaml.safe_load(open(QUICKSTART))
    expected_batches = {"960h": (18, 4, 144), "100h": (6, 3, 36)}
    assert len(RECIPES) == 9
    for name in RECIPES:
        recipe = load_recipe(ROOT / "conf" / f"{name}.yaml", [f"output_dir={tmp_path}"])
        distill_args = training_args = recipe_arguments(recipe)
        batch = (training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps)
        assert batch + (distill_args.effective_batch_size,) == expected_batches[name[-4:]], name
        assert training_args.adam_beta2 == 0.98 and training_args.adam_epsilon == 1e-6 and training_args.fp16
        preset = PRESETS[distill_args.student]
        assert preset["layer_grad_scale"] == name.startswith("arm"), name  # ARM recipes only
        assert (preset["projection_head_size"] is None) == (distill_args.distill_mode == "star"), name

    for name in ("armwavlm-s-100h", "maskhubert-960h", "starhubert-960h"):
        recipe = yaml.safe_load((ROOT / "conf" / f"{name}.yaml").read_text())
        trainer = run(
            [
                "--config",
                str(ROOT / "conf" / f"{name}.yaml"),
                f"output_dir={tmp_path / name}",
                *_shrunk(recipe, quick),
                f"data_source={ROOT / 'data'}",
                "train_splits=train-clean-100",
                "eval_split=null",
                "use_cpu=true",
                "fp16=false",
                "max_steps=1",
                "save_strategy=no",
                "per_device_train_batch_size=2",
                "effective_batch_size=null",
                "gradient_accumulation_steps=1",
                "logging_steps=1",
                *FAST,
            ]
        )
        assert trainer.state.global_step == 1
        logged = trainer.state.log_history[0]
        parts = (
            ("star_layerwise", "star_intra") if recipe["distill_mode"] == "star" else ("hint_masked", "rec_unmasked")
        )
        assert all(logged[part] > 0 for part in parts), logged
        assert type(trainer.teacher.model).__name__ == ("WavLMModel" if "wavlm" in name else "HubertModel")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data_source=/nonexistent/corpus"], "data root /nonexistent/corpus does not exist"),
        (["lerning_rate=1e-3"], "unknown recipe key 'lerning_rate' (did you mean learning_rate"),
        (["student_config.conv_stride=[5, 1, 2, 2, 2, 2, 1, 2, 1]"], "they cannot be aligned"),
        (
            ["distill_mode=masked"],
            "--distill_mode: invalid choice: 'masked' (choose from 'masking', 'star', 'regression')",
        ),
        (["--distill_mode", "masked"], "--distill_mode: invalid choice: 'masked'"),
        (["--lerning_rate", "1e-3"], "unrecognised argument '--lerning_rate' (did you mean --learning_rate"),
        (["teacher=/nonexistent/teacher", "teacher_config=null"], "could not load teacher '/nonexistent/teacher'"),
    ],
)
def test_bad_inputs_fail_cleanly(tmp_path, capsys, overrides, message):
    out = tmp_path / "out"
    assert main(["--config", QUICKSTART, f"output_dir={out}", *FAST, *overrides]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("distill_trainer.py: error: ") and message in error[-1], error
    assert not out.exists()


def test_bad_corpora_fail_cleanly(tmp_path, capsys):
    flat = tmp_path / "flat" / "LibriSpeech" / "train-clean-100"
    flat.mkdir(parents=True)
    shutil.copy(CORPUS / "train-clean-100/1001/101/1001-101-0000.flac", flat)
    corrupt = _copy_corpus(tmp_path / "corrupt", splits=("train-clean-100",))
    for path in corrupt.rglob("*.flac"):
        path.write_bytes(b"RIFF junk")
    cases = [
        (tmp_path / "flat", "no <speaker>/<chapter>/<speaker>-<chapter>.trans.txt files"),
        (corrupt, "none of the 40 audio files"),
    ]
    for source, message in cases:
        out = tmp_path / "out"
        assert main(["--config", QUICKSTART, f"output_dir={out}", f"data_source={source}", *FAST]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    # A fresh run refuses a non-empty output folder (use --resume), and --resume needs a checkpoint.
    out.mkdir()
    (out / "something").write_text("x")
    assert main(["--config", QUICKSTART, f"output_dir={out}", *FAST]) == 2
    assert "is not empty; pass --resume" in capsys.readouterr().err
    assert main(["--config", QUICKSTART, f"output_dir={out}", "--resume", *FAST]) == 2
    assert "no complete checkpoint-<step> folder" in capsys.readouterr().err


def test_errors_in_dataloader_workers_print_as_one_line(tmp_path, capsys):
    # Headers read (the corpus loads), audio does not: the collator fails in a worker process, and
    # the error re-raised in the main process carries the worker's traceback in its message.
    corpus = _copy_corpus(tmp_path / "corpus")
    for path in (corpus / "LibriSpeech" / "train-clean-100").rglob("*.flac"):
        path.write_bytes(path.read_bytes()[:200])
    argv = [
        "--config",
        QUICKSTART,
        f"output_dir={tmp_path / 'out'}",
        f"data_source={corpus}",
        "max_steps=1",
        "eval_strategy=no",
        "save_strategy=no",
        *FAST,
        "dataloader_num_workers=1",
    ]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    last = error.splitlines()[-1]
    assert last.startswith("distill_trainer.py: error: every file of a batch was unreadable (") and last.endswith(
        "); check the corpus"
    ), error[-2000:]
    assert "Traceback" not in error and "DataLoader worker" not in error


def test_collator_skips_and_counts_unreadable_files(tmp_path, caplog):
    shutil.copy(CORPUS / "dev-clean/1001/201/1001-201-0000.flac", tmp_path / "good.flac")
    rows = [
        {"id": "good", "audio": {"path": str(tmp_path / "good.flac"), "bytes": None}},
        {"id": "gone", "audio": {"path": str(tmp_path / "gone.flac"), "bytes": None}},
    ]
    collator = AudioCollator(release_feature_extractor(), max_samples=16000)
    with caplog.at_level(logging.WARNING, logger="armhubert.speech.librispeech"):
        batch = collator(rows)
    assert batch["input_values"].shape == (1, 16000) and int(batch["num_unreadable"]) == 1
    assert "gone.flac" in caplog.text


def test_command_line_trains_saves_and_exits_zero(tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, ROOT / "distill_trainer.py", "--config", QUICKSTART, f"output_dir={out}"]
    command += [f"data_source={ROOT / 'data'}", "max_steps=1", "eval_strategy=no", "save_strategy=no", *FAST]
    run_offline(command, cwd=tmp_path)
    for name in ("model.safetensors", "config.json", "distill_recipe.yaml"):
        assert (out / name).is_file(), name


def test_ddp_two_processes_agree(tmp_path):
    out = tmp_path / "ddp"
    command = [*TORCHRUN_TWO_PROCESSES, ROOT / "tests" / "test_distill_run.py", tmp_path, "--config", QUICKSTART]
    command += [f"output_dir={out}", "max_steps=2", "per_device_train_batch_size=2", "eval_strategy=no"]
    run_offline([*command, "save_strategy=no", *FAST])
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    saved = load_file(out / "model.safetensors")
    assert set(rank0) == set(rank1) == set(saved)
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(saved[name], rank0[name], rtol=0, atol=0, msg=name)
    assert "world size 2" in (tmp_path / "world.txt").read_text()


if __name__ == "__main__":  # torchrun helper of test_ddp_two_processes_agree
    target = sys.argv[1]
    trainer = run(sys.argv[2:])
    rank = trainer.args.process_index
    save_file({k: v.contiguous() for k, v in _student_weights(trainer).items()}, f"{target}/rank{rank}.safetensors")
    if rank == 0:
        with open(f"{target}/world.txt", "w") as stream:
            stream.write(f"world size {trainer.args.world_size}\n")
