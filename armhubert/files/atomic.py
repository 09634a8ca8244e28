"""Writing outputs atomically: a reader sees the old output or the complete new one, never a part.

Files are written to a temporary name beside the target and renamed over it; folders are built in a
temporary folder beside the target and swapped into place (`staged_folder`, which first checks the
target with `armhubert.files.placement.check_output_folder`). Used by conversion, distillation,
fine-tuning, the benchmark and ONNX export. What killed runs left beside a target is put back or removed
on the next run (`recover_interrupted_writes`); written trees get the user's usual modes (`give_usual_modes`).
"""

import ctypes
import errno
import glob
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from ..cli import UserError
from .placement import check_output_folder, is_within, previous_output_problem

logger = logging.getLogger(__name__)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, replace: bool = True, flag: str = "--overwrite") -> Path:
    """Write `data` to `path` through a temporary file in the same folder and one rename.

    With `replace=False` an existing `path` is never replaced, also one that appeared while the data was
    written: the file arrives by a hard link, which fails if the name is taken (UserError naming `flag`).
    """
    path = Path(path)
    handle, staging = _staging_file(path)
    try:
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
        except OSError as error:  # full disk, file-size limit, quota: one line naming the file, nothing left
            reason = error.strerror or type(error).__name__
            raise WriteFailure(f"could not write {path} ({reason}); free disk space or choose another folder") from None
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the user's usual mode
        if replace:
            os.replace(staging, path)
        else:
            _link_new(staging, path, flag)
    finally:
        Path(staging).unlink(missing_ok=True)
    return path


def _link_new(staging: str, path: Path, flag: str) -> None:
    """Give the file `staging` the name `path` only if that name is free (where hard links are not supported,
    a check and a rename)."""
    try:
        os.link(staging, path)
        return
    except FileExistsError:
        taken = True
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        taken = os.path.lexists(path)
    if taken:
        raise UserError(f"{path} exists; pass {flag} to replace it") from None
    os.replace(staging, path)


def atomic_write_text(path: str | os.PathLike, text: str, replace: bool = True, flag: str = "--overwrite") -> Path:
    """Write UTF-8 `text` to `path` atomically (`replace`, `flag`: as `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), replace, flag)


@contextmanager
def atomic_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that needs a file name (plots, ONNX, ...).

    On success the temporary file replaces `path` in one rename; on error it is removed and `path`
    stays as it was.
    """
    path = Path(path)
    handle, staging = _staging_file(path, path.suffix)
    os.close(handle)
    try:
        yield Path(staging)
        os.chmod(staging, 0o666 & ~_umask())
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)


_FILE_STAGING_TAG = "armhubert-tmp"


def _staging_file(path: Path, suffix: str = "") -> tuple[int, str]:
    """(handle, name) of a new temporary file beside `path`, named `.NAME.armhubert-tmp-PID-XXXX` so that the
    next write of `path` removes what a killed run left (`remove_dead_staging_files`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging_files(path)
    return tempfile.mkstemp(prefix=f".{path.name}.{_FILE_STAGING_TAG}-{os.getpid()}-", suffix=suffix, dir=path.parent)


def remove_dead_staging_files(path: str | os.PathLike) -> None:
    """Delete the temporary files beside `path` that writes of it by runs no longer alive left behind (a killed
    export, a killed evaluation); never a file of a running process, of this one, or a file of another name."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{_FILE_STAGING_TAG}-(\d+)-.*")
    for entry in path.parent.glob(f".{glob.escape(path.name)}.{_FILE_STAGING_TAG}-*"):
        match = pattern.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_file():
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _pid_alive(pid) and entry.lstat().st_mtime < _PROCESS_START:
            entry.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_usual_modes(path: Path) -> None:
    """Folders 0777 and files 0666 less the umask (0755 / 0644 usually), through the whole tree at `path`.

    mkdtemp makes folders 0700 and some writers (safetensors) files 0600: a published folder must be
    readable by others as any file the user writes.
    """
    mask = _umask()
    for root, _, files in os.walk(path):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    if path.is_file() and not path.is_symlink():
        os.chmod(path, 0o666 & ~mask)


# ----------------------------------------------------------------------------------------------------
# Output folders: staged beside the target and swapped in, and what killed runs left behind (where an output
# may be, and what --overwrite may replace: `armhubert.files.placement`)

_PROCESS_START = time.time()  # staging folders of killed runs are older than this process
_STAGING_TAG, _RETIRED_TAG = "armhubert-staging", "armhubert-old"


