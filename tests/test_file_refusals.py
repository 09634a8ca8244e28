"""Refusals of broken files and recipes that no other in-process test reaches: a recipe that is not a mapping or
cannot be read, recipe values the libraries refuse, a teacher that cannot be built or aligned, damaged checkpoints
(zip, content, resumed RNG state, the run's saved recipe), a folder that is no model, an output name that cannot
be written.

Each case goes through the command a user runs and asserts exit status 2, one line naming the problem, and
nothing written where the command writes.
"""

import os
import shutil
import zipfile

import numpy as np
import pytest
import soundfile
import torch
from helpers import ROOT, TINY_CKPT, random_model, tiny_config
from hostile import digest, refusal

import convert_checkpoint
from armhubert.cli import UserError
from armhubert.commands import evaluate, export_onnx
from armhubert.convert.folders import save_model_folder
from armhubert.files.atomic import atomic_output_file, atomic_write_bytes
from armhubert.files.placement import STAGING_NAME_EXTRA, check_output_file
from distill_trainer import main as distill_main

QUICKSTART = str(ROOT / "conf" / "quickstart.yaml")
FAST = ["crop_seconds=0.5", "dataloader_num_workers=0", "report_to=none", "disable_tqdm=true"]
ONE_STEP = [*FAST, "max_steps=1", "eval_strategy=no", "logging_steps=1", "save_strategy=steps", "save_steps=1"]
# A file the kernel lists as regular whose read fails (EIO at address 0): stands for a file on a failing disk.
UNREADABLE = "/proc/self/mem"


def _list_recipe(folder):
    path = folder / "recipe.yaml"
    path.write_text("- teacher: random-hubert\n- student: armhubert-960h\n")  # a list of mappings, not one mapping
    return path


# --------------------------------------------------------------------------------------------------
# Recipes: the file, the key=value words, the values transformers refuses, teachers that cannot be used


@pytest.mark.parametrize(
    "config, words, message",
    [
        (_list_recipe, [], "recipe.yaml must be a mapping of key: value lines, found a list"),
        (UNREADABLE, [], f"cannot read recipe {UNREADABLE}: Input/output error"),
        (
            QUICKSTART,
            ["learning_rate.warmup=0.1"],
            "override 'learning_rate.warmup=0.1': learning_rate is not a mapping",
        ),
        (QUICKSTART, ["fp16=true", "bf16=true"], "invalid recipe: At most one of fp16 and bf16 can be True"),
        (
            QUICKSTART,
            ["teacher_config.conv_stride=[5, 2]"],  # the config class's own check (a strict dataclass's error)
            "teacher_config for random-hubert: Configuration for convolutional layers is incorrect",
        ),
        (
            QUICKSTART,
            ["teacher_config.hidden_act=nope"],  # a KeyError inside transformers while the model is sized
            "teacher_config for random-hubert does not describe a model that can be built: unknown name 'nope'",
        ),
        (
            QUICKSTART,
            ["teacher_config.conv_kernel=[1000, 3, 3, 3, 3, 2, 2]"],  # the student's hop, not its frame count
            "teacher and student frames do not line up: for [1040, 16000, 16319, 48123, 160007] samples",
        ),
    ],
    ids=[
        "list-recipe",
        "unreadable-recipe",
        "override-into-a-number",
        "fp16-and-bf16",
        "teacher-config",
        "activation",
        "frames",
    ],
)
def test_a_broken_recipe_is_one_line_and_writes_nothing(tmp_path, capsys, config, words, message):
    config = config(tmp_path) if callable(config) else config
    out = tmp_path / "out"
    line = refusal(capsys, distill_main, "--config", config, f"output_dir={out}", *FAST, *words)
    assert line.startswith("distill_trainer.py: error: ") and message in line, line
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# Checkpoints: a damaged zip, one that holds no dict; a resumed run's damaged files


def _damaged_zip(path):
    """The fixture with its first member's header overwritten: the zip's directory (at its end) intact."""
    data = bytearray(TINY_CKPT.read_bytes())
    data[:4] = b"XXXX"
    path.write_bytes(bytes(data))
    assert zipfile.is_zipfile(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (_damaged_zip, "is not a readable zip archive: 'Bad magic number for file header'"),
        (lambda path: torch.save([torch.zeros(4)], path), "holds a list, not a checkpoint dict"),
    ],
    ids=["member-header", "a-list"],
)
def test_a_checkpoint_that_is_no_readable_dict_is_refused(tmp_path, capsys, damage, message):
    checkpoint = tmp_path / "model.ckpt"
    damage(checkpoint)
    line = refusal(capsys, convert_checkpoint.main, checkpoint, "--output-dir", tmp_path / "out")
    assert f"{checkpoint} {message}" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A one-step distillation with its checkpoint-1, stopped before its final save: what --resume continues."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert distill_main(["--config", QUICKSTART, f"output_dir={out}", *ONE_STEP]) == 0
    for name in ("model.safetensors", "config.json", "README.md", "preprocessor_config.json"):
        (out / name).unlink()
    return out


