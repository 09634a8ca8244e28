"""Audio in: any file or array -> mono float32 samples at 16 kHz (soundfile + soxr).

The one audio reader of the project, used by distillation, fine-tuning, the pipelines' `load_16k`
and the scripts. No ffmpeg, torchcodec or torchaudio is needed.

    from armhubert.speech.audio import load_16k
    asr(load_16k("speech_44k.wav"))                    # file: decoded, channels averaged, resampled
    asr(load_16k(stereo, sampling_rate=44100))         # array: (samples, channels) or (channels, samples)
"""

import io
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import soundfile
import soxr

from configuration_armhubert import SAMPLING_RATE
from pipeline_armhubert import MAX_AUDIO_CHANNELS, MAX_AUDIO_SECONDS, decode_blocks

from ..cli import UserError, first_line
from ..files.untrusted import check_regular_file

MAX_CHANNELS = 8  # an axis this short is channels, not time


class DataError(UserError):
    """A data problem the user must fix: says what was expected and what was found, in one line."""


def read_audio(
    audio: str | os.PathLike | dict,
    target_rate: int = SAMPLING_RATE,
    max_samples: int | None = None,
    choose_offset: Callable[[int], int] | None = None,
) -> np.ndarray:
    """Decode an undecoded audio dict ({"path", "bytes"}) or a file path to a float32 mono waveform (time,).

    Stereo is averaged; other rates are resampled with soxr. With `max_samples` (at `target_rate`), only
    a window of that many samples is decoded, at the offset `choose_offset(n)` picks among the n possible
    ones (`window`'s policy; default 0): a long file never takes more memory than its crop. A file is
    decoded in blocks of BLOCK_FRAMES frames, so the memory a read takes is its output's. Raises
    DataError naming the file when soundfile cannot read it, it declares more than MAX_AUDIO_SECONDS or
    MAX_CHANNELS channels (checked from its header, before decoding), or it holds NaN / infinite samples.
    """
    name, source = _source(audio)
    try:
        with soundfile.SoundFile(source) as stream:
            start, frames, skip = _planned_read(stream, name, target_rate, max_samples, choose_offset)
            samples = _decode(stream, name, start, frames, target_rate)[skip:]
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - libsndfile errors, missing files, truncated streams
        reason = first_line(error)
        raise DataError(
            f"cannot read audio file {name}: {reason}; expected audio that soundfile can decode (FLAC, WAV)"
        ) from None
    if max_samples is not None:
        samples = samples[:max_samples]
    return np.ascontiguousarray(samples, dtype=np.float32)


def audio_num_samples(audio: str | os.PathLike | dict, target_rate: int = SAMPLING_RATE) -> int:
    """Length at `target_rate` of an audio file or undecoded audio dict, from its header alone (nothing is
    decoded); DataError naming the file when it is not a regular file or soundfile cannot read its header."""
    name, source = _source(audio)
    try:
        info = soundfile.info(source)
    except Exception as error:  # noqa: BLE001 - missing files and every libsndfile error
        raise DataError(f"cannot read audio file {name}: {first_line(error)}") from None
    return int(round(info.frames * target_rate / info.samplerate))


def header_num_samples(audio: str | os.PathLike | dict, target_rate: int = SAMPLING_RATE) -> int | None:
    """`audio_num_samples`, or None when the file is unusable (for sources that skip such files)."""
    try:
        return audio_num_samples(audio, target_rate)
    except DataError:
        return None


def _source(audio: str | os.PathLike | dict) -> tuple[str, Any]:
    """(name for messages, what soundfile opens) of a path or an undecoded audio dict ({"path", "bytes"}).

    The door every audio file passes: a path must be a regular file (a FIFO would block the open forever,
    a device never end), checked without opening it.
    """
    if not isinstance(audio, dict):
        name = os.fspath(audio)
        check_regular_file(name, f"audio file {name}", DataError)
        return name, name
    if not isinstance(audio.get("bytes"), (bytes, type(None))) or not isinstance(audio.get("path"), (str, type(None))):
        raise DataError(
            "audio entry's 'bytes' / 'path' are not bytes / text; expected an undecoded datasets audio dict"
        )
    name = audio.get("path") or "<audio bytes>"
    if audio.get("bytes"):
        return name, io.BytesIO(audio["bytes"])
    if audio.get("path") is None:
        raise DataError("audio entry has neither 'bytes' nor 'path'; expected an undecoded datasets audio dict")
    check_regular_file(name, f"audio file {name}", DataError)
    return name, name


CROP_CONTEXT_FRAMES = 4096


def _planned_read(stream, name, target_rate, max_samples, choose_offset):
    """(first frame, frames, output samples to drop) of `stream` to decode: all of it, or the chosen crop.

    A crop of a file at another rate is decoded with CROP_CONTEXT_FRAMES of context on either side (or a
    little more, to start on a frame both sample grids share) and the context dropped after resampling,
    so that the resampler's edges fall outside the crop and its samples are those of the whole decode.
    """
    rate, frames = stream.samplerate, stream.frames
    if stream.channels > MAX_AUDIO_CHANNELS:
        raise DataError(f"audio file {name} declares {stream.channels} channels; at most {MAX_AUDIO_CHANNELS} are read")
    if frames > MAX_AUDIO_SECONDS * rate:
        raise DataError(
            f"audio file {name} declares {frames:,} frames at {rate} Hz ({frames / rate / 3600:.1f} h), more than the "
            f"{MAX_AUDIO_SECONDS / 3600:g} h a file may have; cut it into utterances"
        )
    output = math.ceil(frames * target_rate / rate)
    if max_samples is None or output <= max_samples:
        return 0, frames, 0
    offset = (choose_offset or (lambda choices: 0))(output - max_samples + 1)
    if rate == target_rate:
        return offset, max_samples, 0
    # The crop's first frame falls on a common point of both sample grids (a multiple of rate / gcd input frames),
    # so the resampled crop lies on the whole file's output grid: its samples are the whole decode's, not shifted
    # by a fraction of a sample.
    period = rate // math.gcd(rate, target_rate)
    start = max(0, offset * rate // target_rate - CROP_CONTEXT_FRAMES) // period * period
    skip = offset - start * target_rate // rate
    end = min(frames, math.ceil((offset + max_samples) * rate / target_rate) + CROP_CONTEXT_FRAMES)
    return start, end - start, skip


def _decode(stream, name, start, frames, target_rate):
    """`frames` frames of `stream` from `start` through the one decoder (`pipeline_armhubert.decode_blocks`)."""
    try:
        return decode_blocks(stream, name, target_rate, start, frames)
    except ValueError as error:  # non-finite samples: they would poison training
        raise DataError(str(error)) from None


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
