"""Long recordings from a file, window by window: the recording is never decoded whole.

The windows, their frame-grid arithmetic and the stitching live in `pipeline_armhubert` (remote code,
so that a saved model folder's feature pipeline chunks too): `chunk_windows`, `encode_windows` and the
model-level helper `encode_chunked`. One implementation serves the feature pipeline, Python and the
corpus tool; this module only feeds `encode_windows` from a file instead of an array. Each window's
samples are decoded on their own by `armhubert.speech.audio.read_audio` (a seek and a bounded read for a
16 kHz file; for other rates the crop is resampled with context on either side), so memory is bounded
by the window, not by the recording.

    from armhubert.speech.audio import header_num_samples
    from armhubert.speech.chunking import file_window_reader
    from pipeline_armhubert import encode_windows

    read = file_window_reader("talk.flac", torch.device("cpu"))
    with torch.inference_mode():
        for window, output in encode_windows(model, read, header_num_samples("talk.flac")):
            output.last_hidden_state   # (1, window.keep_end - window.keep_start, D): frames keep_start.. of the grid
"""

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from configuration_armhubert import SAMPLING_RATE

from ..cli import UserError
from ..files.untrusted import brief
from .audio import DataError, read_audio

# Longest utterance a model runs whole: its first convolution alone keeps 512 channels at a fifth of the sample
# rate, 410 bytes a sample (800 MB for 2 minutes, 23 GB for an hour). Longer ones are chunked or refused.
MAX_UNCHUNKED_SECONDS = 120


def check_window(seconds: float, field_samples: int, what: str, advice: str) -> None:
    """Refuse an audio window of `seconds` (`what`: the option that sets it, with its value) shorter than
    `field_samples`, the models' receptive field: a window that short holds no frame. `advice`: what to do."""
    if seconds * SAMPLING_RATE < field_samples:
        raise UserError(
            f"{what} is shorter than the receptive field ({field_samples} samples, "
            f"{field_samples / SAMPLING_RATE:.3f} s); {advice}"
        )


def check_unchunked_lengths(lengths: Sequence[int], name_of: Callable[[int], str], advice: str) -> None:
    """Refuse utterances longer than MAX_UNCHUNKED_SECONDS (`lengths` in 16 kHz samples) that would run whole,
    naming the longest (`name_of(row)`); `advice` says what to do instead (one line)."""
    limit = MAX_UNCHUNKED_SECONDS * 16000
    longest = max(range(len(lengths)), key=lengths.__getitem__, default=None)
    if longest is not None and lengths[longest] > limit:
        count = sum(length > limit for length in lengths)
        raise DataError(
            f"{count} utterance(s) are longer than {MAX_UNCHUNKED_SECONDS} s, the longest {brief(name_of(longest))} "
            f"({lengths[longest] / 16000:.0f} s), and would run whole (memory grows with the length); {advice}"
        )


def file_window_reader(audio: str | os.PathLike | dict, device: torch.device) -> Callable[[int, int], torch.Tensor]:
    """`read(start, count)` -> (count,) float32 tensor on `device`: samples [start, start + count) of the file
    at 16 kHz, decoded from the file alone (a path or an undecoded {"path", "bytes"} dict).

    The file's length comes from its header (`header_num_samples`); for a file at another rate that can be
    a sample longer than the resampled stream, so a read past its end is padded with zeros.
    Raises `armhubert.speech.audio.DataError` for an unreadable window (decoding error, NaN samples).
    """

    def read(start: int, count: int) -> torch.Tensor:
        samples = read_audio(audio, max_samples=count, choose_offset=lambda choices: min(start, choices - 1))
        if len(samples) < count:
            samples = np.pad(samples, (0, count - len(samples)))
        return torch.from_numpy(samples).to(device)

    return read
