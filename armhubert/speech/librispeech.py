"""LibriSpeech for training: the corpus as a `datasets.Dataset` (local tree or Hub), batching, sampling.

Columns of a loaded split: `id` (str), `audio` (undecoded dict with "path" and/or "bytes"), `text`
(str, as in the transcripts), `speaker_id` (int), `num_samples` (int, length at 16 kHz). Audio is
decoded by `armhubert.speech.audio.read_audio` in `AudioCollator`, in the data-loader workers.

    from armhubert.speech.librispeech import load_librispeech
    train = load_librispeech("/data", ["train-clean-100", "train-clean-360"], max_duration=20.0)
"""

import dataclasses
import logging
import os
import re
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import Wav2Vec2FeatureExtractor
from transformers.trainer_pt_utils import LengthGroupedSampler

from configuration_armhubert import SAMPLING_RATE

from ..resources import HUB_DATASET, is_hub_librispeech
from .audio import DataError, header_num_samples, read_audio, window

logger = logging.getLogger(__name__)

# LibriSpeech split name -> (config, split) of the Hub copy.
HUB_SPLITS = {
    "train-clean-100": ("clean", "train.100"),
    "train-clean-360": ("clean", "train.360"),
    "train-other-500": ("other", "train.500"),
    "dev-clean": ("clean", "validation"),
    "dev-other": ("other", "validation"),
    "test-clean": ("clean", "test"),
    "test-other": ("other", "test"),
}
LIBRISPEECH_LAYOUT = (
    "LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + <speaker>-<chapter>.trans.txt"
)
UTTERANCE_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def _describe_folder(folder, limit=6):
    """A short listing of what a folder holds, for error messages."""
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(folder).iterdir())
    except OSError:
        return "nothing readable"
    if not entries:
        return "an empty folder"
    more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def _split_names(splits):
    names = [splits] if isinstance(splits, str) else list(splits)
    if not names:
        raise DataError("no split given; expected a LibriSpeech split name such as 'train-clean-100'")
    return names


