"""One error type for problems the user must fix, and one runner that reports them.

Every command (root CLIs and scripts) raises `UserError` (or a subclass such as
`armhubert.audio.DataError`) for bad input, and runs its `main` through `run_main`, which prints one
line `prog: error: ...` on stderr and returns exit status 2, without a traceback. An `OSError` that
reaches `run_main` (a full disk, a read-only or vanished folder) is reported the same way.
"""

import sys
from collections.abc import Callable, Sequence

from .progress import quiet_when_piped


class UserError(Exception):
    """A problem with the user's input, arguments or environment; the message says what to do."""


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
    stderr is a terminal (`armhubert.progress`).
    """
    quiet_when_piped()
    try:
        status = function(argv)
    except UserError as error:
        print(f"{prog}: error: {error_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # the environment: full disk, permissions, a path that went away
        print(f"{prog}: error: {os_error_line(error)}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0
