"""Writing outputs atomically: a reader sees the old output or the complete new one, never a part.

Files are written to a temporary name beside the target and renamed over it; folders are built in a
temporary folder beside the target and renamed into place. Used by conversion, distillation,
fine-tuning, the benchmark and ONNX export.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .cli import UserError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the user's usual mode
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that needs a file name (plots, ONNX, ...).

    On success the temporary file replaces `path` in one rename; on error it is removed and `path`
    stays as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(staging)
        os.chmod(staging, 0o666 & ~_umask())
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_folder(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an output path that is a file, or a non-empty folder unless `overwrite`."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output {output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise UserError(f"output folder {output_dir} is not empty; pass --overwrite to replace it")
    return output_dir


def replace_folder(staging: Path, target: Path) -> None:
    """Put the complete `staging` folder at `target`, retiring an existing target only once it is replaced."""
    if not target.exists():
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, retired / "previous")
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(retired / "previous", target)  # put the old folder back
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def staged_folder(output_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `output_dir`; on success it replaces `output_dir` in one rename.

    An exception or interruption inside the block leaves `output_dir` as it was and removes the
    temporary folder; an existing non-empty target is only replaced with `overwrite`.
    """
    output_dir = check_output_folder(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        yield staging
        replace_folder(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_files_into(staging: Path, output_dir: Path, last: str = "config.json") -> None:
    """Move every file of `staging` into `output_dir`, `last` at the end, then remove `staging`.

    For outputs that share their folder with other files (checkpoints, recipes): each file arrives in
    one rename, and the file that marks a complete model (`config.json`) arrives last.
    """
    try:
        for path in sorted(staging.iterdir(), key=lambda p: p.name == last):
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
