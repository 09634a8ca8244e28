"""Pipelines of the ARMHuBERT family: audio feature extraction, and the task folders' own pipelines.

Remote code beside the other files; the model does not import it (`armhubert.folders.remote_code.ship_pipeline` ships
it). `pipeline(model=folder, trust_remote_code=True)` finds a folder's pipeline in `config.custom_pipelines`:
`ARMHubertFeatureExtractionPipeline` for an encoder (the built-in "feature-extraction" task is text-only),
transformers' ASR / classification pipelines for heads; all read files with `read_audio_file` (soundfile + soxr).
Long inputs run in windows stitched on the unchunked frame grid (`encode_windows`, `encode_chunked`), for the feature
pipeline and the corpus tool (`armhubert.features`) alike.
"""

import dataclasses
import io
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from transformers import (
    AudioClassificationPipeline,
    AutomaticSpeechRecognitionPipeline,
    AutoModel,
    Pipeline,
    Wav2Vec2FeatureExtractor,
)
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.audio_utils import ffmpeg_read

try:  # loaded as remote code from a model folder
    from .configuration_armhubert import SAMPLING_RATE, is_remote_code_copy
    from .ops_armhubert import check_attention_mask
except ImportError:  # installed as a top-level module
    from configuration_armhubert import SAMPLING_RATE, is_remote_code_copy
    from ops_armhubert import check_attention_mask

FEATURE_EXTRACTION_TASK = "audio-feature-extraction"

# A task folder's own pipeline: task, pipeline class (a name this module holds) and the Auto class it loads.
HEAD_PIPELINES = {
    "ARMHubertForCTC": ("automatic-speech-recognition", "ARMHubertSpeechRecognitionPipeline", "AutoModelForCTC"),
    "ARMHubertForSequenceClassification": (
        "audio-classification",
        "ARMHubertAudioClassificationPipeline",
        "AutoModelForAudioClassification",
    ),
}
ENCODER_PIPELINE = (FEATURE_EXTRACTION_TASK, "ARMHubertFeatureExtractionPipeline", "AutoModel")  # same form


