"""Hostile and broken input to training: recipes, corpora, audio, diverging losses, fine-tuning outputs.

What matters: exit status 2 with one line, no NaN model ever saved (with exit 0 or at all), no user
file overwritten, no utterance silently dropped, every input intact.
"""

import json
import logging
import os
import shutil
import zipfile

import numpy as np
import pytest
import safetensors.torch
import soundfile
import torch
from helpers import ROOT, load_script, random_model, tiny_config
from hostile import digest, file_size_limited, hidden_entries, refusal, run_child
from transformers import Trainer, TrainingArguments, pipeline

from armhubert.cli import UserError
from armhubert.resources import BUNDLED_CORPUS
from armhubert.speech.audio import DataError, load_16k, read_audio
from armhubert.speech.librispeech import AudioCollator, load_librispeech
from armhubert.training import guarded_trainer
from distill_trainer import main as distill_main
from pipeline_armhubert import release_feature_extractor

finetune_ctc = load_script("finetune_ctc")
finetune_classification = load_script("finetune_classification")

QUICKSTART = str(ROOT / "conf" / "quickstart.yaml")
FAST = ["crop_seconds=0.5", "dataloader_num_workers=0", "report_to=none", "disable_tqdm=true"]
QUIET = ["--use_cpu", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0"]
UTTERANCE = BUNDLED_CORPUS / "dev-clean" / "1001" / "201" / "1001-201-0000.flac"


def _copy_corpus(root, splits=("train-clean-100", "dev-clean")):
    for split in splits:
        shutil.copytree(BUNDLED_CORPUS / split, root / "LibriSpeech" / split)
    return root


def _poison(path, value=float("nan"), everywhere=False):
    """Rewrite an audio file as float WAV data (still named .flac: soundfile reads by content) with one bad sample
    (or only bad ones: a crop of it, which is all that is decoded, holds one too)."""
    samples, rate = soundfile.read(path, dtype="float32")
    samples[slice(None) if everywhere else len(samples) // 2] = value
    soundfile.write(path, samples, rate, format="WAV", subtype="FLOAT")


# --------------------------------------------------------------------------------------------------
# Recipes and command-line values


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["student_config=5"], "student_config must be a mapping or null, got 5"),
        (["train_splits=5"], "no split folder '5'"),  # a list of text, as --train_splits 5 gives it
        (["train_splits=[]"], "--train_splits: expected at least one argument"),
        (["per_device_train_batch_size=0"], "per_device_train_batch_size must be an integer >= 1, got 0"),
        (["seed=1.5"], "--seed: invalid int value: '1.5'"),
        (["--seed", "1.5"], "--seed: invalid int value: '1.5'"),
        (["seed=true"], "--seed: invalid int value: 'true'"),
        (["fp16=maybe"], "--fp16: Truthy value expected: got maybe"),
        (["seed=-1"], "seed must be an integer in [0, 4294967295], got -1"),
        (
            ["crop_seconds=0.01"],
            "crop_seconds=0.01 is shorter than the receptive field (400 samples, 0.025 s); use at least 0.025",
        ),
        (["learning_rate=[1]"], "learning_rate takes float, not [1]"),
        (["mask_prob=null"], "mask_prob takes float, not None"),
        (["learning_rate=.nan"], "learning_rate must be a finite number > 0, got nan"),
        (["effective_batch_size=-8"], "effective_batch_size must be an integer >= 1 or null, got -8"),
        (["max_steps=0"], "max_steps must be -1 (use num_train_epochs) or a positive number of steps, got 0"),
        (["num_train_epochs=0"], "num_train_epochs is 0 and max_steps is not set"),
        (["teacher_layers=[a, b, c, d]"], "--teacher_layers: invalid int value: 'a'"),
        (["hint_layer_weight=-1"], "hint_layer_weight must be a finite number >= 0, got -1.0"),
        (["hint_layer_weight=.inf"], "hint_layer_weight must be a finite number >= 0, got inf"),
        (["label_names=[labels]"], "label_names is fixed to [] by distill_trainer.py; remove it from the recipe"),
        (["student_config={a: 1, a: 2}"], "'a' is given twice"),
        (["student_config.num_attention_heads=0"], "ARMHubertConfig.num_attention_heads: got 0"),
        (["student_config.hidden_size=-48"], "ARMHubertConfig.hidden_size: got -48"),
        (["student_config.hidden_size=abc"], "ARMHubertConfig.hidden_size: got 'abc'"),
        (["output_dir=[1]"], "output_dir takes str or null, not [1]"),
        (["output_dir=null"], "the recipe sets no output_dir folder"),
        (["student=' '"], "student must not be empty"),
        (["cache_teacher_outputs=true"], "cache_teacher_outputs keeps clean teacher passes only; use it with"),
        (
            ["effective_batch_size=12"],
            "effective_batch_size 12 is not a multiple of per_device_train_batch_size 8 x 1 process(es)",
        ),
        (["student=no-such-student"], "student 'no-such-student' is neither a preset (armhubert-960h, "),
        (["trainable_layers=[0, 4]"], "trainable_layers must name layers in 1..4, got [0, 4]"),
        (["teacher_layers=[1, 2, 3]"], "teacher_layers must list 4 teacher layers in 1..4, got [1, 2, 3]"),
        (["teacher_layers=[1, 2, 3, 5]"], "teacher_layers must list 4 teacher layers in 1..4, got [1, 2, 3, 5]"),
    ],
)
def test_recipe_values_are_checked_with_type_and_range(tmp_path, capsys, overrides, message):
    out = tmp_path / "out"
    line = refusal(capsys, distill_main, "--config", QUICKSTART, f"output_dir={out}", *FAST, *overrides)
    assert line.startswith("distill_trainer.py: error: ") and message in line, line
    assert not out.exists()


