"""Small hostile files that expand on reading (billion laughs, decompression bombs, YAML aliases, deep nesting).

Every case must be refused with one line and exit status 2, within MAX_SECONDS and with at most
MAX_GROWTH_BYTES more memory than the process had before it (the issue's promise: 2 s, 200 MB). They
run in one child process whose address space is capped (`RLIMIT_AS`: its size after the imports plus
1.5 GiB) so that a regression fails the test instead of swamping the machine; the child reports each
case's exit status, stderr, seconds and peak-memory growth (VmHWM, reset before each case).

Besides the converter and the distillation, two small commands reach the other readers of untrusted
files: `audio` (`read_audio` of a file) and `rng` (a resumed run's `rng_state.pth`, as `--resume`
checks it).
"""

import zipfile

import numpy as np
import torch
import yaml
from helpers import TINY_CKPT
from hostile import compressed_checkpoint, distiller, long_flac, run_capped, save, tiny_checkpoint, tiny_yaml_text

_PRELUDE = r"""
import convert_checkpoint, distill_trainer
from armhubert.speech.audio import read_audio
from armhubert.cli import run_main
from armhubert.distill.resume import _RNG_GLOBALS
from armhubert.files.untrusted import load_torch_file

def audio(args):
    return run_main("audio", lambda a: read_audio(a[0]), args)

def rng(args):
    return run_main("rng", lambda a: load_torch_file(a[0], "rng_state.pth", _RNG_GLOBALS), args)

COMMANDS = {"convert": convert_checkpoint.main, "distill": distill_trainer.main, "audio": audio, "rng": rng}
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


def _raw_checkpoint(path, pickle_bytes):
    """The fixture's zip layout without tensors, its data.pkl replaced by `pickle_bytes` (hand-written opcodes)."""
    with zipfile.ZipFile(TINY_CKPT) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            if "/data/" not in info.filename:
                data = pickle_bytes if info.filename.endswith("data.pkl") else source.read(info.filename)
                target.writestr(info.filename, data)
    return path


def _long(value):
    """A pickled integer (LONG1, 8 bytes)."""
    return b"\x8a\x08" + value.to_bytes(8, "little", signed=True)


def _allocating_pickle(size, wrap_in_size=False):
    """`{"state_dict": bytearray(size)}` (or `torch.Size(bytearray(size))`) in protocol-2 opcodes: a few bytes."""
    call = b"cbuiltins\nbytearray\n" + _long(size) + b"\x85R"  # bytearray(*(size,))
    if wrap_in_size:
        call = b"ctorch\nSize\n" + call + b"\x85R"
    return b"\x80\x02}X\x0a\x00\x00\x00state_dict" + call + b"s."


def _in_hyper_parameters(value_ops, protocol=2):
    """`{"state_dict": {}, "hyper_parameters": {"extra": {"x": VALUE}}}` with VALUE's opcodes given (hand-written)."""
    return (
        bytes([0x80, protocol])
        + b"}(X\x0a\x00\x00\x00state_dict}X\x10\x00\x00\x00hyper_parameters}X\x05\x00\x00\x00extra}"
        + b"X\x01\x00\x00\x00x"
        + value_ops
        + b"ssu."
    )


def _declared(opcode, size, width=8):
    """An opcode whose argument declares `size` bytes, followed by three (the file ends there)."""
    return opcode + size.to_bytes(width, "little") + b"abc"


