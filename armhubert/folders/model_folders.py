"""Model folders: what counts as one (`is_model_folder`, the one rule every tool uses), a multi-model
repository root (no weights, variant subfolders) named as such, and models loaded without running the folder's
code (`open_model_folder`, `load_config`, `load_folder_part`).

`convert_checkpoint.py --all` writes a default variant at the root, but a repository assembled by hand,
or one written before that, has only subfolders; `from_pretrained` then fails with messages about a
missing `model_type` or weights file that never mention `subfolder=`. Every tool that takes a model
folder opens it through `open_model_folder`, whose `check_model_folder` tells the user which subfolders there are.

`open_model_folder` is the one door for a model folder or Hub id: the repository check above, then its
`config.json` read bounded, the model it describes sized on the meta device before any weight is allocated,
and a folder's own Python code (`auto_map`) imported only with `--trust_remote_code` (this project's model
type loads with the installed classes); whatever makes the folder unloadable is one UserError. It returns a
`ModelFolder` (the checked config), whose `load` and `load_with_missing` trust it: nothing is read or
checked twice.
"""

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as transformers_logging

from ..cli import UserError
from ..files.untrusted import check_regular_file, load_json_file
from ..files.weights import check_model_size

MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few kB
# JSON files of a model folder besides config.json that transformers reads (a vocabulary is a few kB too).
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "generation_config.json",
)

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def is_model_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a complete saved model: `config.json` and weights `from_pretrained` reads.

    Our commands write safetensors only; `pytorch_model.bin` counts too, so a folder of another tool is
    recognised as a model (and, where an output would replace it, reported as files we did not write).
    """
    folder = Path(folder)
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in WEIGHT_FILES)


def variant_subfolders(path: str | os.PathLike) -> list[str]:
    """Names of the subfolders of `path` that hold a complete model (config and weights), sorted."""
    return sorted(child.name for child in Path(path).iterdir() if child.is_dir() and is_model_folder(child))


def check_model_folder(
    path: str | os.PathLike, subfolder: str | None = None, subfolder_option: str | None = "--subfolder (or subfolder=)"
) -> None:
    """Refuse a local multi-model repository root that holds no model itself, naming its variants.

    A Hub id or a path that is not a local folder is left to `from_pretrained`. `subfolder_option` is how
    the calling tool selects a variant; None for tools that take the variant's folder itself.
    """
    folder = Path(path)
    if not folder.is_dir():
        return
    if subfolder:
        folder = folder / subfolder
        if not folder.is_dir():
            choices = ", ".join(variant_subfolders(path)) or "none"
            raise UserError(f"{path} has no subfolder {subfolder}; its model subfolders are: {choices}")
    variants = [] if is_model_folder(folder) else variant_subfolders(folder)
    if variants:  # else a model, or not a repository: from_pretrained says what is missing
        choose = (
            f"pass {subfolder_option} one of:"
            if subfolder_option
            else f"give one model's folder, {folder}/NAME, with NAME one of:"
        )
        raise UserError(f"{folder} is a multi-model repository; {choose} {', '.join(variants)}")


def read_folder_config(folder: str | os.PathLike) -> dict:
    """The `config.json` of a local model folder as a dict: a regular file of at most MAX_CONFIG_BYTES, valid
    JSON bounded in depth and values before it is built (`parse_json`). The folder's other JSON files that
    transformers reads (preprocessing, tokenizer) pass the same checks, and must hold an object too; its
    weight files must be regular files."""
    for name in WEIGHT_FILES:  # a FIFO would block the load forever, a device never end
        if os.path.lexists(Path(folder) / name):
            check_regular_file(Path(folder) / name, str(Path(folder) / name))
    configs = {}
    for name in ("config.json", *PROCESSOR_FILES):
        path = Path(folder) / name
        if not os.path.lexists(path):
            if name == "config.json":
                raise UserError(f"{folder} is not a model folder (no config.json); give the folder of a saved model")
            continue
        configs[name] = load_json_file(path, str(path), "a model config is a few kB", MAX_CONFIG_BYTES)
        if not isinstance(configs[name], dict):
            raise UserError(f"{path} holds a {type(configs[name]).__name__}, not a JSON object (a config)")
    return configs["config.json"]


def load_folder_part(load: Callable[[str], Any], folder: str | os.PathLike, what: str) -> Any:
    """`load(folder)` (a processor part's `from_pretrained`, after `load_config` checked the folder's JSON files);
    whatever makes it fail is one UserError naming `what` (e.g. "tokenizer")."""
    with _loading(f"the {what} of {folder}"):
        return load(str(folder))


@contextlib.contextmanager
def _loading(subject: str, report: "_Report | None" = None) -> Iterator[None]:
    """Whatever makes a load in the block fail (values the class rejects, missing, truncated or mismatched files:
    transformers raises ValueError, KeyError, OSError, TypeError, ...) as one UserError "cannot load `subject`"."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 -- a user's folder
        raise UserError(f"cannot load {subject}: {_reason(error, report)}") from None


def _reason(error: BaseException, report: "_Report | None") -> str:
    """Why a load failed, in one line: transformers' first line, except where it speaks to another reader: a model
    type only the folder's own code knows (name the flag), weights of another shape (transformers says only "look
    at the above report": the `report`'s rows it means)."""
    text = str(error).strip()
    if "trust_remote_code" in text or "custom code" in text:
        return (
            "its config.json names a model type this installation does not know, whose code is in the folder; "
            "pass --trust_remote_code to run that code, if you trust it"
        )
    mismatched = report.rows("MISMATCH") if report is not None else []
    if mismatched:
        return f"weights of another shape than the model's ({'; '.join(mismatched[:2])})"
    return text.splitlines()[0][:300] if text else type(error).__name__