def test_recipe_output_dir_that_is_a_file_or_holds_the_data_is_refused(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert "exists and is not a folder" in refusal(capsys, distill_main, "--config", QUICKSTART, f"output_dir={a_file}")
    assert "is a file, not a folder" in refusal(
        capsys, distill_main, "--config", QUICKSTART, f"output_dir={a_file / 'run'}"
    )
    corpus = _copy_corpus(tmp_path / "corpus", splits=("train-clean-100",))
    before = digest(corpus)
    line = refusal(capsys, distill_main, "--config", QUICKSTART, f"data_source={corpus}", f"output_dir={corpus}")
    assert "is the input" in line
    bad_yaml = tmp_path / "recipe.yaml"
    bad_yaml.write_bytes(b"learning_rate: 1.0e-3\n# caf\xe9\n")
    assert "is not UTF-8 text" in refusal(capsys, distill_main, "--config", bad_yaml, f"output_dir={tmp_path / 'o'}")
    assert a_file.read_text() == "mine" and digest(corpus) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "notes.txt", "recipe.yaml"]


# --------------------------------------------------------------------------------------------------
# Corpora and audio


def test_a_chapter_without_transcripts_is_an_error_naming_it(tmp_path):
    corpus = _copy_corpus(tmp_path, splits=("train-clean-100",))
    chapter = corpus / "LibriSpeech" / "train-clean-100" / "1002" / "102"
    (chapter / "1002-102.trans.txt").unlink()
    with pytest.raises(DataError, match=r"chapter .*1002/102 has audio but no 1002-102.trans.txt"):
        load_librispeech(corpus, "train-clean-100")


