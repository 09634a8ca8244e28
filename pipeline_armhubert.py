"""Pipelines of the ARMHuBERT family: audio feature extraction, and the task folders' own pipelines.

Remote code beside `configuration_armhubert.py` and `modeling_armhubert.py`, as `transformers` ships
processors apart from models: a saved model folder holds all three (`modeling_armhubert` imports this
file, so `save_pretrained` copies it). `pipeline(model=folder, trust_remote_code=True)` finds its
pipeline through the folder's `config.custom_pipelines` (`armhubert.remote_code.add_remote_code_entries`):
`ARMHubertFeatureExtractionPipeline` for an encoder (the built-in "feature-extraction" task is
text-only), `ARMHubertSpeechRecognitionPipeline` / `ARMHubertAudioClassificationPipeline` (transformers'
own, reading audio files without ffmpeg) for the task heads. All three decode files with
`read_audio_file`: soundfile + soxr, ffmpeg only as a fallback.
"""

import io
import os
import shutil

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
except ImportError:  # installed as a top-level module
    from configuration_armhubert import SAMPLING_RATE, is_remote_code_copy

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
# An encoder folder's pipeline, in the same form.
ENCODER_PIPELINE = (FEATURE_EXTRACTION_TASK, "ARMHubertFeatureExtractionPipeline", "AutoModel")