def _local_split_dir(root, split):
    """`root/LibriSpeech/<split>` or, when root is the LibriSpeech folder itself, `root/<split>`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data root {root} does not exist or is not a folder; expected a folder holding "
            f"{LIBRISPEECH_LAYOUT}, or the Hub dataset id {HUB_DATASET}"
        )
    for candidate in (root / "LibriSpeech" / split, root / split):
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"no split folder {split!r} in {root}: expected {root}/LibriSpeech/{split}/ (or {root}/{split}/ when "
        f"{root} is the LibriSpeech folder) in the layout {LIBRISPEECH_LAYOUT}; found {_describe_folder(root)}"
    )


def _check_every_chapter_has_transcripts(split_dir, transcript_files):
    """A chapter folder with audio but no `<speaker>-<chapter>.trans.txt` is an error, not silently dropped data.

    An error rather than a warning: it is the mark of an incomplete download or extraction, and training
    on part of a split without noticing changes the results.
    """
    listed = {path.parent for path in transcript_files}
    for chapter in sorted(path for path in split_dir.glob("*/*") if path.is_dir() and path not in listed):
        if any(chapter.glob("*.flac")):
            speaker = chapter.parent.name
            raise DataError(
                f"chapter {chapter} has audio but no {speaker}-{chapter.name}.trans.txt, so its utterances cannot be "
                "used; restore the transcript (re-extract the split) or remove the chapter folder"
            )


def _read_transcripts(split_dir):
    """(id, text, audio path) for every line of every `<speaker>/<chapter>/*.trans.txt` in a split folder."""
    transcript_files = sorted(split_dir.glob("*/*/*.trans.txt"))
    if not transcript_files:
        raise DataError(
            f"no <speaker>/<chapter>/<speaker>-<chapter>.trans.txt files in {split_dir}; expected the layout "
            f"{LIBRISPEECH_LAYOUT}; found {_describe_folder(split_dir)}"
        )
    _check_every_chapter_has_transcripts(split_dir, transcript_files)
    rows, missing = [], []
    for transcript_file in transcript_files:
        try:
            lines = transcript_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise DataError(
                f"{transcript_file} is not UTF-8 text (byte {error.start}); LibriSpeech transcripts are ASCII"
            ) from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            utterance_id, _, text = line.strip().partition(" ")
            if not UTTERANCE_ID.match(utterance_id):
                raise DataError(
                    f"{transcript_file}:{number}: expected 'SPEAKER-CHAPTER-UTT TRANSCRIPT', found {line[:60]!r}"
                )
            audio_path = transcript_file.parent / f"{utterance_id}.flac"
            if not audio_path.is_file():
                missing.append(str(audio_path))
                continue
            rows.append((utterance_id, text.strip(), audio_path))
    if missing:
        raise DataError(
            f"{len(missing)} utterance(s) listed in the transcripts of {split_dir} have no audio file, "
            f"e.g. {missing[0]}; expected one <id>.flac beside each .trans.txt"
        )
    return rows


def _load_local_split(root, split):
    split_dir = _local_split_dir(root, split)
    rows = _read_transcripts(split_dir)
    with ThreadPoolExecutor(max_workers=8) as pool:  # headers only: I/O bound
        lengths = list(pool.map(header_num_samples, (path for _, _, path in rows)))
    unreadable = [str(path) for (_, _, path), length in zip(rows, lengths) if length is None]
    kept = [(row, length) for row, length in zip(rows, lengths) if length is not None]
    if not kept:  # the error alone, without a warning before it
        raise DataError(f"none of the {len(rows)} audio files in {split_dir} is readable, e.g. {unreadable[0]}")
    if unreadable:
        logger.warning(
            "Skipping %d unreadable audio file(s) in %s (soundfile cannot read them), e.g. %s",
            len(unreadable),
            split_dir,
            ", ".join(unreadable[:3]),
        )
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
            "text": datasets.Value("string"),
            "speaker_id": datasets.Value("int64"),
            "num_samples": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "id": [utterance_id for (utterance_id, _, _), _ in kept],
            "audio": [{"bytes": None, "path": str(path)} for (_, _, path), _ in kept],
            "text": [text for (_, text, _), _ in kept],
            "speaker_id": [int(utterance_id.split("-")[0]) for (utterance_id, _, _), _ in kept],
            "num_samples": [length for _, length in kept],
        },
        features=features,
    )


def add_num_samples(dataset: datasets.Dataset, desc: str) -> datasets.Dataset:
    """`dataset` with a column `num_samples`: each undecoded `audio` entry's length at 16 kHz, read from its
    header (`armhubert.speech.audio.header_num_samples`); -1 where soundfile cannot read the header."""

    def lengths(batch):
        found = [header_num_samples(audio) for audio in batch["audio"]]
        return {"num_samples": [-1 if length is None else length for length in found]}

    return dataset.map(lengths, batched=True, desc=desc)


def _load_hub_split(source, split):
    if split not in HUB_SPLITS:
        raise DataError(f"unknown LibriSpeech split {split!r}; expected one of {', '.join(HUB_SPLITS)}")
    config, hub_split = HUB_SPLITS[split]
    name = source[len("hf://") :] if source.startswith("hf://") else source
    try:
        dataset = datasets.load_dataset(name, config, split=hub_split)
    except Exception as error:  # noqa: BLE001 - network, auth or missing dataset: all user-facing
        raise DataError(
            f"could not load {name} ({config}/{hub_split}) from the Hugging Face Hub: {str(error).splitlines()[0]}; "
            f"check the connection (HF_HUB_OFFLINE must be unset) or give a local LibriSpeech folder"
        ) from None
    # Keep audio undecoded: we decode with soundfile, not through datasets' torchcodec decoder.
    dataset = dataset.cast_column("audio", datasets.Audio(decode=False))
    dataset = dataset.select_columns(["id", "audio", "text", "speaker_id"])
    dataset = add_num_samples(dataset, f"reading {split} headers")
    unreadable = dataset.filter(lambda length: length < 0, input_columns="num_samples")
    if len(unreadable):
        logger.warning(
            "Skipping %d unreadable audio file(s) in %s %s, e.g. %s", len(unreadable), name, split, unreadable[0]["id"]
        )
        dataset = dataset.filter(lambda length: length >= 0, input_columns="num_samples")
    return dataset


def load_librispeech(
    source: str | os.PathLike, splits: str | Sequence[str], max_duration: float | None = None
) -> datasets.Dataset:
    """LibriSpeech split(s) as one `datasets.Dataset`, audio undecoded.

    Args:
        source: a local folder holding `LibriSpeech/<split>/...` (or the `LibriSpeech` folder itself),
            or the Hub id `openslr/librispeech_asr` (any `hf://owner/name` mirror with the same configs).
        splits: a LibriSpeech split name (`train-clean-100`, `dev-clean`, ...) or a list of them,
            concatenated in the given order.
        max_duration: drop utterances longer than this many seconds, a finite number > 0 (the command's
            arguments are checked: `armhubert.cli.check_fields`); `None` keeps all.

    Columns: `id`, `audio` ({"path", "bytes"}), `text`, `speaker_id`, `num_samples` (at 16 kHz).
    Files whose header soundfile cannot read are skipped with a warning that counts them.

    Raises:
        DataError: missing or malformed tree, unknown split, Hub unavailable, nothing readable.
    """
    source = str(source)
    parts = []
    for split in _split_names(splits):
        part = _load_hub_split(source, split) if is_hub_librispeech(source) else _load_local_split(source, split)
        parts.append(part)
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if max_duration is not None:
        limit = int(max_duration * SAMPLING_RATE)
        before = len(dataset)
        dataset = dataset.filter(lambda length: length <= limit, input_columns="num_samples")
        if len(dataset) < before:
            logger.info("Dropped %d utterance(s) longer than %.1f s", before - len(dataset), max_duration)
        if not len(dataset):
            names = ", ".join(_split_names(splits))
            raise DataError(
                f"no utterance in {source} ({names}) is at most {max_duration} s long; allow longer utterances (--max_duration)"
            )
    return dataset


def fixed_offset(key: str) -> Callable[[int], int]:
    """The crop policy of distillation: an offset fixed by the utterance (same crop every epoch, resumable)."""
    return lambda choices: zlib.crc32(str(key).encode()) % choices


def _audio_duration_crop(samples: np.ndarray, max_samples: int | None, key: str) -> np.ndarray:
    """A window of at most max_samples of decoded samples, at the utterance's fixed offset (`fixed_offset`)."""
    return window(samples, max_samples, fixed_offset(key))


