"""Writing outputs atomically: a reader sees the old output or the complete new one, never a part.

Files are written to a temporary name beside the target and renamed over it; folders are built in a
temporary folder beside the target and swapped into place. Used by conversion, distillation,
fine-tuning, the benchmark and ONNX export. Also where an output may go: never over, into or around
an input; `--overwrite` replaces only a previous output of these commands (`previous_output_problem`);
what killed runs left beside a target is put back or removed on the next run
(`recover_interrupted_writes`); written trees get the user's usual modes (`give_usual_modes`).
"""

import ctypes
import errno
import functools
import glob
import json
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

from ..cli import Rule, UserError, refuse_broken
from ..folders.model_folders import is_model_folder

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
# Output folders: where they may be, what --overwrite may replace, and what killed runs left behind

_PROCESS_START = time.time()  # staging folders of killed runs are older than this process
_STAGING_TAG, _RETIRED_TAG = "armhubert-staging", "armhubert-old"
# Files our commands write into an output folder (model, processor, card, trainer state, recipes).
OUTPUT_FILE_NAMES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "README.md",
        "attention_armhubert.py",
        "configuration_armhubert.py",
        "modeling_armhubert.py",
        "pipeline_armhubert.py",
        "vocab.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "tokenizer.json",
        "processor_config.json",
        "training_args.bin",
        "trainer_state.json",
        "all_results.json",
        "train_results.json",
        "eval_results.json",
        "distill_recipe.yaml",
        "loss.png",
        "generation_config.json",
    }
)
_OUTPUT_FILE_PATTERNS = re.compile(r"model-\d+-of-\d+\.safetensors")
# What a Trainer checkpoint-N folder holds, beside the model files.
CHECKPOINT_FILE_NAMES = frozenset({"optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "pytorch_model.bin"})
_CHECKPOINT_FILE_PATTERNS = re.compile(r"rng_state_\d+\.pth")
_TENSORBOARD_FILE = re.compile(r"events\.out\.tfevents\..+")
# Model types this project writes; a `hubert` folder (`--format hubert`) is ours when its card is.
_OUR_MODEL_TYPES = ("armhubert",)
_OUR_CARD_TAG = re.compile(r"^\s*-\s*(armhubert|armwavlm|maskhubert|starhubert)\s*$", re.MULTILINE)
MAX_METADATA_BYTES = 1 << 20  # config.json / README.md read to tell whose folder it is


def _head(path: Path) -> str:
    """The first MAX_METADATA_BYTES of a text file ("" when unreadable)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_METADATA_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _written_by_us(folder: Path) -> bool:
    """A model folder of this project: its config names our model type, or its card carries our family tags.

    A plain `transformers` HuBERT folder (with the user's own README) is someone else's model.
    """
    try:
        model_type = json.loads(_head(folder / "config.json")).get("model_type")
    except (ValueError, AttributeError, RecursionError):
        return False
    if model_type in _OUR_MODEL_TYPES:
        return True
    card = _head(folder / "README.md")
    front_matter = card.split("---", 2)[1] if card.startswith("---") and card.count("---") >= 2 else ""
    return bool(_OUR_CARD_TAG.search(front_matter))


def _foreign_files(folder: Path, allowed: Callable[[Path], bool], prefix: str = "") -> list[str]:
    """Entries of `folder` (recursively for folders `allowed` accepts) that `allowed` does not accept, as relative names."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        name = prefix + entry.name
        if entry.is_symlink() or not allowed(entry):
            foreign.append(name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
        elif entry.is_dir():
            foreign += _foreign_files(entry, allowed, name + "/")
    return foreign


def _model_file(entry: Path) -> bool:
    return entry.is_file() and (entry.name in OUTPUT_FILE_NAMES or bool(_OUTPUT_FILE_PATTERNS.fullmatch(entry.name)))


def _checkpoint_file(entry: Path) -> bool:
    """A file that `Trainer._save_checkpoint` writes into checkpoint-N."""
    names, patterns = CHECKPOINT_FILE_NAMES, _CHECKPOINT_FILE_PATTERNS
    return _model_file(entry) or (entry.is_file() and (entry.name in names or bool(patterns.fullmatch(entry.name))))


def _tensorboard_entry(entry: Path) -> bool:
    """`runs/`: TensorBoard's folders of event files."""
    return entry.is_dir() or bool(_TENSORBOARD_FILE.fullmatch(entry.name))


def _folder_problem(entry: Path) -> list[str] | None:
    """For a subfolder our commands write (checkpoint-N, runs, the student's staging), what in it is not ours."""
    if re.fullmatch(r"checkpoint-\d+", entry.name):
        return _foreign_files(entry, _checkpoint_file, entry.name + "/")
    if entry.name == "runs":
        return _foreign_files(entry, _tensorboard_entry, "runs/")
    if entry.name == ".student-staging":
        return _foreign_files(entry, _model_file, entry.name + "/")
    return None


def previous_output_problem(folder: str | os.PathLike) -> str | None:
    """None if `folder` holds only what our commands write, where they write it (a model folder of ours, a
    repository of them, or a training run's output with its checkpoints and logs), else what does not fit.

    `--overwrite` replaces such a folder only: a user's own files (notes, data, checkpoints to
    convert, a git clone, someone else's model) are never deleted, also not inside checkpoint-N or runs/.
    """
    folder = Path(folder)
    foreign, complete = [], is_model_folder(folder)
    if complete and not _written_by_us(folder):
        return (
            "it is a model folder that this tool did not write (its config.json is not an ARMHuBERT model and its "
            "README.md not one of our cards)"
        )
    for entry in sorted(folder.iterdir()):
        inside = None if entry.is_symlink() or not entry.is_dir() else _folder_problem(entry)
        if entry.is_symlink():
            foreign.append(entry.name)
        elif entry.is_file():
            if not _model_file(entry):
                foreign.append(entry.name)
        elif inside is not None:
            foreign += inside
            complete = complete or (entry / "trainer_state.json").is_file()
        elif entry.is_dir() and is_model_folder(entry) and previous_output_problem(entry) is None:
            complete = True  # a variant of a repository written by `convert_checkpoint.py --all`
        else:
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        return f"it holds {', '.join(foreign[:3])}{more}, which this tool did not write"
    if not complete:
        return "it holds no complete previous output (config.json with model.safetensors, or a checkpoint)"
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


class _Output:
    """An output path as the output rules see it, each fact found when a rule asks: the input it overlaps
    (`overlap`: "is", "contains" or "is inside", and that input as `source`), its nearest existing folder
    (`existing`, from `path`, or from `writable_from` for a file's folder) and, for a non-empty folder to be
    replaced, why it is not a previous output of this tool (`problem`, by the caller's `judge`)."""

    def __init__(self, path, inputs=(), writable_from: Path | None = None, judge: Callable | None = None):
        self.path, self.inputs, self.writable_from, self.judge = Path(path), inputs, writable_from, judge

    @functools.cached_property
    def overlap(self) -> tuple[str, Path] | None:
        resolved = self.path.resolve()
        for item in self.inputs:
            if item is not None and os.path.lexists(item):
                source = Path(item).resolve()
                if _inside(source, resolved) or _inside(resolved, source):
                    return "is" if source == resolved else "contains" if _inside(
                        source, resolved
                    ) else "is inside", source
        return None

    @property
    def resolved(self) -> Path:
        return self.path.resolve()

    @property
    def relation(self) -> str:
        return self.overlap[0]

    @property
    def source(self) -> Path:
        return self.overlap[1]

    @functools.cached_property
    def existing(self) -> Path:
        existing = (self.writable_from or self.path).absolute()
        while not existing.exists():
            existing = existing.parent
        return existing

    @property
    def non_empty(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    @functools.cached_property
    def problem(self) -> str | None:
        return self.judge(self.path)


# Where an output may go, as `Rule`s over `out` (an `_Output`) and the command's `overwrite`, its `flag` and `what`
# it calls the output. Never over, into or around an input (replacing it would delete the input); only where its
# nearest existing folder is a writable folder; a file only as a regular file, replaced only with `flag`; a
# non-empty folder only with `flag`, and then only a previous output of this tool (`previous_output_problem`).
APART_RULES: tuple[Rule, ...] = (
    (
        lambda out, **_: out.overlap is not None,
        "the output {out.resolved} {out.relation} the input {out.source}; choose an output folder apart from the inputs",
    ),
)
_WRITABLE_RULES: tuple[Rule, ...] = (
    (
        lambda out, **_: not out.existing.is_dir(),
        "cannot create output {out.path}: {out.existing} is a file, not a folder",
    ),
    (
        lambda out, **_: not os.access(out.existing, os.W_OK | os.X_OK),
        "cannot write output {out.path}: {out.existing} is not writable; choose another folder",
    ),
)
LOCATION_RULES: tuple[Rule, ...] = (
    *APART_RULES,
    (lambda out, **_: out.path.exists() and not out.path.is_dir(), "output {out.path} exists and is not a folder"),
    *_WRITABLE_RULES,
)
FOLDER_RULES: tuple[Rule, ...] = (
    *LOCATION_RULES,
    (
        lambda out, overwrite, **_: out.non_empty and not overwrite,
        "output folder {out.path} is not empty; pass {flag} to replace it",
    ),
    (
        lambda out, **_: out.non_empty and out.problem is not None,
        "{flag} only replaces a previous output of this tool, and {out.path} is not one: {out.problem}; "
        "remove those files yourself or choose another folder",
    ),
)
FILE_RULES: tuple[Rule, ...] = (
    (lambda text, **_: not text.strip(), "{what} is empty; give a file name"),
    *APART_RULES,
    (lambda out, **_: out.path.is_dir(), "{what} {out.path} is a folder; give a file name"),
    (
        lambda out, overwrite, **_: os.path.lexists(out.path) and not overwrite,
        "{what} {out.path} exists; pass {flag} to replace it, or choose another name",
    ),
    (
        lambda out, **_: os.path.lexists(out.path) and not (out.path.is_file() or out.path.is_symlink()),
        "{what} {out.path} exists and is not a regular file (a device, FIFO or socket); choose a file",
    ),
    *_WRITABLE_RULES,
)


def check_apart(output: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = ()) -> None:
    """Refuse an output that is, contains or lies inside an input: replacing it would delete the input."""
    refuse_broken(APART_RULES, out=_Output(output, inputs))


def check_output_location(output: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Refuse an output folder that breaks LOCATION_RULES: it overlaps an input, is a file, or its nearest
    existing folder is not writable."""
    refuse_broken(LOCATION_RULES, out=_Output(output, inputs))
    return Path(output)


def check_output_file(
    output: str | os.PathLike,
    overwrite: bool,
    inputs: Sequence[str | os.PathLike | None] = (),
    flag: str = "--overwrite",
    what: str = "output",
) -> Path:
    """Refuse an output file that breaks FILE_RULES: it is empty text, is, holds or lies inside an input (pass
    every input, the files a CSV or dataset names included), is a folder, exists without `overwrite` (the
    command's `flag`) or is not a regular file, or its folder is not writable. Write it with
    `atomic_write_*(..., replace=overwrite)`."""
    out = _Output(output, inputs, writable_from=Path(output).absolute().parent)
    refuse_broken(FILE_RULES, out=out, text=str(output), overwrite=overwrite, flag=flag, what=what)
    return out.path


def check_output_folder(
    output_dir: str | os.PathLike,
    overwrite: bool,
    inputs: Sequence[str | os.PathLike | None] = (),
    problem: Callable[[Path], str | None] = previous_output_problem,
    flag: str = "--overwrite",
) -> Path:
    """Refuse an output folder that breaks FOLDER_RULES: it overlaps an input, cannot be written, or is non-empty
    without `overwrite` (the command's `flag`); with it, one that `problem` finds is not a previous output."""
    out = _Output(output_dir, inputs, judge=problem)
    refuse_broken(FOLDER_RULES, out=out, overwrite=overwrite, flag=flag)
    return out.path


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
    if _inside(Path.cwd().resolve(), output_dir.resolve()):  # replacing it would pull the floor away
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
