"""What to encode: a folder of audio, a LibriSpeech-layout split or a `datasets` dataset, as one `Corpus`.

Every source becomes the same rows: `id` (str), `audio` (undecoded: {"path", "bytes"}) and
`num_samples` (length at 16 kHz, from the header). Audio is decoded later, a batch at a time
(`Corpus.read`), by `armhubert.speech.audio.read_audio` (soundfile), never through datasets' decoder.
"""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import soundfile

from configuration_armhubert import SAMPLING_RATE

from ..speech.audio import DataError, read_audio
from ..speech.librispeech import LIBRISPEECH_LAYOUT, add_num_samples, load_librispeech
from ..speech.saved_datasets import caches_outside_inputs, is_saved_dataset, open_dataset

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = tuple(sorted("." + name.lower() for name in soundfile.available_formats()))
ROW_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
    }
)


@dataclass
class Corpus:
    """Utterances to encode: `rows` has columns `id` (str), `audio` ({"path", "bytes"}) and `num_samples`
    (length at 16 kHz, from the header); `skipped` lists (name, reason) of files that could not be read."""

    rows: datasets.Dataset
    skipped: list[tuple[str, str]]
    description: str
    ids: list[str] = field(init=False)
    lengths: list[int] = field(init=False)

    def __post_init__(self):
        # Read once, as lists: indexing a datasets Column reads through the Arrow table (and hashes) every time.
        self.ids, self.lengths = list(self.rows["id"]), list(self.rows["num_samples"])

    def seconds(self, rows: Sequence[int]) -> float:
        """Audio seconds of these rows, from their headers."""
        return sum(self.lengths[row] for row in rows) / SAMPLING_RATE

    def audio(self, row: int) -> dict:
        """The undecoded audio ({"path", "bytes"}) of a row."""
        return self.rows[row]["audio"]

    def read(self, row: int, min_samples: int) -> tuple[str, np.ndarray | None, str | None]:
        """(id, 16 kHz samples or None, why it was skipped): unreadable audio, or fewer than `min_samples`
        samples (the model's receptive field)."""
        utterance = self.ids[row]
        try:
            samples = read_audio(self.audio(row))
        except DataError as error:
            return utterance, None, str(error)
        if len(samples) < min_samples:
            reason = f"{len(samples)} samples, fewer than the model's {min_samples}-sample receptive field"
            return utterance, None, reason
        return utterance, samples, None


def _check_unique(ids: Sequence[str], what: str) -> None:
    seen: dict[str, int] = {}
    for position, utterance_id in enumerate(ids):
        if utterance_id in seen:
            raise DataError(
                f"{what} has the utterance id {utterance_id!r} twice (rows {seen[utterance_id]} and {position}); "
                "ids must be unique: rename one, or pick another --id_column"
            )
        seen[utterance_id] = position


def _with_lengths(rows: datasets.Dataset, what: str) -> Corpus:
    """Add `num_samples` from the headers; files whose header is unreadable are skipped and listed."""
    rows = add_num_samples(rows, "reading audio headers")
    bad = [position for position, length in enumerate(rows["num_samples"]) if length < 0]
    skipped = [(rows[position]["id"], "not a regular file, or soundfile cannot read its header") for position in bad]
    if len(bad) == len(rows):
        raise DataError(
            f"none of the {len(rows)} audio files of {what} is readable (soundfile cannot read them), e.g. "
            f"{skipped[0][0]}; expected audio such as FLAC or WAV"
        )
    if bad:
        names = ", ".join(name for name, _ in skipped[:3])
        logger.warning(
            "Skipping %d unreadable audio file(s) of %s (soundfile cannot read them): %s", len(bad), what, names
        )
        rows = rows.select(sorted(set(range(len(rows))) - set(bad)))
    return Corpus(rows, skipped, what)


