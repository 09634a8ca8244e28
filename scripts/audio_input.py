"""Audio for transformers' pipelines: any file or array -> mono float32 samples at 16 kHz.

transformers' "automatic-speech-recognition" and "audio-classification" pipelines decode files with
the ffmpeg binary and resample only through torchaudio, neither of which these models need. The
models take 16 kHz audio, so decode and resample *before* the pipeline (soundfile + soxr, through the
shared `distill_trainer.read_audio`):

    from scripts.audio_input import load_16k          # from the repository root
    asr(load_16k("speech_44k.wav"))                    # file: decoded, channels averaged, resampled
    asr(load_16k(stereo, sampling_rate=44100))         # array: (samples, channels) or (channels, samples)
"""

import os
import sys
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distill_trainer import SAMPLING_RATE, DataError, read_audio  # noqa: E402

MAX_CHANNELS = 8  # an axis this short is channels, not time


def to_mono(samples):
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


def load_16k(audio, sampling_rate=None):
    """Mono float32 samples at 16 kHz from a file path, an audio dict or an array.

    Args:
        audio: a path (anything soundfile reads: FLAC, WAV, OGG, ...); a `datasets` audio dict, undecoded
            ({"path", "bytes"}) or decoded ({"array", "sampling_rate"}); or a float array / tensor,
            mono or with a channel axis.
        sampling_rate: the rate of an array (required for arrays; read from files and dicts).

    Raises:
        ValueError: unreadable file, array without a rate, integer or non-finite samples, empty audio.
    """
    if isinstance(audio, (str, os.PathLike)) or (isinstance(audio, dict) and "array" not in audio and "raw" not in audio):
        try:
            samples = read_audio(os.fspath(audio) if not isinstance(audio, dict) else audio, target_rate=SAMPLING_RATE)
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