def test_text_that_is_not_utf8_is_one_line(tmp_path, tiny_model_dir, capsys):
    corpus = _copy_corpus(tmp_path, splits=("train-clean-100",))
    transcript = corpus / "LibriSpeech" / "train-clean-100" / "1001" / "101" / "1001-101.trans.txt"
    transcript.write_bytes(transcript.read_bytes() + "1001-101-0099 CAF\xc9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"1001-101.trans.txt is not UTF-8 text \(byte"):
        load_librispeech(corpus, "train-clean-100")
    table = tmp_path / "train.csv"
    table.write_bytes(b"path,label\n" + f"{UTTERANCE},caf\xe9\n".encode("latin-1"))
    line = refusal(
        capsys,
        finetune_classification.main,
        "--model_name_or_path",
        tiny_model_dir,
        "--output_dir",
        tmp_path / "out",
        "--train_csv",
        table,
        "--eval_csv",
        table,
        *QUIET,
    )
    assert "train.csv is not UTF-8 text" in line and not (tmp_path / "out").exists()


def test_non_finite_audio_is_refused_where_it_is_read(tmp_path, caplog):
    for value in (float("nan"), float("inf")):
        path = tmp_path / f"bad-{value}.flac"
        shutil.copy(UTTERANCE, path)
        _poison(path, value)
        with pytest.raises(DataError, match=r"bad-.*\.flac holds NaN or infinite samples"):
            read_audio(path)
        with pytest.raises(ValueError, match="NaN or infinite"):
            load_16k(path)
    # The corpus reader skips it and counts it, as an unreadable file.
    rows = [
        {"id": "bad", "audio": {"path": str(tmp_path / "bad-nan.flac"), "bytes": None}},
        {"id": "good", "audio": {"path": str(UTTERANCE), "bytes": None}},
    ]
    batch = AudioCollator(release_feature_extractor())(rows)  # uncropped: the bad sample is decoded
    assert int(batch["num_unreadable"]) == 1 and torch.isfinite(batch["input_values"]).all()
    # The feature pipeline refuses it instead of returning NaN features.
    extractor = pipeline("audio-feature-extraction", model=random_model(tiny_config()))
    samples = np.zeros(8000, dtype=np.float32)
    samples[10] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite samples"):
        extractor(samples)


def test_distillation_skips_and_counts_a_nan_file_and_saves_a_finite_model(tmp_path, capsys, caplog):
    corpus = _copy_corpus(tmp_path / "corpus")
    poisoned = corpus / "LibriSpeech" / "train-clean-100" / "1002" / "102" / "1002-102-0003.flac"
    _poison(poisoned, everywhere=True)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):  # 5 steps of 8 draw all 40 utterances once
        code = distill_main(
            [
                "--config",
                QUICKSTART,
                f"output_dir={out}",
                f"data_source={corpus}",
                "max_steps=5",
                "eval_strategy=no",
                "save_strategy=no",
                "logging_steps=5",
                *FAST,
            ]
        )
    assert code == 0, capsys.readouterr().err
    assert "1002-102-0003.flac holds NaN" in caplog.text and "1 unreadable audio file(s) were skipped" in caplog.text
    weights = safetensors.torch.load_file(out / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_fine_tuning_on_a_nan_file_stops_with_one_line_and_saves_nothing(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "data"
    for speaker in ("1001", "1002"):
        for path in sorted((BUNDLED_CORPUS / "dev-clean" / speaker).rglob("*.flac"))[:2]:
            (data / speaker).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, data / speaker / path.name)
    poisoned = sorted(data.rglob("*.flac"))[0]
    _poison(poisoned)
    line = refusal(
        capsys,
        finetune_classification.main,
        "--model_name_or_path",
        tiny_model_dir,
        "--output_dir",
        tmp_path / "out",
        "--train_dir",
        data,
        "--eval_dir",
        data,
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        *QUIET,
    )
    assert f"{poisoned.name} holds NaN or infinite samples" in line
    assert not (tmp_path / "out" / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------------
# Diverging losses and what may be saved


def test_distillation_that_diverges_stops_with_exit_2_and_saves_no_model(tmp_path, capsys):
    out = tmp_path / "run"
    line = refusal(
        capsys,
        distill_main,
        "--config",
        QUICKSTART,
        f"output_dir={out}",
        "learning_rate=1e30",
        "max_steps=6",
        "per_device_train_batch_size=2",
        "eval_strategy=no",
        "save_strategy=no",
        "warmup_steps=0",
        "max_grad_norm=0",
        *FAST,
    )
    assert "the training loss is nan at step" in line and "no final model was saved" in line, line
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()


def test_ctc_fine_tuning_that_diverges_stops_with_exit_2_and_saves_no_model(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "ctc"
    line = refusal(
        capsys,
        finetune_ctc.main,
        "--model_name_or_path",
        tiny_model_dir,
        "--output_dir",
        out,
        "--max_train_samples",
        "4",
        "--max_eval_samples",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "6",
        "--learning_rate",
        "1e30",
        "--max_grad_norm",
        "0",
        *QUIET,
    )
    assert "the training loss is" in line and "no final model was saved" in line, line
    assert not (out / "model.safetensors").exists() and not (out / "README.md").exists()


class _LossOf:
    """`Trainer.training_step` stand-in returning the given losses in turn."""

    def __init__(self, losses):
        self.losses = iter(losses)

    def __call__(self, trainer, model, inputs, num_items_in_batch=None):
        return torch.tensor(next(self.losses))


def _tiny_trainer(tmp_path, trainer_class=Trainer):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    return trainer_class(model=random_model(tiny_config()), args=args)


def test_the_loss_guard_stops_at_once_or_after_fp16_skips(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "training_step", _LossOf([1.0, float("nan")]))
    trainer = _tiny_trainer(tmp_path, guarded_trainer.GuardedTrainer)
    assert float(trainer.training_step(trainer.model, {})) == 1.0
    with pytest.raises(UserError, match="the training loss is nan at step 1"):
        trainer.training_step(trainer.model, {})
    # Under fp16 the gradient scaler skips overflowing steps: only a run of them is divergence.
    skips = guarded_trainer.MAX_SKIPPED_FP16_STEPS
    monkeypatch.setattr(
        Trainer, "training_step", _LossOf([float("inf")] * skips + [1.0] + [float("inf")] * (skips + 1))
    )
    trainer = _tiny_trainer(tmp_path, guarded_trainer.GuardedTrainer)
    trainer.accelerator.scaler = object()
    for _ in range(2 * skips + 1):
        trainer.training_step(trainer.model, {})
    with pytest.raises(UserError, match="the training loss is inf"):
        trainer.training_step(trainer.model, {})


def test_a_run_without_steps_or_a_model_with_nan_weights_is_never_saved(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "train", lambda self, *args, **kwargs: None)  # a run that took no step
    with pytest.raises(UserError, match="training took no optimiser step"):
        _tiny_trainer(tmp_path, guarded_trainer.GuardedTrainer).train()
    trainer = _tiny_trainer(tmp_path)
    with torch.no_grad():
        trainer.model.encoder.layers[1].feed_forward.output_dense.weight[0, 0] = float("nan")
    with pytest.raises(
        UserError, match=r"NaN or infinite weights \(encoder.layers.1.feed_forward.output_dense.weight\)"
    ):
        guarded_trainer.save_trained_model(trainer, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------------------------------
# Fine-tuning outputs


def test_fine_tuning_never_overwrites_a_user_s_files(tmp_path, tiny_model_dir, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("my own notes")
    common = [
        "--model_name_or_path",
        tiny_model_dir,
        "--max_train_samples",
        "8",
        "--max_eval_samples",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "1",
        *QUIET,
    ]
    line = refusal(capsys, finetune_ctc.main, *common, "--output_dir", out)
    assert "not empty; pass --overwrite_output_dir" in line
    line = refusal(capsys, finetune_ctc.main, *common, "--output_dir", out, "--overwrite_output_dir", "true")
    assert "holds no complete previous output" in line
    assert (out / "README.md").read_text() == "my own notes" and [p.name for p in out.iterdir()] == ["README.md"]
    assert "is inside the input" in refusal(capsys, finetune_ctc.main, *common, "--output_dir", tiny_model_dir / "ctc")
    corpus = _copy_corpus(tmp_path / "corpus")
    line = refusal(capsys, finetune_ctc.main, *common, "--data_source", corpus, "--output_dir", corpus / "LibriSpeech")
    assert "is inside the input" in line
    assert "cannot appear in the model card" in refusal(
        capsys, finetune_ctc.main, *common, "--output_dir", tmp_path / 'a"b'
    )
    assert "--per_device_train_batch_size must be an integer >= 1, got 0" in refusal(
        capsys, finetune_ctc.main, *common, "--output_dir", tmp_path / "x", "--per_device_train_batch_size", "0"
    )
    # A previous output of the script may be replaced; the new model arrives whole. (Only path arguments
    # count as inputs: `--chars_to_ignore .` is not the current folder.)
    monkeypatch.chdir(tmp_path)
    previous = tmp_path / "previous"
    assert finetune_ctc.main([*map(str, common), "--output_dir", str(previous), "--chars_to_ignore", "."]) == 0
    assert finetune_ctc.main([*map(str, common), "--output_dir", str(previous), "--overwrite_output_dir", "true"]) == 0
    assert (previous / "model.safetensors").is_file() and not [p for p in previous.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------------------------------
# Model input


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_the_model_takes_other_float_dtypes_by_casting_them(dtype, tolerance):
    model = random_model(tiny_config())
    audio = torch.from_numpy(read_audio(UTTERANCE))[None, :16000]
    with torch.no_grad():
        expected = model(audio).last_hidden_state
        got = model(audio.to(dtype)).last_hidden_state
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=tolerance * expected.abs().max().item(), rtol=0)


# --------------------------------------------------------------------------------------------------
# --resume: the checkpoint is checked against the run before the Trainer reads it

RESUMABLE = [*FAST, "max_steps=4", "eval_strategy=no", "logging_steps=1", "save_strategy=steps", "save_steps=2"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A distillation stopped after its checkpoint-2 (4 steps planned): what --resume continues."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert (
        distill_main(["--config", QUICKSTART, f"output_dir={out}", *RESUMABLE[:-4], "max_steps=2", *RESUMABLE[-3:]])
        == 0
    )
    for name in ("model.safetensors", "config.json", "README.md", "preprocessor_config.json"):
        (out / name).unlink(missing_ok=True)  # as if it had been killed after the checkpoint
    return out


def _truncate(path, keep=0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _bytearray_pickle(path):
    torch.save({"state": {}}, path)  # then its pickle swapped for one that calls bytearray(2**31)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    name = next(member for member in members if member.endswith("data.pkl"))
    members[name] = b"\x80\x02cbuiltins\nbytearray\n\x8a\x08" + (2**31).to_bytes(8, "little") + b"\x85R."
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)


def _other_student(checkpoint):
    weights = safetensors.torch.load_file(checkpoint / "model.safetensors")
    name = next(key for key in sorted(weights) if weights[key].dim() == 2)
    weights[name] = torch.zeros(weights[name].shape[0] + 8, weights[name].shape[1])
    safetensors.torch.save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})


def _state(checkpoint, **fields):
    path = checkpoint / "trainer_state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: _truncate(c / "trainer_state.json"), "not a complete checkpoint folder"),
        (lambda c: (c / "trainer_state.json").write_text("[" * 100_000), "not a complete checkpoint folder"),
        (lambda c: (c / "trainer_state.json").write_text("[" + "[]," * 2_500_000 + "[]]"), "more than 2,000,000 JSON"),
        (lambda c: _state(c, global_step=10**15), "says global_step 1000000000000000, but this run's schedule has 4"),
        (
            lambda c: _state(c, global_step="2"),
            "trainer_state.json says global_step '2', not a step count; resume an earlier checkpoint",
        ),
        (
            lambda c: (c / "optimizer.pt").write_bytes(np.random.default_rng(0).bytes(5000)),
            "optimizer.pt is not a readable PyTorch checkpoint: it is not the zip",
        ),
        (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt is not"),
        (lambda c: _bytearray_pickle(c / "optimizer.pt"), "calls builtins.bytearray"),
        (lambda c: _truncate(c / "model.safetensors"), "model.safetensors is not a readable safetensors file"),
        (lambda c: (c / "model.safetensors").unlink(), "not a complete checkpoint folder (no model.safetensors)"),
        (_other_student, "does not fit this run's student"),
        (lambda c: _truncate(c / "rng_state.pth", 0.9), "rng_state.pth is not"),
        (
            lambda c: torch.save({"python": torch.zeros(1)}, c / "rng_state.pth"),
            "rng_state.pth is not a saved generator state (no 'cpu' tensor)",
        ),
    ],
    ids=[
        "truncated-state",
        "deep-state",
        "many-values-state",
        "huge-step",
        "text-step",
        "random-optimizer",
        "truncated-optimizer",
        "bytearray-optimizer",
        "truncated-weights",
        "no-weights",
        "other-student",
        "truncated-rng",
        "rng-without-cpu",
    ],
)
def test_a_damaged_resume_checkpoint_is_one_line_and_changes_nothing(stopped_run, tmp_path, capsys, damage, message):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    damage(out / "checkpoint-2")
    before = digest(out)
    line = refusal(capsys, distill_main, "--config", QUICKSTART, f"output_dir={out}", *RESUMABLE, "--resume")
    assert message in line and "checkpoint-2" in line, line
    assert digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_second_distillation_into_the_same_output_dir_is_refused(tmp_path, capsys):
    from armhubert.files.lock import output_lock

    out = tmp_path / "run"
    with output_lock(out):  # a first run, writing
        line = refusal(capsys, distill_main, "--config", QUICKSTART, f"output_dir={out}", *FAST)
    assert f"output_dir {out} is being written by process {os.getpid()}" in line, line
    assert not out.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "student_config.hidden_size=4000000",
            "the student config describes a model of 256,004,436,014,256 parameters",
        ),
        ("teacher_config.hidden_size=8000000", "teacher_config for random-hubert describes a model of"),
    ],
)
def test_huge_model_sizes_are_refused_before_allocation(tmp_path, capsys, override, message):
    line = refusal(capsys, distill_main, "--config", QUICKSTART, f"output_dir={tmp_path / 'o'}", *FAST, override)
    assert message in line, line