def audio_folder(folder: str | os.PathLike) -> Corpus:
    """Every audio file below `folder` (sub-folders too; suffixes soundfile knows), id = path without suffix.
    An entry that is not a regular file (a FIFO, a device, a broken link) is skipped and listed, never opened."""
    folder = Path(folder)
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in AUDIO_SUFFIXES and not path.is_dir())
    if not files:
        raise DataError(
            f"no audio files in {folder} (looked for {', '.join(AUDIO_SUFFIXES[:6])}, ... in sub-folders too); "
            "give a folder of audio, a LibriSpeech root with --split, or a datasets dataset"
        )
    ids = [path.relative_to(folder).with_suffix("").as_posix() for path in files]
    _check_unique(ids, f"the folder {folder} (ids are paths without their suffix)")
    rows = datasets.Dataset.from_dict(
        {"id": ids, "audio": [{"bytes": None, "path": str(path)} for path in files]}, features=ROW_FEATURES
    )
    return _with_lengths(rows, str(folder))


def librispeech_split(root: str | os.PathLike, split: str) -> Corpus:
    """A LibriSpeech-layout split, or several (`dev-clean,test-clean`), through
    `armhubert.speech.librispeech.load_librispeech` (which warns about unreadable files)."""
    splits = [name.strip() for name in split.split(",") if name.strip()]
    rows = load_librispeech(root, splits).select_columns(["id", "audio", "num_samples"])
    return Corpus(rows, [], f"{root} {split}")


def dataset_source(name: str, split: str | None, audio_column: str, id_column: str | None) -> Corpus:
    """A `datasets` dataset: a `save_to_disk` folder, or a Hub id / loadable folder through `load_dataset`."""
    loaded = open_dataset(name, split)
    columns = loaded.column_names
    if audio_column not in columns:
        raise DataError(f"{name} has no column {audio_column!r} (columns: {', '.join(columns)}); pass --audio_column")
    if id_column is not None and id_column not in columns:
        raise DataError(f"{name} has no column {id_column!r} (columns: {', '.join(columns)}); pass --id_column")
    id_column = id_column or ("id" if "id" in columns else None)
    ids = [str(value) for value in loaded[id_column]] if id_column else [str(row) for row in range(len(loaded))]
    _check_unique(ids, name)
    # Undecoded: audio is read by armhubert.speech.audio (soundfile), not through datasets' torchcodec decoder.
    audio = loaded.cast_column(audio_column, datasets.Audio(decode=False)).select_columns([audio_column])
    if audio_column != "audio":
        audio = audio.rename_column(audio_column, "audio")
    rows = audio.add_column("id", ids).select_columns(["id", "audio"]).cast(ROW_FEATURES)
    return _with_lengths(rows, name)


def _is_librispeech_root(folder: Path, split: str | None) -> bool:
    first = (split or "").split(",")[0].strip()
    return bool(first) and any((candidate / first).is_dir() for candidate in (folder / "LibriSpeech", folder))


def _detected_input_type(source: str, split: str | None) -> str:
    """What `--input_type auto` makes of `source`: a saved dataset, a LibriSpeech root (with `split`), a folder
    of audio, or (not a path here) a Hub dataset id."""
    path = Path(source)
    if not path.exists():
        return "dataset"  # a Hub id (or a mistyped path: the loader says it was not found)
    if not path.is_dir():
        raise DataError(f"{source} is a file; give a folder of audio, a LibriSpeech root or a dataset")
    if is_saved_dataset(path):
        return "dataset"
    return "librispeech" if _is_librispeech_root(path, split) else "folder"


def open_corpus(
    source: str, split: str | None = None, input_type: str = "auto", audio_column: str = "audio", id_column=None
) -> Corpus:
    """The utterances of `source`: `input_type` says what it is, or `auto` tells them apart. Nothing is written
    into the source (`caches_outside_inputs`)."""
    with caches_outside_inputs():
        return _open_corpus(source, split, input_type, audio_column, id_column)


def _open_corpus(source: str, split: str | None, input_type: str, audio_column: str, id_column: str | None) -> Corpus:
    path = Path(source)
    if input_type == "auto":
        input_type = _detected_input_type(source, split)
    if input_type == "folder":
        if not path.is_dir():
            raise DataError(f"{source} is not a folder; expected a folder of audio files")
        return audio_folder(path)
    if input_type == "librispeech":
        if split is None:
            raise DataError(f"a LibriSpeech root needs --split (e.g. dev-clean); layout: {LIBRISPEECH_LAYOUT}")
        return librispeech_split(path, split)
    return dataset_source(source, split, audio_column, id_column)
