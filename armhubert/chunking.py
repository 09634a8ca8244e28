"""Long audio in overlapping windows, stitched on the whole input's frame grid.

A HuBERT-class encoder attends over the whole input: on a 10-minute recording (30,000 frames) time
grows with the square of the length, and every frame's features depend on audio minutes away,
unlike anything the model saw in training (LibriSpeech utterances of at most 35 s).
`encode_chunked` runs windows of `chunk_length_s` seconds instead, each with `stride_length_s`
seconds of context on either side that are dropped again (the names and meaning of the ASR
pipeline's options), and keeps every window's centre frames. Time and memory then grow linearly
with the length.

The stitching is exact arithmetic, not resampling: frame t of a CNN with total stride S and
receptive field R (`config.inputs_to_logits_ratio`, `config.receptive_field`) reads samples
[t*S, t*S + R), and a signal of N samples yields floor((N - R) / S) + 1 frames (the per-layer
formula L <- floor((L - k) / s) + 1 composes to it). A window that starts at sample s*S and holds
(F - 1)*S + R samples therefore yields exactly frames s .. s + F - 1 of the whole input: every
output frame keeps its index, and the CNN features of a window equal the whole input's where the
CNN has no normalisation across time. (The releases' first CNN layer has a GroupNorm over the whole
time axis, so there a window's CNN features differ slightly from the whole input's.)

This module imports only torch and the configuration (it is meant to move into the model's own file).

    from armhubert.chunking import encode_chunked
    with torch.inference_mode():
        out = encode_chunked(model, waveform[None], chunk_length_s=30.0, stride_length_s=5.0)
    out.last_hidden_state   # (1, T, D): T = model(waveform[None]).last_hidden_state.shape[1]
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from configuration_armhubert import SAMPLING_RATE

CHUNK_LENGTH_S = 30.0  # the longest training utterances are about this long
STRIDE_LENGTH_S = 5.0  # context dropped on each side: chunk_length_s / 6, the ASR pipeline's default


@dataclasses.dataclass(frozen=True)
class FrameWindow:
    """One window of a chunked input, in frames of the whole input's grid.

    The window yields frames [start, start + frames) and contributes [keep_start, keep_end) of them.
    """

    start: int
    frames: int
    keep_start: int
    keep_end: int


def plan_windows(total_frames: int, window_frames: int, left_frames: int, right_frames: int) -> list[FrameWindow]:
    """Windows of `window_frames` frames covering [0, total_frames), each kept frame exactly once.

    Every window but the first drops `left_frames` frames on its left, every window but the last
    `right_frames` on its right, so a kept frame has at least that much context on both sides
    (except at the input's own ends). The last window is moved back to end at the last frame (it
    then drops more on its left) so that all windows have the same length: they batch without padding.
    One window of the whole input when it is no longer than a window.
    """
    if total_frames <= window_frames:
        return [FrameWindow(0, total_frames, 0, total_frames)]
    step = window_frames - left_frames - right_frames
    if step < 1 or left_frames < 0 or right_frames < 0:
        raise ValueError(
            f"a window of {window_frames} frames cannot drop {left_frames} + {right_frames} frames of context and "
            "keep any; make stride_length_s less than half of chunk_length_s"
        )
    windows, start, keep_start = [], 0, 0
    while start + window_frames < total_frames:
        keep_end = start + window_frames - right_frames
        windows.append(FrameWindow(start, window_frames, keep_start, keep_end))
        keep_start, start = keep_end, start + step
    windows.append(FrameWindow(total_frames - window_frames, window_frames, keep_start, total_frames))
    return windows


def num_frames(config: Any, num_samples: int) -> int:
    """Frames the model outputs for `num_samples` samples: floor((N - R) / S) + 1, less the crop to
    `config.crop_seq_to_multiple`; 0 below the receptive field."""
    stride, field = config.inputs_to_logits_ratio, config.receptive_field
    frames = (num_samples - field) // stride + 1 if num_samples >= field else 0
    return frames - frames % config.crop_seq_to_multiple


def window_samples(config: Any, window: FrameWindow) -> tuple[int, int]:
    """(first sample, number of samples) of the audio that yields exactly the window's frames."""
    return window.start * config.inputs_to_logits_ratio, (window.frames - 1) * config.inputs_to_logits_ratio + (
        config.receptive_field
    )