# --------------------------------------------------------------------------------------------------
# Model folders: no folder code unless asked, broken configs in one line

quickstart = load_script("quickstart")

_FOLDER_CODE = """
import pathlib
pathlib.Path(__file__).with_name("RAN").write_text("the folder's code ran")
from transformers import PretrainedConfig
class EvilConfig(PretrainedConfig):
    model_type = "evil"
"""


def test_quickstart_runs_no_folder_code_unless_asked(tmp_path, tiny_model_dir, capsys):
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig"}}))
    (evil / "evil.py").write_text(_FOLDER_CODE)
    (evil / "model.safetensors").write_bytes(b"")
    line = refusal(capsys, quickstart.main, "--model", evil, "--num-utterances", 1)
    assert "pass --trust_remote_code to run that code, if you trust it" in line, line
    assert not (evil / "RAN").exists()
    # A folder of this project's model type loads with the installed classes, without the flag.
    assert quickstart.main(["--model", str(tiny_model_dir), "--num-utterances", "1"]) == 0
    assert "last_hidden_state" in capsys.readouterr().out


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "armhubert"}, "cannot load the model"),
        ({"hidden_size": 8_000_000}, "describes a model of"),
        ({"conv_kernel": [10.5, 3, 3, 3, 3, 2, 2]}, "cannot load the model"),
        ("[" * 100_000 + "]" * 100_000, "nests deeper than 32 levels"),
        ("[" + "[]," * 250_000 + "[]]", "more than 200,000 JSON values"),
    ],
    ids=["only-model-type", "huge-hidden-size", "float-kernel", "deep-json", "many-values-json"],
)
def test_a_broken_config_json_is_one_line_for_quickstart_and_fine_tuning(
    tmp_path, tiny_model_dir, capsys, config, message
):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    if isinstance(config, str):
        (folder / "config.json").write_text(config)
    elif "model_type" in config:
        (folder / "config.json").write_text(json.dumps(config))
    else:
        (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **config}))
    assert message in refusal(capsys, quickstart.main, "--model", folder, "--num-utterances", 1)
    line = refusal(
        capsys,
        finetune_classification.main,
        "--model_name_or_path",
        folder,
        "--output_dir",
        tmp_path / "out",
        "--train_dir",
        BUNDLED_CORPUS / "dev-clean",
        "--eval_dir",
        BUNDLED_CORPUS / "dev-clean",
        *QUIET,
    )
    assert message in line, line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Exit 2 is one line: no warning or progress bar before it


