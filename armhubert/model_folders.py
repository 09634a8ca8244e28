"""Model folders: what counts as one (`is_model_folder`, the one rule every tool uses), a multi-model
repository root (no weights, variant subfolders) named as such, and models loaded without running the folder's
code (`load_pretrained`).

`convert_checkpoint.py --all` writes a default variant at the root, but a repository assembled by hand,
or one written before that, has only subfolders; `from_pretrained` then fails with messages about a
missing `model_type` or weights file that never mention `subfolder=`. Every tool that takes a model
folder calls `check_model_folder` first so the user is told which subfolders there are.

`load_pretrained` is how every script loads a model folder: its `config.json` is read bounded, the model
it describes is sized on the meta device before any weight is allocated, and a folder's own Python code
(`auto_map`) is imported only with `--trust_remote_code` (this project's model type loads with the
installed classes); whatever makes the folder unloadable is one UserError.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path

from transformers import AutoConfig, AutoModel, PreTrainedModel

from .cli import UserError
from .untrusted import check_model_size, check_structure, read_bounded

MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few kB

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
    if is_model_folder(folder):
        return
    variants = variant_subfolders(folder)
    if not variants:
        return  # not a repository: from_pretrained says what is missing
    if subfolder_option:
        raise UserError(f"{folder} is a multi-model repository; pass {subfolder_option} one of: {', '.join(variants)}")
    raise UserError(
        f"{folder} is a multi-model repository; give one model's folder, {folder}/NAME, with NAME one of: "
        + ", ".join(variants)
    )


def read_folder_config(folder: str | os.PathLike) -> dict:
    """The `config.json` of a local model folder as a dict: at most MAX_CONFIG_BYTES, valid JSON, bounded structure."""
    path = Path(folder) / "config.json"
    data = read_bounded(path, str(path), MAX_CONFIG_BYTES, "a model config is a few kB")
    try:
        config = json.loads(data)
    except RecursionError:
        raise UserError(f"{path} nests too deeply to be a model config") from None
    except ValueError as error:
        raise UserError(f"{path} is not valid JSON: {str(error).splitlines()[0][:120]}") from None
    check_structure(config, str(path))
    if not isinstance(config, dict):
        raise UserError(f"{path} holds a {type(config).__name__}, not a model config")
    return config


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def load_pretrained(
    load: Callable[..., PreTrainedModel],
    source: str | os.PathLike,
    subfolder: str | None = None,
    trust_remote_code: bool = False,
    **kwargs,
) -> PreTrainedModel:
    """`load(source, subfolder=..., **kwargs)` (a `from_pretrained`) of a model folder or Hub id, checked first.

    A local folder's config is read bounded (`read_folder_config`); the model is sized on the meta
    device (`check_model_size`) before any weight is allocated; the folder's own code runs only with
    `trust_remote_code` (an unknown `model_type` is refused, naming the flag). Any failure of the load
    itself (missing or mismatched weights, a config the model class rejects) is one UserError.
    """
    where = f"{source}{f' (subfolder {subfolder})' if subfolder else ''}"
    folder = Path(source) / (subfolder or "")
    if folder.is_dir():
        read_folder_config(folder)
    try:
        config = AutoConfig.from_pretrained(source, subfolder=subfolder or "", trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 -- transformers raises ValueError, KeyError, OSError, TypeError
        reason = _reason(error)
        if "trust_remote_code" in str(error) or "custom code" in str(error):
            reason = (
                "its config.json names a model type this installation does not know, whose code is in the folder; "
                "pass --trust_remote_code to run that code, if you trust it"
            )
        raise UserError(f"cannot load the model {where}: {reason}") from None
    check_model_size(
        lambda: AutoModel.from_config(config, trust_remote_code=trust_remote_code), f"the config of {where}"
    )
    try:
        return load(source, subfolder=subfolder or "", **kwargs)
    except Exception as error:  # noqa: BLE001 -- a user's folder: missing, truncated or mismatched weights, bad values
        raise UserError(f"cannot load the model {where}: {_reason(error)}") from None