def _context_seconds(stride_length_s: float | Sequence[float] | None, chunk_length_s: float) -> tuple[float, float]:
    if stride_length_s is None:
        return chunk_length_s / 6, chunk_length_s / 6
    if isinstance(stride_length_s, (int, float)):
        return float(stride_length_s), float(stride_length_s)
    left, right = stride_length_s
    return float(left), float(right)


def chunk_windows(
    config: Any,
    num_samples: int,
    chunk_length_s: float = CHUNK_LENGTH_S,
    stride_length_s: float | Sequence[float] | None = STRIDE_LENGTH_S,
) -> list[FrameWindow]:
    """The windows `encode_chunked` runs for an input of `num_samples` samples.

    Args:
        config: the model's config (CNN kernels and strides, `crop_seq_to_multiple`).
        chunk_length_s: window length in seconds (rounded down to whole frames, and to a multiple of
            `crop_seq_to_multiple` frames, so that the model crops nothing off a window).
        stride_length_s: context dropped on each side, in seconds (rounded to whole frames), or a
            (left, right) pair, as the ASR pipeline's option; `None`: chunk_length_s / 6 on each side.
    """
    if chunk_length_s <= 0:
        raise ValueError(f"chunk_length_s must be positive, got {chunk_length_s}")
    left_s, right_s = _context_seconds(stride_length_s, chunk_length_s)
    if left_s < 0 or right_s < 0:
        raise ValueError(f"stride_length_s must not be negative, got {stride_length_s}")
    window_frames = num_frames(config, int(chunk_length_s * SAMPLING_RATE))
    if window_frames < 1:
        raise ValueError(
            f"chunk_length_s={chunk_length_s} is shorter than the model's receptive field "
            f"({config.receptive_field / SAMPLING_RATE:.3f} s); give a longer window"
        )
    frame_seconds = config.inputs_to_logits_ratio / SAMPLING_RATE
    left, right = round(left_s / frame_seconds), round(right_s / frame_seconds)
    return plan_windows(num_frames(config, num_samples), window_frames, left, right)


def _window_piece(config: Any, windows: list[FrameWindow], index: int, length: int) -> tuple[int, int]:
    """(first sample, number of samples) to encode for window `index` of a row of `length` samples.

    A row that is one window runs whole, every sample, as the unchunked model reads it.
    """
    return (0, length) if len(windows) == 1 else window_samples(config, windows[index])


def _window_batches(rows: list[list[FrameWindow]], lengths: list[int], config: Any, windows_per_batch: int):
    """Batches of (row, window, first sample, samples) whose pieces have the same length, in input order."""
    by_length: dict[int, list[tuple[int, FrameWindow, int, int]]] = {}
    for row, windows in enumerate(rows):
        for index, window in enumerate(windows):
            start, count = _window_piece(config, windows, index, lengths[row])
            by_length.setdefault(count, []).append((row, window, start, count))
    for pieces in by_length.values():
        for first in range(0, len(pieces), windows_per_batch):
            yield pieces[first : first + windows_per_batch]


def _frame_fields(output: Mapping) -> dict[str, tuple[torch.Tensor, ...]]:
    """The frame-aligned fields of a window's output, each as a tuple of (W, F, ...) tensors; no masks.

    `ModelOutput`s are mappings of their non-None fields.
    """
    return {
        name: value if isinstance(value, tuple) else (value,)
        for name, value in output.items()
        if value is not None and name != "frame_attention_mask"
    }


