"""A teacher seen from distillation: the batch's 16 kHz audio in, hidden states on a 20 ms grid out.

Every teacher family computes its own inputs from the same raw audio with its own preprocessing:

| family | models | input | frames of N samples | masked pass |
| --- | --- | --- | --- | --- |
| wav2vec2-style | HuBERT, WavLM, wav2vec2, data2vec-audio, wav2vec2-conformer, UniSpeech-SAT | the waveform (normalised per utterance where its feature extractor says `do_normalize`) | its CNN's | `mask_time_indices` into its mask embedding |
| Whisper | the encoder of `WhisperModel` / `WhisperForConditionalGeneration` | 80-bin log-mel of a fixed 30 s window | 1500 (the audio's: N // 320) | refused: no mask embedding |
| w2v-BERT 2.0 | `Wav2Vec2BertModel` | Kaldi filter banks, two 10 ms frames stacked | (1 + (N - 400) // 160) // 2 | `mask_time_indices` into its mask embedding |

`hidden_states` returns the teacher's L + 1 states (input and every layer, as transformers returns
them: a pre-LN teacher's last one after its final LayerNorm). `real_frames` says, per row, how many
leading frames hold the row's audio; the trainer compares teacher and student on common real frames.
"""

import numpy as np
import torch
from torch import Tensor
from transformers import (
    AutoFeatureExtractor,
    PreTrainedModel,
    SeamlessM4TFeatureExtractor,
    Wav2Vec2BertModel,
    WhisperFeatureExtractor,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from configuration_armhubert import SAMPLING_RATE, receptive_field

from ..cli import UserError

FRAME_SAMPLES = 320  # 20 ms at 16 kHz: HuBERT's grid, which the student is trained on


class TeacherEncoder:
    """A frozen `model` and how to feed it. Subclasses: one per family (see the module table)."""

    family = ""
    frame_samples = FRAME_SAMPLES

    def __init__(self, model: PreTrainedModel, name: str):
        self.model, self.name = model.eval().requires_grad_(False), name

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # Why a teacher without `supports_masking` has no mask embedding, for the refusal of masking distillation.
    no_mask_embedding = "masked_spec_embed; mask_time_prob=0"

    @property
    def supports_masking(self) -> bool:
        return getattr(self.model, "masked_spec_embed", None) is not None

    @property
    def rows_independent(self) -> bool:
        """Whether a row's states are the same in any batch (a group-norm CNN normalises over the padding too)."""
        return getattr(self.config, "feat_extract_norm", "layer") != "group"

    def to(self, device) -> "TeacherEncoder":
        self.model.to(device)
        return self

    def real_frames(self, lengths: Tensor) -> Tensor:
        """(B,) frames holding each row's audio, for `lengths` (B,) samples."""
        raise NotImplementedError

    def min_samples(self) -> int:
        """Shortest waveform that gives one frame."""
        return 400

    def hidden_states(self, input_values: Tensor, attention_mask: Tensor, mask_time_indices: Tensor | None = None):
        """L + 1 tensors (B, T_teacher, D) for raw audio (B, N) right-padded, attention_mask (B, N)."""
        raise NotImplementedError


def _rows(input_values: Tensor, attention_mask: Tensor) -> list[np.ndarray]:
    """The batch's waveforms without their padding, as float32 numpy arrays (for feature extractors)."""
    lengths = attention_mask.sum(-1).tolist()
    audio = input_values.float().cpu().numpy()
    return [audio[row, :length] for row, length in enumerate(lengths)]


class Wav2Vec2StyleTeacher(TeacherEncoder):
    family = "wav2vec2-style"

    def __init__(self, model: PreTrainedModel, name: str, normalize: bool = False):
        super().__init__(model, name)
        self.normalize = normalize
        self.frame_samples = int(np.prod(model.config.conv_stride))

    def real_frames(self, lengths):
        return self.model._get_feat_extract_output_lengths(lengths)

    def min_samples(self):
        return receptive_field(self.config.conv_kernel, self.config.conv_stride)

    def hidden_states(self, input_values, attention_mask, mask_time_indices=None):
        if self.normalize:  # zero mean, unit variance over each row's real samples, padding left at 0
            mask = attention_mask.to(input_values.dtype)
            count = mask.sum(-1, keepdim=True)
            mean = (input_values * mask).sum(-1, keepdim=True) / count
            variance = (((input_values - mean) * mask) ** 2).sum(-1, keepdim=True) / count
            input_values = (input_values - mean) / torch.sqrt(variance + 1e-7) * mask
        output = self.model(
            input_values.to(self.dtype),
            attention_mask=attention_mask,
            mask_time_indices=mask_time_indices,
            output_hidden_states=True,
        )
        return output.hidden_states


class WhisperTeacher(TeacherEncoder):
    """Whisper's encoder on the log-mel of a 30 s window (it refuses any other length)."""

    family = "Whisper"

    def __init__(self, model: WhisperEncoder, name: str):
        super().__init__(model, name)
        self.extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
        self.window = self.extractor.n_samples  # 480000

    no_mask_embedding = "Whisper encoders have none"

    @property
    def supports_masking(self):
        return False

    def real_frames(self, lengths):
        return torch.div(torch.div(lengths, 160, rounding_mode="floor") + 1, 2, rounding_mode="floor")

    def hidden_states(self, input_values, attention_mask, mask_time_indices=None):
        if input_values.shape[1] > self.window:
            raise UserError(
                f"a batch holds {input_values.shape[1] / SAMPLING_RATE:.1f} s of audio, but Whisper teachers see at "
                f"most {self.window / SAMPLING_RATE:.0f} s; set crop_seconds to 30 or less"
            )
        features = self.extractor(
            _rows(input_values, attention_mask),
            sampling_rate=SAMPLING_RATE,
            return_tensors="pt",
            device=str(input_values.device),
        ).input_features
        return self.model(features.to(input_values.device, self.dtype), output_hidden_states=True).hidden_states


class W2vBertTeacher(TeacherEncoder):
    """w2v-BERT 2.0: 80 Kaldi filter banks every 10 ms, two frames stacked (160 features every 20 ms)."""

    family = "w2v-BERT"

    def __init__(self, model: Wav2Vec2BertModel, name: str, extractor: SeamlessM4TFeatureExtractor | None = None):
        super().__init__(model, name)
        self.extractor = extractor or SeamlessM4TFeatureExtractor()
        if self.extractor.feature_size * self.extractor.stride != model.config.feature_projection_input_dim:
            raise UserError(
                f"teacher {name!r}: its feature extractor gives {self.extractor.feature_size * self.extractor.stride} "
                f"features per frame, its model takes {model.config.feature_projection_input_dim}"
            )
        self.frame_samples = 160 * self.extractor.stride

    def real_frames(self, lengths):
        return torch.div(torch.div(lengths - 400, 160, rounding_mode="floor") + 1, 2, rounding_mode="floor")

    def min_samples(self):
        return 400 + 160

    def hidden_states(self, input_values, attention_mask, mask_time_indices=None):
        batch = self.extractor(
            _rows(input_values, attention_mask), sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt"
        )
        features = batch.input_features.to(input_values.device, self.dtype)
        if mask_time_indices is not None:  # the student's frames: pad or crop to the teacher's
            mask_time_indices = _fit_frames(mask_time_indices, features.shape[1])
        output = self.model(
            features,
            attention_mask=batch.attention_mask.to(input_values.device),
            mask_time_indices=mask_time_indices,
            output_hidden_states=True,
        )
        return output.hidden_states


def _fit_frames(mask: Tensor, frames: int) -> Tensor:
    """(B, T) bool mask cropped or padded with False to (B, frames)."""
    if mask.shape[1] >= frames:
        return mask[:, :frames]
    return torch.nn.functional.pad(mask, (0, frames - mask.shape[1]), value=False)


def whisper_encoder(model: PreTrainedModel) -> WhisperEncoder | None:
    """The Whisper encoder of a Whisper model (or the encoder itself); None for other models."""
    if isinstance(model, WhisperEncoder):
        return model
    get_encoder = getattr(model, "get_encoder", None)
    encoder = get_encoder() if callable(get_encoder) else None
    return encoder if isinstance(encoder, WhisperEncoder) else None


def _preprocessor(name: str):
    """The teacher folder's or Hub id's feature extractor, or None (random teachers, folders without one)."""
    try:
        return AutoFeatureExtractor.from_pretrained(name)
    except Exception:  # noqa: BLE001 - no preprocessor_config.json: the family's defaults apply
        return None


def teacher_encoder(model: PreTrainedModel, name: str, random: bool = False) -> TeacherEncoder:
    """Wrap a loaded teacher by family; one line for a model that is no speech encoder of a known family."""
    whisper = whisper_encoder(model)
    if whisper is not None:
        return WhisperTeacher(whisper, name)
    extractor = None if random else _preprocessor(name)
    if isinstance(model, Wav2Vec2BertModel):
        return W2vBertTeacher(model, name, extractor if isinstance(extractor, SeamlessM4TFeatureExtractor) else None)
    if hasattr(model, "_get_feat_extract_output_lengths") and hasattr(model, "feature_extractor"):
        return Wav2Vec2StyleTeacher(model, name, normalize=bool(getattr(extractor, "do_normalize", False)))
    raise UserError(
        f"teacher {name!r} ({type(model).__name__}) is not a speech encoder this trainer can feed: give a HuBERT, "
        "WavLM, wav2vec2, data2vec-audio, wav2vec2-conformer, UniSpeech-SAT, Whisper or w2v-BERT 2.0 model"
    )
