"""`datasets` datasets as input: a `save_to_disk` folder or a Hub id, opened through one door.

`open_dataset` loads one split (one UserError for whatever makes it unloadable). Everything a command
does with a dataset it was given (`map`, `cast`, `select`) runs inside `caches_outside_inputs`: with
caching on, `datasets` writes its cache files beside the dataset's own files, i.e. into the user's
input folder (twice the data, left behind); inside the block they go to a temporary folder that
`datasets` removes when the process ends.

    with caches_outside_inputs():
        rows = open_dataset("my_dataset/", "test").map(...)
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets

from ..cli import first_line
from ..files.untrusted import check_regular_file, load_json_file
from .audio import DataError

SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")
MAX_DATASET_JSON_BYTES = 4 << 20


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """A folder `datasets.save_to_disk` wrote (a dataset or a dataset dict)."""
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS)


@contextmanager
def caches_outside_inputs() -> Iterator[None]:
    """`datasets` caching off for the block: transforms write to a temporary folder, never beside their input."""
    was_enabled = datasets.is_caching_enabled()
    datasets.disable_caching()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_caching()


def check_dataset_files(folder: Path) -> None:
    """The files of a `save_to_disk` folder (and of its splits' folders) before `datasets` opens them: regular
    files only (a FIFO where an Arrow file belongs would block the load forever), JSON bounded."""
    for path in sorted(
        [*folder.iterdir(), *(child for split in folder.iterdir() if split.is_dir() for child in split.iterdir())]
    ):
        if path.is_dir() and path.parent == folder:
            continue
        check_regular_file(path, str(path), DataError)
        if path.suffix == ".json":
            load_json_file(path, str(path), "a saved dataset's JSON files are a few kB", MAX_DATASET_JSON_BYTES)


def open_dataset(name: str, split: str | None, config: str | None = None) -> datasets.Dataset:
    """One split of a `save_to_disk` folder or a Hub dataset (`config`: its configuration name); a dataset
    dict with one split needs no `split`. DataError for a dataset that does not load or lacks the split."""
    if is_saved_dataset(name):
        check_dataset_files(Path(name))
    try:
        if is_saved_dataset(name):
            loaded = datasets.load_from_disk(str(name))
        else:
            loaded = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # noqa: BLE001 - network, missing dataset, broken files: all the user's to fix
        where = "no file or folder {name}, and as a Hub dataset it" if not Path(name).exists() else "the dataset {name}"
        raise DataError(
            f"{where.format(name=name)} does not load: {first_line(error)}; give a save_to_disk folder, or a Hub id "
            "with the network on (HF_HUB_OFFLINE unset)"
        ) from None
    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if split is None and len(loaded) == 1:
        return next(iter(loaded.values()))
    if split not in loaded:
        raise DataError(f"{name} holds the splits {', '.join(loaded)}; choose one with --split")
    return loaded[split]
