"""Audio in: any file or array -> mono float32 samples at 16 kHz (soundfile + soxr).

The one audio reader of the project, used by distillation, fine-tuning, the pipelines' `load_16k`
and the scripts. No ffmpeg, torchcodec or torchaudio is needed.

    from armhubert.audio import load_16k
    asr(load_16k("speech_44k.wav"))                    # file: decoded, channels averaged, resampled
    asr(load_16k(stereo, sampling_rate=44100))         # array: (samples, channels) or (channels, samples)
"""

import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import soundfile
import soxr

from configuration_armhubert import SAMPLING_RATE

from .cli import UserError

MAX_CHANNELS = 8  # an axis this short is channels, not time


class DataError(UserError):
    """A data problem the user must fix: says what was expected and what was found, in one line."""


def read_audio(audio: str | os.PathLike | dict, target_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Decode an undecoded audio dict ({"path", "bytes"}) or a file path to a float32 mono waveform.

    Stereo is averaged; other rates are resampled with soxr. Raises DataError naming the file when
    soundfile cannot read it or it holds NaN / infinite samples.
    """
    if isinstance(audio, dict):
        name = audio.get("path") or "<audio bytes>"
        source = io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio.get("path")
    else:
        name = source = os.fspath(audio)
    if source is None:
        raise DataError("audio entry has neither 'bytes' nor 'path'; expected an undecoded datasets audio dict")
    try:
        samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except Exception as error:  # noqa: BLE001 - libsndfile errors, missing files, truncated streams
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"cannot read audio file {name}: {reason}; expected audio that soundfile can decode (FLAC, WAV)"
        ) from None
    if not np.isfinite(samples).all():  # float WAV / FLAC can hold NaN or inf: they would poison training
        raise DataError(f"audio file {name} holds NaN or infinite samples; expected finite samples in [-1, 1]")
    samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate != target_rate:
        samples = soxr.resample(samples, rate, target_rate).astype(np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a (samples, channels) or (channels, samples) array; 1-D passes through."""
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise ValueError(f"audio must be 1-D (samples,) or 2-D with a channel axis, got shape {samples.shape}")
    rows, columns = samples.shape
    if columns <= MAX_CHANNELS < rows:
        return samples.mean(axis=1)
    if rows <= MAX_CHANNELS < columns:
        return samples.mean(axis=0)
    raise ValueError(
        f"cannot tell the channel axis of audio of shape {samples.shape}; pass (samples, channels) with at most "
        f"{MAX_CHANNELS} channels, or average the channels yourself"
    )


def load_16k(audio: Any, sampling_rate: int | None = None) -> np.ndarray:
    """Mono float32 samples at 16 kHz from a file path, an audio dict or an array.

    Args:
        audio: a path (anything soundfile reads: FLAC, WAV, OGG, ...); a `datasets` audio dict, undecoded
            ({"path", "bytes"}) or decoded ({"array", "sampling_rate"}); or a float array / tensor,
            mono or with a channel axis.
        sampling_rate: the rate of an array (required for arrays; read from files and dicts).

    Raises:
        ValueError: unreadable file, array without a rate, integer or non-finite samples, empty audio.
    """
    if isinstance(audio, (str, os.PathLike)) or (
        isinstance(audio, dict) and "array" not in audio and "raw" not in audio
    ):
        try:
            samples = read_audio(audio, target_rate=SAMPLING_RATE)
        except DataError as error:
            raise ValueError(str(error)) from None
    else:
        if isinstance(audio, dict):
            sampling_rate = audio.get("sampling_rate", sampling_rate)
            audio = audio["array"] if "array" in audio else audio["raw"]
        if sampling_rate is None:
            raise ValueError("an audio array needs its sampling_rate, e.g. load_16k(samples, sampling_rate=44100)")
        if hasattr(audio, "detach"):  # torch tensor
            audio = audio.detach().cpu().numpy()
        samples = np.asarray(audio)
        if not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(
                f"audio has {samples.dtype} samples; give floats in [-1, 1] (e.g. samples / 32768 for 16-bit PCM)"
            )
        samples = to_mono(samples.astype(np.float32, copy=False))
        if sampling_rate != SAMPLING_RATE and samples.size:
            samples = soxr.resample(samples, sampling_rate, SAMPLING_RATE)
    if samples.size == 0:
        raise ValueError("the audio is empty (0 samples)")
    if not np.isfinite(samples).all():
        raise ValueError("the audio holds NaN or infinite samples")
    return np.ascontiguousarray(samples, dtype=np.float32)


def window(samples: np.ndarray, max_samples: int | None, choose_offset: Callable[[int], int]) -> np.ndarray:
    """`samples` (time,) cut to at most `max_samples` (None: no limit), whole when not longer.

    `choose_offset(n)` picks the start among the n possible ones (0 .. n-1): the cropping policy
    (fixed per utterance in distillation, random every time in classification training).
    """
    if max_samples is None or len(samples) <= max_samples:
        return samples
    offset = choose_offset(len(samples) - max_samples + 1)
    return samples[offset : offset + max_samples]