def encode_chunked(
    model: torch.nn.Module,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk_length_s: float = CHUNK_LENGTH_S,
    stride_length_s: float | Sequence[float] | None = STRIDE_LENGTH_S,
    windows_per_batch: int = 1,
    transform: Callable[[Mapping], Mapping] | None = None,
    **forward_kwargs: Any,
) -> Mapping:
    """Encode (B, N) audio in overlapping windows and stitch their centre frames (see the module docstring).

    Args:
        model: an `ARMHubertModel` (any encoder called as `model(input_values, **forward_kwargs)`, returning
            a `ModelOutput`, whose config has the CNN's kernels and strides).
        input_values (`(B, N)` float): raw 16 kHz audio; each row is planned by its own length.
        attention_mask (`(B, N)`, optional): 1 = real sample; only a row's real samples are encoded
            (its padding is never part of a window).
        chunk_length_s, stride_length_s: window length and context dropped on each side (seconds); see
            `chunk_windows`. A row no longer than a window runs whole, as `model(row)` would.
        windows_per_batch: windows encoded per model call (windows have the same length, so a batch has
            no padding; the model's batched rows equal its single ones).
        transform: applied to every window's output before stitching, e.g. to keep only some layers
            (default: the whole output); returns a `ModelOutput` or a dict.
        **forward_kwargs: passed to the model, e.g. `output_hidden_states=True`.

    Returns:
        An object of the type the model (or `transform`) returns with every frame-aligned tensor
        `(B, T, ...)` stitched, tuples of them too (T = the frames of the longest row; frames past a
        shorter row's end are zero), and `frame_attention_mask` `(B, T)` long (None when no row is shorter)
        where the output type has that field.
    """
    if forward_kwargs.get("output_attentions"):
        raise ValueError("encode_chunked cannot stitch attention maps (they span a window, not the input)")
    if windows_per_batch < 1:
        raise ValueError(f"windows_per_batch must be at least 1, got {windows_per_batch}")
    if input_values.dim() != 2:
        raise ValueError(f"input_values must have shape (batch, samples), got {tuple(input_values.shape)}")
    config = model.config
    lengths = [input_values.shape[1]] * input_values.shape[0]
    if attention_mask is not None:
        lengths = [int(length) for length in attention_mask.sum(-1)]
    rows = [chunk_windows(config, length, chunk_length_s, stride_length_s) for length in lengths]
    total = max(windows[-1].keep_end for windows in rows)
    transform = transform or (lambda output: output)
    stitched: dict[str, list[torch.Tensor]] = {}
    template = None
    for batch in _window_batches(rows, lengths, config, windows_per_batch):
        pieces = torch.stack([input_values[row, start : start + count] for row, _, start, count in batch])
        output = transform(model(pieces, **forward_kwargs))
        template = output if template is None else template
        for name, tensors in _frame_fields(output).items():
            targets = stitched.setdefault(
                name, [tensor.new_zeros((len(rows), total, *tensor.shape[2:])) for tensor in tensors]
            )
            for target, tensor in zip(targets, tensors):
                for index, (row, window, _, _) in enumerate(batch):
                    offset = window.keep_start - window.start
                    kept = window.keep_end - window.keep_start
                    target[row, window.keep_start : window.keep_end] = tensor[index, offset : offset + kept]
        del output
    return _assemble(template, stitched, [windows[-1].keep_end for windows in rows], total)


def _assemble(template: Mapping, stitched: dict[str, list[torch.Tensor]], frames: list[int], total: int) -> Mapping:
    """An object of `template`'s type holding the stitched tensors (tuples as tuples) and the frame mask."""
    fields = {
        name: tuple(stitched[name]) if isinstance(template[name], tuple) else stitched[name][0]
        for name in _frame_fields(template)
    }
    has_mask = "frame_attention_mask" in (
        {field.name for field in dataclasses.fields(template)} if dataclasses.is_dataclass(template) else template
    )
    if has_mask:
        device = next(iter(stitched.values()))[0].device
        lengths = torch.tensor(frames, device=device)
        mask = (torch.arange(total, device=device)[None, :] < lengths[:, None]).long()
        fields["frame_attention_mask"] = None if min(frames) == total else mask
    return type(template)(**fields)