@dataclasses.dataclass
class AudioCollator:
    """Decode a list of dataset rows with soundfile, crop, pad, draw masks, count what could not be read.

    Returns `input_values` (B, N) float32, `attention_mask` (B, N), `num_unreadable` (files of this
    batch that were skipped; the trainer adds them up and reports them) and, with a `masker`,
    `mask_time_indices` (B, T) drawn here, in the data-loader workers, off the training step.
    """

    feature_extractor: Wav2Vec2FeatureExtractor
    max_samples: int | None = None
    min_samples: int = 400
    masker: Callable[[list[int], int, list[str], int], torch.Tensor] | None = None
    with_ids: bool = False  # also return `utterance_ids` (list[str]): the teacher cache's keys
    # The epoch masks are seeded by (with the seed and utterance ids), kept current by the trainer. In shared
    # memory: data-loader workers hold a copy of the collator, persistent ones for the whole run, and would
    # otherwise draw epoch 0's masks every epoch.
    _epoch: torch.Tensor = dataclasses.field(
        default_factory=lambda: torch.zeros((), dtype=torch.int64).share_memory_(), repr=False
    )

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(int(value))

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        waveforms, ids, skipped, problems = [], [], [], []
        for row in rows:
            try:
                # Only the crop is decoded: a long file takes no more memory than its window.
                samples = read_audio(row["audio"], max_samples=self.max_samples, choose_offset=fixed_offset(row["id"]))
            except DataError as error:
                problems.append(f"unreadable file: {error}")
                skipped.append(row["id"])
                continue
            if len(samples) < self.min_samples:
                problems.append(
                    f"{row['id']}: {len(samples)} samples, fewer than the model's {self.min_samples}-sample receptive field"
                )
                skipped.append(row["id"])
                continue
            waveforms.append(samples)
            ids.append(row["id"])
        if not waveforms:  # one error line, not a warning per file before it
            raise DataError(
                f"every file of a batch was unreadable ({', '.join(skipped[:4])}), e.g. {problems[0]}; check the corpus"
            )
        for problem in problems:
            logger.warning("Skipping %s", problem)
        batch = self.feature_extractor(
            waveforms, sampling_rate=SAMPLING_RATE, padding=True, return_attention_mask=True, return_tensors="pt"
        )
        collated = {
            "input_values": batch["input_values"],
            "attention_mask": batch["attention_mask"],
            "num_unreadable": torch.tensor(len(skipped)),
        }
        if self.with_ids:
            collated["utterance_ids"] = ids
        if self.masker is not None:
            lengths = [len(w) for w in waveforms]
            collated["mask_time_indices"] = self.masker(lengths, batch["input_values"].shape[1], ids, self.epoch)
        return collated


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from (seed, epoch) only: the same on every rank and after a resume."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator.manual_seed(self.seed * 100_003 + self.epoch)
