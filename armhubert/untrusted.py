"""Guards against hostile or broken data: bounded structure, bounded YAML and pickles, safe names, finite weights.

Untrusted input (checkpoints, their configs, YAML files, file names) is checked *before* it is
expanded or interpolated, so that a tiny file cannot take gigabytes or minutes, and a name cannot
turn into code in a generated model card. Every refusal is a `UserError` naming the limit.

- `check_structure`: nesting depth, node count (shared references counted every time they occur, as
  a copy or a printout would expand them), string sizes and integer widths of a loaded object;
- `load_yaml_file`: size, encoding, nesting depth and alias count checked before the YAML is built;
- `check_zip_members`: the uncompressed sizes of a zip checkpoint's members, before `torch.load`;
- `check_weight_tensor`: a loaded weight is dense, on the CPU, floating-point and backed by its bytes;
- `check_safe_name` / `check_code_text`: names and paths that reach generated text and code;
- `check_finite_weights`: a model is never saved with NaN or infinite weights;
- `brief`: a bounded `repr` for error messages about untrusted values.
"""

import re
import reprlib
import zipfile
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import yaml

from .cli import UserError

MAX_DEPTH = 32  # nesting of containers (the release's configs nest 4 deep)
MAX_NODES = 200_000  # containers and values, counted as a tree (a release checkpoint has a few thousand)
MAX_TEXT_CHARACTERS = 10_000_000  # all strings / bytes of a structure together
MAX_INTEGER_BITS = 64
MAX_YAML_BYTES = 256 * 1024  # recipes and release YAMLs are a few kB
MAX_YAML_ALIASES = 1_000
MAX_PICKLE_BYTES = 32 * 1024 * 1024  # a checkpoint's pickle (tensors are separate members); the release's are < 1 MB
MAX_ZIP_MEMBERS = 1_000_000
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
# Characters that would end a quoted string or a code block in a generated card.
_CODE_BREAKING = re.compile(r"[\"'\\`\x00-\x1f\x7f]")

_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 60
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 6
_BRIEF.maxlevel = 3
BRIEF_CHARACTERS = 120


def brief(value: Any) -> str:
    """A `repr` of at most BRIEF_CHARACTERS that never expands a large or shared structure (for error messages)."""
    text = _BRIEF.repr(value)
    return text if len(text) <= BRIEF_CHARACTERS else text[: BRIEF_CHARACTERS - 3] + "..."


def _children(value):
    if isinstance(value, dict):
        return [item for pair in value.items() for item in pair]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    state = getattr(value, "state", None) if not torch.is_tensor(value) else None  # pickled stand-ins
    return [state] if state is not None else []


def check_structure(value: Any, what: str) -> None:
    """Refuse a structure deeper than MAX_DEPTH, with more than MAX_NODES nodes (as a tree), more than
    MAX_TEXT_CHARACTERS of text or integers wider than MAX_INTEGER_BITS.

    Shared references are counted at every occurrence, as printing or copying would expand them;
    cycles end at the depth limit. The walk stops at the first limit, so it is cheap for any input.
    Tensors are leaves (their size is bounded by the file that holds them).
    """
    stack = [(value, 1)]
    nodes = characters = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise UserError(
                f"{what} has more than {MAX_NODES:,} values (counting shared references); refusing to expand it"
            )
        if depth > MAX_DEPTH:
            raise UserError(f"{what} nests deeper than {MAX_DEPTH} levels; refusing to expand it")
        if isinstance(item, (str, bytes, bytearray)):
            characters += len(item)
            if characters > MAX_TEXT_CHARACTERS:
                raise UserError(f"{what} holds more than {MAX_TEXT_CHARACTERS:,} characters of text; refusing it")
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > MAX_INTEGER_BITS:
            raise UserError(f"{what} holds an integer wider than {MAX_INTEGER_BITS} bits; refusing it")
        else:
            stack.extend((child, depth + 1) for child in _children(item))