def test_an_all_corrupt_corpus_is_one_line_without_warnings(tmp_path, capsys, progress_bars):
    corpus = _copy_corpus(tmp_path / "corpus", splits=("train-clean-100",))
    for path in (corpus / "LibriSpeech").rglob("*.flac"):
        path.write_bytes(b"not audio")
    line = refusal(
        capsys, distill_main, "--config", QUICKSTART, f"data_source={corpus}", f"output_dir={tmp_path / 'o'}", *FAST
    )
    assert "none of the 40 audio files in" in line and "is readable" in line, line
    rows = [{"id": f"bad-{i}", "audio": {"path": str(tmp_path / "missing.flac"), "bytes": None}} for i in range(3)]
    with pytest.raises(DataError, match=r"every file of a batch was unreadable \(bad-0, bad-1, bad-2\), e\.g\. unread"):
        AudioCollator(release_feature_extractor())(rows)


def test_ctc_unknown_eval_split_and_a_multi_model_root_are_one_line(tmp_path, tiny_model_dir, capsys, progress_bars):
    common = ["--output_dir", tmp_path / "out", "--data_source", BUNDLED_CORPUS.parent, *QUIET]
    line = refusal(
        capsys, finetune_ctc.main, "--model_name_or_path", tiny_model_dir, "--eval_split", "dev-nosuch", *common
    )
    assert "dev-nosuch" in line, line
    root = tmp_path / "repository"
    for name in ("small", "large"):
        shutil.copytree(tiny_model_dir, root / name)
    line = refusal(capsys, finetune_ctc.main, "--model_name_or_path", root, "--max_duration", "5", *common)
    assert "is a multi-model repository" in line and "large, small" in line, line
    assert not (tmp_path / "out").exists()


