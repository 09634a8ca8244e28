"""Long recordings from a file, window by window: the recording is never decoded whole.

The windows, their frame-grid arithmetic and the stitching live in `pipeline_armhubert` (remote code,
so that a saved model folder's feature pipeline chunks too): `chunk_windows`, `encode_windows` and the
model-level helper `encode_chunked`. One implementation serves the feature pipeline, Python and the
corpus tool; this module only feeds `encode_windows` from a file instead of an array. Each window's
samples are decoded on their own by `armhubert.audio.read_audio` (a seek and a bounded read for a
16 kHz file; for other rates the crop is resampled with context on either side), so memory is bounded
by the window, not by the recording.

    from armhubert.chunking import encode_file_windows
    with torch.inference_mode():
        for window, output in encode_file_windows(model, "talk.flac", num_samples):
            output.last_hidden_state   # (1, window.keep_end - window.keep_start, D): frames keep_start.. of the grid
"""

import os
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from pipeline_armhubert import CHUNK_LENGTH_S, FrameWindow, encode_windows

from .audio import read_audio


def file_window_reader(audio: str | os.PathLike | dict, device: torch.device) -> Callable[[int, int], torch.Tensor]:
    """`read(start, count)` -> (count,) float32 tensor on `device`: samples [start, start + count) of the file
    at 16 kHz, decoded from the file alone (a path or an undecoded {"path", "bytes"} dict).

    The file's length comes from its header (`header_num_samples`); for a file at another rate that can be
    a sample longer than the resampled stream, so a read past its end is padded with zeros.
    Raises `armhubert.audio.DataError` for an unreadable window (decoding error, NaN samples).
    """

    def read(start: int, count: int) -> torch.Tensor:
        samples = read_audio(audio, max_samples=count, choose_offset=lambda choices: min(start, choices - 1))
        if len(samples) < count:
            samples = np.pad(samples, (0, count - len(samples)))
        return torch.from_numpy(samples).to(device)

    return read


def encode_file_windows(
    model: torch.nn.Module,
    audio: str | os.PathLike | dict,
    num_samples: int,
    chunk_length_s: float = CHUNK_LENGTH_S,
    stride_length_s: float | Sequence[float] | None = None,
    windows_per_batch: int = 1,
    transform: Callable[[Mapping], Mapping] | None = None,
    **forward_kwargs,
) -> Iterator[tuple[FrameWindow, Mapping]]:
    """`pipeline_armhubert.encode_windows` over a file of `num_samples` samples at 16 kHz (from its header):
    yields (window, output cut to its kept frames) in frame order, reading each window from the file."""
    device = next(model.parameters()).device
    read = file_window_reader(audio, device)
    yield from encode_windows(
        model, read, num_samples, chunk_length_s, stride_length_s, windows_per_batch, transform, **forward_kwargs
    )
