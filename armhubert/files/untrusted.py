"""Guards against hostile or broken files: bounded structure, bounded YAML, JSON and pickles, safe names.

Untrusted input (checkpoints, their configs, YAML files, file names) is checked *before* it is
expanded or interpolated, so that a tiny file cannot take gigabytes or minutes, and a name cannot
turn into code in a generated model card. Every refusal is a `UserError` naming the limit.

- `Limit` and the table of limits (`DEPTH`, `NODES`, ...): the most of something an input may hold, checked by
  `Limit.check`, the one refusal of every "more than N" (here, in checkpoints, CTranslate2 files, config expressions);
- `check_structure`: nesting depth, node count (shared references counted every time they occur, as
  a copy or a printout would expand them), string sizes and integer widths of a loaded object;
- `load_yaml_file`: size, encoding, nesting depth and alias count checked before the YAML is built;
- `parse_json` / `load_json_file`: size, nesting depth and value count checked before the JSON is built;
- `check_zip_members`: a zip checkpoint's members (sizes, CRCs) and pickles (`scan_pickle`), before `torch.load`;
- `scan_pickle`: opcode count and named globals of a pickle, before anything of it is built;
- `load_torch_file`: the door of `torch.save` files: `torch.load(weights_only=True)` of a file that passed those
  checks and a scan of the classes it names, a dict, or one UserError;
- (the weights such files hold are checked by `armhubert.files.weights`);
- `open_safetensors`: the door of safetensors files (shards, codebooks, checkpoints' weights), one refusal;
- `check_safe_name` / `check_code_text`: names and paths that reach generated text and code;
- `brief`: a bounded `repr` for error messages about untrusted values.
"""

import _compat_pickle
import contextlib
import json
import os
import pickletools
import re
import reprlib
import stat
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open

from ..cli import UserError


