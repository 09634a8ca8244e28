"""Where an output may go: never over, into or around an input; only into a writable folder; a file only as a
regular file; a non-empty folder only with the command's `--overwrite`, and then only a previous output of these
commands (`previous_output_problem`: a user's own files are never replaced).

The refusals are tables of `Rule`s over one `_Output` (the path, and what the rules ask of it, found when they
ask): APART_RULES, LOCATION_RULES (a folder a run writes into), FOLDER_RULES (a folder a run replaces),
FILE_RULES (also: a name too long for the temporary name it is first written under). `check_apart`,
`check_output_location`, `check_output_folder` and `check_output_file` apply them; `armhubert.files.atomic`
writes what they let through.
"""

import functools
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..cli import Rule, refuse_broken
from ..folders.model_folders import is_model_folder

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
        "ops_armhubert.py",
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


def is_within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies inside it (both resolved by the caller)."""
    return path == folder or folder in path.parents


# How much longer than its own name the temporary name is that `armhubert.files.atomic` writes a file under first
# (".NAME.armhubert-tmp-PID-XXXXXXXX", at most 32 bytes more, and a suffix): a name within this of the file
# system's limit would fail only when the file is written, after the work that made it.
STAGING_NAME_EXTRA = 48


class _Output:
    """An output path as the output rules see it, each fact found when a rule asks: how it overlaps an input
    (`overlap`: "PATH is / contains / is inside the input INPUT", or None), its nearest existing folder
    (`existing`, from `path`, or from `writable_from` for a file's folder) and, for a non-empty folder to be
    replaced, why it is not a previous output of this tool (`problem`, by the caller's `judge`)."""

    def __init__(self, path, inputs=(), writable_from: Path | None = None, judge: Callable | None = None):
        self.path, self.inputs, self.writable_from, self.judge = Path(path), inputs, writable_from, judge

    @functools.cached_property
    def overlap(self) -> str | None:
        resolved = self.path.resolve()
        for item in self.inputs:
            if item is None or not os.path.lexists(item):
                continue
            source = Path(item).resolve()
            relation = (
                "is"
                if source == resolved
                else "contains"
                if is_within(source, resolved)
                else "is inside"
                if is_within(resolved, source)
                else None
            )
            if relation:
                return f"{resolved} {relation} the input {source}"
        return None

    @functools.cached_property
    def existing(self) -> Path:
        existing = (self.writable_from or self.path).absolute()
        while not existing.exists():
            existing = existing.parent
        return existing

    @property
    def name_bytes(self) -> int:
        return len(os.fsencode(self.path.name))

    @functools.cached_property
    def longest_name(self) -> int:
        """The longest file name that fits in `existing` beside its temporary name."""
        try:
            most = os.pathconf(self.existing, "PC_NAME_MAX")
        except (OSError, ValueError):  # a file system that does not say: the usual limit
            most = 255
        return most - STAGING_NAME_EXTRA

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
        "the output {out.overlap}; choose an output folder apart from the inputs",
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
    (
        lambda out, **_: out.name_bytes > out.longest_name,
        "{what} {out.path}: a name of {out.name_bytes} bytes, more than the {out.longest_name} that fit in "
        "{out.existing} beside the temporary name it is first written under; choose a shorter name",
    ),
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