def release_feature_extractor() -> Wav2Vec2FeatureExtractor:
    """The preprocessing the releases expect: raw 16 kHz audio, no normalisation, attention mask for padding."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0, do_normalize=False, return_attention_mask=True
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


MAX_AUDIO_SECONDS = 3600  # as armhubert.audio: longer recordings are cut into utterances first
MAX_AUDIO_CHANNELS = 64
BLOCK_FRAMES = 1 << 16


def read_audio_file(source: str | os.PathLike | bytes, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """An audio file (a path, or the file's bytes) -> mono float32 samples (samples,) at `sampling_rate`.

    Decoded with soundfile (FLAC, WAV, OGG, MP3, ...) block by block, channels averaged, resampled with
    soxr: no ffmpeg needed, and the memory a read takes is its output's. Both are imported here, as this
    file also runs as Hub remote code, which may rely on torch, transformers and numpy only. Without
    them, or for a format soundfile cannot read, ffmpeg decodes the file when it is on PATH
    (transformers' `ffmpeg_read`, as its own audio pipelines do).

    Raises:
        ValueError: one line naming the file: missing; declaring more than MAX_AUDIO_SECONDS or
            MAX_AUDIO_CHANNELS (read from its header, before decoding); non-finite samples; or
            undecodable by every decoder at hand.
    """
    name = "<audio bytes>" if isinstance(source, bytes) else os.fspath(source)
    if not isinstance(source, bytes) and not os.path.isfile(name):
        raise ValueError(f"audio file {name} does not exist.")
    try:
        import soundfile
        import soxr
    except ImportError:
        problem = "soundfile and soxr are not installed (pip install soundfile soxr)"
    else:
        try:
            stream = soundfile.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else name)
        except Exception as error:  # noqa: BLE001 -- libsndfile raises several types for unreadable files
            problem = f"soundfile cannot decode it ({_first_line(error)})"
        else:
            with stream:
                return _decode_blocks(stream, name, sampling_rate, soxr)
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


def _decode_blocks(stream, name: str, sampling_rate: int, soxr) -> np.ndarray:
    """A soundfile stream -> (samples,) float32 mono at `sampling_rate`, after checking its declared size."""
    rate, channels, frames = stream.samplerate, stream.channels, stream.frames
    if channels > MAX_AUDIO_CHANNELS or frames > MAX_AUDIO_SECONDS * rate:
        raise ValueError(
            f"audio file {name} declares {channels} channels and {frames / rate:,.0f} s; at most "
            f"{MAX_AUDIO_CHANNELS} channels and {MAX_AUDIO_SECONDS:,} s are read. Cut it into utterances."
        )
    resampler = soxr.ResampleStream(rate, sampling_rate, 1, dtype="float32") if rate != sampling_rate else None
    pieces = []
    for block in stream.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
        if not np.isfinite(block).all():
            raise ValueError(f"audio file {name} holds NaN or infinite samples; the outputs would be NaN.")
        mono = block.mean(axis=1) if channels > 1 else block[:, 0].copy()
        pieces.append(mono if resampler is None else resampler.resample_chunk(mono))
    if resampler is not None:
        pieces.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, dtype=np.float32)


def decode_audio_files(inputs, sampling_rate: int = SAMPLING_RATE):
    """A pipeline input with audio files decoded (`read_audio_file`); arrays and URLs unchanged.

    Files are local paths, file bytes and undecoded `datasets` audio dicts ({"path", "bytes"}, as
    `Audio(decode=False)` gives: datasets decodes only through torchcodec). They become a (samples,) array
    at `sampling_rate`. http(s) URLs are left to transformers (which downloads and decodes them with ffmpeg).
    """
    if isinstance(inputs, dict) and not ("raw" in inputs or "array" in inputs):
        if inputs.get("bytes"):
            return read_audio_file(inputs["bytes"], sampling_rate)
        if inputs.get("path"):
            return read_audio_file(inputs["path"], sampling_rate)
        return inputs  # the pipeline's own message names the keys it needs
    if isinstance(inputs, str) and inputs.startswith(("http://", "https://")):
        return inputs
    if isinstance(inputs, (str, os.PathLike, bytes)):
        return read_audio_file(inputs, sampling_rate)
    return inputs


class _ReadsAudioFiles:
    """Mixin for transformers' audio pipelines: files are decoded by `decode_audio_files`, not ffmpeg."""

    def preprocess(self, inputs, *args, **kwargs):
        return super().preprocess(decode_audio_files(inputs, self.feature_extractor.sampling_rate), *args, **kwargs)


class ARMHubertSpeechRecognitionPipeline(_ReadsAudioFiles, AutomaticSpeechRecognitionPipeline):
    """transformers' speech recognition pipeline, reading audio file paths and bytes with soundfile + soxr.

    asr = pipeline(model="out/ctc", trust_remote_code=True)   # a CTC folder's own pipeline
    asr("speech.flac")["text"]                                  # no ffmpeg needed
    """


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

    Inputs: a mono float array sampled at 16 kHz; a `{"raw" or "array": ..., "sampling_rate": 16000}`
    dict (the `datasets` format); or an audio file (a path, its bytes, or an undecoded `datasets` dict),
    decoded by `read_audio_file` (channels averaged, resampled to 16 kHz). Arrays at other rates must be
    resampled first (e.g. `soxr.resample(audio, rate, 16000)`).
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
    ) -> tuple[dict, dict, dict]:
        forward_params, postprocess_params = {}, {}
        if representation is not None:
            if representation not in self.REPRESENTATIONS:
                raise ValueError(f"representation={representation!r} is unknown; use one of {self.REPRESENTATIONS}.")
            forward_params["representation"] = representation
        if layers is not None:
            forward_params["layers"] = [layers] if isinstance(layers, int) else list(layers)
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
        self, model_inputs: dict, layers: list[int] | None = None, representation: str = "superb"
    ) -> dict[str, torch.Tensor]:
        encoder = getattr(self.model, "armhubert", self.model)  # a task model's encoder works too
        output = encoder(
            model_inputs["input_values"], attention_mask=model_inputs.get("attention_mask"), output_hidden_states=True
        )
        available = self._layer_set(output, representation)
        numbers = sorted(available) if layers is None else layers
        unknown = [number for number in numbers if number not in available]
        if unknown:
            raise ValueError(
                f"layers {unknown} are not in the {representation!r} representation; "
                f"choose from {min(available)}..{max(available)}."
            )
        features = torch.stack([available[number] for number in numbers], dim=1)  # (B, n, T, D)
        batch, _, frames, _ = features.shape
        if output.frame_attention_mask is not None:
            real_frames = output.frame_attention_mask.sum(-1)
        else:
            real_frames = torch.full((batch,), frames, dtype=torch.long, device=features.device)
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
