"""Model folders: what counts as one (`is_model_folder`, the one rule every tool uses), and a multi-model
repository root (no weights, variant subfolders).

`convert_checkpoint.py --all` writes a default variant at the root, but a repository assembled by hand,
or one written before that, has only subfolders; `from_pretrained` then fails with messages about a
missing `model_type` or weights file that never mention `subfolder=`. Every tool that takes a model
folder calls `check_model_folder` first so the user is told which subfolders there are.
"""

import os
from pathlib import Path

from .cli import UserError

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