def check_plain_data(value: Any, what: str) -> None:
    """Refuse anything but dicts, lists, tuples, strings, numbers, booleans and None (e.g. tensors in a config).

    Call after `check_structure` (this walk is not bounded itself).
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif not isinstance(item, (str, int, float, bool, type(None))):
            raise UserError(
                f"{what} holds a {type(item).__name__}; only plain values (text, numbers, lists) belong there"
            )


def _check_yaml_events(text, what, loader):
    """Nesting depth and alias count from the event stream (the parser is iterative, the builder is not)."""
    depth = aliases = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise UserError(f"{what} nests deeper than {MAX_DEPTH} levels; refusing to read it")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise UserError(f"{what} uses more than {MAX_YAML_ALIASES} YAML aliases (*name); refusing to expand it")


def parse_yaml_text(text: str, what: str, loader: type = yaml.SafeLoader) -> Any:
    """Plain data from YAML text (a SafeLoader: no objects), bounded before and after it is built.

    Raises UserError for more than MAX_YAML_BYTES, invalid YAML, nesting deeper than MAX_DEPTH, more
    than MAX_YAML_ALIASES aliases, or a result that expands beyond `check_structure`'s limits (an
    anchor referenced many times). The event stream is checked first: the parser is iterative, the
    builder recursive.
    """
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{what} is larger than {MAX_YAML_BYTES // 1024} KiB; a recipe or config is a few kB")
    try:
        _check_yaml_events(text, what, loader)
        value = yaml.load(text, Loader=loader)  # `loader` is a SafeLoader (plain data only)
    except yaml.YAMLError as error:
        raise UserError(f"{what} is not valid YAML: {str(error).splitlines()[0]}") from None
    check_structure(value, what)
    return value


def load_yaml_file(path: str | PathLike, what: str, loader: type = yaml.SafeLoader) -> Any:
    """`parse_yaml_text` of a UTF-8 file; a missing, unreadable, oversized or non-UTF-8 file is a UserError."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if len(data) > MAX_YAML_BYTES:
        raise UserError(f"{what} {path} is larger than {MAX_YAML_BYTES // 1024} KiB; a recipe or config is a few kB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    return parse_yaml_text(text, f"{what} {path}", loader)


def check_zip_members(path: str | PathLike, what: str) -> None:
    """Refuse a zip checkpoint whose pickles or compressed members would decompress to more than MAX_PICKLE_BYTES.

    `torch.save` stores members uncompressed (a stored member is no larger than the file); a
    compressed member is a decompression bomb until proven otherwise. Checked from the zip's
    directory, before anything is decompressed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise UserError(f"{what} is not a readable zip archive: {error}") from None
    if len(members) > MAX_ZIP_MEMBERS:
        raise UserError(f"{what} has {len(members):,} zip members, more than {MAX_ZIP_MEMBERS:,}; refusing it")
    limit = MAX_PICKLE_BYTES
    for member in members:
        compressed = member.compress_type != zipfile.ZIP_STORED
        if (compressed or member.filename.endswith(".pkl")) and member.file_size > limit:
            raise UserError(
                f"{what}: member {member.filename} would decompress to {member.file_size:,} bytes, more than the "
                f"{limit // 2**20} MiB a checkpoint's pickle or compressed member may have; refusing it"
            )


def check_safe_name(name: str, what: str) -> str:
    """`name` if it is 1-100 letters, digits, '.', '_', '+' or '-' (starting with a letter or digit), else UserError.

    For names that become folder names and appear in generated cards and code.
    """
    if not SAFE_NAME.fullmatch(name) or name.endswith(".") or ".." in name:
        raise UserError(
            f"{what} {name!r} is not a safe name: use 1-100 letters, digits, '.', '_', '+' or '-', starting with a "
            "letter or digit (it becomes a folder name and appears in the model card's code); rename it"
        )
    return name


def check_code_text(text: str, what: str) -> str:
    """`text` if it can be written inside a quoted Python string in a card's code block, else UserError."""
    bad = _CODE_BREAKING.search(text)
    if bad:
        raise UserError(
            f"{what} {brief(text)} contains {bad.group()!r}, which cannot appear in the model card's usage code; "
            "choose a name without quotes, backslashes, backticks or control characters"
        )
    return text


def check_weight_tensor(value: torch.Tensor, what: str) -> None:
    """A loaded weight must be a dense CPU floating-point tensor whose storage holds its elements.

    Sparse, meta or quantized tensors cannot be weights; an expanded view (stride 0) of a few stored
    bytes would take far more memory once copied than the file holds.
    """
    if value.layout != torch.strided or value.device.type != "cpu" or value.is_quantized:
        raise UserError(f"{what} is a {value.layout} tensor on {value.device.type}; weights are dense CPU tensors")
    if not value.is_floating_point():
        raise UserError(f"{what} has dtype {value.dtype}; weights are floating-point")
    needed, stored = value.numel() * value.element_size(), value.untyped_storage().nbytes()
    if needed > stored - value.storage_offset() * value.element_size():
        raise UserError(
            f"{what} of shape {tuple(value.shape)} needs {needed:,} bytes but its storage holds {stored:,}; "
            "it is not a saved weight"
        )


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """Refuse to save `model` when any parameter or buffer holds NaN or infinity (names the first few)."""
    broken = [
        name
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if broken:
        more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
        raise UserError(
            f"{what} has NaN or infinite weights ({', '.join(broken[:3])}{more}); nothing was saved. "
            "Lower the learning rate, check the data for broken audio, or use bf16 instead of fp16"
        )