def _rng_state_with_negative_shape(path):
    """An `rng_state.pth` whose numpy state starts with `_reconstruct(ndarray, (-1,), b"b")`."""
    torch.save({"python": None, "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}, path)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    name = next(member for member in members if member.endswith("data.pkl"))
    shape = b"K\x00\x85"  # (0,) as numpy pickles it: BININT1 0, TUPLE1
    assert shape in members[name]
    members[name] = members[name].replace(shape, b"J\xff\xff\xff\xff\x85", 1)  # BININT -1, TUPLE1
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda run: (run / "distill_recipe.yaml").write_text("a note, not a recipe\n"),
            "distill_recipe.yaml is not a recipe; resume a checkpoint of a distill_trainer.py run",
        ),
        (
            lambda run: _rng_state_with_negative_shape(run / "checkpoint-1" / "rng_state.pth"),
            "checkpoint-1/rng_state.pth: a pickled array has the shape (-1,); not a saved generator state",
        ),
    ],
    ids=["saved-recipe", "rng-state"],
)
def test_a_resumed_run_with_a_damaged_file_is_one_line_and_changes_nothing(
    stopped_run, tmp_path, capsys, damage, message
):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    damage(out)
    before = digest(out)
    line = refusal(capsys, distill_main, "--config", QUICKSTART, f"output_dir={out}", *ONE_STEP, "--resume")
    assert f"--resume: {out}/" in line and message in line, line
    assert digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# --------------------------------------------------------------------------------------------------
# Model folders and outputs


def test_a_folder_of_weights_without_its_config_is_no_model_folder(tmp_path, capsys):
    folder = tmp_path / "model"
    save_model_folder(random_model(tiny_config()), folder)
    (folder / "config.json").unlink()  # weights without their config: a partial copy
    audio = tmp_path / "a.wav"
    soundfile.write(audio, np.zeros(16000, dtype=np.float32), 16000)
    data = tmp_path / "dev.csv"
    data.write_text(f"path,text\n{audio},a b\n")
    before = digest(tmp_path)
    output = tmp_path / "figures.json"
    line = refusal(capsys, evaluate.main, folder, "--data", data, "--output_json", output)
    assert f"{folder} is not a model folder (no config.json); give the folder of a saved model" in line, line
    assert digest(tmp_path) == before and not output.exists()


def test_an_onnx_output_name_too_long_to_stage_is_refused_before_the_export(tmp_path, capsys):
    """An --output name the filesystem takes (245 bytes) but not the temporary name beside it that the atomic write
    needs: refused with the other output checks, before the model is even opened (it does not exist here)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    output = tmp_path / "out" / ("m" * 240 + ".onnx")
    output.parent.mkdir()
    line = refusal(capsys, export_onnx.main, tmp_path / "no-model", "--output", output)
    longest = os.pathconf(output.parent, "PC_NAME_MAX") - STAGING_NAME_EXTRA  # 207 where names have 255 bytes
    assert f"--output {output}: a name of 245 bytes, more than the {longest} that fit in {output.parent}" in line, line
    assert line.endswith("choose a shorter name"), line
    assert list(tmp_path.iterdir()) == [output.parent] and list(output.parent.iterdir()) == []


def test_the_temporary_name_of_a_file_adds_no_more_than_the_name_check_allows(tmp_path):
    """The name check leaves room for the temporary name the atomic writers write under first (`atomic_output_file`'s
    also ends in the name's suffix): the longest name it lets through is written by both."""
    longest = os.pathconf(tmp_path, "PC_NAME_MAX") - STAGING_NAME_EXTRA
    output = check_output_file(tmp_path / ("m" * (longest - 5) + ".onnx"), overwrite=False)
    assert atomic_write_bytes(output, b"x").read_bytes() == b"x"
    with atomic_output_file(output) as staging:
        staging.write_bytes(b"y")
    assert output.read_bytes() == b"y"
    with pytest.raises(UserError, match="choose a shorter name"):
        check_output_file(tmp_path / ("m" * (longest - 4) + ".onnx"), overwrite=False)