def test_only_the_crop_is_decoded_and_equals_the_window_of_the_whole_file(monkeypatch):
    from armhubert.speech.librispeech import _audio_duration_crop, fixed_offset

    whole = read_audio(UTTERANCE)
    decoded, blocks = [], soundfile.SoundFile.blocks

    def counted(self, *args, **kwargs):
        for block in blocks(self, *args, **kwargs):
            decoded.append(len(block))
            yield block

    monkeypatch.setattr(soundfile.SoundFile, "blocks", counted)
    crop = read_audio(UTTERANCE, max_samples=4000, choose_offset=fixed_offset("1001-201-0000"))
    assert sum(decoded) == 4000 < len(whole)
    assert np.array_equal(crop, _audio_duration_crop(whole, 4000, "1001-201-0000"))
    assert np.array_equal(read_audio(UTTERANCE, max_samples=10**9), whole)  # shorter than the window: whole


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_removes_that_checkpoint(tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def disk_full_for_the_optimizer(value, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt") and "checkpoint-4" in str(path):
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/3"
            )
        return real_save(value, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_for_the_optimizer)
    out = tmp_path / "run"
    line = refusal(capsys, distill_main, "--config", QUICKSTART, f"output_dir={out}", *RESUMABLE)
    assert f"could not write a checkpoint into {out}" in line and "free disk space" in line, line
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    assert hidden_entries(tmp_path) == []


_FINETUNE_FSIZE_CHILD = file_size_limited(
    'from helpers import load_script\nfinetune = load_script("finetune_classification")', "finetune.main"
)


def test_fine_tuning_onto_a_full_disk_gives_one_line_and_leaves_no_incomplete_checkpoint(tiny_model_dir, tmp_path):
    """A full disk at the first checkpoint (emulated by a 100 kB file-size limit; the weights are larger): one line,
    exit 2, the checkpoint it was writing removed (as distillation does), the model folder unchanged."""
    output = tmp_path / "out"
    before = digest(tiny_model_dir)
    argv = ["--model_name_or_path", tiny_model_dir, "--output_dir", output, "--use_cpu", "--report_to", "none"]
    argv += ["--train_dir", BUNDLED_CORPUS / "train-clean-100", "--eval_dir", BUNDLED_CORPUS / "dev-clean"]
    child = run_child(_FINETUNE_FSIZE_CHILD, [*argv, "--max_steps", "2", "--save_steps", "1"])
    lines = child.stdout.strip().splitlines()
    assert child.returncode == 2 and len(lines) == 1, (child.stdout, child.stderr[-2000:])
    assert f"could not write a checkpoint into {output}" in lines[0] and "free disk space" in lines[0], lines
    assert not list(output.glob("checkpoint-*")) and digest(tiny_model_dir) == before