@dataclass(frozen=True)
class Limit:
    """The most of something an untrusted input may hold, and the one line that refuses more.

    `refusal` is formatted with `what` (the input, for the message), `most`, `kib` / `mib` (`most` in KiB / MiB),
    `count` and the keywords given to `check`.
    """

    most: int
    refusal: str

    def check(self, count: int, what: str, most: int | None = None, **details: Any) -> int:
        """`count` if it is at most `most` (this limit's own by default); else one UserError."""
        most = self.most if most is None else most
        if count > most:
            sizes = dict(kib=most // 1024, mib=most // 2**20)
            raise UserError(self.refusal.format(what=what, most=most, count=count, **sizes, **details))
        return count


# What untrusted input may hold: every "more than N" refusal of the package is one of these (or built from one).
DEPTH = Limit(32, "{what} nests deeper than {most} levels; refusing to read it")  # the release's configs nest 4 deep
# Containers and values, counted as a tree (a release checkpoint has a few thousand).
NODES = Limit(200_000, "{what} has more than {most:,} values (counting shared references); refusing to expand it")
TEXT = Limit(10_000_000, "{what} holds more than {most:,} characters of text; refusing it")  # all strings together
INTEGER_BITS = Limit(64, "{what} holds an integer wider than {most} bits; refusing it")
FILE_BYTES = Limit(0, "{what} is larger than {kib:,} KiB; {usual}")  # `most` and `usual` given by the reader
YAML_BYTES = Limit(256 * 1024, "{what} is larger than {kib} KiB; a recipe or config is a few kB")  # a few kB
YAML_ALIASES = Limit(1_000, "{what} uses more than {most} YAML aliases (*name); refusing to expand it")
JSON_VALUES = Limit(NODES.most, "{what} holds more than {most:,} JSON values; refusing to read it")
# Opcodes of one pickle: each builds at most one object, so this bounds the unpickler's time and memory
# (about 200 bytes an opcode at worst: 100 MB) before it starts. A release checkpoint has about 30,000.
PICKLE_OPS = Limit(500_000, "{what} has more than {most:,} pickle opcodes; refusing to unpickle it")
ZIP_MEMBERS = Limit(1_000_000, "{what} has {count:,} zip members, more than {most:,}; refusing it")
# A checkpoint's pickle (tensors are separate members); the release's are < 1 MB.
PICKLE_BYTES = Limit(
    8 * 1024 * 1024,
    "{what}: member {member} would decompress to {count:,} bytes, more than the {mib} MiB a checkpoint's pickle "
    "or compressed member may have; refusing it",
)
# Callables torch's weights-only unpickler allows that allocate memory of a size given by their argument
# (`bytearray(10**10)`, then `torch.Size` of it): a small file could ask for gigabytes. No checkpoint this
# project reads needs them. (Other allowed callables, `torch.Size` included, take objects the pickle has
# already built, which PICKLE_OPS bounds.)
ALLOCATING_GLOBALS = frozenset({"builtins.bytearray", "builtins.bytes"})
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


def _child_count(value) -> int:
    """How many children `_children` would give, without building them."""
    if isinstance(value, dict):
        return 2 * len(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return len(value)
    return 1


def _children(value):
    """The children of a container (lazily: a huge one is counted, never copied, before it is refused)."""
    if isinstance(value, dict):
        return (item for pair in value.items() for item in pair)
    if isinstance(value, (list, tuple, set, frozenset)):
        return iter(value)
    state = getattr(value, "state", None) if not torch.is_tensor(value) else None  # pickled stand-ins
    return iter([state] if state is not None else [])


def check_structure(
    value: Any, what: str, max_nodes: int = NODES.most, max_integer_bits: int = INTEGER_BITS.most
) -> None:
    """Refuse a structure deeper than DEPTH, with more than `max_nodes` nodes (as a tree), more than TEXT
    characters of text or integers wider than `max_integer_bits`.

    Shared references are counted at every occurrence, as printing or copying would expand them;
    cycles end at the depth limit. The walk stops at the first limit, so it is cheap for any input:
    a container's children are counted before any of them is pushed. Tensors are leaves (their size is
    bounded by the file that holds them).
    """
    stack = [(value, 1)]
    nodes, characters = 1, 0
    while stack:
        item, depth = stack.pop()
        DEPTH.check(depth, what)
        if isinstance(item, (str, bytes, bytearray)):
            characters = TEXT.check(characters + len(item), what)
            continue
        if isinstance(item, int) and not isinstance(item, bool):
            INTEGER_BITS.check(item.bit_length(), what, max_integer_bits)
        nodes = NODES.check(nodes + _child_count(item), what, max_nodes)
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
            depth = DEPTH.check(depth + 1, what)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases = YAML_ALIASES.check(aliases + 1, what)


def parse_yaml_text(text: str, what: str, loader: type = yaml.SafeLoader) -> Any:
    """Plain data from YAML text (a SafeLoader: no objects), bounded before and after it is built.

    Raises UserError for more than YAML_BYTES, invalid YAML, nesting deeper than DEPTH, more
    than YAML_ALIASES aliases, or a result that expands beyond `check_structure`'s limits (an
    anchor referenced many times). The event stream is checked first: the parser is iterative, the
    builder recursive.
    """
    YAML_BYTES.check(len(text), what)
    try:
        _check_yaml_events(text, what, loader)
        value = yaml.load(text, Loader=loader)  # `loader` is a SafeLoader (plain data only)
    except yaml.YAMLError as error:
        raise UserError(f"{what} is not valid YAML: {str(error).splitlines()[0]}") from None
    except ValueError as error:  # an integer of more than 4,300 digits (Python's int() limit), a bad date, ...
        raise UserError(f"{what} holds a value YAML cannot build ({str(error).splitlines()[0][:80]})") from None
    check_structure(value, what)
    return value


def read_bounded(path: str | PathLike, what: str, limit: int, usual: str) -> bytes:
    """The bytes of a file of at most `limit` bytes (reads one more to tell); UserError if larger or unreadable.

    `usual` says what size such a file has, for the message. A FIFO, device or folder is refused before it is
    opened (`check_regular_file`: opening a FIFO blocks until someone writes to it).
    """
    check_regular_file(path, what)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise UserError(f"cannot read {what}: {error.strerror or error}") from None
    FILE_BYTES.check(len(data), what, limit, usual=usual)
    return data


def load_yaml_file(path: str | PathLike, what: str, loader: type = yaml.SafeLoader) -> Any:
    """`parse_yaml_text` of a UTF-8 file; a missing, unreadable, oversized or non-UTF-8 file is a UserError."""
    path = Path(path)
    data = read_bounded(path, f"{what} {path}", YAML_BYTES.most, "a recipe or config is a few kB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    return parse_yaml_text(text, f"{what} {path}", loader)


# A JSON string (escapes included): blanked before brackets and commas are counted, so text cannot hide them.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKETS = re.compile(rb"[\[\]{}]")
MAX_JSON_BYTES = 64 * 1024 * 1024
JSON_INTEGER_BITS = 14_300  # 4,300 decimal digits


class _DuplicateKey(Exception):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object as a dict; a key given twice (the last would silently win) raises _DuplicateKey."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return value


def parse_json(data: bytes | str, what: str, max_nodes: int = JSON_VALUES.most) -> Any:
    """Plain data from JSON text, its size in values and its nesting bounded *before* anything is built.

    Bytes bound a file but not what it builds: 60 MB of `[[],[],...]` is 20 million lists (1.8 GB).
    The text is scanned first, its strings blanked: more than `max_nodes` commas and openings (an upper
    bound of the values it holds) or nesting deeper than DEPTH is refused; invalid JSON, or a
    result beyond `check_structure`'s other limits (text, integer widths), or a key given twice in one
    object (the last would silently win), likewise. One UserError.
    """
    data = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    skeleton = _JSON_STRING.sub(b'""', data)
    JSON_VALUES.check(skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{"), what, max_nodes)
    depth = 0
    for bracket in _JSON_BRACKETS.findall(skeleton):
        depth = DEPTH.check(depth + (1 if bracket in b"[{" else -1), what)
    del skeleton
    try:
        value = json.loads(data, object_pairs_hook=_object_without_duplicates)
    except _DuplicateKey as error:
        raise UserError(f"{what} holds the key {brief(error.args[0])} twice in one object; keep one") from None
    except (ValueError, RecursionError) as error:
        raise UserError(
            f"{what} is not valid JSON: {brief(str(error).splitlines()[0] if str(error) else error)}"
        ) from None
    # Integers: Python's JSON reader refuses more than 4,300 digits; transformers writes 1e30 as one (68 bits).
    check_structure(value, what, max_nodes, max_integer_bits=JSON_INTEGER_BITS)
    return value


def load_json_file(
    path: str | PathLike, what: str, usual: str, max_bytes: int = MAX_JSON_BYTES, max_nodes: int = JSON_VALUES.most
) -> Any:
    """`parse_json` of a regular file of at most `max_bytes` (`usual`: what size such a file has, for the message)."""
    return parse_json(read_bounded(path, what, max_bytes, usual), what, max_nodes)


@contextlib.contextmanager
def open_safetensors(path: str | PathLike, what: str) -> Iterator[Any]:
    """`safe_open(path)` (torch tensors) for the block, the door of safetensors files: a path that is not a regular
    file, or a file safetensors cannot read (another format, truncated, a failed mmap: also when the block reads a
    header or a tensor), is one UserError naming `what`."""
    check_regular_file(path, what)  # a FIFO would block, a device never end
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:  # RuntimeError: a failed mmap
        raise UserError(f"{what} is not a readable safetensors file: {brief(str(error))}") from None


def check_regular_file(path: str | PathLike, what: str, error: type[UserError] = UserError) -> Path:
    """`path` if it is a regular file (or a link to one); a FIFO, device, socket or folder is refused before it is
    opened (opening a FIFO blocks until someone writes to it; a device never ends), a missing path too."""
    try:
        mode = os.stat(path).st_mode
    except OSError as failure:
        raise error(f"cannot read {what}: {failure.strerror or failure}") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise error(f"{what} is {kind}, not a regular file; give a file")
    return Path(path)


def _unpickled_name(module: str, name: str) -> str:
    """`module.name` as torch's unpickler resolves a pickled global: protocol-2 pickles name Python 2 modules
    (`__builtin__.bytearray` is `builtins.bytearray`), mapped as `pickle` and torch map them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[module, name]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def scan_pickle(data: bytes, what: str) -> set[str]:
    """The globals (`module.name`) a pickle names, read from its opcodes before anything is built.

    Refuses more than PICKLE_OPS opcodes (each builds at most one object, so this bounds the
    unpickler's time and memory), a call of one of ALLOCATING_GLOBALS, and opcodes that are not a pickle.
    Only GLOBAL / INST name callables in a pickle torch's weights-only unpickler reads; their Python 2 names
    (what protocol 2 writes: `__builtin__.bytearray`) are mapped to the ones the unpickler resolves.
    """
    names = set()
    try:
        for count, (opcode, argument, _) in enumerate(pickletools.genops(data), 1):
            PICKLE_OPS.check(count, what)
            if opcode.name in ("GLOBAL", "INST"):
                name = _unpickled_name(*str(argument).split(" ", 1))
                if name in ALLOCATING_GLOBALS:
                    raise UserError(
                        f"{what} calls {name}, which allocates memory of a size the file chooses; no checkpoint needs "
                        "it, so nothing of the file was built"
                    )
                names.add(name)
    except ValueError as error:  # pickletools: unknown opcode, truncated argument
        raise UserError(f"{what} is not a readable pickle: {brief(str(error))}") from None
    return names


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, keep: bool) -> bytes:
    """A member's bytes (`keep`) or nothing, read in 1 MiB pieces so that zipfile checks its CRC-32 at the end."""
    pieces = []
    with archive.open(member) as stream:
        while piece := stream.read(1 << 20):
            if keep:
                pieces.append(piece)
    return b"".join(pieces)


def check_zip_members(path: str | PathLike, what: str) -> set[str]:
    """Check a zip checkpoint (what `torch.save` writes) before `torch.load`; returns the globals its pickles name.

    From the zip's directory first: at most ZIP_MEMBERS members, no pickle or compressed member
    that would decompress to more than PICKLE_BYTES (`torch.save` stores members uncompressed, so
    a compressed member is a decompression bomb until proven otherwise). Then every member is read
    once: its CRC-32 must match (a flipped byte in a weight is refused, not converted), and each pickle
    passes `scan_pickle`. Tensors are loaded memory-mapped later, so reading them here costs only time.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            ZIP_MEMBERS.check(len(members), what)
            for member in members:
                if member.compress_type != zipfile.ZIP_STORED or member.filename.endswith(".pkl"):
                    PICKLE_BYTES.check(member.file_size, what, member=member.filename)
            names = set()
            for member in members:
                data = _read_member(archive, member, keep=member.filename.endswith(".pkl"))
                if data:
                    names |= scan_pickle(data, f"{what} ({member.filename})")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as error:
        if "CRC" in str(error):
            raise UserError(f"{what} is corrupt ({error}); copy or download it again") from None
        raise UserError(f"{what} is not a readable zip archive: {brief(str(error))}") from None
    return names


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


def _refused(what: str, names: Sequence[str], allowed: str) -> UserError:
    return UserError(
        f"refusing to load {what}: its pickle needs {', '.join(sorted(names))}; only tensors, plain containers"
        f"{' and ' + allowed if allowed else ''} are allowed, so nothing from it was run"
    )


def _unreadable(what: str, error: Exception, allowed: str) -> UserError:
    """One line for whatever `torch.load(weights_only=True)` raised."""
    message = str(error).strip()
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if unsupported:
        return _refused(what, [unsupported.group(1)], allowed)
    operand = re.search(r"Unsupported operand (\d+)", message)
    if operand:
        code = int(operand.group(1))
        name, protocol = next(((op.name, op.proto) for op in pickletools.opcodes if ord(op.code) == code), ("?", "?"))
        reason = (
            f"its pickle uses opcode {code} ({name}, pickle protocol {protocol}), which weights-only loading does not "
            "read; nothing was run (re-save it with torch.save's default protocol)"
        )
    elif "weights_only" in message:
        reason = "it holds pickled Python objects that are not tensors; refusing to unpickle them"
    else:
        reason = message.splitlines()[0][:200] if message else type(error).__name__
    return UserError(f"{what} is not a readable PyTorch checkpoint: {reason}")


def load_torch_file(
    path: str | PathLike, what: str, safe_globals: Sequence[Any] = (), allowed: str = "", holds: str = "a saved state"
) -> dict:
    """The door of every file `torch.save` wrote (foreign checkpoints, a resumed run's optimizer and RNG states):
    the dict `torch.load(weights_only=True, mmap=True)` reads, or one UserError.

    The file must be a regular file and a zip archive (every `torch.save` since torch 1.6: the legacy format
    sizes its storages from the file's own claims) that passes `check_zip_members`; a static scan of its
    pickle names every global beyond torch's allow-list and `safe_globals` (classes, or (stand-in, name)
    pairs; `allowed` describes them for the message) before anything is unpickled. What it holds must be
    a dict (`holds`: what it should be, for the message) within `check_structure`'s limits. Tensors are
    memory-mapped: only the pages of those a caller copies out are read.
    """
    check_regular_file(path, what)
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{what} is not a readable PyTorch checkpoint: it is not the zip archive torch.save writes (PyTorch >= "
            "1.6); it is truncated, or re-save an older checkpoint with a current torch"
        )
    check_zip_members(path, what)
    with torch.serialization.safe_globals(list(safe_globals)):
        try:
            unknown = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            if not unknown:
                with warnings.catch_warnings():  # e.g. "nested tensors are a prototype": the refusal is the one line
                    warnings.simplefilter("ignore")
                    value = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except UserError as error:  # a stand-in in `safe_globals` refused what the pickle gave it: name the file
            raise UserError(f"{what}: {error}") from None
        except Exception as error:  # noqa: BLE001 -- torch raises many types for corrupt, truncated or foreign files
            raise _unreadable(what, error, allowed) from None
    if unknown:
        raise _refused(what, unknown, allowed)
    if not isinstance(value, dict):
        raise UserError(f"{what} holds a {type(value).__name__}, not {holds}")
    check_structure(value, what)
    return value