def load_config(
    source: str | os.PathLike, subfolder: str | None = None, trust_remote_code: bool = False
) -> PretrainedConfig:
    """The config of a model folder or Hub id, checked: a local folder's `config.json` is read bounded
    (`read_folder_config`), the model it describes is sized on the meta device (`check_model_size`) before
    any weight is allocated, and the folder's own code runs only with `trust_remote_code` (an unknown
    `model_type` is refused, naming the flag). Whatever makes it unreadable is one UserError."""
    where = _where(source, subfolder)
    folder = Path(source) / (subfolder or "")
    if folder.is_dir():
        read_folder_config(folder)
    with _loading(f"the model {where}"):
        config = AutoConfig.from_pretrained(source, subfolder=subfolder or "", trust_remote_code=trust_remote_code)
    check_model_size(
        lambda: AutoModel.from_config(config, trust_remote_code=trust_remote_code), f"the config of {where}"
    )
    return config


def _where(source: str | os.PathLike, subfolder: str | None) -> str:
    return f"{source}{f' (subfolder {subfolder})' if subfolder else ''}"


@dataclass(frozen=True)
class ModelFolder:
    """A model folder or Hub id that passed `open_model_folder`: its checked config, and its loads (which trust
    it: the config is not read or sized again). Any failure of a load itself is one UserError."""

    source: str
    subfolder: str | None
    config: PretrainedConfig
    trust_remote_code: bool = False

    @property
    def where(self) -> str:
        """The folder as messages name it (with its subfolder)."""
        return _where(self.source, self.subfolder)

    @property
    def architecture(self) -> str:
        """The class its config names (`architectures[0]`), "" when it names none."""
        return (getattr(self.config, "architectures", None) or [""])[0]

    def _load(self, load: Callable[..., PreTrainedModel], **kwargs) -> tuple[PreTrainedModel, dict]:
        """`load(source, subfolder=..., output_loading_info=True, **kwargs)`, transformers' load report (the
        multi-line table of MISSING / UNEXPECTED keys) not printed: the callers say what matters in one line.
        The folder's own code, which its config check was allowed to run, may build the model too."""
        if self.trust_remote_code:
            kwargs["trust_remote_code"] = True
        library_logger = transformers_logging._get_library_root_logger()
        report = _Report()
        handlers, library_logger.handlers = library_logger.handlers, [report]  # kept, not printed
        try:
            with _loading(f"the model {self.where}", report):
                return load(self.source, subfolder=self.subfolder or "", output_loading_info=True, **kwargs)
        finally:
            library_logger.handlers = handlers

    def load_with_missing(self, load: Callable[..., PreTrainedModel], **kwargs) -> tuple[PreTrainedModel, list[str]]:
        """`load` (a `from_pretrained`) and every weight the folder lacks (missing or of another shape, a task
        head's included), which transformers initialised at random."""
        model, info = self._load(load, **kwargs)
        return model, _missing(info)

    def load(self, load: Callable[..., PreTrainedModel], **kwargs) -> PreTrainedModel:
        """`load` (a `from_pretrained`). The encoder must be complete: weights of the base model the folder lacks
        are refused (they would be random); a task head the folder has not (fine-tuning starts one from an
        encoder) is initialised."""
        model, missing = self.load_with_missing(load, **kwargs)
        prefix = "" if model.base_model is model else f"{model.base_model_prefix}."
        refuse_missing([key for key in missing if key.startswith(prefix)], self.where, f"its {type(model).__name__}")
        return model


def open_model_folder(
    source: str | os.PathLike,
    subfolder: str | None = None,
    trust_remote_code: bool = False,
    subfolder_option: str | None = "--subfolder (or subfolder=)",
) -> ModelFolder:
    """The door for a model folder or Hub id: `check_model_folder` (a multi-model root names its variants,
    `subfolder_option` as there), then `load_config`; the `ModelFolder` holds the checked config."""
    check_model_folder(source, subfolder, subfolder_option)
    config = load_config(source, subfolder, trust_remote_code)
    return ModelFolder(str(source), subfolder, config, trust_remote_code)


class _Report(logging.Handler):
    """Keeps what transformers logs while loading (its load report) instead of printing it."""

    def __init__(self):
        super().__init__(logging.NOTSET)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def rows(self, status: str) -> list[str]:
        """The report's table rows of that status, as `key: details`."""
        rows = []
        for line in "\n".join(self.messages).splitlines():
            cells = [cell.strip() for cell in line.split("|")]
            if len(cells) >= 2 and cells[1].startswith(status):
                rows.append(f"{cells[0]}: {' '.join(cell for cell in cells[2:] if cell)}".rstrip(": "))
        return sorted(rows)


def _missing(info: dict) -> list[str]:
    """The weights a load lacked (missing, or of another shape), which transformers initialised at random."""
    return sorted(set(info.get("missing_keys", ())) | {item[0] for item in info.get("mismatched_keys", ())})


def refuse_missing(missing: list[str], source: str | os.PathLike, what: str) -> None:
    """One UserError naming the first weights `source` lacks, if any (`what`: what needs them)."""
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(
            f"{source} lacks weights {what} needs ({', '.join(missing[:3])}{more}); they would be random: give a "
            "complete model folder"
        )
