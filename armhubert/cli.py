"""One error type for problems the user must fix, and one runner that reports them.

Every command (root CLIs and scripts) raises `UserError` (or a subclass such as
`armhubert.speech.audio.DataError`) for bad input, and runs its `main` through `run_main`, which prints one
line `prog: error: ...` on stderr and returns exit status 2, without a traceback. An `OSError` that
reaches `run_main` (a full disk, a read-only or vanished folder) is reported the same way.

Command-line arguments and recipe values have one door, `check_fields`: an arguments dataclass declares each
field's choices as its `Literal[...]` type and its numeric range as `bounds` in the field's metadata
(`field(default=8, metadata={"help": ..., "bounds": at_least(1)})`); `CommandParser.parse_into_dataclasses`
checks every dataclass it returns, Python callers and `__post_init__`s call `check_fields` themselves, and the
code after it trusts every field. Rules that relate fields are data too: a dataclass's `RULES`, a tuple of
`Rule`s (whether the arguments break it, the one-line refusal), which `check_fields` checks after the fields
with `refuse_broken`; other doors keep their own tables of rules over what they check (a recipe and its models).
"""

import dataclasses
import functools
import importlib.util
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Literal

from transformers import HfArgumentParser
from transformers.hf_argparser import make_choice_type_function

from .progress import quiet_when_piped


class UserError(Exception):
    """A problem with the user's input, arguments or environment; the message says what to do."""