def release_feature_extractor() -> Wav2Vec2FeatureExtractor:
    """The preprocessing the releases expect: raw 16 kHz audio, no normalisation, attention mask for padding."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0, do_normalize=False, return_attention_mask=True
    )


def _first_line(error: Exception) -> str:  # as armhubert.cli.first_line (remote code cannot import it)
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


MAX_AUDIO_SECONDS = 3600  # longer recordings are cut into utterances first (LibriSpeech's are under 35 s)
MAX_AUDIO_CHANNELS = 64
BLOCK_FRAMES = 1 << 16


def read_audio_file(source: str | os.PathLike | bytes, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """An audio file (a path, or the file's bytes) -> mono float32 samples (samples,) at `sampling_rate`, by
    `decode_blocks` (soundfile and soxr, imported here: remote code may rely on torch, transformers and numpy only);
    without them, or for a format soundfile cannot read, by ffmpeg when on PATH (transformers' `ffmpeg_read`).
    ValueError (one line naming the file): missing, declared too long or wide, non-finite samples, or undecodable."""
    name = "<audio bytes>" if isinstance(source, bytes) else os.fspath(source)
    if not isinstance(source, bytes) and not os.path.isfile(name):
        raise ValueError(f"audio file {name} does not exist.")
    try:
        import soundfile
        import soxr  # noqa: F401  (decode_blocks needs it: checked here, where ffmpeg is the way out)
    except ImportError:
        problem = "soundfile and soxr are not installed (pip install soundfile soxr)"
    else:
        try:
            stream = soundfile.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else name)
        except Exception as error:  # noqa: BLE001 -- libsndfile raises several types for unreadable files
            problem = f"soundfile cannot decode it ({_first_line(error)})"
        else:
            with stream:
                return decode_blocks(stream, name, sampling_rate)
    if shutil.which("ffmpeg") is None:
        raise ValueError(
            f"cannot decode audio file {name}: {problem}, and ffmpeg is not on PATH. Convert it to FLAC or WAV, "
            "or install ffmpeg."
        )
    if not isinstance(source, bytes):
        with open(name, "rb") as file:
            source = file.read()
    try:
        return ffmpeg_read(source, sampling_rate)
    except ValueError as error:
        raise ValueError(f"cannot decode audio file {name}: {problem}, nor can ffmpeg.") from error


def decode_blocks(
    stream, name: str, sampling_rate: int = SAMPLING_RATE, start: int = 0, frames: int = -1
) -> np.ndarray:
    """`frames` frames of a soundfile stream from `start` -> (samples,) float32 mono at `sampling_rate`, block by block
    (memory: the output's); the one audio decoder. ValueError naming the file: declared size over bounds, NaN."""
    import soxr

    rate, channels = stream.samplerate, stream.channels
    if channels > MAX_AUDIO_CHANNELS or stream.frames > MAX_AUDIO_SECONDS * rate:
        raise ValueError(
            f"audio file {name} declares {channels} channels and {stream.frames / rate:,.0f} s; at most "
            f"{MAX_AUDIO_CHANNELS} channels and {MAX_AUDIO_SECONDS:,} s are read. Cut it into utterances."
        )
    stream.seek(start)
    resampler = soxr.ResampleStream(rate, sampling_rate, 1, dtype="float32") if rate != sampling_rate else None
    pieces = []
    for block in stream.blocks(blocksize=BLOCK_FRAMES, frames=frames, dtype="float32", always_2d=True):
        if not np.isfinite(block).all():
            raise ValueError(f"audio file {name} holds NaN or infinite samples; the outputs would be NaN.")
        mono = block.mean(axis=1) if channels > 1 else block[:, 0].copy()
        pieces.append(mono if resampler is None else resampler.resample_chunk(mono))
    if resampler is not None:
        pieces.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, dtype=np.float32)


def decode_audio_files(inputs, sampling_rate: int = SAMPLING_RATE):
    """A pipeline input with audio files (paths, bytes, undecoded `datasets` {"path", "bytes"} dicts)
    decoded to a (samples,) array at `sampling_rate` (`read_audio_file`); arrays and http(s) URLs unchanged."""
    if isinstance(inputs, dict) and not ("raw" in inputs or "array" in inputs):
        source = inputs.get("bytes") or inputs.get("path")
        return read_audio_file(source, sampling_rate) if source else inputs  # else the pipeline names the keys
    if isinstance(inputs, str) and inputs.startswith(("http://", "https://")):
        return inputs
    if isinstance(inputs, (str, os.PathLike, bytes)):
        return read_audio_file(inputs, sampling_rate)
    return inputs


# --------------------------------------------------------------------------------------------------
# Long audio in overlapping windows, stitched on the whole input's frame grid: each window keeps its
# centre frames, so time and memory grow linearly with the length, and the stitching is exact
# arithmetic (a window starting at sample s*S holding (F - 1)*S + R samples yields exactly frames
# s .. s + F - 1 of the whole input; S, R = `config.inputs_to_logits_ratio`, `config.receptive_field`).
# Why and the derivation: docs/features.md, "Long recordings in chunks".

CHUNK_LENGTH_S = 30.0  # the longest training utterances are about this long
STRIDE_LENGTH_S = CHUNK_LENGTH_S / 6  # context dropped on each side: the ASR pipeline's default ratio


@dataclasses.dataclass(frozen=True)
class FrameWindow:
    """One window of a chunked input, on the whole input's frame grid: it yields frames [start, start + frames)
    and contributes [keep_start, keep_end) of them."""

    start: int
    frames: int
    keep_start: int
    keep_end: int


def plan_windows(total_frames: int, window_frames: int, left_frames: int, right_frames: int) -> list[FrameWindow]:
    """Windows of `window_frames` frames covering [0, total_frames), each frame kept exactly once; inner window
    edges drop `left_frames` / `right_frames` frames of context. The last window ends at the last frame (dropping
    more on its left), so all have one length and batch without padding. One window when the input fits in one."""
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


def num_frames(config, num_samples: int) -> int:
    """Frames the model outputs for `num_samples` samples: floor((N - R) / S) + 1, less the crop to
    `config.crop_seq_to_multiple`; 0 below the receptive field."""
    stride, field = config.inputs_to_logits_ratio, config.receptive_field
    frames = (num_samples - field) // stride + 1 if num_samples >= field else 0
    return frames - frames % config.crop_seq_to_multiple


def window_samples(config, window: FrameWindow) -> tuple[int, int]:
    """(first sample, number of samples) of the audio that yields exactly the window's frames."""
    stride = config.inputs_to_logits_ratio
    return window.start * stride, (window.frames - 1) * stride + config.receptive_field


def _context_seconds(stride_length_s: float | Sequence[float] | None, chunk_length_s: float) -> tuple[float, float]:
    """(left, right) context in seconds from one number or a pair, finite and >= 0; else one ValueError."""
    stride = chunk_length_s / 6 if stride_length_s is None else stride_length_s
    pair = (stride, stride) if isinstance(stride, (int, float)) and not isinstance(stride, bool) else stride
    try:
        left, right = (float(side) for side in pair)
    except (TypeError, ValueError):
        left = right = math.nan
    if not (math.isfinite(left) and math.isfinite(right) and min(left, right) >= 0):
        raise ValueError(
            f"stride_length_s must be seconds >= 0, or a (left, right) pair of them; got {stride_length_s!r}"
        )
    return left, right


def chunk_windows(
    config,
    num_samples: int,
    chunk_length_s: float = CHUNK_LENGTH_S,
    stride_length_s: float | Sequence[float] | None = None,
) -> list[FrameWindow]:
    """The windows for an input of `num_samples` samples. `chunk_length_s`: window length (rounded down to whole
    frames and to `config.crop_seq_to_multiple`, so the model crops nothing off a window); `stride_length_s`: context
    dropped on each side (rounded to frames), or a (left, right) pair, as the ASR pipeline's; `None`: chunk / 6."""
    if not isinstance(chunk_length_s, (int, float)) or not math.isfinite(chunk_length_s) or chunk_length_s <= 0:
        raise ValueError(f"chunk_length_s must be a finite number of seconds above 0, got {chunk_length_s!r}")
    left_s, right_s = _context_seconds(stride_length_s, chunk_length_s)
    window_frames = num_frames(config, int(chunk_length_s * SAMPLING_RATE))
    if window_frames < 1:
        raise ValueError(
            f"chunk_length_s={chunk_length_s} is shorter than the model's receptive field "
            f"({config.receptive_field / SAMPLING_RATE:.3f} s); give a longer window"
        )
    frame_seconds = config.inputs_to_logits_ratio / SAMPLING_RATE
    left, right = round(left_s / frame_seconds), round(right_s / frame_seconds)
    return plan_windows(num_frames(config, num_samples), window_frames, left, right)


def frame_fields(output: Mapping) -> dict[str, tuple[torch.Tensor, ...]]:
    """The frame-aligned fields of an output (a `ModelOutput` or dict), each a tuple of (B, F, ...) tensors; no masks."""
    return {
        name: value if isinstance(value, tuple) else (value,)
        for name, value in output.items()
        if value is not None and name != "frame_attention_mask"
    }


def _rebuilt(template: Mapping, fields: dict[str, tuple[torch.Tensor, ...]], mask: torch.Tensor | None) -> Mapping:
    """`fields` (tuples where `template` has tuples) and `mask` as `frame_attention_mask` (where the type
    has it), in an object of `template`'s type."""
    values = {name: tensors if isinstance(template[name], tuple) else tensors[0] for name, tensors in fields.items()}
    names = {field.name for field in dataclasses.fields(template)} if dataclasses.is_dataclass(template) else template
    if "frame_attention_mask" in names:
        values["frame_attention_mask"] = mask
    return type(template)(**values)


def encode_windows(
    model: torch.nn.Module,
    read: Callable[[int, int], torch.Tensor],
    num_samples: int,
    chunk_length_s: float = CHUNK_LENGTH_S,
    stride_length_s: float | Sequence[float] | None = None,
    windows_per_batch: int = 1,
    transform: Callable[[Mapping], Mapping] | None = None,
    **forward_kwargs,
) -> Iterator[tuple[FrameWindow, Mapping]]:
    """Encode one input window by window; yield (window, output) with its kept frames, in frame order.

    `model`: an `ARMHubertModel` (any encoder returning a `ModelOutput` whose config has the CNN's kernels and
    strides). `read(start, count)` -> the input's samples [start, start + count), a `(count,)` float tensor on the
    model's device, called once per window in order (an array slice, or a file read: the input need not be in
    memory). `windows_per_batch` windows go to one model call; `transform` maps every model output first (e.g. to
    keep some layers); `forward_kwargs` go to the model. Each `output` has the model's (or `transform`'s) type, every
    frame-aligned tensor cut to the window's kept frames `(1, keep_end - keep_start, ...)`, no mask.
    """
    if forward_kwargs.get("output_attentions"):
        raise ValueError("chunked encoding cannot stitch attention maps (they span a window, not the input)")
    if windows_per_batch < 1:
        raise ValueError(f"windows_per_batch must be at least 1, got {windows_per_batch}")
    config = model.config
    windows = chunk_windows(config, num_samples, chunk_length_s, stride_length_s)
    for first in range(0, len(windows), windows_per_batch):
        batch = windows[first : first + windows_per_batch]
        # An input that is one window runs whole, every sample, as the unchunked model reads it.
        spans = [(0, num_samples)] if len(windows) == 1 else [window_samples(config, window) for window in batch]
        pieces = [read(start, count) for start, count in spans]
        output = model(torch.stack(pieces), **forward_kwargs)
        output = transform(output) if transform is not None else output
        fields = frame_fields(output)
        for index, window in enumerate(batch):
            offset = window.keep_start - window.start
            kept = slice(offset, offset + window.keep_end - window.keep_start)
            cut = {
                name: tuple(tensor[index : index + 1, kept] for tensor in tensors) for name, tensors in fields.items()
            }
            yield window, _rebuilt(output, cut, None)


def encode_chunked(
    model: torch.nn.Module,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk_length_s: float = CHUNK_LENGTH_S,
    stride_length_s: float | Sequence[float] | None = None,
    windows_per_batch: int = 1,
    transform: Callable[[Mapping], Mapping] | None = None,
    **forward_kwargs,
) -> Mapping:
    """Encode (B, N) audio in overlapping windows and stitch their centre frames: the model-level helper.

        with torch.inference_mode():
            out = encode_chunked(model, waveform[None])   # 30 s windows, 5 s of context dropped on each side
        out.last_hidden_state   # (1, T, D): T = model(waveform[None]).last_hidden_state.shape[1]

    `input_values` `(B, N)`: raw 16 kHz audio, each row planned by its own length (`attention_mask` `(B, N)`,
    1 = real sample: padding is never part of a window); a row no longer than a window runs whole, as `model(row)`
    would. The other arguments: `encode_windows`. Returns the model's (or `transform`'s) output type with every
    frame-aligned tensor `(B, T, ...)` stitched (T = the longest row's frames; zeros past a shorter row's end) and,
    where the type has the field, `frame_attention_mask` `(B, T)` long (None when no row is shorter).
    """
    if input_values.dim() != 2:
        raise ValueError(f"input_values must have shape (batch, samples), got {tuple(input_values.shape)}")
    lengths = [input_values.shape[1]] * input_values.shape[0]
    if attention_mask is not None:  # read as lengths: 0/1 and right padding checked as the model checks them
        check_attention_mask(attention_mask, tuple(input_values.shape), model.config.receptive_field, training=False)
        lengths = [int(length) for length in attention_mask.sum(-1)]
    frames = [num_frames(model.config, length) for length in lengths]
    total = max(frames)
    stitched: dict[str, tuple[torch.Tensor, ...]] = {}
    template = None
    for row, length in enumerate(lengths):
        parts = encode_windows(
            model,
            lambda start, count, row=row: input_values[row, start : start + count],
            length,
            chunk_length_s,
            stride_length_s,
            windows_per_batch,
            transform,
            **forward_kwargs,
        )
        for window, part in parts:
            template = part if template is None else template
            for name, tensors in frame_fields(part).items():
                if name not in stitched:
                    stitched[name] = tuple(t.new_zeros((len(lengths), total, *t.shape[2:])) for t in tensors)
                for target, tensor in zip(stitched[name], tensors):
                    target[row, window.keep_start : window.keep_end] = tensor[0]
    mask = None
    if min(frames) < total:
        device = next(iter(stitched.values()))[0].device
        mask = (torch.arange(total, device=device)[None, :] < torch.tensor(frames, device=device)[:, None]).long()
    return _rebuilt(template, stitched, mask)


class _ReadsAudioFiles:
    """Mixin for transformers' audio pipelines: files decoded by `decode_audio_files`, not ffmpeg."""

    def preprocess(self, inputs, *args, **kwargs):
        return super().preprocess(decode_audio_files(inputs, self.feature_extractor.sampling_rate), *args, **kwargs)


class ARMHubertSpeechRecognitionPipeline(_ReadsAudioFiles, AutomaticSpeechRecognitionPipeline):
    """transformers' speech recognition pipeline reading audio files with soundfile + soxr (a CTC folder's own)."""


class ARMHubertAudioClassificationPipeline(_ReadsAudioFiles, AudioClassificationPipeline):
    """transformers' audio classification pipeline, reading audio file paths and bytes with soundfile + soxr."""


class ARMHubertFeatureExtractionPipeline(Pipeline):
    """Per-layer speech features for downstream models: the "audio-feature-extraction" task.

        extractor = pipeline("audio-feature-extraction", model="converted/armhubert-960h", trust_remote_code=True)
        out = extractor("speech.flac")   # or a mono float array at 16 kHz
        out["features"]                   # (num_layers, frames, width) numpy array
        out["layers"]                     # their layer numbers, 1 = first transformer layer

    Parameters (at construction or per call):
        representation: `"superb"` (default) the set SUPERB used: projected outputs (1..L) of models
            with projection heads, raw layer outputs (1..L) otherwise; `"hidden"` raw outputs 0..L
            (0 = encoder input); `"projected"` projected outputs 1..L (models with heads only).
        layers: an int or list of layer numbers from that set (default: all of it).
        return_tensors: `True` returns a torch tensor instead of a numpy array.
        chunk_length_s: inputs longer than this (default 30 s) run in windows of this length stitched on the
            unchunked frame grid (`encode_chunked`); `0` never chunks (time quadratic in the length).
        stride_length_s: context dropped on each window side, seconds or (left, right) (default chunk / 6).

    Inputs: a mono float array at 16 kHz; a `{"raw" or "array": ..., "sampling_rate": 16000}` dict; or an
    audio file (path, bytes, undecoded `datasets` dict), decoded by `read_audio_file` (resampled to 16 kHz).
    """

    REPRESENTATIONS = ("superb", "hidden", "projected")
    _load_feature_extractor = None  # load a saved one when there is one, else the release default
    _load_tokenizer = False
    _load_image_processor = False
    _load_processor = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.feature_extractor is None:
            self.feature_extractor = release_feature_extractor()

    def _sanitize_parameters(
        self,
        layers: int | list[int] | None = None,
        representation: str | None = None,
        return_tensors: bool | None = None,
        chunk_length_s: float | None = None,
        stride_length_s: float | Sequence[float] | None = None,
    ) -> tuple[dict, dict, dict]:
        forward_params, postprocess_params = {}, {}
        if representation is not None:
            if representation not in self.REPRESENTATIONS:
                raise ValueError(f"representation={representation!r} is unknown; use one of {self.REPRESENTATIONS}.")
            forward_params["representation"] = representation
        if layers is not None:
            forward_params["layers"] = [layers] if isinstance(layers, int) else list(layers)
        if chunk_length_s is not None:
            if chunk_length_s < 0:
                raise ValueError(f"chunk_length_s={chunk_length_s} must be positive, or 0 to never chunk.")
            forward_params["chunk_length_s"] = chunk_length_s
        if stride_length_s is not None:
            forward_params["stride_length_s"] = stride_length_s
        if return_tensors is not None:
            postprocess_params["return_tensors"] = return_tensors
        return {}, forward_params, postprocess_params

    def _audio_array(self, inputs) -> np.ndarray:
        """Any accepted input -> mono float32 array at 16 kHz, or one clear error."""
        inputs = decode_audio_files(inputs)
        if isinstance(inputs, str):  # a URL: transformers' own pipelines fetch those, this one does not
            raise ValueError(f"{inputs} is a URL; download the file and pass its local path.")
        if isinstance(inputs, dict):
            if "sampling_rate" not in inputs or not ("raw" in inputs or "array" in inputs):
                raise ValueError('an audio dict needs "raw" (or "array") and "sampling_rate" keys.')
            rate = inputs["sampling_rate"]
            if rate != SAMPLING_RATE:
                raise ValueError(
                    f"audio sampled at {rate} Hz; these models take {SAMPLING_RATE} Hz. Resample it first, "
                    f"e.g. soxr.resample(audio, {rate}, {SAMPLING_RATE}), or pass the file path."
                )
            inputs = inputs["raw"] if "raw" in inputs else inputs["array"]
        if torch.is_tensor(inputs):
            inputs = inputs.detach().cpu().numpy()
        if not isinstance(inputs, np.ndarray):
            raise TypeError(f"expected a float array, an audio dict or a file path, got {type(inputs).__name__}.")
        if inputs.ndim != 1:
            raise ValueError(
                f"expected mono audio of shape (samples,), got shape {inputs.shape}. Average the channels first "
                "(audio.mean(axis=1) for soundfile's (samples, channels) arrays), or pass the file path."
            )
        if not np.issubdtype(inputs.dtype, np.floating):
            raise ValueError(
                f"audio has integer samples ({inputs.dtype}); convert to float in [-1, 1] first, "
                "e.g. audio / 32768 for 16-bit PCM."
            )
        if not np.isfinite(inputs).all():
            raise ValueError("the audio holds NaN or infinite samples; the features would be NaN. Fix or drop it.")
        field = self.model.config.receptive_field
        if inputs.size < field:
            what = "empty audio (0 samples)" if inputs.size == 0 else f"audio of {inputs.size} samples"
            raise ValueError(
                f"{what}: the model needs at least {field} samples ({1000 * field / SAMPLING_RATE:.0f} ms at 16 kHz)."
            )
        return inputs.astype(np.float32, copy=False)

    def preprocess(self, inputs) -> dict[str, torch.Tensor]:
        audio = self._audio_array(inputs)
        return self.feature_extractor(
            audio, sampling_rate=SAMPLING_RATE, return_attention_mask=True, return_tensors="pt"
        )

    def _layer_numbers(self, representation: str, layers: list[int] | None) -> list[int]:
        """The requested layer numbers of `representation` (default: all of it), checked against the model."""
        count = self.model.config.num_hidden_layers
        available = list(range(0 if representation == "hidden" else 1, count + 1))
        numbers = available if layers is None else layers
        unknown = [number for number in numbers if number not in available]
        if unknown:
            raise ValueError(
                f"layers {unknown} are not in the {representation!r} representation; "
                f"choose from {available[0]}..{available[-1]}."
            )
        return numbers

    def _layer_set(self, output, representation: str) -> dict[int, torch.Tensor]:
        """{layer number: (B, T, D) tensor} of the chosen representation."""
        config = self.model.config
        if representation == "superb":
            representation = "projected" if config.has_projection_heads else "layers"
        if representation == "projected":
            if not config.has_projection_heads:
                raise ValueError('representation="projected" needs a model with projection heads; this one has none.')
            if output.projected_hidden_states is None:
                raise ValueError(
                    'representation="projected" needs every projection head; this task model (no '
                    'use_weighted_layer_sum) keeps only the last. Use representation="hidden" or the encoder.'
                )
            return dict(enumerate(output.projected_hidden_states, start=1))
        start = 1 if representation == "layers" else 0
        return dict(enumerate(output.hidden_states[start:], start=start))

    def _forward(
        self,
        model_inputs: dict,
        layers: list[int] | None = None,
        representation: str = "superb",
        chunk_length_s: float = CHUNK_LENGTH_S,
        stride_length_s: float | Sequence[float] | None = None,
    ) -> dict[str, torch.Tensor]:
        encoder = getattr(self.model, "armhubert", self.model)  # a task model's encoder works too
        numbers = self._layer_numbers(representation, layers)

        def selected(output) -> dict:
            """{"features": (B, T, n, D) of the chosen layers (frames second, as chunking stitches them), mask}."""
            available = self._layer_set(output, representation)
            features = torch.stack([available[number] for number in numbers], dim=2)
            return {"features": features, "frame_attention_mask": output.frame_attention_mask}

        input_values, attention_mask = model_inputs["input_values"], model_inputs.get("attention_mask")
        if chunk_length_s and input_values.shape[1] > chunk_length_s * SAMPLING_RATE:
            output = encode_chunked(
                encoder,
                input_values,
                attention_mask,
                chunk_length_s,
                stride_length_s,
                transform=selected,
                output_hidden_states=True,
            )
        else:
            output = selected(encoder(input_values, attention_mask=attention_mask, output_hidden_states=True))
        features = output["features"].transpose(1, 2)  # (B, n, T, D)
        batch, _, frames, _ = features.shape
        mask = output["frame_attention_mask"]
        real_frames = mask.sum(-1) if mask is not None else torch.full((batch,), frames, device=features.device)
        layer_numbers = torch.tensor(numbers, device=features.device).expand(batch, -1)
        return {"features": features, "frames": real_frames, "layer_numbers": layer_numbers}

    def postprocess(self, model_outputs: dict, return_tensors: bool = False) -> dict:
        frames = int(model_outputs["frames"].reshape(-1)[0])
        features = model_outputs["features"][0, :, :frames]
        layers = model_outputs["layer_numbers"].reshape(-1).tolist()
        return {"layers": layers, "features": features if return_tensors else features.float().numpy()}


if not is_remote_code_copy(__name__) or FEATURE_EXTRACTION_TASK not in PIPELINE_REGISTRY.get_supported_tasks():
    PIPELINE_REGISTRY.register_pipeline(
        FEATURE_EXTRACTION_TASK, pipeline_class=ARMHubertFeatureExtractionPipeline, pt_model=AutoModel, type="audio"
    )