def _staging_match(name: str) -> re.Match | None:
    return re.fullmatch(rf"\..+\.({_STAGING_TAG}|{_RETIRED_TAG})-(\d+)-[A-Za-z0-9_]+", name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _left_by_a_killed_run(entry: Path, target: Path) -> str | None:
    """The tag of a staging / retired folder that a killed run left beside `target`, else None.

    Ours only: our name pattern for this target, a process that no longer runs, and older than this process.
    """
    match = _staging_match(entry.name)
    if not match or not entry.name.startswith(f".{target.name}.{match.group(1)}-") or not entry.is_dir():
        return None
    pid = int(match.group(2))
    if pid == os.getpid() or _pid_alive(pid) or entry.lstat().st_mtime >= _PROCESS_START:
        return None
    return match.group(1)


def recover_interrupted_writes(target: str | os.PathLike) -> None:
    """Clean up after runs killed while writing `target`: put back a retired previous output whose
    replacement never arrived, and delete left-over staging folders and retired copies."""
    target = Path(target).absolute()
    if not target.parent.is_dir():
        return
    leftovers = [(entry, tag) for entry in target.parent.iterdir() if (tag := _left_by_a_killed_run(entry, target))]
    retired = sorted(
        (entry for entry, tag in leftovers if tag == _RETIRED_TAG and (entry / "previous").is_dir()),
        key=lambda entry: entry.lstat().st_mtime,
    )
    if retired and not os.path.lexists(target):
        os.replace(retired[-1] / "previous", target)
        logger.warning("Restored %s from an interrupted replacement", target)
    for entry, _ in leftovers:
        shutil.rmtree(entry, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not supported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def replace_folder(staging: Path, target: Path) -> None:
    """Put the complete `staging` folder at `target`; an existing target is always either old or new.

    Where the filesystem can swap two paths in one step, it does (staging then holds the old folder,
    which the caller removes). Elsewhere the old folder is renamed aside, the new one in, and the old
    one removed; a run killed between the two renames leaves the old folder aside, and the next run
    puts it back (`recover_interrupted_writes`).
    """
    if not os.path.lexists(target):
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_RETIRED_TAG}-{os.getpid()}-", dir=target.parent))
    os.replace(target, retired / "previous")
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(retired / "previous", target)  # put the old folder back
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def staged_folder(
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike | None] = (),
    problem: Callable[[Path], str | None] = previous_output_problem,
) -> Iterator[Path]:
    """Yield a temporary folder beside `output_dir`; on success it replaces `output_dir` atomically.

    First cleans up after killed runs (`recover_interrupted_writes`), then checks the target
    (`check_output_folder`: apart from `inputs`, writable, empty or, with `overwrite`, a previous
    output as `problem` judges). An exception or interruption inside the block leaves `output_dir`
    as it was and removes the temporary folder. The final tree gets the user's usual modes
    (`give_usual_modes`: 0755 / 0644 with umask 022), not mkdtemp's 0700. An `output_dir` that is a
    symbolic link stays one: the folder it points to is replaced (the staging folder is built beside that).
    """
    output_dir = Path(output_dir)
    if output_dir.is_symlink():
        output_dir = Path(os.path.realpath(output_dir))
    if is_within(Path.cwd().resolve(), output_dir.resolve()):  # replacing it would pull the floor away
        raise UserError(
            f"the output {output_dir} contains the current folder; give a new folder, e.g. --output_dir out"
        )
    recover_interrupted_writes(output_dir)
    output_dir = check_output_folder(output_dir, overwrite, inputs, problem)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.{_STAGING_TAG}-{os.getpid()}-", dir=output_dir.parent))
    try:
        with reported_write_failures(output_dir):
            yield staging
        give_usual_modes(staging)
        replace_folder(staging, output_dir)
    finally:
        if staging.is_symlink():  # swapped with a link in the meantime: remove the link, never what it points to
            staging.unlink()
        shutil.rmtree(staging, ignore_errors=True)


def move_files_into(staging: Path, output_dir: Path, last: str = "config.json") -> None:
    """Move every file of `staging` into `output_dir`, `last` at the end, then remove `staging`.

    For outputs that share their folder with other files (checkpoints, recipes): each file arrives in
    one rename, and the file that marks a complete model (`config.json`) arrives last.
    """
    try:
        for path in sorted(staging.iterdir(), key=lambda p: p.name == last):
            give_usual_modes(path)
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_WRITE_FAILURE_SIGNS = (
    "failed writing",
    "No space left",
    "File too large",
    "Disk quota",
    "IoError",
    "Errno 28",
    "Errno 27",
)


def is_write_failure(error: BaseException) -> bool:
    """A RuntimeError / SafetensorError that is a failed write: torch and safetensors report a full disk or a
    file-size limit (`ulimit -f`) so, not as OSError."""
    return isinstance(error, OSError) or any(sign in str(error) for sign in _WRITE_FAILURE_SIGNS)


class WriteFailure(UserError):
    """A write that failed for lack of space or a file-size limit (torch and safetensors raise RuntimeError-likes)."""


@contextmanager
def reported_write_failures(target: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write inside the block (full disk, file-size limit) into one `WriteFailure` naming `target`."""
    try:
        yield
    except (RuntimeError, SafetensorError) as error:
        if not is_write_failure(error):
            raise
        reason = " ".join(str(error).split())[:160]
        raise WriteFailure(f"could not write {target} ({reason}); free disk space or choose another folder") from None
