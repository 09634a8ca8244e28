"""Small hostile files that expand on reading (billion laughs, decompression bombs, YAML aliases, deep nesting).

Every case must be refused with one line and exit status 2, within seconds and without taking much
memory. They run in one child process whose address space is capped (`RLIMIT_AS`: its size after the
imports plus 1.5 GiB) so that a regression fails the test instead of swamping the machine; the child
reports each case's exit status, stderr, seconds and peak-memory growth (VmHWM, reset before each case).
"""

import json
import subprocess
import sys

import yaml
from helpers import ROOT, TINY_CKPT
from hostile import compressed_checkpoint, distiller, save, tiny_checkpoint, tiny_yaml_text

MAX_SECONDS = 10
MAX_GROWTH_BYTES = 1 << 30

_CHILD = r"""
import contextlib, io, json, resource, sys, time
import convert_checkpoint, distill_trainer

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + int(1.5 * 2**30),) * 2)
results = {}
for name, command, args in json.loads(sys.argv[1]):
    main = {"convert": convert_checkpoint.main, "distill": distill_trainer.main}[command]
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-memory mark
    before, start, stderr = status("VmRSS"), time.perf_counter(), io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
    except BaseException as error:  # a traceback: reported, not raised
        code = f"{type(error).__name__}: {str(error)[:200]}"
    results[name] = dict(code=code, stderr=stderr.getvalue()[:2000], seconds=time.perf_counter() - start,
                         growth=status("VmHWM") - before)
print(json.dumps(results))
"""


def _laughs(levels=12):
    """A list of 8**levels strings once expanded, a few hundred bytes pickled (shared references)."""
    value = ["ha"]
    for _ in range(levels):
        value = [value] * 8
    return value


def _yaml_laughs():
    lines = ['a0: &a0 ["ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha"]']
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def _cases(folder):
    """(name, command, arguments, expected message fragment) of each hostile file, built in `folder`."""
    cases = []

    def checkpoint(name, change, message):
        value = tiny_checkpoint()
        change(value)
        path = save(folder / f"{name}.ckpt", value)
        cases.append((name, "convert", [str(path), "--output-dir", str(folder / f"out-{name}")], message))

    def cycle():
        loop = []
        loop.append(loop)
        return loop

    checkpoint(
        "config-laughs", lambda c: distiller(c).update(conv_feature_layers=_laughs()), "counting shared references"
    )
    checkpoint("config-cycle", lambda c: distiller(c).update(extra=cycle()), "nests deeper than 32 levels")
    checkpoint(
        "huge-integer",
        lambda c: distiller(c).update(encoder_layers=10**200_000),
        "opcode 139 (LONG4, pickle protocol 2)",
    )
    checkpoint(
        "expression",
        lambda c: distiller(c).update(conv_feature_layers="[(32, 10, 5)] * 10000000000"),
        "builds more than 10,000 items",
    )
    checkpoint(
        "expression-nested",
        lambda c: distiller(c).update(conv_feature_layers="[[[0] * 9000] * 9000] * 9000"),
        "conv_feature_layers must be a list of 1..64",
    )
    bomb = compressed_checkpoint(folder / "pickle-bomb.ckpt", 256 << 20)  # 256 kB on disk
    cases.append(
        (
            "pickle-256MiB",
            "convert",
            [str(bomb), "--output-dir", str(folder / "out-bomb")],
            "would decompress to 268,451,281 bytes",
        )
    )

    def config(name, text, message, command="convert"):
        path = folder / f"{name}.yaml"
        path.write_text(text)
        if command == "convert":
            args = [str(TINY_CKPT), "--config", str(path), "--output-dir", str(folder / f"out-{name}")]
        else:
            args = ["--config", str(path), f"output_dir={folder / f'run-{name}'}"]
        cases.append((name, command, args, message))

    anchors = yaml.safe_load(tiny_yaml_text())
    text = yaml.safe_dump(anchors).replace("conv_feature_layers:", "conv_feature_layers: *a8\n  unused:")
    config("yaml-anchors", _yaml_laughs() + text, "counting shared references")
    config("yaml-deep", "distiller: " + "[" * 60_000 + "]" * 60_000 + "\n", "nests deeper than 32 levels")
    config("yaml-large", "# padding\n" * 30_000, "larger than 256 KiB")
    config(
        "recipe-anchors",
        _yaml_laughs() + "student_config: {hidden_size: *a8}\n",
        "counting shared references",
        "distill",
    )
    config("recipe-deep", "teacher_layers: " + "[" * 60_000 + "]" * 60_000 + "\n", "nests deeper", "distill")
    return cases


def test_small_hostile_files_are_refused_fast_and_in_bounded_memory(tmp_path):
    cases = _cases(tmp_path)
    assert all(path.stat().st_size < 1 << 20 for path in tmp_path.iterdir())  # each hostile file is under 1 MB
    request = json.dumps([(name, command, args) for name, command, args, _ in cases])
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, request],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    for name, _, _, message in cases:
        result = results[name]
        lines = result["stderr"].strip().splitlines()
        assert result["code"] == 2, (name, result)
        assert len(lines) == 1 and message in lines[0], (name, result["stderr"])
        assert result["seconds"] < MAX_SECONDS, (name, result)
        assert result["growth"] < MAX_GROWTH_BYTES, (name, result)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("out-", "run-", "."))]
