"""Helpers of the hostile-input suites (tests/test_hostile_*.py): refusals, file digests, hostile files."""

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import soundfile
import torch
from helpers import ROOT, TINY_CKPT, TINY_YAML

MAX_GROWTH_BYTES = 200 << 20  # the promise: 200 MB above the tool's own baseline (and 2 s)
# The refusal's own CPU seconds, measured in the child (not its start-up, its imports or the wait for a core on a
# loaded machine: a hang is caught by the child's timeout instead).
MAX_SECONDS = 2

# Runs each (name, command, args) of argv[1] after PRELUDE (which defines COMMANDS: command -> main) and prints
# each case's exit status, stderr, seconds (wall and CPU) and peak-memory growth (VmHWM, reset before each case), under an
# address-space cap (its size after the imports plus 1.5 GiB) so that a regression fails instead of swamping
# the machine.
_CHILD_LOOP = r"""
import contextlib, io, json, resource, sys, time

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + int(1.5 * 2**30),) * 2)
for name, command, args in json.loads(sys.argv[1]):
    main = COMMANDS[command]
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-memory mark
    before, start, cpu, stderr = status("VmRSS"), time.perf_counter(), time.process_time(), io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
    except BaseException as error:  # a traceback: reported, not raised
        code = f"{type(error).__name__}: {str(error)[:200]}"
    result = dict(code=code, stderr=stderr.getvalue()[:2000], seconds=time.perf_counter() - start,
                  cpu=time.process_time() - cpu, growth=status("VmHWM") - before)
    print(json.dumps([name, result]), flush=True)  # case by case: a hang shows which case it was
"""


def file_size_limited(prelude, main, limit=100_000):
    """Code for `run_child`: after `prelude` (imports), run `main(sys.argv[1:])` with no file over `limit` bytes
    allowed (`prlimit --fsize`), print what the command wrote on stderr (not what libraries print when imported,
    nor its own output) and exit with its status."""
    return (
        prelude
        + f"""
import contextlib, io, resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
    code = {main}(sys.argv[1:])
print(stderr.getvalue(), end="")
sys.exit(code)
"""
    )


def run_child(code, args, timeout=300):
    """`python -c code *args` offline on one thread, from tests/ with the repository and tests/ importable."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT / "tests",
        env={
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}",
            "PATH": "/usr/bin:/bin",
            "OMP_NUM_THREADS": "1",
        },
    )


def run_capped(prelude, cases, timeout=300):
    """Run `cases` [(name, command, args, expected message fragment)] in one capped child process (a hang fails
    as a timeout) and assert each: exit status 2, one line naming the problem, growth under MAX_GROWTH_BYTES,
    under MAX_SECONDS of CPU. Returns {name: result}."""
    request = json.dumps([(name, command, [str(arg) for arg in args]) for name, command, args, _ in cases])
    try:
        child = run_child(prelude + _CHILD_LOOP, [request], timeout)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
        done = {json.loads(line)[0] for line in output.splitlines() if line.startswith('["')}
        hung = next((name for name, *_ in cases if name not in done), "the imports")
        raise AssertionError(f"{hung} did not finish in {timeout} s (a hang)") from None
    assert child.returncode == 0, child.stderr[-3000:]
    results = dict(json.loads(line) for line in child.stdout.splitlines() if line.startswith('["'))
    for name, _, _, message in cases:
        result = results[name]
        lines = result["stderr"].strip().splitlines()
        assert result["code"] == 2, (name, result)
        assert len(lines) == 1 and message in lines[0], (name, result["stderr"])
        assert result["growth"] < MAX_GROWTH_BYTES, (name, result)
        assert result["cpu"] < MAX_SECONDS, (name, result)
    print(
        {
            name: (round(result["seconds"], 2), round(result["cpu"], 2), result["growth"] >> 20)
            for name, result in results.items()
        }
    )
    return results


def refusal(capsys, main, *args):
    """Run a command's `main` in this process; assert exit status 2 and one line without a traceback on stderr.

    Returns that line. (`main` returning at all means no exception escaped: there was no traceback.)
    """
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err)
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def digest(*roots):
    """{path: sha256} of every file under `roots` (files or folders): compare before and after a command."""
    found = {}
    for root in map(Path, roots):
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def hidden_entries(folder):
    """Staging / retired folders and other hidden entries left in `folder`."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


def tiny_checkpoint():
    """The fixture checkpoint as plain data (tensors copied out), to be changed and saved again."""
    checkpoint = torch.load(TINY_CKPT, weights_only=True)
    checkpoint["state_dict"] = {key: value.clone() for key, value in checkpoint["state_dict"].items()}
    return checkpoint


def distiller(checkpoint):
    return checkpoint["hyper_parameters"]["cfg"]["distiller"]


def save(path, checkpoint):
    torch.save(checkpoint, path)
    return path


def tiny_yaml_text():
    return TINY_YAML.read_text()


def compressed_checkpoint(path, padding_bytes):
    """The fixture re-packed with a deflated data.pkl followed by `padding_bytes` zeros (ignored after the
    pickle's STOP): a real decompression bomb, about 1000 times smaller on disk than in memory."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(TINY_CKPT) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            if not info.filename.endswith("data.pkl"):
                target.writestr(info.filename, source.read(info.filename), compress_type=zipfile.ZIP_STORED)
                continue
            deflated = zipfile.ZipInfo(info.filename)
            deflated.compress_type = zipfile.ZIP_DEFLATED
            with target.open(deflated, "w", force_zip64=True) as member:
                member.write(source.read(info.filename))
                for _ in range(padding_bytes // len(chunk)):
                    member.write(chunk)
    return path


def long_flac(path, hours):
    """A one-second FLAC whose STREAMINFO claims `hours` of audio (what a 20 h file of silence declares)."""
    soundfile.write(path, np.zeros(16000, dtype=np.float32), 16000, format="FLAC")
    data = bytearray(Path(path).read_bytes())
    fields = int.from_bytes(data[18:26], "big")  # sample rate (20 bits), channels, bits, total samples (36 bits)
    fields = (fields & ~((1 << 36) - 1)) | int(hours * 3600 * 16000)
    data[18:26] = fields.to_bytes(8, "big")
    Path(path).write_bytes(bytes(data))
    return path
