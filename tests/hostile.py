"""Helpers of the hostile-input suites (tests/test_hostile_*.py): refusals, file digests, hostile files."""

import hashlib
import zipfile
from pathlib import Path

import torch
from helpers import TINY_CKPT, TINY_YAML


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
