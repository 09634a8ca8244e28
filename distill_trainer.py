"""Distil a compact speech encoder (ARMHuBERT, ARMwavLM, MaskHuBERT, STaRHuBERT) from a HuBERT-class teacher.

    accelerate launch distill_trainer.py --config conf/armhubert-960h.yaml [key=value ...] [--resume [CHECKPOINT]]
    python distill_trainer.py --config conf/quickstart.yaml              # one process, e.g. on CPU

A recipe is a flat YAML mapping of `DistillArguments` and `transformers.TrainingArguments` fields;
`key=value` arguments override it (values are parsed as YAML, `student_config.hidden_size=64` sets
one entry of a mapping). Sections: Data (LibriSpeech loading and decoding, also imported by
`scripts/finetune_ctc.py`), Masks (the release's span-mask sampler), Losses, Models, Trainer, CLI.
"""

import argparse
import dataclasses
import difflib
import io
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import typing
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import soundfile
import soxr
import torch
import torch.nn.functional as F
import yaml
from torch.utils.checkpoint import checkpoint as recompute_in_backward
from transformers import (
    AutoModel,
    HubertConfig,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    Wav2Vec2Config,
    WavLMConfig,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from armhubert.audio import DataError, read_audio
from armhubert.cli import UserError, run_main
from armhubert.io import atomic_write_text
from armhubert.training import save_trained_model
from configuration_armhubert import PRESETS, SAMPLING_RATE, ARMHubertConfig, receptive_field
from modeling_armhubert import ARMHubertModel, add_remote_code_entries, release_feature_extractor

logger = logging.getLogger("distill_trainer")

# ==================================================================================================
# Data
#
# Shared API (imported by other scripts, keep names and semantics): DataError, load_librispeech,
# read_audio. Columns of a loaded split: id (str), audio (undecoded dict with "path" and/or "bytes"),
# text (str, as in the transcripts), speaker_id (int), num_samples (int, length at 16 kHz).

HUB_DATASET = "openslr/librispeech_asr"
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
LIBRISPEECH_LAYOUT = "LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + <speaker>-<chapter>.trans.txt"
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


def _is_hub_source(source):
    return str(source).lower() == HUB_DATASET or str(source).startswith("hf://")


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


def _read_transcripts(split_dir):
    """(id, text, audio path) for every line of every `<speaker>/<chapter>/*.trans.txt` in a split folder."""
    transcript_files = sorted(split_dir.glob("*/*/*.trans.txt"))
    if not transcript_files:
        raise DataError(
            f"no <speaker>/<chapter>/<speaker>-<chapter>.trans.txt files in {split_dir}; expected the layout "
            f"{LIBRISPEECH_LAYOUT}; found {_describe_folder(split_dir)}"
        )
    rows, missing = [], []
    for transcript_file in transcript_files:
        lines = transcript_file.read_text(encoding="utf-8").splitlines()
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


def _num_samples_at_target_rate(info):
    return int(round(info.frames * SAMPLING_RATE / info.samplerate))


def _local_num_samples(path):
    try:
        return _num_samples_at_target_rate(soundfile.info(str(path)))
    except Exception:  # noqa: BLE001 - any unreadable header makes the file unusable
        return None


def _load_local_split(root, split):
    split_dir = _local_split_dir(root, split)
    rows = _read_transcripts(split_dir)
    with ThreadPoolExecutor(max_workers=8) as pool:  # headers only: I/O bound
        lengths = list(pool.map(_local_num_samples, (path for _, _, path in rows)))
    unreadable = [str(path) for (_, _, path), length in zip(rows, lengths) if length is None]
    if unreadable:
        logger.warning(
            "Skipping %d unreadable audio file(s) in %s (soundfile cannot read them), e.g. %s",
            len(unreadable), split_dir, ", ".join(unreadable[:3]),
        )
    kept = [(row, length) for row, length in zip(rows, lengths) if length is not None]
    if not kept:
        raise DataError(f"none of the {len(rows)} audio files in {split_dir} is readable, e.g. {unreadable[0]}")
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


def _audio_num_samples(audio):
    """Length at 16 kHz of an undecoded audio dict, from its header; -1 when unreadable."""
    try:
        source = io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio["path"]
        return _num_samples_at_target_rate(soundfile.info(source))
    except Exception:  # noqa: BLE001
        return -1


def _load_hub_split(source, split):
    if split not in HUB_SPLITS:
        raise DataError(f"unknown LibriSpeech split {split!r}; expected one of {', '.join(HUB_SPLITS)}")
    config, hub_split = HUB_SPLITS[split]
    name = source[len("hf://"):] if source.startswith("hf://") else source
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
    dataset = dataset.map(
        lambda batch: {"num_samples": [_audio_num_samples(audio) for audio in batch["audio"]]},
        batched=True,
        desc=f"reading {split} headers",
    )
    unreadable = dataset.filter(lambda length: length < 0, input_columns="num_samples")
    if len(unreadable):
        logger.warning("Skipping %d unreadable audio file(s) in %s %s, e.g. %s", len(unreadable), name, split, unreadable[0]["id"])
        dataset = dataset.filter(lambda length: length >= 0, input_columns="num_samples")
    return dataset


def load_librispeech(source, splits, max_duration=None):
    """LibriSpeech split(s) as one `datasets.Dataset`, audio undecoded.

    Args:
        source: a local folder holding `LibriSpeech/<split>/...` (or the `LibriSpeech` folder itself),
            or the Hub id `openslr/librispeech_asr` (any `hf://owner/name` mirror with the same configs).
        splits: a LibriSpeech split name (`train-clean-100`, `dev-clean`, ...) or a list of them,
            concatenated in the given order.
        max_duration: drop utterances longer than this many seconds (`None`: keep all).

    Columns: `id`, `audio` ({"path", "bytes"}), `text`, `speaker_id`, `num_samples` (at 16 kHz).
    Files whose header soundfile cannot read are skipped with a warning that counts them.

    Raises:
        DataError: missing or malformed tree, unknown split, Hub unavailable, nothing readable.
    """
    source = str(source)
    parts = []
    for split in _split_names(splits):
        part = _load_hub_split(source, split) if _is_hub_source(source) else _load_local_split(source, split)
        parts.append(part)
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if max_duration is not None:
        limit = int(max_duration * SAMPLING_RATE)
        before = len(dataset)
        dataset = dataset.filter(lambda length: length <= limit, input_columns="num_samples")
        if len(dataset) < before:
            logger.info("Dropped %d utterance(s) longer than %.1f s", before - len(dataset), max_duration)
        if not len(dataset):
            raise DataError(f"no utterance in {source} {splits} is at most {max_duration} s long")
    return dataset


def _audio_duration_crop(samples, max_samples, key):
    """A window of at most max_samples, at an offset fixed by the utterance (same crop every epoch, resumable)."""
    if max_samples is None or len(samples) <= max_samples:
        return samples
    offset = zlib.crc32(str(key).encode()) % (len(samples) - max_samples + 1)
    return samples[offset : offset + max_samples]


@dataclasses.dataclass
class AudioCollator:
    """Decode a list of dataset rows with soundfile, crop, pad, draw masks, count what could not be read.

    Returns `input_values` (B, N) float32, `attention_mask` (B, N), `num_unreadable` (files of this
    batch that were skipped; the trainer adds them up and reports them) and, with a `masker`,
    `mask_time_indices` (B, T) drawn here, in the data-loader workers, off the training step.
    """

    feature_extractor: typing.Any
    max_samples: int | None = None
    min_samples: int = 400
    masker: typing.Any = None
    epoch: int = 0  # kept current by the trainer: masks are seeded by (seed, epoch, utterance ids)

    def __call__(self, rows):
        waveforms, ids, skipped = [], [], []
        for row in rows:
            try:
                samples = read_audio(row["audio"])
            except DataError as error:
                logger.warning("Skipping unreadable file: %s", error)
                skipped.append(row["id"])
                continue
            if len(samples) < self.min_samples:
                logger.warning("Skipping %s: %d samples, fewer than the model's %d-sample receptive field",
                               row["id"], len(samples), self.min_samples)
                skipped.append(row["id"])
                continue
            waveforms.append(_audio_duration_crop(samples, self.max_samples, row["id"]))
            ids.append(row["id"])
        if not waveforms:
            raise DataError(f"every file of a batch was unreadable ({', '.join(skipped[:4])}); check the corpus")
        batch = self.feature_extractor(
            waveforms, sampling_rate=SAMPLING_RATE, padding=True, return_attention_mask=True, return_tensors="pt"
        )
        collated = {
            "input_values": batch["input_values"],
            "attention_mask": batch["attention_mask"],
            "num_unreadable": torch.tensor(len(skipped)),
        }
        if self.masker is not None:
            lengths = [len(w) for w in waveforms]
            collated["mask_time_indices"] = self.masker(lengths, batch["input_values"].shape[1], ids, self.epoch)
        return collated


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from (seed, epoch) only: the same on every rank and after a resume."""

    def __init__(self, batch_size, lengths, seed):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        self.generator.manual_seed(self.seed * 100_003 + self.epoch)


# ==================================================================================================
# Masks
#
# The release's span masks (spec original-release.md section 4), our own implementation: per row,
# int(p * valid / mean_length + U[0,1)) spans (at least `min_spans`) with lengths uniform in
# 0..2*mean_length, placed longest first into free intervals (chosen with probability proportional
# to their length among those with room for span + min_space, start uniform), never touching and
# never on padding; then every row is thinned at random to the batch's smallest masked count.


def _span_lengths(valid_length, mask_prob, mean_length, min_spans, rng):
    count = max(min_spans, int(mask_prob * valid_length / mean_length + rng.random()))
    return rng.integers(0, 2 * mean_length, size=count, endpoint=True)


def _place_spans(valid_length, span_lengths, min_space, rng):
    """(start, length) of non-touching spans inside [0, valid_length), longest first.

    A free interval [s, e) accepts a span only if it ends at least `min_space` frames before e, so
    neighbouring spans keep `min_space` unmasked frames between them and the last valid frame stays
    unmasked. Placement stops at the first span that fits nowhere. Plain Python on pre-drawn
    uniforms: a batch takes milliseconds, and it runs in the data-loader workers.
    """
    lengths = sorted((int(n) for n in span_lengths if n > 0), reverse=True)
    uniforms = rng.random(2 * len(lengths)).tolist()
    free = [(0, valid_length)]
    spans = []
    for number, length in enumerate(lengths):
        need = length + min_space
        room = [e - s if e - s >= need else 0 for s, e in free]
        total = sum(room)
        if total == 0:
            break
        # An interval with probability proportional to its length, among those with room.
        target = uniforms[2 * number] * total
        chosen = max(i for i, r in enumerate(room) if r)  # fallback against rounding at the top end
        for i, r in enumerate(room):
            if target < r:
                chosen = i
                break
            target -= r
        s, e = free.pop(chosen)
        start = s + int(uniforms[2 * number + 1] * (e - need - s + 1))
        spans.append((start, length))
        if start > s:
            free.append((s, start))
        if e - (start + need) > 0:
            free.append((start + need, e))
    return spans


def sample_span_mask(
    valid_lengths, num_frames, mask_prob, mean_length=10, min_spans=2, min_space=1, same_count=True, rng=None
):
    """Boolean (B, num_frames) mask, True = masked frame, drawn as the release's masking distillation.

    Args:
        valid_lengths: real (unpadded) frames per row; frames at or beyond it are never masked.
        mask_prob: fraction that sets the number of spans (0.8 for the 960 h recipes, 0.4 for 100 h).
        mean_length: mean span length; lengths are uniform on 0..2*mean_length.
        min_spans: fewest spans drawn per row.
        min_space: unmasked frames kept between spans (and after the last one).
        same_count: thin every row at random to the batch's smallest masked count.
        rng: a `numpy.random.Generator` (seeded for reproducibility).
    """
    rng = rng if rng is not None else np.random.default_rng()
    mask = np.zeros((len(valid_lengths), num_frames), dtype=bool)
    for row, valid in enumerate(int(v) for v in valid_lengths):
        lengths = _span_lengths(valid, mask_prob, mean_length, min_spans, rng)
        for start, length in _place_spans(valid, lengths, min_space, rng):
            mask[row, start : start + length] = True
    if same_count and len(mask):
        keep = int(mask.sum(1).min())
        for row in mask:
            masked = np.flatnonzero(row)
            if len(masked) > keep:
                row[rng.choice(masked, size=len(masked) - keep, replace=False)] = False
    return mask


@dataclasses.dataclass
class SpanMasker:
    """Draws `sample_span_mask` masks for a batch of waveforms, on the model's frames.

    The generator is seeded by (seed, epoch, the batch's utterance ids), so a resumed run draws the
    same masks as an uninterrupted one, whatever process or worker collates the batch.
    """

    conv_kernel: list
    conv_stride: list
    mask_prob: float
    mean_length: int = 10
    min_spans: int = 2
    min_space: int = 1
    same_count: bool = True
    seed: int = 0

    def frames(self, num_samples):
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            num_samples = (num_samples - kernel) // stride + 1
        return num_samples

    def __call__(self, sample_lengths, padded_samples, ids, epoch=0):
        key = zlib.crc32("\n".join(ids).encode())
        rng = np.random.default_rng([self.seed, epoch, key])
        mask = sample_span_mask(
            [self.frames(n) for n in sample_lengths], self.frames(padded_samples), self.mask_prob,
            self.mean_length, self.min_spans, self.min_space, self.same_count, rng,
        )
        return torch.from_numpy(mask)


# ==================================================================================================
# Losses
#
# All losses take lists of (B, T, *) tensors, one per distilled layer, and `valid` (B, T) bool
# (True = real frame). They return (loss, parts) where parts are detached, unweighted sums for logging.


def _total(values, like):
    """Sum of a list of 0-d tensors (0 on like's device when the list is empty)."""
    return torch.stack(values).sum() if values else torch.zeros((), device=like.device)


def _frame_error(prediction, target, loss_type):
    """Per-frame error (B, T): mean over channels of the squared (mse) or absolute (l1) difference."""
    difference = prediction.float() - target.float()
    if loss_type == "mse":
        return difference.square().mean(-1)
    if loss_type == "l1":
        return difference.abs().mean(-1)
    raise ValueError(f"loss_type must be 'mse' or 'l1', got {loss_type!r}")


def layer_weights(num_layers, hint_weight=0.1, last_weight=1.0):
    """0.1 for the hint layers 1..L-1, 1.0 for the last layer (the release's weights)."""
    return [hint_weight] * (num_layers - 1) + [last_weight]


def masking_distillation_loss(
    student, teacher_unmasked, teacher_masked, mask, valid, weights, loss_type="mse", normalization="valid"
):
    """Masking distillation with crossed targets (spec distillation.md).

    Masked frames regress the teacher's output on clean input, unmasked frames the teacher's output
    on masked input. `normalization="valid"` leaves padded frames out and divides by the number of
    real frames; `"original"` reproduces the release: padded frames count as unmasked frames and the
    sums are divided by B*T.
    """
    if normalization == "valid":
        unmasked_frames, denominator = valid & ~mask, valid.sum().clamp(min=1)
    elif normalization == "original":
        unmasked_frames, denominator = ~mask, mask.numel()
    else:
        raise ValueError(f"loss_normalization must be 'valid' or 'original', got {normalization!r}")
    masked_frames = mask & valid
    total = 0.0
    masked_parts, unmasked_parts = [], []
    for prediction, clean, masked, weight in zip(student, teacher_unmasked, teacher_masked, weights):
        loss_masked = (_frame_error(prediction, clean, loss_type) * masked_frames).sum() / denominator
        loss_unmasked = (_frame_error(prediction, masked, loss_type) * unmasked_frames).sum() / denominator
        total = total + weight * (loss_masked + loss_unmasked)
        masked_parts.append(loss_masked.detach())
        unmasked_parts.append(loss_unmasked.detach())
    parts = {
        "hint_masked": _total(masked_parts[:-1], masked_parts[-1]),
        "hint_unmasked": _total(unmasked_parts[:-1], unmasked_parts[-1]),
        "rec_masked": masked_parts[-1],
        "rec_unmasked": unmasked_parts[-1],
    }
    return total, parts


def regression_loss(student, teacher, valid, weights, loss_type="mse"):
    """Plain layer-to-layer regression over real frames (the baseline, and validation of masking runs)."""
    denominator = valid.sum().clamp(min=1)
    total, per_layer = 0.0, []
    for prediction, target, weight in zip(student, teacher, weights):
        loss = (_frame_error(prediction, target, loss_type) * valid).sum() / denominator
        total = total + weight * loss
        per_layer.append(loss.detach())
    return total, {"hint": _total(per_layer[:-1], per_layer[-1]), "rec": per_layer[-1]}


STAR_NORMALIZATIONS = ("l2", "dim", "none")
STAR_REDUCTIONS = ("mean", "sum")


def temporal_gram(first, second, normalization="l2"):
    """(B, T, d) x (B, T, d) -> (B, T, T) Gram F1 F2^T over time, in float32.

    "l2": frames scaled to unit norm (cosine similarities: independent of width and scale);
    "dim": divided by the width d; "none": raw inner products.
    """
    first, second = first.float(), second.float()
    if normalization == "l2":
        first, second = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
    with torch.autocast(first.device.type, enabled=False):  # raw Grams overflow fp16; keep float32
        gram = torch.matmul(first, second.transpose(1, 2))
    if normalization == "dim":
        gram = gram / first.shape[-1]
    elif normalization not in STAR_NORMALIZATIONS:
        raise ValueError(f"star_normalization must be one of {STAR_NORMALIZATIONS}, got {normalization!r}")
    return gram


def _gram_distance(teacher_a, teacher_b, student_a, student_b, pair_valid, normalization, reduction):
    """Squared distance between teacher and student Grams over the real (t, t') pairs."""
    difference = temporal_gram(teacher_a, teacher_b, normalization) - temporal_gram(student_a, student_b, normalization)
    squared = (difference.square() * pair_valid).sum()
    if reduction == "mean":
        return squared / pair_valid.sum().clamp(min=1)
    if reduction == "sum":
        return squared / pair_valid.shape[0]
    raise ValueError(f"star_reduction must be one of {STAR_REDUCTIONS}, got {reduction!r}")


def star_loss(
    student,
    teacher,
    valid,
    normalization="l2",
    reduction="mean",
    layer_weight=1.0,
    intra_weight=1.0,
    recompute=True,
):
    """STaR: layer-wise and intra-layer temporal Gram matrix losses.

    Args:
        student, teacher: L+1 tensors (B, T, d_s) and (B, T, d_t): the encoder input, then one output
            per distilled layer (widths may differ: Grams are T x T).
        valid: (B, T) bool; padded frames are excluded on both time axes.
        normalization: "l2" (default), "dim" or "none", see `temporal_gram`.
        reduction: "mean" over the real (t, t') entries of the batch (default), or "sum" over them
            per utterance, averaged over the batch.
        layer_weight, intra_weight: weights of the layer-wise sum_l ||G_T[l] - G_S[l]||^2 and the
            intra-layer sum_l ||F_T[l-1] F_T[l]^T - F_S[l-1] F_S[l]^T||^2.
        recompute: recompute each layer's Grams in the backward pass instead of keeping them, so
            memory is O(B T^2) for one layer rather than for all layers.
    """
    pair_valid = (valid[:, :, None] & valid[:, None, :]).float()

    def distance(t_a, t_b, s_a, s_b):
        if recompute and torch.is_grad_enabled() and (s_a.requires_grad or s_b.requires_grad):
            return recompute_in_backward(
                _gram_distance, t_a, t_b, s_a, s_b, pair_valid, normalization, reduction, use_reentrant=False
            )
        return _gram_distance(t_a, t_b, s_a, s_b, pair_valid, normalization, reduction)

    layerwise, intra = 0.0, 0.0
    for layer in range(1, len(student)):
        layerwise = layerwise + distance(teacher[layer], teacher[layer], student[layer], student[layer])
        intra = intra + distance(teacher[layer - 1], teacher[layer], student[layer - 1], student[layer])
    total = layer_weight * layerwise + intra_weight * intra
    return total, {"star_layerwise": layerwise.detach(), "star_intra": intra.detach()}


# ==================================================================================================
# Arguments

DISTILL_MODES = ("masking", "star", "regression")
LOSS_NORMALIZATIONS = ("valid", "original")
RANDOM_TEACHERS = {"random-hubert": HubertConfig, "random-wavlm": WavLMConfig, "random-wav2vec2": Wav2Vec2Config}
LIBRISPEECH_960H = ["train-clean-100", "train-clean-360", "train-other-500"]


class DistillError(UserError):
    """A recipe, model or output-folder problem the user must fix (one line)."""


def _arg(default, help_text):
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help_text})
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass
class DistillArguments:
    """What to distil, from what, on which data, with which loss. Everything else is `TrainingArguments`."""

    distill_mode: str = _arg("masking", "masking (MaskHuBERT/ARM*), star (STaRHuBERT) or regression (no masking).")
    teacher: str = _arg(
        "facebook/hubert-base-ls960",
        "transformers HuBERT / WavLM / wav2vec2-style model id or folder, or random-hubert / random-wavlm / "
        "random-wav2vec2 (random weights from teacher_config, for offline runs).",
    )
    teacher_config: dict | None = _arg(None, "Config fields of a random-* teacher.")
    teacher_layers: list | None = _arg(
        None, "Teacher layer (1-based) distilled into each student layer; default 1:1, or evenly spaced."
    )
    teacher_single_pass: bool = _arg(
        True, "Run the masked and unmasked teacher passes as one forward over a doubled batch (falls back on OOM)."
    )
    student: str = _arg("armhubert-960h", f"A preset ({', '.join(PRESETS)}) or an ARMHubert config.json / folder.")
    student_config: dict | None = _arg(None, "Student config fields that replace the preset's.")
    data_source: str = _arg(HUB_DATASET, "Local folder holding LibriSpeech/<split>/..., or the Hub id.")
    train_splits: list = _arg(list(LIBRISPEECH_960H), "LibriSpeech training split(s), concatenated.")
    eval_split: str | None = _arg("dev-clean", "Validation split (unmasked student vs unmasked teacher); null: none.")
    crop_seconds: float | None = _arg(None, "Crop longer utterances to a window of this many seconds (null: whole).")
    mask_prob: float = _arg(0.8, "Masking distillation: mask probability (0.8 for 960 h, 0.4 for 100 h).")
    mask_length: int = _arg(10, "Mean span length; span lengths are uniform on 0..2*mask_length.")
    mask_min_spans: int = _arg(2, "Fewest spans per utterance.")
    mask_min_space: int = _arg(1, "Unmasked frames kept between spans.")
    mask_same_count: bool = _arg(True, "Thin every row to the batch's smallest masked count (as the release).")
    loss_type: str = _arg("mse", "Frame error of masking / regression losses: mse or l1.")
    hint_layer_weight: float = _arg(0.1, "Weight of layers 1..L-1 (hint) in masking / regression losses.")
    last_layer_weight: float = _arg(1.0, "Weight of the last layer.")
    loss_normalization: str = _arg(
        "valid", "valid: exclude padded frames, divide by real frames; original: as the release (padding counted, / B*T)."
    )
    star_normalization: str = _arg("l2", "STaR Gram normalisation: l2 (cosine), dim (/ width) or none (raw).")
    star_reduction: str = _arg("mean", "STaR: mean over real (t, t') entries, or sum per utterance.")
    star_layer_weight: float = _arg(1.0, "STaR: weight of the layer-wise TGM loss.")
    star_intra_weight: float = _arg(1.0, "STaR: weight of the intra-layer TGM loss.")
    star_recompute: bool = _arg(True, "STaR: recompute each layer's Grams in backward (memory O(B T^2), not O(L B T^2)).")
    effective_batch_size: int | None = _arg(
        None, "Utterances per optimiser step over all GPUs; sets gradient_accumulation_steps for the actual GPU count."
    )
    keep_best_checkpoints: int | None = _arg(3, "Keep this many checkpoints with the best eval_loss, plus the last.")

    def __post_init__(self):
        def choose(field, allowed):
            if getattr(self, field) not in allowed:
                raise DistillError(f"{field} must be one of {', '.join(allowed)}, got {getattr(self, field)!r}")

        choose("distill_mode", DISTILL_MODES)
        choose("loss_type", ("mse", "l1"))
        choose("loss_normalization", LOSS_NORMALIZATIONS)
        choose("star_normalization", STAR_NORMALIZATIONS)
        choose("star_reduction", STAR_REDUCTIONS)
        if isinstance(self.train_splits, str):
            self.train_splits = [self.train_splits]
        if not 0.0 <= self.mask_prob <= 1.0:
            raise DistillError(f"mask_prob must lie in [0, 1], got {self.mask_prob}")
        if self.mask_length < 1 or self.mask_min_space < 0 or self.mask_min_spans < 0:
            raise DistillError("mask_length must be >= 1, mask_min_space and mask_min_spans >= 0")
        if self.keep_best_checkpoints is not None and self.keep_best_checkpoints < 1:
            raise DistillError(f"keep_best_checkpoints must be >= 1 or null, got {self.keep_best_checkpoints}")
        if self.crop_seconds is not None and self.crop_seconds <= 0:
            raise DistillError(f"crop_seconds must be positive or null, got {self.crop_seconds}")


# Distillation defaults for TrainingArguments (spec: AdamW (0.9, 0.98), eps 1e-6, weight decay 0.01,
# 5 % linear warm-up then linear decay); a recipe may replace any of them.
TRAINING_DEFAULTS = dict(
    adam_beta1=0.9,
    adam_beta2=0.98,
    adam_epsilon=1e-6,
    weight_decay=0.01,
    lr_scheduler_type="linear",
    warmup_steps=0.05,
    train_sampling_strategy="group_by_length",
    eval_strategy="epoch",
    save_strategy="epoch",
    logging_steps=50,
    dataloader_num_workers=4,
    # Parameters a mode does not use are frozen (build_student), so DDP needs no unused-parameter search.
    ddp_find_unused_parameters=False,
)
# Fixed: the dataset keeps its audio column for the collator; lengths come from num_samples; we
# rotate checkpoints ourselves (best-k by eval_loss plus last).
TRAINING_FIXED = dict(
    remove_unused_columns=False,
    length_column_name="num_samples",
    save_total_limit=None,
    metric_for_best_model="eval_loss",
    greater_is_better=False,
    label_names=[],
)


def _parse_scalar(text, kind):
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ValueError(text)
    return kind(text)


def _coerce(value, annotation, key):
    """YAML leaves some values as strings (e.g. 5e-3): convert them to the field's scalar type."""
    if not isinstance(value, str):
        return value
    options = typing.get_args(annotation) or (annotation,)
    if str in options:
        return value
    for kind in (bool, int, float):
        if kind in options:
            try:
                return _parse_scalar(value, kind)
            except ValueError:
                raise DistillError(f"{key} must be a {kind.__name__}, got {value!r}") from None
    return value


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so `eval_strategy: no` stays the string "no"."""


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _parse_yaml(text):
    return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader: plain data only


def load_recipe(config_path, overrides=()):
    """The recipe YAML as a dict, with `key=value` overrides applied (values parsed as YAML, never eval)."""
    path = Path(config_path)
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in (Path(__file__).resolve().parent / "conf").glob("*.yaml")))
        raise DistillError(f"recipe {path} not found; the bundled recipes are conf/<name>.yaml with name in: {available}")
    try:
        recipe = _parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise DistillError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(recipe, dict):
        raise DistillError(f"{path} must be a mapping of key: value lines, found a {type(recipe).__name__}")
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise DistillError(f"override {override!r} is not of the form key=value")
        try:
            value = _parse_yaml(text) if text else None
        except yaml.YAMLError:
            value = text
        if "." in key:  # one entry of a mapping field, e.g. student_config.hidden_size=64
            top, sub = key.split(".", 1)
            if recipe.get(top) is None:
                recipe[top] = {}
            if not isinstance(recipe[top], dict):
                raise DistillError(f"override {override!r}: {top} is not a mapping")
            recipe[top][sub] = value
        else:
            recipe[key] = value
    return recipe


def _report_to_default():
    from transformers.integrations import is_tensorboard_available

    return ["tensorboard"] if is_tensorboard_available() else "none"


def build_arguments(recipe):
    """(DistillArguments, TrainingArguments) from a recipe dict; unknown keys and bad values raise DistillError."""
    distill_fields = {f.name for f in dataclasses.fields(DistillArguments)}
    training_fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key in recipe:
        if key not in distill_fields and key not in training_fields:
            close = difflib.get_close_matches(key, sorted(distill_fields | training_fields), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise DistillError(
                f"unknown recipe key {key!r}{hint}; keys are DistillArguments fields (distill_trainer.py) "
                "or transformers.TrainingArguments fields"
            )
        if key in TRAINING_FIXED and recipe[key] != TRAINING_FIXED[key]:
            raise DistillError(f"{key} is fixed to {TRAINING_FIXED[key]!r} by distill_trainer.py; remove it from the recipe")
    if not recipe.get("output_dir"):
        raise DistillError("the recipe sets no output_dir; add output_dir: <folder> or pass output_dir=<folder>")
    distill_types = typing.get_type_hints(DistillArguments)
    training_types = typing.get_type_hints(TrainingArguments)
    distill_values = {k: _coerce(v, distill_types[k], k) for k, v in recipe.items() if k in distill_fields}
    training_values = {k: _coerce(v, training_types[k], k) for k, v in recipe.items() if k in training_fields}
    training_values = {**TRAINING_DEFAULTS, "report_to": _report_to_default(), **training_values, **TRAINING_FIXED}
    try:
        distill_args = DistillArguments(**distill_values)
        training_args = TrainingArguments(**training_values)
    except (TypeError, ValueError) as error:
        raise DistillError(f"invalid recipe: {str(error).strip().splitlines()[0]}") from None
    return distill_args, training_args


def apply_effective_batch_size(distill_args, training_args):
    """Set gradient accumulation so that per-GPU batch x GPUs x accumulation = effective_batch_size."""
    if distill_args.effective_batch_size is None:
        return
    per_step = training_args.per_device_train_batch_size * training_args.world_size
    if distill_args.effective_batch_size % per_step:
        raise DistillError(
            f"effective_batch_size {distill_args.effective_batch_size} is not a multiple of per_device_train_batch_size "
            f"{training_args.per_device_train_batch_size} x {training_args.world_size} process(es); adjust one of them"
        )
    accumulation = distill_args.effective_batch_size // per_step
    if accumulation != training_args.gradient_accumulation_steps:
        logger.warning(
            "gradient_accumulation_steps %d -> %d so that %d process(es) x %d x %d = effective_batch_size %d",
            training_args.gradient_accumulation_steps, accumulation, training_args.world_size,
            training_args.per_device_train_batch_size, accumulation, distill_args.effective_batch_size,
        )
        training_args.gradient_accumulation_steps = accumulation


# ==================================================================================================
# Models


def load_teacher(distill_args, seed):
    """The frozen teacher in eval mode, layer drop off (never trained, wrapped by DDP or saved)."""
    name = distill_args.teacher
    if name in RANDOM_TEACHERS:
        try:
            config = RANDOM_TEACHERS[name](**(distill_args.teacher_config or {}))
        except (TypeError, ValueError) as error:
            raise DistillError(f"teacher_config for {name}: {str(error).splitlines()[0]}") from None
        torch.manual_seed(seed)
        teacher = AutoModel.from_config(config)
    else:
        if distill_args.teacher_config:
            raise DistillError("teacher_config only applies to random-hubert / random-wavlm / random-wav2vec2 teachers")
        try:
            teacher = AutoModel.from_pretrained(name)
        except Exception as error:  # noqa: BLE001 - missing folder, no network, wrong repo: all user-facing
            raise DistillError(
                f"could not load teacher {name!r}: {str(error).strip().splitlines()[0]}; give a transformers HuBERT / "
                "WavLM / wav2vec2 model id or folder (online, or cached with HF_HUB_OFFLINE=1), or random-hubert"
            ) from None
    if not hasattr(teacher, "_get_feat_extract_output_lengths") or not hasattr(teacher, "feature_extractor"):
        raise DistillError(f"teacher {name!r} ({type(teacher).__name__}) is not a wav2vec2-style speech encoder")
    teacher.config.layerdrop = 0.0
    if distill_args.distill_mode == "masking":
        if getattr(teacher, "masked_spec_embed", None) is None:
            raise DistillError(
                f"teacher {name!r} has no mask embedding (masked_spec_embed; its config has mask_time_prob=0), "
                "which masking distillation needs"
            )
        teacher.config.apply_spec_augment = True  # transformers ignores mask_time_indices without it
    return teacher.eval().requires_grad_(False)


def build_student(distill_args, teacher_config, seed):
    """A random student from a preset or config; projection heads as wide as the teacher."""
    overrides = dict(distill_args.student_config or {})
    name = distill_args.student
    try:
        if name.lower() in PRESETS:
            config = ARMHubertConfig.from_preset(name, **overrides)
        elif Path(name).exists():
            config = ARMHubertConfig.from_pretrained(name, **overrides)
        else:
            raise DistillError(
                f"student {name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing config.json / folder"
            )
    except (TypeError, ValueError, OSError) as error:
        raise DistillError(f"student config: {str(error).strip().splitlines()[0]}") from None
    if config.has_projection_heads and "projection_head_size" not in overrides:
        config.projection_head_size = teacher_config.hidden_size
    add_remote_code_entries(config)  # the saved student opens through every Auto class and the feature pipeline
    torch.manual_seed(seed)
    student = ARMHubertModel(config)
    mode = distill_args.distill_mode
    distilled_width = config.projection_head_size if config.has_projection_heads else config.hidden_size
    if mode in ("masking", "regression") and distilled_width != teacher_config.hidden_size:
        raise DistillError(
            f"{mode} distillation regresses teacher features of width {teacher_config.hidden_size}, but the student "
            f"gives {distilled_width}; give the student projection heads (projection_head_size) or the teacher's width"
        )
    if mode == "masking" and student.mask_emb is None:
        raise DistillError("masking distillation needs a student with use_mask_embedding=True")
    # Parameters a mode never uses stay out of the optimiser (and out of DDP's gradient reduction).
    if mode != "masking" and student.mask_emb is not None:
        student.mask_emb.requires_grad_(False)
    if mode == "star" and student.projection_heads is not None:
        student.projection_heads.requires_grad_(False)
    return student


def layer_pairs(distill_args, student_layers, teacher_layers):
    """Teacher layer (1-based) for each student layer 1..L_s."""
    if distill_args.teacher_layers is not None:
        pairs = [int(layer) for layer in distill_args.teacher_layers]
        if len(pairs) != student_layers or not all(1 <= layer <= teacher_layers for layer in pairs):
            raise DistillError(
                f"teacher_layers must list {student_layers} teacher layers in 1..{teacher_layers}, got {pairs}"
            )
        return pairs
    if student_layers == teacher_layers:
        return list(range(1, student_layers + 1))
    return [max(1, round(layer * teacher_layers / student_layers)) for layer in range(1, student_layers + 1)]


def check_frame_rates(teacher, student):
    """Teacher and student must give the same number of frames for every input length."""
    probe = torch.tensor([400, 401, 719, 16000, 16319, 48123, 160007])
    teacher_frames = teacher._get_feat_extract_output_lengths(probe).tolist()
    student_frames = student._get_feat_extract_output_lengths(probe)
    multiple = student.config.crop_seq_to_multiple
    student_frames = (student_frames - student_frames % multiple).tolist()
    if teacher_frames != student_frames:
        raise DistillError(
            f"teacher and student frame rates differ: for {probe.tolist()} samples the teacher gives {teacher_frames} "
            f"frames, the student {student_frames}; give the student a CNN with the teacher's kernels/strides "
            f"(total stride {math.prod(teacher.config.conv_stride)}) and crop_seq_to_multiple=1"
        )


# ==================================================================================================
# Trainer


class _DistillCallback(TrainerCallback):
    """Keeps the sampler's epoch, the throughput clock and the end-of-run report in step with training."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._log_clock = time.perf_counter()

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = int(state.epoch or 0)
        if self.trainer._length_sampler is not None:
            self.trainer._length_sampler.set_epoch(epoch)
        if isinstance(self.trainer.data_collator, AudioCollator):
            self.trainer.data_collator.epoch = epoch

    def on_train_end(self, args, state, control, **kwargs):
        total = self.trainer._drain_unreadable()
        if total and state.is_world_process_zero:
            logger.warning("%d unreadable audio file(s) were skipped during training (see the warnings above)", total)


class DistillTrainer(Trainer):
    """`transformers.Trainer` for distillation: `model` is the student, `teacher` a frozen encoder.

    The teacher lives beside the Trainer's model: it is never wrapped by DDP, never in the optimiser
    and never saved. Losses: masking distillation, STaR or plain regression (`DistillArguments`).
    Logs every loss part, audio seconds per second and skipped files; validation compares the
    unmasked student with the unmasked teacher.
    """

    def __init__(self, *args, teacher, distill_args, teacher_layers, **kwargs):
        super().__init__(*args, **kwargs)
        self.distill_args = distill_args
        self.teacher = teacher.to(self.args.device)
        self.teacher_layers = teacher_layers
        # compute_loss returns a per-batch mean: let the Trainer divide by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self.model_accepts_loss_kwargs = False
        self._teacher_single_pass = distill_args.teacher_single_pass
        self._length_sampler = None
        self._train_parts, self._eval_parts = {}, {}
        self._audio_samples, self._unreadable, self._unreadable_total, self._eval_unreadable = 0.0, 0, 0, 0
        self._log_clock, self._pending_logs = None, {}
        self.add_callback(_DistillCallback(self))

    # ---- data

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self._length_sampler = EpochSeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            list(dataset[self.args.length_column_name]),
            seed,
        )
        return self._length_sampler

    # ---- optimiser: weight decay on every parameter whose name has no "bias" (as the release)

    def get_decay_parameter_names(self, model):
        return [name for name, _ in model.named_parameters() if "bias" not in name]

    # ---- forward passes

    def _frame_validity(self, model, input_values, attention_mask):
        """(B, T) bool, True = real frame, for the student's (= the teacher's) frames."""
        student = self.accelerator.unwrap_model(model)
        num_frames = int(student._get_feat_extract_output_lengths(torch.tensor(input_values.shape[1])))
        return student._get_feature_vector_attention_mask(num_frames, attention_mask).bool()

    def _teacher_states(self, input_values, attention_mask, mask_time_indices=None):
        output = self.teacher(
            input_values, attention_mask=attention_mask, mask_time_indices=mask_time_indices, output_hidden_states=True
        )
        return output.hidden_states

    def teacher_hidden_states(self, input_values, attention_mask, mask=None):
        """Teacher hidden states (L+1 tensors) on clean input and, when `mask` is given, on masked input."""
        # DeepSpeed hands the student inputs in its own dtype; the teacher keeps its weights' dtype.
        input_values = input_values.to(self.teacher.dtype)
        with torch.no_grad(), self.accelerator.autocast():
            if mask is None:
                return self._teacher_states(input_values, attention_mask), None
            if self._teacher_single_pass:
                try:
                    both = self._teacher_states(
                        torch.cat([input_values, input_values]),
                        torch.cat([attention_mask, attention_mask]),
                        torch.cat([torch.zeros_like(mask), mask]),
                    )
                    size = input_values.shape[0]
                    return tuple(h[:size] for h in both), tuple(h[size:] for h in both)
                except torch.OutOfMemoryError:
                    self._teacher_single_pass = False
                    logger.warning("The doubled teacher batch does not fit in memory: running two teacher passes from now on")
                    from accelerate.utils import clear_device_cache

                    clear_device_cache(garbage_collection=True)
            return (
                self._teacher_states(input_values, attention_mask),
                self._teacher_states(input_values, attention_mask, mask),
            )

    def distillation_loss(self, model, inputs, masked):
        """(loss, parts) of the configured objective; `masked=False` gives the unmasked (validation) loss."""
        d = self.distill_args
        input_values, attention_mask = inputs["input_values"], inputs["attention_mask"]
        valid = self._frame_validity(model, input_values, attention_mask)
        mask = inputs.get("mask_time_indices") if masked and d.distill_mode == "masking" else None
        if masked and d.distill_mode == "masking" and mask is None:
            raise DistillError("masking distillation needs mask_time_indices in the batch (AudioCollator with a masker)")
        teacher_clean, teacher_masked = self.teacher_hidden_states(input_values, attention_mask, mask)
        output = model(input_values, attention_mask=attention_mask, mask_time_indices=mask, output_hidden_states=True)
        if output.hidden_states[0].shape[1] != teacher_clean[0].shape[1]:
            raise DistillError(
                f"teacher gives {teacher_clean[0].shape[1]} frames, student {output.hidden_states[0].shape[1]} for "
                f"{input_values.shape[1]} samples: their frame rates differ"
            )
        pairs = self.teacher_layers
        if d.distill_mode == "star":
            teacher = [teacher_clean[0]] + [teacher_clean[layer] for layer in pairs]
            return star_loss(
                list(output.hidden_states), teacher, valid, d.star_normalization, d.star_reduction,
                d.star_layer_weight, d.star_intra_weight, d.star_recompute,
            )
        student = output.projected_hidden_states if output.projected_hidden_states is not None else output.hidden_states[1:]
        weights = layer_weights(len(pairs), d.hint_layer_weight, d.last_layer_weight)
        clean = [teacher_clean[layer] for layer in pairs]
        if mask is not None:
            masked_targets = [teacher_masked[layer] for layer in pairs]
            return masking_distillation_loss(
                student, clean, masked_targets, mask, valid, weights, d.loss_type, d.loss_normalization
            )
        return regression_loss(student, clean, valid, weights, d.loss_type)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        unreadable = inputs.pop("num_unreadable", None)
        loss, parts = self.distillation_loss(model, inputs, masked=model.training)
        if model.training:  # device tensors: no host sync per step
            _accumulate(self._train_parts, parts)
            self._audio_samples = self._audio_samples + inputs["attention_mask"].sum().float()
            if unreadable is not None:
                self._unreadable = self._unreadable + unreadable
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = dict(self._prepare_inputs(inputs))
        unreadable = inputs.pop("num_unreadable", None)
        if unreadable is not None:
            self._eval_unreadable = self._eval_unreadable + unreadable
        with torch.no_grad(), self.accelerator.autocast():
            loss, parts = self.distillation_loss(model, inputs, masked=False)
        _accumulate(self._eval_parts, parts)
        return loss.detach(), None, None

    # ---- logging (every rank calls these at the same points, so the reductions line up)

    def _reduce_parts(self, accumulated):
        """{name: mean over batches and processes} of accumulated loss parts."""
        if not accumulated:
            return {}
        names = sorted(accumulated)
        local = torch.stack([torch.stack([accumulated[n][0], accumulated[n][1]]) for n in names]).to(self.args.device)
        total = self.accelerator.reduce(local.float(), reduction="sum")
        return {name: (total[i, 0] / total[i, 1].clamp(min=1)).item() for i, name in enumerate(names)}

    def _as_device_tensor(self, value):
        return torch.as_tensor(value, dtype=torch.float32).to(self.args.device)

    def _drain_unreadable(self):
        count = self.accelerator.reduce(self._as_device_tensor(self._unreadable), reduction="sum")
        self._unreadable = 0
        self._unreadable_total += int(count.item())
        return self._unreadable_total

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        if self.control.should_log and self.state.global_step > self._globalstep_last_logged:
            logs = self._reduce_parts(self._train_parts)
            self._train_parts = {}
            audio = self.accelerator.reduce(self._as_device_tensor(self._audio_samples), reduction="sum")
            self._audio_samples = 0.0
            now = time.perf_counter()
            elapsed = now - (self._log_clock or now)
            self._log_clock = now
            if elapsed > 0:
                logs["audio_seconds_per_second"] = audio.item() / SAMPLING_RATE / elapsed
            logs["unreadable_files"] = self._drain_unreadable()
            self._pending_logs = logs
        return super()._maybe_log_save_evaluate(*args, **kwargs)

    def log(self, logs, start_time=None):
        if "loss" in logs and self._pending_logs:
            logs = {**logs, **self._pending_logs}
            self._pending_logs = {}
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        self._eval_parts, self._eval_unreadable = {}, 0
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        for name, value in self._reduce_parts(self._eval_parts).items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        skipped = self.accelerator.reduce(self._as_device_tensor(self._eval_unreadable), "sum")
        output.metrics[f"{metric_key_prefix}_unreadable_files"] = int(skipped.item())
        return output

    # ---- checkpoints: best k by eval_loss plus the last

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save and self.distill_args.keep_best_checkpoints is not None:
            keep_best_and_last_checkpoints(self.args.output_dir, self.state.log_history, self.distill_args.keep_best_checkpoints)


