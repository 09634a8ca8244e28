"""The release's span masks for masking distillation.

Our own implementation: per row, int(p * valid / mean_length + U[0,1)) spans (at least `min_spans`)
with lengths uniform in 0..2*mean_length, placed longest first into free intervals (chosen with
probability proportional to their length among those with room for span + min_space, start
uniform), never touching and never on padding; then every row is thinned at random to the batch's
smallest masked count. When every drawn length of a row is 0, one span of the mean length is placed
instead (as fairseq v0.12.2's sampler does), so no row, and with equal counts no batch, goes unmasked.
Which frames are real follows the original teacher (`release_real_frames`), not the convolution
length formula.
"""

import dataclasses
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig, TrainingArguments

    from .recipe import DistillTrainingArguments


def _span_lengths(valid_length, mask_prob, mean_length, min_spans, rng):
    count = max(min_spans, int(mask_prob * valid_length / mean_length + rng.random()))
    lengths = rng.integers(0, 2 * mean_length, size=count, endpoint=True)
    if count and not lengths.any():
        # Every draw is 0 (1 row in 441 when 2 spans are drawn, e.g. under 50 frames at p = 0.4): one span instead.
        lengths[0] = min(mean_length, valid_length - 1)
    return lengths


def release_real_frames(sample_lengths: Sequence[int], padded_samples: int, num_frames: int) -> list[int]:
    """Real frames per row as the original teacher marks them: a frame is real if any of its samples is.

    The original (fairseq HuBERT) cuts the padded sample mask into `num_frames` chunks of
    `padded_samples // num_frames` samples (the remainder at the end dropped) and marks a frame as
    padding only when its whole chunk is padding: min(num_frames, ceil(n / chunk)) real frames for n
    real samples. The convolution length formula (frames whose whole receptive field is real, what the
    models' attention masks use) gives one or two frames fewer for most rows shorter than the batch's
    longest, which moves the never-masked last frame.
    """
    chunk = padded_samples // num_frames
    return [min(num_frames, -(-int(n) // chunk)) for n in sample_lengths]


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
    valid_lengths: Sequence[int],
    num_frames: int,
    mask_prob: float,
    mean_length: int = 10,
    min_spans: int = 2,
    min_space: int = 1,
    same_count: bool = True,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
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

    conv_kernel: list[int]
    conv_stride: list[int]
    mask_prob: float
    mean_length: int = 10
    min_spans: int = 2
    min_space: int = 1
    same_count: bool = True
    seed: int = 0

    def frames(self, num_samples: int) -> int:
        """Frames the CNN gives for `num_samples` samples."""
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            num_samples = (num_samples - kernel) // stride + 1
        return num_samples

    def __call__(self, sample_lengths: list[int], padded_samples: int, ids: list[str], epoch: int = 0) -> torch.Tensor:
        """(B, frames(padded_samples)) bool mask for B waveforms of `sample_lengths` samples, padded.

        Real frames per row as the original teacher counts them (`release_real_frames`).
        """
        key = zlib.crc32("\n".join(ids).encode())
        rng = np.random.default_rng([self.seed, epoch, key])
        num_frames = self.frames(padded_samples)
        mask = sample_span_mask(
            release_real_frames(sample_lengths, padded_samples, num_frames),
            num_frames,
            self.mask_prob,
            self.mean_length,
            self.min_spans,
            self.min_space,
            self.same_count,
            rng,
        )
        return torch.from_numpy(mask)


def recipe_masker(
    distill_args: "DistillTrainingArguments", training_args: "TrainingArguments", student_config: "PretrainedConfig"
) -> SpanMasker | None:
    """The span-mask sampler of masking distillation, on the student's frames (None for other modes)."""
    if distill_args.distill_mode != "masking":
        return None
    return SpanMasker(
        student_config.conv_kernel,
        student_config.conv_stride,
        distill_args.mask_prob,
        distill_args.mask_length,
        distill_args.mask_min_spans,
        distill_args.mask_min_space,
        distill_args.mask_same_count,
        training_args.data_seed if training_args.data_seed is not None else training_args.seed,
    )