# Each optional feature's extra (pyproject.toml's [project.optional-dependencies]) and the modules it brings,
# as (import name, distribution name); tests/test_packaging.py checks that the two agree.
EXTRAS = {
    "onnx": (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript")),
    "units": (("faiss", "faiss-cpu"), ("sklearn", "scikit-learn")),
    "tensorboard": (("tensorboard", "tensorboard"),),
}


class MissingExtra(UserError):
    """An optional feature whose packages are not installed; the message names the extra that brings them."""


def require_extra(extra: str, what: str) -> None:
    """Raise `MissingExtra` (one line naming `pip install 'armhubert[EXTRA]'`) unless `extra`'s modules import.

    Call it before the work that needs them, inside a function run by `run_main`, so that a missing
    optional package is exit status 2 and one line, never a traceback.
    """
    missing = [distribution for module, distribution in EXTRAS[extra] if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingExtra(f"{what} needs {', '.join(missing)}: pip install 'armhubert[{extra}]'")


def _number_text(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The numbers a field takes: from `low` to `high`, both included unless `low_open` (NaN and infinity never)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_number_text(self.low)}"
        if self.low == -math.inf:
            return f"<= {_number_text(self.high)}"
        return f"in {'(' if self.low_open else '['}{_number_text(self.low)}, {_number_text(self.high)}]"

    def allows(self, value: typing.Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        return (value > self.low if self.low_open else value >= self.low) and value <= self.high


def at_least(low: float) -> Bounds:
    return Bounds(low)


def above(low: float, high: float = math.inf) -> Bounds:
    return Bounds(low, high, low_open=True)


def between(low: float, high: float) -> Bounds:
    return Bounds(low, high)


def type_options(annotation: typing.Any) -> tuple:
    """The alternatives of a (possibly optional / union) annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


@dataclasses.dataclass(frozen=True)
class _FieldRule:
    """What `check_fields` knows of one field: its bounds, its choices, and how to name its kind of value."""

    name: str
    bounds: Bounds | None
    choices: tuple | None
    integer: bool
    optional: bool


@functools.cache
def _field_rules(cls: type) -> tuple[_FieldRule, ...]:
    """The rules of a dataclass's fields; a field redeclared without `bounds` keeps those of a base class."""
    bounds = {}
    for klass in reversed(cls.__mro__):
        for declared in vars(klass).get("__dataclass_fields__", {}).values():
            if "bounds" in declared.metadata:
                bounds[declared.name] = declared.metadata["bounds"]
    hints = typing.get_type_hints(cls)
    rules = []
    for declared in dataclasses.fields(cls):
        options = type_options(hints[declared.name])
        items = [typing.get_args(option)[0] if typing.get_origin(option) is list else option for option in options]
        values = [item for item in items if item is not type(None)]
        literals = [typing.get_args(item) for item in values if typing.get_origin(item) is Literal]
        if len(literals) != len(values):  # e.g. `str | Literal[False]`: text too
            literals = []
        integer = int in items and float not in items
        optional = type(None) in options
        rules.append(
            _FieldRule(declared.name, bounds.get(declared.name), literals[0] if literals else None, integer, optional)
        )
    return tuple(rules)


Rule = tuple[Callable[..., object], str]
"""A refusal as data: (broken, refusal). `broken(**subjects)` is true when the subjects break the rule;
`refusal` is its one line, a `str.format` template over the same subjects (`"--x {args.x} ..."`)."""


def refuse_broken(rules: Sequence[Rule], **subjects: object) -> None:
    """Refuse the first of `rules` that `subjects` break (a `UserError` with its refusal), in table order."""
    for broken, refusal in rules:
        if broken(**subjects):
            raise UserError(refusal.format(**subjects))


def check_fields(arguments: typing.Any, prefix: str = "--", null: str | None = None) -> None:
    """Refuse, in one `UserError` line naming the field (`prefix` + its name), its allowed values and the value
    given: a number outside the field's `bounds`, NaN or infinity in any number field, a value its `Literal`
    type does not list. Each item of a list field is checked alike; None (not set) passes. `null`: the word
    for None in the message of an optional field (a recipe's `null`; a command line cannot give None).
    Then the dataclass's `RULES` (rules between fields, subject `args`), in order, once every field passed."""
    from .files.untrusted import brief  # untrusted.py imports this module

    for rule in _field_rules(type(arguments)):
        value = getattr(arguments, rule.name)
        or_null = f" or {null}" if null and rule.optional else ""
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None:
                continue
            expected = None
            if rule.choices is not None and item not in rule.choices:
                expected = f"one of {', '.join(map(str, rule.choices))}{or_null}"
            elif rule.bounds is not None and not rule.bounds.allows(item):
                expected = f"{'an integer' if rule.integer else 'a finite number'} {rule.bounds}{or_null}"
            elif isinstance(item, float) and not math.isfinite(item):
                expected = "a finite number"
            if expected:
                raise UserError(f"{prefix}{rule.name} must be {expected}, got {brief(item)}")
    refuse_broken(getattr(type(arguments), "RULES", ()), args=arguments)


def check_cuda(device: str, flag: str = "--device") -> None:
    """Refuse a CUDA `device` (`cuda`, `cuda:N`) where torch sees no CUDA GPU, naming the option that asked."""
    import torch  # only commands that take a device ask

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{flag} {device} needs a CUDA GPU and torch.cuda.is_available() is False; use {flag} cpu")


class CommandParser(HfArgumentParser):
    """The argument parser of every command: `HfArgumentParser` (a dataclass's fields become `--field` flags),
    with the project's one flag style and one-line errors.

    Flags are spelled `--output_dir` (as `HfArgumentParser` writes fields), the dashed `--output-dir` accepted
    as an alias, whichever spelling `add_argument` was given. A refused argument is a `UserError`, so
    `run_main` prints one line and returns exit status 2 instead of argparse's usage text, each option named
    once, in its first spelling (`--seed: invalid int value: '1.5'`).
    """

    def __init__(self, dataclass_types=(), prog: str | None = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--learn` is not silently `--learning_rate`
        super().__init__(list(dataclass_types), **kwargs)
        if prog:
            self.prog = prog

    def add_argument(self, *names, **kwargs):
        bounds = kwargs.pop("bounds", None)  # checked by check_fields, after parsing
        if bounds is not None and kwargs.get("help"):
            kwargs["help"] = f"{kwargs['help']} ({bounds})"
        if typing.get_origin(kwargs.get("type")) is Literal:  # list[Literal[...]]: each item one of them
            kwargs["choices"] = typing.get_args(kwargs["type"])
            kwargs["type"] = make_choice_type_function(kwargs["choices"])
        spellings = [f"--{name[2:].replace('-', '_')}" if name.startswith("--") else name for name in names]
        aliases = [f"--{name[2:].replace('_', '-')}" for name in spellings if name.startswith("--") and "_" in name]
        return super().add_argument(*dict.fromkeys([*spellings, *aliases]), **kwargs)

    def error(self, message: str):
        raise UserError(re.sub(r"^argument (--\w+)(?:/--[\w-]+)*: ", r"\1: ", message))

    def parse_into_dataclasses(self, argv: Sequence[str] | None) -> tuple:
        """`parse_args_into_dataclasses`, a dataclass's refusal (`__post_init__`'s ValueError) as one line, and
        every dataclass's fields checked (`check_fields`)."""
        try:
            parsed = self.parse_args_into_dataclasses(args=argv)
        except ValueError as error:
            raise UserError(first_line(error)) from None
        for arguments in parsed:
            if dataclasses.is_dataclass(arguments):
                check_fields(arguments)
        return parsed


def error_line(error: BaseException) -> str:
    """The message of `error` as one line.

    Errors re-raised from data-loader workers carry the worker's traceback in their message; its last
    line is the original message, prefixed with the exception's qualified name, which is dropped.
    """
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    line = lines[-1].strip()
    name, _, rest = line.partition(": ")
    if rest and name.split(".")[-1] == type(error).__name__:
        return rest
    return line


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message (a library's reason for refusing), or its type's name when empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def os_error_line(error: OSError) -> str:
    """`No space left on device: /out/model.safetensors`: the reason and the path, one line."""
    reason = error.strerror or error_line(error)
    path = error.filename2 or error.filename
    return f"{reason}: {path}" if path else reason


def run_main(prog: str, function: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run `function(argv)`; a `UserError` becomes one line on stderr and exit status 2.

    Returns the function's exit status when it returns an int, else 0 (a function may return its
    result, e.g. a trainer, for callers that use it from Python). Progress bars are drawn only when
    stderr is a terminal (`armhubert.progress`); torch's thread count is the caller's again afterwards.
    """
    quiet_when_piped()
    torch = sys.modules.get("torch")  # a command may choose its thread count (armhubert.threads): not for its caller
    threads = torch.get_num_threads() if torch is not None else None
    try:
        status = function(argv)
    except UserError as error:
        print(f"{prog}: error: {error_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # the environment: full disk, permissions, a path that went away
        print(f"{prog}: error: {os_error_line(error)}", file=sys.stderr)
        return 2
    finally:
        if threads is not None:
            torch.set_num_threads(threads)
    return status if isinstance(status, int) else 0