def _accumulate(store, parts):
    for name, value in parts.items():
        value = value.detach().float()
        if name in store:
            store[name][0] += value
            store[name][1] += 1
        else:
            store[name] = [value.clone(), torch.ones((), device=value.device)]


def _checkpoint_step(path):
    match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(output_dir):
    """checkpoint-<step> folders whose trainer state was written (the Trainer writes it last), by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(step, path) for path in folder.iterdir() if (step := _checkpoint_step(path)) is not None]
    return [path for step, path in sorted(found) if (path / TRAINER_STATE_NAME).is_file()]


def keep_best_and_last_checkpoints(output_dir, log_history, keep_best):
    """Delete every checkpoint but the last and the `keep_best` with the lowest eval_loss at their step."""
    scores = {entry["step"]: entry["eval_loss"] for entry in log_history if "eval_loss" in entry}
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints:
        return
    scored = sorted((scores[_checkpoint_step(p)], _checkpoint_step(p), p) for p in checkpoints if _checkpoint_step(p) in scores)
    keep = {checkpoints[-1]} | {path for _, _, path in scored[:keep_best]}
    for path in checkpoints:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)


# ==================================================================================================
# CLI


def resolve_resume(resume, output_dir):
    """The checkpoint to resume from (None for a fresh run); a fresh run needs an empty output_dir."""
    output = Path(output_dir)
    if resume is True or resume in ("true", "True"):  # resume_from_checkpoint: true in a recipe
        resume = "last"
    if resume is None or resume is False:
        if output.is_dir() and any(output.iterdir()):
            raise DistillError(
                f"output_dir {output} is not empty; pass --resume to continue its last checkpoint, or choose a new output_dir"
            )
        return None
    if resume != "last":
        if not (Path(resume) / TRAINER_STATE_NAME).is_file():
            raise DistillError(f"--resume {resume}: not a complete checkpoint folder (no {TRAINER_STATE_NAME})")
        return str(resume)
    checkpoints = complete_checkpoints(output)
    if not checkpoints:
        raise DistillError(f"--resume: no complete {PREFIX_CHECKPOINT_DIR}-<step> folder in {output} to resume from")
    return str(checkpoints[-1])


def parse_cli(argv=None):
    parser = argparse.ArgumentParser(
        prog="distill_trainer.py",
        description="Distil an ARMHuBERT-family student from a HuBERT / WavLM teacher on LibriSpeech.",
        epilog="Example: accelerate launch distill_trainer.py --config conf/armhubert-s-100h.yaml bf16=true fp16=false",
    )
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. conf/quickstart.yaml")
    parser.add_argument(
        "--resume", nargs="?", const="last", default=None, metavar="CHECKPOINT",
        help="continue the last complete checkpoint in output_dir (or the given checkpoint folder) exactly",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="replace recipe entries")
    cli = parser.parse_intermixed_args(argv)
    if cli.resume not in (None, "last") and "=" in cli.resume and not Path(cli.resume).exists():
        cli.overrides.insert(0, cli.resume)  # `--resume key=value`: the flag took an override
        cli.resume = "last"
    return cli


def _setup_logging(training_args):
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    import transformers

    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))


def run(argv=None, callbacks=()):
    """Parse, validate everything, then train and save the student. Returns the trainer."""
    cli = parse_cli(argv)
    recipe = load_recipe(cli.config, cli.overrides)
    distill_args, training_args = build_arguments(recipe)
    _setup_logging(training_args)
    resume = resolve_resume(cli.resume or training_args.resume_from_checkpoint, training_args.output_dir)
    apply_effective_batch_size(distill_args, training_args)

    teacher = load_teacher(distill_args, training_args.seed)
    student = build_student(distill_args, teacher.config, training_args.seed)
    check_frame_rates(teacher, student)
    if student.config.layerdrop > 0 and "ddp_find_unused_parameters" not in recipe:
        training_args.ddp_find_unused_parameters = True  # a dropped layer leaves its parameters without gradient
    pairs = layer_pairs(distill_args, student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    min_samples = max(
        student.config.receptive_field, receptive_field(teacher.config.conv_kernel, teacher.config.conv_stride)
    )

    train_dataset = load_librispeech(distill_args.data_source, distill_args.train_splits)
    train_dataset = train_dataset.filter(lambda n: n >= min_samples, input_columns="num_samples")
    eval_dataset = None
    if distill_args.eval_split:
        eval_dataset = load_librispeech(distill_args.data_source, distill_args.eval_split)
        eval_dataset = eval_dataset.filter(lambda n: n >= min_samples, input_columns="num_samples")
    elif training_args.eval_strategy != "no":
        training_args.eval_strategy = "no"
    feature_extractor = release_feature_extractor()
    max_samples = None if distill_args.crop_seconds is None else int(distill_args.crop_seconds * SAMPLING_RATE)
    masker = None
    if distill_args.distill_mode == "masking":
        masker = SpanMasker(
            student.config.conv_kernel, student.config.conv_stride, distill_args.mask_prob, distill_args.mask_length,
            distill_args.mask_min_spans, distill_args.mask_min_space, distill_args.mask_same_count,
            training_args.data_seed if training_args.data_seed is not None else training_args.seed,
        )
    logger.info(
        "Distilling %s (%s) into %s: %d training utterances (%.1f h), teacher layers %s",
        distill_args.teacher, distill_args.distill_mode, distill_args.student, len(train_dataset),
        sum(train_dataset["num_samples"]) / SAMPLING_RATE / 3600, pairs,
    )

    trainer = DistillTrainer(
        model=student,
        args=training_args,
        teacher=teacher,
        distill_args=distill_args,
        teacher_layers=pairs,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=AudioCollator(feature_extractor, max_samples, min_samples, masker=masker),
        processing_class=feature_extractor,
        callbacks=list(callbacks),
    )
    if training_args.should_save and resume is None:
        atomic_write_text(Path(training_args.output_dir) / "distill_recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    trainer.train(resume_from_checkpoint=resume)
    save_trained_model(trainer, training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="Distilled student")
    return trainer


def main(argv=None):
    return run_main("distill_trainer.py", run, argv)


if __name__ == "__main__":
    sys.exit(main())
