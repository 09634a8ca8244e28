"""Utterances with a label (classification data): label folders or CSV files -> `datasets.Dataset`.

Used by `scripts/finetune_classification.py` (training and evaluation data) and `scripts/evaluate.py`.
Rows keep their audio undecoded (`{"path", "bytes"}`) for `armhubert.training.finetune.decode_audio_batch`.

    examples = read_examples("data/LibriSpeech/dev-clean", None)   # [(path, "1001"), ...]
    dataset = build_dataset(examples, {"1001": 0, "1002": 1, ...}, "evaluation")
"""

import csv
from collections.abc import Sequence
from pathlib import Path

import datasets

from configuration_armhubert import SAMPLING_RATE

from ..files.untrusted import check_regular_file
from .audio import DataError, audio_num_samples

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3", ".aiff", ".aif")
MAX_CSV_BYTES = 64 << 20  # 600,000 rows: its rows in memory stay a few hundred MB


def examples_from_folder(folder: str | Path) -> list[tuple[Path, str]]:
    """(path, label) for every audio file below `folder/<label>/` (any depth), sorted by label then path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; expected one sub-folder of audio files per label")
    examples = [
        (path, label_dir.name)
        for label_dir in sorted(p for p in folder.iterdir() if p.is_dir())
        for path in sorted(label_dir.rglob("*"))
        if path.suffix.lower() in AUDIO_SUFFIXES
    ]
    if not examples:
        raise DataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in the label sub-folders of {folder}")
    return examples


def read_csv_rows(csv_path: str | Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV file with a header holding `columns` (and at least one row)."""
    csv_path = check_regular_file(csv_path, f"the CSV file {csv_path}", DataError)
    if csv_path.stat().st_size > MAX_CSV_BYTES:
        raise DataError(
            f"{csv_path} is larger than {MAX_CSV_BYTES >> 20} MiB; a CSV of utterances has ~100 bytes a row: split it"
        )
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise DataError(f"cannot read {csv_path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{csv_path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except csv.Error as error:
        raise DataError(f"{csv_path} is not a readable CSV file: {error}") from None
    if not rows or not set(columns) <= set(rows[0]):
        found = ", ".join(column for column in rows[0] if column) if rows else "no rows"
        wanted = " and ".join(f"'{column}'" for column in columns)
        raise DataError(f"{csv_path} needs a header with {wanted} columns and at least one row; found {found}")
    return rows


def csv_audio_path(csv_path: str | Path, value: str) -> Path:
    """An audio path of a CSV row: absolute as given, else relative to the CSV file's folder."""
    path = Path(value)
    return path if path.is_absolute() else Path(csv_path).parent / path


def examples_from_csv(csv_path: str | Path) -> list[tuple[Path, str]]:
    """(path, label) for every row of a CSV with `path` and `label` columns (paths relative to the CSV)."""
    examples = []
    for number, row in enumerate(read_csv_rows(csv_path, ("path", "label")), 2):
        if not row["path"] or not row["label"]:
            raise DataError(f"{csv_path}:{number}: empty path or label")
        examples.append((csv_audio_path(csv_path, row["path"]), row["label"].strip()))
    return examples


def read_examples(folder: str | None, csv_path: str | None) -> list[tuple[Path, str]]:
    """(path, label) pairs from `folder`, else from `csv_path` (the arguments hold exactly one of them)."""
    return examples_from_folder(folder) if folder else examples_from_csv(csv_path)


def build_dataset(
    examples: Sequence[tuple[Path, str]],
    label2id: dict[str, int],
    what: str,
    max_duration: float | None = None,
    random_crop: bool = False,
) -> datasets.Dataset:
    """A `datasets.Dataset` of undecoded audio, label ids and lengths; unreadable files are refused.

    `max_duration`: seconds, a finite number > 0 (the command's arguments are checked). `random_crop` marks the
    rows the collator may cut to a random window (training rows with --crop_seconds).
    """
    unknown = sorted({label for _, label in examples} - set(label2id))
    if unknown:
        raise DataError(
            f"the {what} data has labels the training data does not: {', '.join(unknown[:5])}; "
            "every label needs training examples"
        )
    rows = {"audio": [], "label": [], "num_samples": [], "random_crop": []}
    for path, label in examples:
        num_samples = audio_num_samples(path)
        if max_duration is not None and num_samples > max_duration * SAMPLING_RATE:
            continue
        rows["audio"].append({"bytes": None, "path": str(path)})
        rows["label"].append(label2id[label])
        rows["num_samples"].append(num_samples)
        rows["random_crop"].append(random_crop)
    if not rows["label"]:
        raise DataError(f"no {what} utterance is at most {max_duration} s long")
    return datasets.Dataset.from_dict(rows)
