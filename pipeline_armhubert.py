"""Pipelines of the ARMHuBERT family: audio feature extraction, and the task folders' own pipelines.

Remote code beside `configuration_armhubert.py` and `modeling_armhubert.py`, as `transformers` ships
processors apart from models: a saved model folder holds all three (`modeling_armhubert` imports this
file, so `save_pretrained` copies it). `pipeline(model=folder, trust_remote_code=True)` finds its
pipeline through the folder's `config.custom_pipelines` (`armhubert.remote_code.add_remote_code_entries`):
`ARMHubertFeatureExtractionPipeline` for an encoder (the built-in "feature-extraction" task is
text-only), transformers' own ASR and audio-classification pipelines for the task heads.
"""

import os

import numpy as np
import torch
from transformers import (  # the two head pipelines are named by task folders' `custom_pipelines`
    AudioClassificationPipeline,  # noqa: F401 -- re-exported: remote code resolves it in this module
    AutomaticSpeechRecognitionPipeline,  # noqa: F401 -- likewise
    AutoModel,
    Pipeline,
    Wav2Vec2FeatureExtractor,
)
from transformers.audio_utils import load_audio
from transformers.pipelines import PIPELINE_REGISTRY

try:  # loaded as remote code from a model folder
    from .configuration_armhubert import SAMPLING_RATE, is_remote_code_copy
except ImportError:  # installed as a top-level module
    from configuration_armhubert import SAMPLING_RATE, is_remote_code_copy

FEATURE_EXTRACTION_TASK = "audio-feature-extraction"

# A task folder's own pipeline: task, pipeline class (a name this module holds) and the Auto class it loads.
HEAD_PIPELINES = {
    "ARMHubertForCTC": ("automatic-speech-recognition", "AutomaticSpeechRecognitionPipeline", "AutoModelForCTC"),
    "ARMHubertForSequenceClassification": (
        "audio-classification",
        "AudioClassificationPipeline",
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
    dict (the `datasets` format); or an audio file path, decoded with
    `transformers.audio_utils.load_audio` (channels averaged, resampled to 16 kHz). Arrays at other
    rates must be resampled first (e.g. `soxr.resample(audio, rate, 16000)`): this file also runs as
    Hub remote code, which depends on torch, transformers and numpy only.
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
        if isinstance(inputs, (str, os.PathLike)):
            path = os.fspath(inputs)
            if not os.path.isfile(path):
                raise ValueError(f"audio file {path} does not exist.")
            try:
                inputs = load_audio(path, sampling_rate=SAMPLING_RATE)
            except Exception as error:  # noqa: BLE001 -- decoders raise many types for unreadable files
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ValueError(f"cannot decode audio file {path}: {reason}") from None
        elif isinstance(inputs, dict):
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
