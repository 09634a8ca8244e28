"""One writer per output folder: a lock file beside the folder, held with `flock` for the run."""

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..cli import UserError

_LOCK_TAG = "armhubert-lock"


def _lock_holder(handle) -> str:
    handle.seek(0)
    return handle.read(200).strip() or "another run"


@contextmanager
def output_lock(output_dir: str | os.PathLike, what: str = "output_dir") -> Iterator[Path]:
    """Hold the one-writer lock of `output_dir` for the block: a second run refuses, naming the first.

    The lock is a file beside the folder (`.NAME.armhubert-lock`, so the folder's content is not touched)
    locked with `flock`: the kernel releases it when the holder ends, however it ends, so a killed run
    never blocks the next one. The file holds the holder's process id and command line, for the message,
    and is removed when the block ends.
    """
    target = Path(os.path.realpath(output_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f".{target.name}.{_LOCK_TAG}"
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(handle)
            handle.close()
            raise UserError(
                f"{what} {output_dir} is being written by {holder}; wait for it to finish or choose another {what}"
            ) from None
        if os.path.lexists(path) and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the previous holder removed the file between our open and lock: lock the new one
    try:
        handle.truncate(0)
        handle.write(f"process {os.getpid()} ({' '.join(sys.argv)[:120]})")
        handle.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)
        handle.close()
