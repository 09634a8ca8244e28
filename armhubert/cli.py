"""One error type for problems the user must fix, and one runner that reports them.

Every command (root CLIs and scripts) raises `UserError` (or a subclass such as
`armhubert.speech.audio.DataError`) for bad input, and runs its `main` through `run_main`, which prints one
line `prog: error: ...` on stderr and returns exit status 2, without a traceback. An `OSError` that
reaches `run_main` (a full disk, a read-only or vanished folder) is reported the same way.
"""

import importlib.util
import re
import sys
from collections.abc import Callable, Sequence

from transformers import HfArgumentParser

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
        spellings = [f"--{name[2:].replace('-', '_')}" if name.startswith("--") else name for name in names]
        aliases = [f"--{name[2:].replace('_', '-')}" for name in spellings if name.startswith("--") and "_" in name]
        return super().add_argument(*dict.fromkeys([*spellings, *aliases]), **kwargs)

    def error(self, message: str):
        raise UserError(re.sub(r"^argument (--\w+)(?:/--[\w-]+)*: ", r"\1: ", message))

    def parse_into_dataclasses(self, argv: Sequence[str] | None) -> tuple:
        """`parse_args_into_dataclasses`, a dataclass's refusal (`__post_init__`'s ValueError) as one line."""
        try:
            return self.parse_args_into_dataclasses(args=argv)
        except ValueError as error:
            raise UserError(first_line(error)) from None


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