def _rng_bomb(path, elements):
    """A `rng_state.pth` whose numpy state starts with `_reconstruct(ndarray, (elements,), b"b")`."""
    head = np.random.get_state()
    torch.save({"python": None, "numpy": head, "cpu": torch.random.get_rng_state()}, path)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    name = next(member for member in members if member.endswith("data.pkl"))
    shape = b"K\x00\x85"  # (0,) as pickled by numpy: BININT1 0, TUPLE1
    assert shape in members[name]
    members[name] = members[name].replace(shape, _long(elements) + b"\x85", 1)
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


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
    config("yaml-5000-digits", tiny_yaml_text() + "huge: " + "9" * 5000 + "\n", "holds a value YAML cannot build")
    config("recipe-seed-5000-digits", "seed: " + "9" * 5000 + "\n", "holds a value YAML cannot build", "distill")

    def raw(name, pickle_bytes, message):
        path = _raw_checkpoint(folder / f"{name}.ckpt", pickle_bytes)
        cases.append((name, "convert", [str(path), "--output-dir", str(folder / f"out-{name}")], message))

    raw("bytearray-2GB", _allocating_pickle(2_200_000_000), "calls builtins.bytearray")
    # The same call under the Python 2 names protocol 2 writes (which the unpickler maps), nested in hyper_parameters.
    py2_bytearray = b"c__builtin__\nbytearray\n" + _long(1_800_000_000) + b"\x85R"
    raw("hparams-__builtin__-bytearray-1.8GB", _in_hyper_parameters(py2_bytearray), "calls builtins.bytearray")
    py2_bytes = b"c__builtin__\nbytes\n" + _long(1_800_000_000) + b"\x85R"
    raw("hparams-__builtin__-bytes-1.8GB", _in_hyper_parameters(py2_bytes), "calls builtins.bytes")
    reduced = b"ccopy_reg\n_reconstructor\n(c__builtin__\nbytearray\nc__builtin__\nbytearray\n"
    raw("hparams-copyreg-bytearray", _in_hyper_parameters(reduced + _long(1_800_000_000) + b"tR"), "calls builtins")
    for name, protocol, value in [
        ("bytearray8-2GB", 5, _declared(b"\x96", 2_000_000_000)),
        ("binbytes8-2GB", 4, _declared(b"\x8e", 2_000_000_000)),
        ("binbytes-4GB", 3, _declared(b"B", 0xFFFF_FFF0, 4)),
        ("binunicode-4GB", 2, _declared(b"X", 0xFFFF_FFF0, 4)),
    ]:  # a length the file does not hold: refused while scanning, nothing of that size allocated
        raw(f"hparams-{name}", _in_hyper_parameters(value, protocol), "is not a readable pickle")
    real = tiny_checkpoint()  # a real torch.save zip, protocol 2: the fixture with a small bytearray in its hparams
    distiller(real)["extra"] = {"nested": bytearray(1000)}
    path = save(folder / "hparams-real-bytearray.ckpt", real)
    cases.append(("hparams-real-bytearray", "convert", [str(path), "--output-dir", str(folder / "out-r")], "bytearray"))
    legacy = folder / "hparams-legacy-bytearray.ckpt"
    torch.save(real, legacy, _use_new_zipfile_serialization=False)
    cases.append(("hparams-legacy-bytearray", "convert", [str(legacy), "--output-dir", str(folder / "out-l")], "zip"))
    raw("size-of-bytearray", _allocating_pickle(300_000_000, wrap_in_size=True), "calls builtins.bytearray")
    # 600,000 NONE opcodes in one list: 0.6 MB of pickle, seconds and hundreds of MB to unpickle.
    raw("opcode-flood", b"\x80\x02](" + b"N" * 600_000 + b"e.", "more than 500,000 pickle opcodes")
    flac = long_flac(folder / "silence-20h.flac", 20)
    cases.append(("flac-20h", "audio", [str(flac)], "(20.0 h), more than the 1 h a file may have"))
    bomb = _rng_bomb(folder / "rng_state.pth", 2_000_000_000)
    cases.append(("rng-state", "rng", [str(bomb)], "claims 2,000,000,000 elements"))
    return cases


def test_small_hostile_files_are_refused_fast_and_in_bounded_memory(tmp_path):
    cases = _cases(tmp_path)
    assert all(path.stat().st_size < 1 << 20 for path in tmp_path.iterdir())  # each hostile file is under 1 MB
    run_capped(_PRELUDE, cases)  # each: exit 2, one line, under 200 MB and 2 s of CPU
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("out-", "run-", "."))]
