"""PyTorch ARMHuBERT: compressed HuBERT-class speech encoders with attention-map reuse.

Top to bottom, as `transformers`' `modeling_hubert.py`: the CNN (`ARMHubertFeatureEncoder`), the
attention kernels and paths (`ATTENTION_PATHS`), `ARMHubertEncoderLayer` (attention computing or reusing),
`ARMHubertEncoder` (which picks the attention path once per forward), `ARMHubertPreTrainedModel`,
`ARMHubertModel` (+ per-layer projection heads), then the CTC and classification heads.

Numerics follow the original release (see the project README): post-LN layers, float32 softmax,
and in reusing layers a second softmax over the reused probability map. Unlike the original, maps
are always paired per utterance and per head, so batched outputs equal per-utterance outputs.
"""

import contextlib
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from transformers import AutoModel, AutoModelForAudioClassification, AutoModelForCTC, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.audio_utils import mel_filter_bank
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices
from transformers.utils import ModelOutput, logging

try:  # FlexAttention and its log-sum-exp request (torch >= 2.9)
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention
except ImportError:
    AuxRequest = flex_attention = None
_COMPILED_FLEX = {}  # torch.compile(flex_attention), made on the first call on an accelerator

# The pipeline file is imported so that `save_pretrained` ships it with the model (transformers copies a
# model file's relative imports); `release_feature_extractor` is re-exported for existing imports.
try:  # loaded as remote code from a model folder
    from .configuration_armhubert import MEL_HOP, MEL_WINDOW, SAMPLING_RATE, ARMHubertConfig
    from .pipeline_armhubert import release_feature_extractor  # noqa: F401 -- re-exported
except ImportError:  # installed as a top-level module
    from configuration_armhubert import MEL_HOP, MEL_WINDOW, SAMPLING_RATE, ARMHubertConfig
    from pipeline_armhubert import release_feature_extractor  # noqa: F401 -- re-exported

logger = logging.get_logger(__name__)


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""

    @staticmethod
    def forward(ctx, tensor, scale):
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_gradient(tensor: Tensor, scale: float) -> Tensor:
    if scale == 1.0 or not tensor.requires_grad:
        return tensor
    return _ScaleGradient.apply(tensor, scale)


def split_layer_gradient(output: Tensor, index: int, num_layers: int, mode: str | bool) -> tuple[Tensor, Tensor]:
    """`config.layer_grad_scale` on layer `index`'s output (B, T, D): (head input, next layer's input), both
    `output` in the forward pass, gradients scaled as `mode` says (docs/numerics.md, "Gradient scaling")."""
    if not mode:
        return output, output
    remaining = num_layers - index
    if mode == "release":
        keep = remaining / (remaining + 1)
        continuing = scale_gradient(output, keep)
        return scale_gradient(continuing, 1.0 - keep), continuing
    keep = (remaining - 1) / remaining
    return scale_gradient(output, 1.0 - keep), scale_gradient(output, keep)


@dataclass
class ARMHubertModelOutput(ModelOutput):
    """Output of [`ARMHubertModel`].

    Args:
        last_hidden_state (`(B, T, D_out)`): the last projection head's output when the model has
            heads (D_out = projection_head_size), else the last layer's output (D_out = hidden_size).
            For a pre-LN model without heads it is taken after the encoder's final LayerNorm; as in the
            original, that LayerNorm reaches nothing else (not `hidden_states`, not the heads).
        extract_features (`(B, T, C)`): CNN output after its LayerNorm; padded frames are zero.
        hidden_states (tuple of L+1 `(B, T, D)`, when asked): the encoder input (after the positional
            convolution, and the LayerNorm for post-LN models), then every layer's output.
        projected_hidden_states (tuple of L `(B, T, P)`, when asked and the model has all L heads):
            head_i(output of layer i), the representation the release fed to SUPERB.
        attentions (tuple of L `(B, H, T, T)`, when asked): the weights every layer applied to V.
        frame_attention_mask (`(B, T)` long, or `None`): 1 for real frames, 0 for padding.
    """

    last_hidden_state: torch.FloatTensor = None
    extract_features: torch.FloatTensor = None
    hidden_states: tuple | None = None
    projected_hidden_states: tuple | None = None
    attentions: tuple | None = None
    frame_attention_mask: torch.LongTensor | None = None


# --------------------------------------------------------------------------------------------------
# Derived weights and the feature encoder


class DerivedWeightsModule(nn.Module):
    """Keeps tensors derived from its parameters (re-laid-out kernels, an FFT spectrum) between inference
    calls, while the parameters keep their version counters; autograd, compiling, `train()` and `eval()`
    derive afresh (docs/speed.md, "Work done once, not per call")."""

    # module -> {name: (stamp, weak references to the sources, tensor)}: never saved, copied or pickled.
    _caches = weakref.WeakKeyDictionary()

    def derived(self, name: str, sources: tuple[Tensor, ...], make: Callable[[], Tensor]) -> Tensor:
        """`make()`, or the tensor it returned last time if the `sources` parameters are unchanged."""
        autograd = torch.is_grad_enabled() and any(source.requires_grad for source in sources)
        if autograd or torch.compiler.is_compiling() or any(source.is_inference() for source in sources):
            return make()
        stamp = tuple((source.data_ptr(), source._version, source.dtype, source.device) for source in sources)
        cache = self._caches.setdefault(self, {})
        hit = cache.get(name)
        if hit is not None and hit[0] == stamp and all(ref() is source for ref, source in zip(hit[1], sources)):
            return hit[2]
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor: usable outside inference mode too
            value = make()
        cache[name] = (stamp, tuple(weakref.ref(source) for source in sources), value)
        return value

    def channels_last_kernel(self, conv: nn.Conv1d) -> Tensor:
        """`conv.weight` (C_out, C_in / groups, k) as a (C_out, C_in / groups, 1, k) channels-last tensor."""
        if parametrize.is_parametrized(conv, "weight"):
            sources = tuple(conv.parametrizations.weight.parameters())  # e.g. weight norm's g and v
        else:
            sources = (conv.weight,)
        return self.derived(
            "kernel", sources, lambda: conv.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        )

    def train(self, mode: bool = True) -> "DerivedWeightsModule":
        self._caches.pop(self, None)
        return super().train(mode)


def conv1d_channels_last(conv: nn.Conv1d, hidden_states: Tensor, kernel: Tensor | None = None) -> Tensor:
    """`conv` on (B, C, 1, N) channels-last input, channels-last output (docs/speed.md: time-major).
    `kernel`: `conv.weight` laid out for `F.conv2d` (`channels_last_kernel`), unused by the matmul cases."""
    width, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if conv.in_channels == 1 and padding == 0:
        # The waveform: a matmul over its strided frames is channels-last at once (a convolution's output
        # would need a transposing copy of the CNN's largest tensor).
        frames = hidden_states[:, 0, 0].unfold(-1, width, stride)  # (B, T, k)
        return F.linear(frames, conv.weight[:, 0], conv.bias).transpose(1, 2).unsqueeze(2)
    if width == 1 and stride == 1 and padding == 0 and conv.groups == 1:
        # A 1 x 1 convolution: one matmul on the (B, 1, N, C) view (oneDNN's reference path is slow).
        output = F.linear(hidden_states.permute(0, 2, 3, 1), conv.weight[:, :, 0], conv.bias)
        return output.permute(0, 3, 1, 2)
    if kernel is None:
        kernel = conv.weight.unsqueeze(2)
    output = F.conv2d(hidden_states, kernel, conv.bias, stride=(1, stride), padding=(0, padding), groups=conv.groups)
    return output.contiguous(memory_format=torch.channels_last)  # a no-op unless the input was odd


class ARMHubertConvLayer(DerivedWeightsModule):
    """Conv1d -> optional norm -> activation. `layer_norm` is a GroupNorm or a channel LayerNorm."""

    def __init__(self, config: ARMHubertConfig, layer_id: int):
        super().__init__()
        in_dim = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_dim = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(
            in_dim, out_dim, config.conv_kernel[layer_id], stride=config.conv_stride[layer_id], bias=config.conv_bias
        )
        if config.feat_extract_norm == "layer":
            self.layer_norm = nn.LayerNorm(out_dim, elementwise_affine=True)
        elif layer_id == 0:
            # One group per channel, statistics over the whole (padded) time axis, as in fairseq.
            self.layer_norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        else:
            self.layer_norm = None
        self.activation = ACT2FN[config.feat_extract_activation]
        self.activation_in_place = config.feat_extract_activation == "gelu"
        # Kernels wider than 1 over more than one input channel run as a convolution on a cached kernel.
        self.needs_kernel = in_dim > 1 and config.conv_kernel[layer_id] > 1

    def forward(self, hidden_states: Tensor) -> Tensor:
        """(B, C_in, 1, N) -> (B, C_out, 1, N'), both channels-last (see `conv1d_channels_last`)."""
        kernel = self.channels_last_kernel(self.conv) if self.needs_kernel else None
        hidden_states = conv1d_channels_last(self.conv, hidden_states, kernel)
        if isinstance(self.layer_norm, nn.LayerNorm):
            hidden_states = self.layer_norm(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        elif self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        if self.activation_in_place and not hidden_states.requires_grad:
            # Without autograd the CNN then never holds a layer's output twice: 40 % less peak memory at 10 s.
            return torch.ops.aten.gelu_(hidden_states)
        return self.activation(hidden_states)


class ARMHubertFeatureEncoder(nn.Module):
    """Raw waveform (B, N) -> frame features (B, C, T)."""

    def __init__(self, config: ARMHubertConfig):
        super().__init__()
        self.conv_layers = nn.ModuleList(ARMHubertConvLayer(config, i) for i in range(config.num_feat_extract_layers))
        self._requires_grad = True

    def _freeze_parameters(self):
        for param in self.parameters():
            param.requires_grad = False
        self._requires_grad = False

    def forward(self, input_values: Tensor) -> Tensor:
        """(B, N) -> (B, C, T), time-major in memory: its transpose to (B, T, C) is contiguous."""
        hidden_states = input_values[:, None, None, :]
        for conv_layer in self.conv_layers:
            hidden_states = conv_layer(hidden_states)
        return hidden_states.squeeze(2)


class ARMHubertLogMelFrontEnd(nn.Module):
    """Whisper's front-end (`frontend="log_mel"`): raw waveform (B, N) -> frame features (B, D, T), T = ceil(N / 320).

    The log-mel spectrogram is Whisper's feature extractor's, computed in the model so that every
    ARMHubert takes the same raw audio: |STFT|^2 (400-sample Hann window, hop 160, centred, last frame
    dropped) -> slaney mel filters -> log10 (floor 1e-10) -> at most 8 below each utterance's maximum ->
    (x + 4) / 4. Then Conv1d(k=3) -> GELU -> Conv1d(k=3, stride 2) -> GELU, as Whisper's encoder.
    """

    def __init__(self, config: ARMHubertConfig):
        super().__init__()
        self.num_mel_bins = config.num_mel_bins
        self.register_buffer("mel_filters", torch.empty(config.num_mel_bins, MEL_WINDOW // 2 + 1), persistent=False)
        self.register_buffer("window", torch.empty(MEL_WINDOW), persistent=False)
        self.reset_buffers()
        self.conv1 = nn.Conv1d(config.num_mel_bins, config.hidden_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.hidden_size, config.hidden_size, kernel_size=3, stride=2, padding=1)
        self.activation = ACT2FN[config.feat_extract_activation]
        self._requires_grad = True

    def _freeze_parameters(self):
        self.requires_grad_(False)
        self._requires_grad = False

    def reset_buffers(self) -> None:
        """The slaney mel filters (n_mels, 201) and the Hann window: derived, not saved (also after loading)."""
        bins = MEL_WINDOW // 2 + 1
        filters = mel_filter_bank(bins, self.num_mel_bins, 0.0, SAMPLING_RATE / 2, SAMPLING_RATE, "slaney", "slaney")
        init.copy_(self.mel_filters, torch.tensor(filters, dtype=torch.float32).T)
        init.copy_(self.window, torch.hann_window(MEL_WINDOW))

    def log_mel(self, input_values: Tensor) -> Tensor:
        """(B, N) -> (B, num_mel_bins, N // 160), float32 whatever the weights' dtype."""
        spectrum = torch.stft(input_values.float(), MEL_WINDOW, MEL_HOP, window=self.window, return_complex=True)[
            ..., :-1
        ]
        mel = self.mel_filters @ spectrum.abs().square()
        log_mel = mel.clamp(min=1e-10).log10()
        log_mel = torch.maximum(log_mel, log_mel.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log_mel + 4.0) / 4.0

    def forward(self, input_values: Tensor) -> Tensor:
        """(B, N) -> (B, D, T)."""
        features = self.log_mel(input_values).to(self.conv1.weight.dtype)
        return self.activation(self.conv2(self.activation(self.conv1(features))))


# --------------------------------------------------------------------------------------------------
# Transformer encoder


class ARMHubertPositionalConvEmbedding(DerivedWeightsModule):
    """Weight-normed grouped Conv1d over time -> drop the last frame for even kernels -> GELU.

    Inference on more than one block of frames convolves by FFT (overlap-save over blocks of `fft_size`
    frames; 3.5x faster at 30 s for the releases' 128 taps, same numbers to float32 rounding). Training,
    `torch.compile` graphs, half precision, short inputs and `fft = False` (MAC counting) run it directly.
    """

    def __init__(self, config: ARMHubertConfig):
        super().__init__()
        width, kernel = config.hidden_size, config.num_conv_pos_embeddings
        conv = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=config.num_conv_pos_embedding_groups)
        # Normalised over dim 2, i.e. one gain per kernel tap, as in the original weights.
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.num_pad_remove = 1 if kernel % 2 == 0 else 0
        self.activation = ACT2FN[config.feat_extract_activation]
        # The smallest power of two of at least two kernels: blocks of fft_size - kernel + 1 outputs.
        self.fft_size = 1 << (2 * kernel - 1).bit_length()
        self.fft = True

    def _use_fft(self, hidden_states):
        if not self.fft or torch.compiler.is_compiling():
            return False
        # One block's small per-frequency products cost more than the direct convolution of so few frames.
        step = self.fft_size - self.conv.kernel_size[0] + 1
        if hidden_states.shape[1] + 1 <= step or hidden_states.dtype not in (torch.float32, torch.float64):
            return False
        weights = self.conv.parametrizations.weight.parameters()
        return not torch.is_grad_enabled() or not (hidden_states.requires_grad or any(w.requires_grad for w in weights))

    def _kernel_spectrum(self):
        """(F * G, C/G, C/G) complex, F = fft_size // 2 + 1: the flipped kernel's spectrum, per frequency and group."""
        conv = self.conv
        group_width = conv.in_channels // conv.groups  # not conv.weight.shape: reading it derives the weight
        bins = self.fft_size // 2 + 1

        def make():
            spectrum = torch.fft.rfft(conv.weight.flip(-1), n=self.fft_size)  # (C, C/G, F)
            spectrum = spectrum.view(conv.groups, group_width, group_width, bins).permute(3, 0, 1, 2)
            return spectrum.reshape(bins * conv.groups, group_width, group_width)

        return self.derived("spectrum", tuple(conv.parametrizations.weight.parameters()), make)

    def _convolve_fft(self, hidden_states):
        """(B, T, D) -> (B, T', D), T' = T + 2 * (K // 2) - K + 1: the padded convolution, by overlap-save."""
        batch, time, width = hidden_states.shape
        kernel, groups, size = self.conv.kernel_size[0], self.conv.groups, self.fft_size
        step, bins, padding = size - kernel + 1, size // 2 + 1, kernel // 2
        outputs = time + 2 * padding - kernel + 1
        blocks = -(-outputs // step)
        padded = F.pad(hidden_states, (0, 0, padding, blocks * step + kernel - 1 - time - padding))
        spectrum = torch.fft.rfft(padded.unfold(1, size, step), n=size)  # (B, blocks, D, F)
        spectrum = spectrum.view(batch * blocks, groups, width // groups, bins).permute(3, 1, 2, 0)
        product = torch.bmm(self._kernel_spectrum(), spectrum.reshape(bins * groups, width // groups, batch * blocks))
        product = product.view(bins, width, batch, blocks).permute(2, 3, 1, 0)  # (B, blocks, D, F)
        result = torch.fft.irfft(product, n=size)[..., kernel - 1 :]  # (B, blocks, D, step): the valid outputs
        return result.transpose(2, 3).reshape(batch, blocks * step, width)[:, :outputs] + self.conv.bias

    def _convolve_direct(self, hidden_states):
        """(B, T, D) -> (B, T', D), as `_convolve_fft`. A contiguous (B, T, D) input is already channels-last."""
        kernel = self.channels_last_kernel(self.conv)
        channels_last = hidden_states.transpose(1, 2).unsqueeze(2)
        return conv1d_channels_last(self.conv, channels_last, kernel).squeeze(2).transpose(1, 2)

    def forward(self, hidden_states: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        convolve = self._convolve_fft if self._use_fft(hidden_states) else self._convolve_direct
        hidden_states = convolve(hidden_states)
        if self.num_pad_remove:
            hidden_states = hidden_states[:, : -self.num_pad_remove]
        return self.activation(hidden_states)


# --------------------------------------------------------------------------------------------------
# Attention-map reuse without (B, H, T, T) maps
#
# A reusing layer applies the computing layer's P = softmax(Q K^T * scale) (padded keys masked) to its
# own values, after a second masked softmax in the release's "resoftmax" mode. The computing layer
# hands over a `Handover`; `ARMHubertEncoder._attention_paths` picks which kind once per forward, and
# `ATTENTION_PATHS` maps it to a compute and a reuse function. How and why: docs/speed.md.

# A (B, H, T, T) map up to this size (1 MiB in float32: one 12-head utterance of T <= 147 frames, about
# 3 s) is handed over explicitly on a CPU: in cache, holding it is faster than rebuilding it.
EXPLICIT_MAP_ELEMENTS = 2**18
# Elements of one block of rebuilt scores: 2 MiB in float32, a CPU core's L2 cache; at most this many rows.
REUSE_BLOCK_ELEMENTS = 2**19
REUSE_BLOCK_ROWS = 256
# A private CPU kernel that returns SDPA's output and its log-sum-exp in one call. Where a torch lacks
# it, the public SDPA runs and `logsumexp_blocks` adds the log-sum-exp (one extra Q K^T pass).
CPU_FLASH_ATTENTION = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)

Mask = Tensor | None  # key_padding_mask (B, T) bool, True = padding; None when nothing is padded


@dataclass
class Handover:
    """What a computing layer hands to the reusing layers after it.

    "map": `map` (B, H, T, T), the explicit probabilities. "logsumexp": `query` and `key` (B, H, T, d)
    and `logsumexp` (B, H, T), float32, of the scaled, masked scores. "probabilities": `query` and `key`.
    """

    map: torch.Tensor | None = None
    query: torch.Tensor | None = None
    key: torch.Tensor | None = None
    logsumexp: torch.Tensor | None = None


def score_blocks(batch_heads: int, time: int, device: torch.device) -> list[tuple[slice, slice]]:
    """Blocks (slice of B*H, slice of query rows) that tile the (B*H, T, T) scores, about
    REUSE_BLOCK_ELEMENTS values each on a CPU (64x on other devices): up to REUSE_BLOCK_ROWS rows of as
    many heads as fit, both split evenly, so that products stay efficient when the batch or T grows."""
    budget = REUSE_BLOCK_ELEMENTS if device.type == "cpu" else 64 * REUSE_BLOCK_ELEMENTS
    rows = -(-time // -(-time // min(time, REUSE_BLOCK_ROWS)))
    heads = max(1, budget // (rows * time))
    heads = -(-batch_heads // -(-batch_heads // heads))
    return [
        (slice(first_head, min(first_head + heads, batch_heads)), slice(first_row, min(first_row + rows, time)))
        for first_head in range(0, batch_heads, heads)
        for first_row in range(0, time, rows)
    ]


def padding_bias(key_padding_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T) bool, True = padding -> (B, T) additive mask: 0 for real keys, half the dtype's lowest value
    for padded ones (finite, so that products and sums holding it never make a NaN; its exp is 0)."""
    return key_padding_mask.to(dtype) * (torch.finfo(dtype).min / 2)


def reuse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reuse computes and answers in: float32 for half-precision inputs, else their own (after
    the second softmax the map's structure is below bf16's resolution: docs/numerics.md, "Half precision")."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def full_precision(tensor: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on `tensor`'s device, so that the reuse's products run in the dtype given (a no-op on
    devices without autocast, such as the meta device of MAC counting)."""
    if not torch.amp.is_autocast_available(tensor.device.type):
        return contextlib.nullcontext()
    return torch.autocast(tensor.device.type, enabled=False)


def real_mean(value: Tensor, key_padding_mask: Mask) -> Tensor:
    """(B, H, T, d) -> (B, H, 1, d) in `reuse_dtype`: the plain mean of V over real keys (what a uniform map gives)."""
    value = value.to(reuse_dtype(value.dtype))
    if key_padding_mask is None:
        return value.mean(-2, keepdim=True)
    real = (~key_padding_mask).to(value.dtype)[:, None, :, None]
    return (value * real).sum(-2, keepdim=True) / real.sum(-2, keepdim=True)


def sdpa(
    query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Mask, scale: float, dropout: float = 0.0
) -> Tensor:
    """`F.scaled_dot_product_attention` (B, H, T, d) with padded keys masked (key_padding_mask (B, T), True = padding)."""
    mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)


def masked_softmax(scores: Tensor, key_padding_mask: Mask) -> Tensor:
    """Float32 softmax over keys of scores (B, H, T, T), padded keys masked, in the scores' dtype."""
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    # dtype= computes in float32 inside the kernel: no float32 copy of a half-precision map.
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)


def attention_with_logsumexp(
    query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Mask, scale: float, dropout: float = 0.0
) -> tuple[Tensor, Tensor]:
    """SDPA output (B, H, T, d) and the row log-sum-exp (B, H, T), float32, of its scaled, masked scores.

    One fused call (`CPU_FLASH_ATTENTION`) on a CPU without dropout; elsewhere SDPA plus
    `logsumexp_blocks`. The log-sum-exp carries no gradient: `ResoftmaxReuse` differentiates through it.
    """
    if query.device.type == "cpu" and dropout == 0.0 and CPU_FLASH_ATTENTION is not None:
        mask = None if key_padding_mask is None else padding_bias(key_padding_mask, query.dtype)[:, None, None, :]
        output, logsumexp = CPU_FLASH_ATTENTION(query, key, value, attn_mask=mask, scale=scale)
        return output, logsumexp.detach().to(torch.promote_types(logsumexp.dtype, torch.float32))
    output = sdpa(query, key, value, key_padding_mask, scale, dropout)
    return output, logsumexp_blocks(query, key, key_padding_mask, scale)


@torch.no_grad()
def logsumexp_blocks(query: Tensor, key: Tensor, key_padding_mask: Mask, scale: float) -> Tensor:
    """Row log-sum-exp (B, H, T), float32, of Q K^T * scale with padded keys masked, block by block of rows."""
    batch, heads, time, _ = query.shape
    queries, keys = (query.float() * scale).flatten(0, 1), key.float().flatten(0, 1).transpose(1, 2)
    bias = None
    if key_padding_mask is not None:
        bias = padding_bias(key_padding_mask, torch.float32).repeat_interleave(heads, dim=0)[:, None, :]
    result = query.new_empty(batch * heads, time, dtype=torch.float32)
    with full_precision(query):
        for group, rows in score_blocks(batch * heads, time, query.device):
            scores = torch.bmm(queries[group, rows], keys[group])
            if bias is not None:
                scores += bias[group]
            result[group, rows] = torch.logsumexp(scores, dim=-1)
    return result.view(batch, heads, time)


def resoftmax_blocks(
    query: Tensor, key: Tensor, logsumexp: Tensor, value: Tensor, key_padding_mask: Mask, scale: float
) -> tuple[Tensor, Tensor]:
    """The release's reuse, softmax(P) V with P = exp(Q K^T * scale - lse), block by block of query rows.

    query, key, value: (B, H, T, d); logsumexp: (B, H, T). Returns (output (B, H, T, d), softmax denominators
    (B*H, T)), in `reuse_dtype`, autocast off. Padded keys get no weight in either softmax. Peak extra
    memory: one block of scores (see `score_blocks`).
    """
    batch, heads, time, dim = query.shape
    dtype = reuse_dtype(query.dtype)
    queries, keys = (query.to(dtype) * scale).flatten(0, 1), key.to(dtype).flatten(0, 1).transpose(1, 2)
    values, lse = value.to(dtype).flatten(0, 1), logsumexp.flatten(0, 1)[..., None]
    padded = None if key_padding_mask is None else key_padding_mask.repeat_interleave(heads, 0)[:, None, :]
    output = values.new_empty(batch * heads, time, dim)
    denominators = values.new_empty(batch * heads, time)
    with full_precision(query):
        for group, rows in score_blocks(batch * heads, time, query.device):
            numerators = torch.bmm(queries[group, rows], keys[group]).sub_(lse[group, rows]).exp_().exp_()
            if padded is not None:
                numerators.masked_fill_(padded[group], 0.0)
            sums = numerators.sum(-1, keepdim=True)
            output[group, rows] = torch.bmm(numerators, values[group]).div_(sums)
            denominators[group, rows] = sums[..., 0]
    return output.view(batch, heads, time, dim), denominators


class ResoftmaxReuse(torch.autograd.Function):
    """`resoftmax_blocks` with an exact backward that rebuilds the map block by block. It saves Q, K, V, the
    log-sum-exp, output and denominators (O(B*H*T*d), no maps); the log-sum-exp is a function of Q and K,
    so the backward differentiates through it (the computing layer's full softmax backward)."""

    @staticmethod
    def forward(ctx, query, key, logsumexp, value, key_padding_mask, scale):
        output, denominators = resoftmax_blocks(query, key, logsumexp, value, key_padding_mask, scale)
        ctx.save_for_backward(query, key, value, logsumexp, key_padding_mask, output, denominators)
        ctx.scale = scale
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, logsumexp, key_padding_mask, output, denominators = ctx.saved_tensors
        batch, heads, time, dim = query.shape
        work = reuse_dtype(query.dtype)
        plain_query, plain_key, plain_value = (t.to(work).flatten(0, 1) for t in (query, key, value))
        queries, lse = plain_query * ctx.scale, logsumexp.flatten(0, 1)[..., None]
        padded = None if key_padding_mask is None else key_padding_mask.repeat_interleave(heads, 0)[:, None, :]
        grad_output = grad_output.to(work).flatten(0, 1)
        # Softmax backward of the reusing layer needs rowsum(dW * W) = rowsum(dO * O) (as flash attention).
        grad_dot_output = (grad_output * output.flatten(0, 1)).sum(-1, keepdim=True)
        grad_query = torch.empty_like(plain_query)
        grad_key, grad_value = torch.zeros_like(plain_key), torch.zeros_like(plain_value)
        with full_precision(grad_output):
            for group, rows in score_blocks(batch * heads, time, query.device):
                scores = torch.bmm(queries[group, rows], plain_key[group].transpose(1, 2)).sub_(lse[group, rows])
                probabilities = scores.exp_()  # the computing layer's P
                if padded is not None:
                    probabilities.masked_fill_(padded[group], 0.0)
                weights = probabilities.exp().div_(denominators[group, rows, None])  # the reusing layer's W
                if padded is not None:
                    weights.masked_fill_(padded[group], 0.0)
                grad = grad_output[group, rows]
                grad_value[group].baddbmm_(weights.transpose(1, 2), grad)
                # dP = W * (dW - rowsum(dW * W)), then dS = P * (dP - rowsum(dP * P)), in place.
                grad_map = torch.bmm(grad, plain_value[group].transpose(1, 2)).sub_(grad_dot_output[group, rows])
                grad_map.mul_(weights)
                grad_map.sub_((grad_map * probabilities).sum(-1, keepdim=True)).mul_(probabilities)
                grad_query[group, rows] = torch.bmm(grad_map, plain_key[group])
                grad_key[group].baddbmm_(grad_map.transpose(1, 2), plain_query[group, rows])
        grads = [grad_query * ctx.scale, grad_key * ctx.scale, grad_value]
        grads = [grad.view(batch, heads, time, dim).to(t.dtype) for grad, t in zip(grads, (query, key, value))]
        return grads[0], grads[1], None, grads[2], None, None


def flex_attention_with_logsumexp(
    query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Mask, scale: float, score_mod: Callable | None = None
) -> tuple[Tensor, Tensor]:
    """`attention_with_logsumexp` through FlexAttention (inference), in one kernel. `score_mod(score, batch,
    head, query_index)` replaces each scaled score before padded keys are masked. Compiled once per process
    on GPUs (eager FlexAttention materialises the scores), eager on a CPU and inside a `torch.compile` graph."""
    if flex_attention is None:
        raise ValueError('attn_implementation="flex_attention" needs torch >= 2.9 (FlexAttention with AuxRequest).')
    flex = flex_attention
    if query.device.type != "cpu" and not torch.compiler.is_compiling():
        if "flex" not in _COMPILED_FLEX:
            _COMPILED_FLEX["flex"] = torch.compile(flex_attention)
        flex = _COMPILED_FLEX["flex"]

    def modified_score(score, batch, head, query_index, key_index):
        if score_mod is not None:
            score = score_mod(score, batch, head, query_index)
        if key_padding_mask is None:
            return score
        return torch.where(key_padding_mask[batch, key_index], float("-inf"), score)

    output, aux = flex(query, key, value, score_mod=modified_score, scale=scale, return_aux=AuxRequest(lse=True))
    return output, aux.lse.float()


def flex_resoftmax(
    query: Tensor, key: Tensor, logsumexp: Tensor, value: Tensor, key_padding_mask: Mask, scale: float
) -> Tensor:
    """`resoftmax_blocks`'s output through FlexAttention, in a form that keeps the map's structure in any dtype:
    softmax(P) V = mean(V) + s / (n + s) * (E V / s - mean(V)), E = expm1(P), s = rowsum(E), over the n real
    keys; FlexAttention with score_mod = log(E) gives E V / s and log(s) (docs/speed.md, "Attention without holding the map")."""

    def log_expm1_probability(score, batch, head, query_index):
        return torch.log(torch.expm1(torch.exp(score - logsumexp[batch, head, query_index])))

    mean = real_mean(value, key_padding_mask)
    output, log_sums = flex_attention_with_logsumexp(query, key, value, key_padding_mask, scale, log_expm1_probability)
    with full_precision(query):
        sums = log_sums.exp()[..., None]  # rowsum(E) (B, H, T, 1)
        real = value.shape[-2] if key_padding_mask is None else (~key_padding_mask).sum(-1)[:, None, None, None]
        return mean + sums / (real + sums) * (output.to(mean.dtype) - mean)


# --------------------------------------------------------------------------------------------------
# Attention paths: what a computing layer computes and hands over, and how a reusing layer applies it,
# with `attention` the calling `ARMHubertAttention` (its scaling, softmax mode and training flag), as in
# transformers' attention interface:
# compute(attention, query, key, value, mask, dropout) -> (output (B, H, T, d), Handover or None);
# reuse(attention, handover, value, mask, dropout) -> (output (B, H, T, d), applied weights or None).

Computed = tuple[Tensor, Handover | None]
Reused = tuple[Tensor, Tensor | None]  # the weights (B, H, T, T) only on the explicit path
# What an attention layer (and its encoder layer) returns: output (B, T, D), own Handover, applied weights.
AttentionOutput = tuple[Tensor, Handover | None, Tensor | None]


class AttentionPath(NamedTuple):
    compute: Callable[..., Computed]
    reuse: Callable[..., Reused] | None


def compute_without_handover(
    attention: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Mask, dropout: float
) -> Computed:
    """A computing layer whose map no later layer reuses: plain SDPA."""
    return sdpa(query, key, value, mask, attention.scaling, dropout), None


def compute_map(
    attention: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Mask, dropout: float
) -> Computed:
    """The explicit path: the probability map (B, H, T, T), handed over and returned as the layer's weights."""
    probabilities = masked_softmax(torch.matmul(query * attention.scaling, key.transpose(-1, -2)), mask)
    output = torch.matmul(F.dropout(probabilities, dropout, attention.training), value)
    return output, Handover(map=probabilities)


def reuse_map(attention: nn.Module, handover: Handover, value: Tensor, mask: Mask, dropout: float) -> Reused:
    """The computing layer's map, after the release's second softmax in "resoftmax" mode, in `reuse_dtype`."""
    dtype = reuse_dtype(value.dtype)
    with full_precision(value):
        weights = handover.map.to(dtype)
        if attention.reuse_softmax == "resoftmax":
            weights = masked_softmax(weights, mask)
        return torch.matmul(F.dropout(weights, dropout, attention.training), value.to(dtype)), weights


def compute_query_key(
    attention: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Mask, dropout: float
) -> Computed:
    """SDPA, handing over Q and K: the reusing layer's SDPA makes the same probabilities (probabilities mode)."""
    return sdpa(query, key, value, mask, attention.scaling, dropout), Handover(query=query, key=key)


def reuse_query_key(attention: nn.Module, handover: Handover, value: Tensor, mask: Mask, dropout: float) -> Reused:
    return sdpa(handover.query, handover.key, value, mask, attention.scaling, dropout), None


def compute_logsumexp(
    attention: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Mask, dropout: float
) -> Computed:
    output, logsumexp = attention_with_logsumexp(query, key, value, mask, attention.scaling, dropout)
    return output, Handover(query=query, key=key, logsumexp=logsumexp)


def reuse_logsumexp(attention: nn.Module, handover: Handover, value: Tensor, mask: Mask, dropout: float) -> Reused:
    """The release's second softmax over the rebuilt map; exact gradients through `ResoftmaxReuse` (no dropout)."""
    arguments = (handover.query, handover.key, handover.logsumexp, value, mask, attention.scaling)
    if torch.is_grad_enabled() and any(tensor.requires_grad for tensor in (handover.query, handover.key, value)):
        return ResoftmaxReuse.apply(*arguments), None
    return resoftmax_blocks(*arguments)[0], None


def compute_flex_logsumexp(
    attention: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Mask, dropout: float
) -> Computed:
    """`compute_logsumexp` through FlexAttention (inference without dropout only)."""
    output, logsumexp = flex_attention_with_logsumexp(query, key, value, mask, attention.scaling)
    return output, Handover(query=query, key=key, logsumexp=logsumexp)


def reuse_flex_logsumexp(attention: nn.Module, handover: Handover, value: Tensor, mask: Mask, dropout: float) -> Reused:
    return flex_resoftmax(handover.query, handover.key, handover.logsumexp, value, mask, attention.scaling), None


# (handover, implementation) -> path; an implementation without an entry of its own takes the "sdpa" one
# (the encoder turns "eager" into "map" handovers everywhere and FlexAttention with autograd into "sdpa").
ATTENTION_PATHS = {
    (None, "sdpa"): AttentionPath(compute_without_handover, None),
    ("map", "sdpa"): AttentionPath(compute_map, reuse_map),
    ("probabilities", "sdpa"): AttentionPath(compute_query_key, reuse_query_key),
    ("logsumexp", "sdpa"): AttentionPath(compute_logsumexp, reuse_logsumexp),
    ("logsumexp", "flex_attention"): AttentionPath(compute_flex_logsumexp, reuse_flex_logsumexp),
}


def attention_path(handover: str | None, implementation: str) -> AttentionPath:
    """The `ATTENTION_PATHS` entry for a handover ("map", "logsumexp", "probabilities" or None) and implementation."""
    return ATTENTION_PATHS.get((handover, implementation)) or ATTENTION_PATHS[(handover, "sdpa")]


class ARMHubertAttention(nn.Module):
    """Multi-head self-attention that computes its own map (q/k/v/out projections) or reuses the most recent
    computing layer's (v/out only; a second softmax in "resoftmax" mode), handed over as a `Handover`. How
    is the encoder's choice, passed in as an `AttentionPath`."""

    def __init__(self, config: ARMHubertConfig, reuses_map: bool):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.reuses_map = reuses_map
        self.reuse_softmax = config.reuse_softmax
        self.dropout = config.reuse_attention_dropout if reuses_map else config.attention_dropout
        if not reuses_map:
            self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
            self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def _split_heads(self, tensor):
        """(B, T, D) -> (B, H, T, D/H)."""
        batch, time, _ = tensor.shape
        return tensor.view(batch, time, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, tensor):
        """(B, H, T, D/H) -> (B, T, D)."""
        batch, _, time, _ = tensor.shape
        return tensor.transpose(1, 2).reshape(batch, time, self.embed_dim)

    def forward(
        self, hidden_states: Tensor, key_padding_mask: Mask, path: AttentionPath, handover: Handover | None = None
    ) -> AttentionOutput:
        """hidden_states (B, T, D), key_padding_mask (B, T) bool (True = padding) or None; `path` from
        `ATTENTION_PATHS`; `handover` a reusing layer's input. Returns (output (B, T, D), this computing
        layer's `Handover` or None, the applied weights (B, H, T, T) on the explicit path or None)."""
        value = self._split_heads(self.v_proj(hidden_states))
        dropout = self.dropout if self.training else 0.0
        if self.reuses_map:
            if handover is None:
                raise ValueError("A reusing attention layer needs the map of an earlier layer.")
            output, weights = path.reuse(self, handover, value, key_padding_mask, dropout)
            handover = None
        else:
            query = self._split_heads(self.q_proj(hidden_states))
            key = self._split_heads(self.k_proj(hidden_states))
            output, handover = path.compute(self, query, key, value, key_padding_mask, dropout)
            weights = None if handover is None else handover.map
        return self._project(output, value, key_padding_mask), handover, weights

    def _project(self, output, value, key_padding_mask):
        """out_proj of the heads' output (B, H, T, d) -> (B, T, D). A float32 reuse of half-precision values is
        projected under autocast as out_proj(mean of V) + W_out (output - mean), summed in float32, so that
        rounding is relative to the structure alone (docs/numerics.md, "Half precision")."""
        if output.dtype == value.dtype:
            return self.out_proj(self._merge_heads(output))
        if not torch.amp.is_autocast_available(output.device.type) or not torch.is_autocast_enabled(output.device.type):
            return self.out_proj(self._merge_heads(output.to(value.dtype)))
        mean = real_mean(value, key_padding_mask)
        structure = F.linear(self._merge_heads(output - mean), self.out_proj.weight)
        return self.out_proj(self._merge_heads(mean)).float() + structure.float()


class ARMHubertFeedForward(nn.Module):
    def __init__(self, config: ARMHubertConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden_states = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(hidden_states)))
        return self.output_dropout(self.output_dense(hidden_states))


class ARMHubertEncoderLayer(GradientCheckpointingLayer):
    """One transformer layer, post-LN (releases) or pre-LN (`do_stable_layer_norm`)."""

    def __init__(self, config: ARMHubertConfig, reuses_map: bool):
        super().__init__()
        self.attention = ARMHubertAttention(config, reuses_map)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = ARMHubertFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pre_layer_norm = config.do_stable_layer_norm

    def forward(self, hidden_states: Tensor, *attention_inputs) -> AttentionOutput:
        """(B, T, D) -> ((B, T, D), own `Handover` or None, applied weights or None); `attention_inputs` are
        `ARMHubertAttention.forward`'s key_padding_mask, path and handover."""
        residual = hidden_states
        if self.pre_layer_norm:
            hidden_states = self.layer_norm(hidden_states)
        hidden_states, handover, weights = self.attention(hidden_states, *attention_inputs)
        hidden_states = residual + self.dropout(hidden_states)
        if self.pre_layer_norm:
            hidden_states = hidden_states + self.feed_forward(self.final_layer_norm(hidden_states))
        else:
            hidden_states = self.layer_norm(hidden_states)
            hidden_states = self.final_layer_norm(hidden_states + self.feed_forward(hidden_states))
        return hidden_states, handover, weights


@dataclass
class ARMHubertEncoderOutput(ModelOutput):
    """Encoder input (B, T, D), each layer's output (L x (B, T, D)), the final state and the weights."""

    encoder_input: torch.FloatTensor = None
    layer_outputs: tuple = None
    last_hidden_state: torch.FloatTensor = None
    attentions: tuple | None = None


class ARMHubertEncoder(nn.Module):
    """Positional convolution -> L layers, post-LN (LayerNorm first) or pre-LN (LayerNorm last); it picks
    each forward's attention paths (`_attention_paths`)."""

    def __init__(self, config: ARMHubertConfig):
        super().__init__()
        self.config = config
        if config.position_embeddings == "absolute":  # Whisper's learned table
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        else:
            self.pos_conv_embed = ARMHubertPositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        reuse = config.layer_reuses_attention_map
        self.layers = nn.ModuleList(ARMHubertEncoderLayer(config, reuses) for reuses in reuse)
        # A computing layer hands over its map (a `Handover`) only when the next layer reuses it.
        self._map_needed_by_next = [*reuse[1:], False]
        self.gradient_checkpointing = False

    def _pad_to_multiple(self, hidden_states, key_padding_mask):
        """(B, T, D) and its (B, T) mask padded to a multiple of `required_seq_len_multiple` frames, the pad."""
        pad = -hidden_states.shape[1] % self.config.required_seq_len_multiple
        if pad == 0:
            return hidden_states, key_padding_mask, 0
        if key_padding_mask is None:
            key_padding_mask = hidden_states.new_zeros(hidden_states.shape[:2], dtype=torch.bool)
        return F.pad(hidden_states, (0, 0, 0, pad)), F.pad(key_padding_mask, (0, pad), value=True), pad

    def _attention_paths(self, hidden_states, output_attentions):
        """The attention of this forward, chosen once: (pair path, lone path) from `ATTENTION_PATHS`.

        The pair path serves the computing layers whose map the next layer reuses and the reusing
        layers; the lone path the other computing layers (SDPA, no handover). Returned or asked-for
        maps (eager) make both explicit. FlexAttention has no backward: autograd and dropout take SDPA.
        """
        config = self.config
        if output_attentions or config._attn_implementation == "eager":
            explicit = attention_path("map", "sdpa")
            return explicit, explicit
        lone = attention_path(None, "sdpa")
        if not any(self._map_needed_by_next):
            return lone, lone
        grad = torch.is_grad_enabled() and (
            hidden_states.requires_grad or any(param.requires_grad for param in self.parameters())
        )
        resoftmax = config.reuse_softmax == "resoftmax"
        reuse_dropout = config.reuse_attention_dropout if self.training else 0.0
        batch, time, _ = hidden_states.shape
        small_map = batch * config.num_attention_heads * time**2 <= EXPLICIT_MAP_ELEMENTS
        if resoftmax and grad and (not config.reuse_recompute_backward or reuse_dropout > 0):
            handover = "map"  # autograd through the saved map (`ResoftmaxReuse` has no dropout)
        elif small_map and hidden_states.device.type == "cpu":
            handover = "map"  # a map this small stays in cache: holding it beats rebuilding it
        else:
            handover = "logsumexp" if resoftmax else "probabilities"
        implementation = config._attn_implementation
        if grad or (self.training and config.attention_dropout > 0):
            implementation = "sdpa"
        return attention_path(handover, implementation), lone

    def forward(
        self, hidden_states: Tensor, key_padding_mask: Tensor | None = None, output_attentions: bool = False
    ) -> ARMHubertEncoderOutput:
        """hidden_states (B, T, D); key_padding_mask (B, T) bool, True = padding, or None."""
        if key_padding_mask is not None:
            hidden_states = hidden_states.masked_fill(key_padding_mask[..., None], 0.0)
        if self.config.position_embeddings == "absolute":
            hidden_states = hidden_states + self.embed_positions.weight[: hidden_states.shape[1]]
        else:
            hidden_states = hidden_states + self.pos_conv_embed(hidden_states)
        if not self.config.do_stable_layer_norm:
            hidden_states = self.layer_norm(hidden_states)
        encoder_input = hidden_states
        hidden_states, key_padding_mask, pad = self._pad_to_multiple(self.dropout(hidden_states), key_padding_mask)

        pair_path, lone_path = self._attention_paths(hidden_states, output_attentions)
        grad_scale = self.config.layer_grad_scale if self.training else False
        layer_outputs, attentions, handover = [], [], None
        for index, layer in enumerate(self.layers):
            skip = self.training and self.config.layerdrop > 0 and torch.rand([]) < self.config.layerdrop
            if skip and not self._map_needed_by_next[index]:
                layer_outputs.append(hidden_states)
                attentions.append(None)
                continue
            if layer.attention.reuses_map:
                output, _, weights = layer(hidden_states, key_padding_mask, pair_path, handover)
            else:
                handover = None  # this layer makes its own map: free the previous one first
                path = pair_path if self._map_needed_by_next[index] else lone_path
                output, handover, weights = layer(hidden_states, key_padding_mask, path)
            # Keep a (B, H, T, T) map only when it is returned: holding all L of them would dominate memory.
            attentions.append(weights if output_attentions else None)
            head_input, hidden_states = split_layer_gradient(output, index, len(self.layers), grad_scale)
            layer_outputs.append(head_input)

        if self.config.do_stable_layer_norm:
            # Pre-LN, as the original: the final LayerNorm makes only a head-less model's output; the layer
            # outputs, and so every projection head, stay before it.
            hidden_states = self.layer_norm(hidden_states)
        if pad:
            layer_outputs = [output[:, :-pad] for output in layer_outputs]
            hidden_states = hidden_states[:, :-pad]
            attentions = [a[..., :-pad, :-pad] if a is not None else None for a in attentions]
        return ARMHubertEncoderOutput(
            encoder_input=encoder_input,
            layer_outputs=tuple(layer_outputs),
            last_hidden_state=hidden_states,
            attentions=tuple(attentions) if output_attentions else None,
        )


# --------------------------------------------------------------------------------------------------
# Pretrained base and model


class ARMHubertPreTrainedModel(PreTrainedModel):
    config_class = ARMHubertConfig
    config: ARMHubertConfig
    base_model_prefix = "armhubert"
    main_input_name = "input_values"
    input_modalities = "audio"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ARMHubertEncoderLayer"]
    # "sdpa" (the default): SDPA, reused maps rebuilt block by block; "flex_attention": computing / reusing
    # pairs through FlexAttention in inference (meant for GPUs); "eager": explicit maps. See `ATTENTION_PATHS`.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = True

    @classmethod
    def _can_set_attn_implementation(cls):
        """`set_attn_implementation` works on a built or loaded model: the encoder reads
        `config._attn_implementation` at every forward (transformers would guess from the module's source)."""
        return True

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func: Callable = None, **kwargs):
        """Refuse reentrant checkpointing of a model whose layers reuse maps: it tracks only positional
        tensors, not the `Handover`, so it drops the reused map's gradient or doubles it (issue 20)."""
        keywords = getattr(gradient_checkpointing_func, "keywords", {})
        reentrant = keywords.get("use_reentrant") is not False  # torch's default (with a warning)
        if enable and reentrant and any(self.config.layer_reuses_attention_map):
            raise ValueError(
                "Reentrant activation checkpointing loses the gradients of reused attention maps: checkpoint with "
                'use_reentrant=False, i.e. activation_checkpointing_kwargs={"use_reentrant": False} '
                '(TrainingArguments: gradient_checkpointing_kwargs={"use_reentrant": False}).'
            )
        if gradient_checkpointing_func is not None:
            kwargs["gradient_checkpointing_func"] = gradient_checkpointing_func
        super()._set_gradient_checkpointing(enable, **kwargs)

    def _init_weights(self, module):
        if isinstance(module, ARMHubertProjectionHead):
            # The release's heads keep PyTorch's default Linear init: weight and bias uniform in
            # +-1/sqrt(fan_in) (std 0.026 at D = 480), not the normal(initializer_range) of other layers.
            bound = 1.0 / math.sqrt(module.in_features)
            init.uniform_(module.weight, -bound, bound)
            init.uniform_(module.bias, -bound, bound)
            return
        super()._init_weights(module)
        if isinstance(module, nn.Conv1d):
            init.kaiming_normal_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ARMHubertModel) and module.mask_emb is not None:
            init.uniform_(module.mask_emb)
        elif isinstance(module, (ARMHubertWeightedLayerSum, ARMHubertSpecAugment)):
            module.reset_parameters()
        elif isinstance(module, ARMHubertLogMelFrontEnd):
            module.reset_buffers()

    def _output_flags(self, output_hidden_states, output_attentions, return_dict):
        """The three output switches of a forward, `None` meaning the config's value."""
        config = self.config
        return (
            bool(config.output_hidden_states if output_hidden_states is None else output_hidden_states),
            bool(config.output_attentions if output_attentions is None else output_attentions),
            config.return_dict if return_dict is None else return_dict,
        )

    def _get_feat_extract_output_lengths(self, input_lengths):
        """Frames produced from `input_lengths` samples: L <- floor((L - k) / s) + 1 per CNN layer; for the
        log-mel front-end ceil((L // 160) / 2) (centred STFT less its last frame, then the stride-2 conv)."""
        if self.config.frontend == "log_mel":
            return torch.div(torch.div(input_lengths, MEL_HOP, rounding_mode="floor") + 1, 2, rounding_mode="floor")
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            input_lengths = torch.div(input_lengths - kernel, stride, rounding_mode="floor") + 1
        return input_lengths

    def _get_feature_vector_attention_mask(self, feature_vector_length, attention_mask):
        """Sample mask (B, N), 1 = real -> frame mask (B, T) of the same dtype, 1 = real frame."""
        lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1)).to(torch.long)
        frames = torch.arange(feature_vector_length, device=attention_mask.device)
        return (frames[None, :] < lengths[:, None]).to(attention_mask.dtype)


class ARMHubertProjectionHead(nn.Linear):
    """The projection head of one layer, Linear(D -> projection_head_size) (`proj_head.{i}.lin_proj` in the
    release). A class of its own so that it is initialised as the release's heads were (see `_init_weights`)."""


class ARMHubertModel(ARMHubertPreTrainedModel):
    """The bare encoder: waveform in, per-layer features and (when configured) projected features out.

    `last_head_only=True` (task models without `use_weighted_layer_sum`) builds only the last projection
    head, the one they read; `projection_heads` stays numbered by layer (the others `None`), so its
    state-dict key is kept and a full encoder's other heads are skipped on loading without a warning.
    """

    def __init__(self, config: ARMHubertConfig, last_head_only: bool = False):
        super().__init__(config)
        width = config.hidden_size
        if config.frontend == "log_mel":  # Whisper's: no feature LayerNorm, no projection
            self.feature_extractor = ARMHubertLogMelFrontEnd(config)
            self.feature_layer_norm = self.feature_projection = None
        else:
            self.feature_extractor = ARMHubertFeatureEncoder(config)
            channels = config.conv_dim[-1]
            self.feature_layer_norm = nn.LayerNorm(channels, eps=config.layer_norm_eps)
            self.feature_projection = nn.Linear(channels, width) if channels != width else None
        self.feature_dropout = nn.Dropout(config.feat_proj_dropout)
        self.mask_emb = nn.Parameter(torch.empty(width).uniform_()) if config.use_mask_embedding else None
        self.encoder = ARMHubertEncoder(config)
        self.projection_heads = None
        if config.has_projection_heads:
            last = config.num_hidden_layers - 1
            self.projection_heads = nn.ModuleList(
                None if last_head_only and index < last else ARMHubertProjectionHead(width, config.projection_head_size)
                for index in range(config.num_hidden_layers)
            )
            if last_head_only and last > 0:
                unused = "|".join(str(index) for index in range(last))
                self._keys_to_ignore_on_load_unexpected = [rf"projection_heads\.({unused})\."]
        if config.do_stable_layer_norm and config.has_projection_heads:
            # As in the original, a pre-LN encoder's final LayerNorm reaches only a head-less model's output:
            # here no output depends on it, so it cannot train. Frozen; kept so that checkpoints load strictly.
            self.encoder.layer_norm.requires_grad_(False)
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the CNN feature encoder (common when fine-tuning)."""
        self.feature_extractor._freeze_parameters()

    def _check_inputs(self, input_values, attention_mask, mask_time_indices):
        """One line for inputs that would fail deep inside the model or be silently misread."""
        if not torch.is_tensor(input_values) or not input_values.is_floating_point():
            given = input_values.dtype if torch.is_tensor(input_values) else type(input_values).__name__
            raise ValueError(
                f"input_values must be a floating-point tensor of raw 16 kHz audio, got {given}. "
                "Convert with torch.as_tensor(audio, dtype=torch.float32)."
            )
        if input_values.dim() != 2:
            raise ValueError(
                f"input_values must have shape (batch, samples), got {tuple(input_values.shape)}. "
                "Add a batch axis with input_values[None] for one utterance; average stereo channels first."
            )
        if input_values.shape[0] == 0:
            raise ValueError("input_values has a batch of 0 rows; pass at least one utterance.")
        window = self.config.frontend_window_samples
        if window is not None and input_values.shape[1] > window:
            raise ValueError(
                f"input_values has {input_values.shape[1]} samples per row, more than this model's "
                f"{window}-sample window ({window / SAMPLING_RATE:.0f} s); cut the audio into windows."
            )
        frames = int(self._num_frames(input_values.shape[1]))
        if self.config.position_embeddings == "absolute" and frames > self.config.max_position_embeddings:
            raise ValueError(
                f"input_values gives {frames} frames, more than this model's {self.config.max_position_embeddings} "
                f"positions ({self.config.max_position_embeddings * self.config.inputs_to_logits_ratio / SAMPLING_RATE:.0f} s); "
                "cut the audio into shorter pieces."
            )
        field = self.config.receptive_field
        if input_values.shape[1] < field:
            raise ValueError(
                f"input_values has {input_values.shape[1]} samples per row, fewer than the {field}-sample "
                f"receptive field of the feature encoder ({field / SAMPLING_RATE * 1000:.0f} ms at 16 kHz). Pad or drop it."
            )
        if attention_mask is not None:
            self._check_attention_mask(attention_mask, input_values.shape)
        if mask_time_indices is not None:
            if self.mask_emb is None:
                raise ValueError("mask_time_indices needs a model built with use_mask_embedding=True.")
            if tuple(mask_time_indices.shape) != (input_values.shape[0], frames):
                raise ValueError(
                    f"mask_time_indices has shape {tuple(mask_time_indices.shape)}, expected (batch, frames) = "
                    f"{(input_values.shape[0], frames)} for this input."
                )

    def _check_attention_mask(self, attention_mask, shape):
        """A (B, N) mask of 0/1, right-padded, at least a receptive field long (it is read as a length per row).
        One comparison with the right-padded mask of the same lengths finds other values and left or inner
        padding, in one device sync; none when compiling or training on an accelerator (docs/gpu.md)."""
        if not torch.is_tensor(attention_mask) or attention_mask.dtype.is_complex:
            given = attention_mask.dtype if torch.is_tensor(attention_mask) else type(attention_mask).__name__
            raise ValueError(
                f"attention_mask must be a tensor of 0/1 (integer or bool), got {given}; pass the feature "
                "extractor's attention_mask or (input_values != padding).long()."
            )
        if tuple(attention_mask.shape) != tuple(shape):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_values has "
                f"{tuple(shape)}; they must match (1 = real sample, 0 = padding)."
            )
        if torch.compiler.is_compiling():
            return  # reading the mask's values would break the graph: eager calls check them
        if self.training and attention_mask.device.type != "cpu":
            return  # training batches come from collators; a read would wait for the device every step
        lengths = (attention_mask != 0).sum(-1)
        right_padded = torch.arange(shape[1], device=attention_mask.device) < lengths[:, None]
        wrong, shortest = torch.stack([(attention_mask != right_padded).any().long(), lengths.min()]).tolist()
        if wrong:
            values = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
            if values.numel():
                raise ValueError(
                    f"attention_mask holds values {sorted(set(values.tolist()))[:5]}; it must hold only "
                    "1 (real sample) and 0 (padding)."
                )
            row = int((attention_mask != right_padded).any(-1).nonzero()[0, 0])
            raise ValueError(
                f"attention_mask row {row} has padding (0) before real samples (1); pad on the right "
                "(each row's real samples first, then zeros), as the feature extractor does."
            )
        if shortest < self.config.receptive_field:
            raise ValueError(
                f"attention_mask marks only {shortest} real samples in some row, fewer than the "
                f"{self.config.receptive_field}-sample receptive field. Drop such rows."
            )

    def _num_frames(self, num_samples: int) -> int:
        """Frames of an input of `num_samples` per row: its own, or its window's."""
        window = self.config.frontend_window_samples
        return int(self._get_feat_extract_output_lengths(torch.tensor(num_samples if window is None else window)))

    def _extract_features(self, input_values):
        """(B, N) -> (B, T, C), with `feature_grad_mult` applied to the CNN's gradient; inputs padded with
        zeros to `frontend_window_samples` first when the model has a window."""
        window = self.config.frontend_window_samples
        if window is not None:
            input_values = F.pad(input_values, (0, window - input_values.shape[1]))
        mult = self.config.feature_grad_mult
        with torch.set_grad_enabled(torch.is_grad_enabled() and mult != 0.0 and self.feature_extractor._requires_grad):
            features = self.feature_extractor(input_values)
        return (scale_gradient(features, mult) if self.training else features).transpose(1, 2)

    def _frame_padding_mask(self, num_frames, attention_mask):
        """(B, T) bool, True = padded frame; None when nothing is padded (or a window is attended whole)."""
        if attention_mask is None or self.config.frontend_window_samples is not None:
            return None
        real = self._get_feature_vector_attention_mask(num_frames, attention_mask).bool()
        if torch.compiler.is_compiling() or real.device.type != "cpu":
            # No data-dependent shortcut inside a compiled graph, nor on an accelerator, where reading the
            # mask would wait for the device every step (issue 20): an all-real mask changes nothing.
            return ~real
        return None if bool(real.all()) else ~real

    def encoder_input(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Raw audio (B, N) -> (CNN features (B, T, C), encoder input (B, T, D), frame padding mask (B, T) or None).

        The encoder input is where HuBERT masks: after the feature projection, with `mask_time_indices`
        frames replaced by `mask_emb` (and where the task heads apply SpecAugment).
        """
        self._check_inputs(input_values, attention_mask, mask_time_indices)
        # float16 / bfloat16 / float64 audio is computed in the weights' dtype (as HF's audio pipelines do)
        input_values = input_values.to(self.dtype)
        features = self._extract_features(input_values)
        if self.feature_layer_norm is not None:
            features = self.feature_layer_norm(features)
        num_frames = features.shape[1]
        padding_mask = self._frame_padding_mask(num_frames, attention_mask)
        crop = num_frames - num_frames % self.config.crop_seq_to_multiple
        features = features[:, :crop]
        if padding_mask is not None:
            padding_mask = padding_mask[:, :crop]
            features = features.masked_fill(padding_mask[..., None], 0.0)
        hidden_states = features if self.feature_projection is None else self.feature_projection(features)
        hidden_states = self.feature_dropout(hidden_states)
        if mask_time_indices is not None:
            mask = mask_time_indices[:, :crop].to(device=hidden_states.device, dtype=torch.bool)
            hidden_states = torch.where(mask[..., None], self.mask_emb.to(hidden_states.dtype), hidden_states)
        return features, hidden_states, padding_mask

    def encode(
        self,
        features: torch.Tensor,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ARMHubertModelOutput:
        """The transformer and the projection heads over `encoder_input`'s three outputs."""
        encoded = self.encoder(hidden_states, padding_mask, output_attentions=output_attentions)
        projected = None
        heads = self.projection_heads
        if heads is not None and output_hidden_states and all(head is not None for head in heads):
            projected = tuple(head(output) for head, output in zip(heads, encoded.layer_outputs))
            last_hidden_state = projected[-1]
        elif heads is not None:
            # Only the last head's output is returned: the other L-1 heads would be wasted work.
            last_hidden_state = heads[-1](encoded.layer_outputs[-1])
        else:
            last_hidden_state = encoded.last_hidden_state
        return ARMHubertModelOutput(
            last_hidden_state=last_hidden_state,
            extract_features=features,
            hidden_states=(encoded.encoder_input,) + encoded.layer_outputs if output_hidden_states else None,
            projected_hidden_states=projected,
            attentions=encoded.attentions,
            frame_attention_mask=None if padding_mask is None else (~padding_mask).long(),
        )

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ARMHubertModelOutput | tuple:
        """Encode raw 16 kHz audio.

        Args:
            input_values (`(B, N)` float): raw waveforms, not normalised (the releases used none).
            attention_mask (`(B, N)`): 1 = real sample, 0 = padding; `None` = nothing padded.
            mask_time_indices (`(B, T)` bool): frames to replace by the learnable `mask_emb`
                (masking distillation).
            output_hidden_states: also return `hidden_states` and `projected_hidden_states`.
            output_attentions: also return every layer's attention weights (explicit path).
        """
        output_hidden_states, output_attentions, return_dict = self._output_flags(
            output_hidden_states, output_attentions, return_dict
        )
        frames = self.encoder_input(input_values, attention_mask, mask_time_indices)
        output = self.encode(*frames, output_hidden_states, output_attentions)
        return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------------
# Task heads (as transformers' `HubertForCTC` / `HubertForSequenceClassification`) and their SpecAugment


def superb_layer_outputs(config: ARMHubertConfig, output: ARMHubertModelOutput) -> tuple[Tensor, ...]:
    """The per-layer representations behind the published SUPERB numbers (spec 3.7): the L projected outputs
    with projection heads (ARM / Mask), else the L layer outputs (STaR), of an `output_hidden_states` output."""
    return output.projected_hidden_states if config.has_projection_heads else output.hidden_states[1:]


def head_input_size(config: ARMHubertConfig) -> int:
    """Width of `last_hidden_state` and of every `superb_layer_outputs` entry."""
    return config.projection_head_size if config.has_projection_heads else config.hidden_size


class ARMHubertWeightedLayerSum(nn.Module):
    """Softmax-weighted sum of per-layer features with learned weights, as s3prl's SUPERB featurizer."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.layer_weights = nn.Parameter(torch.zeros(num_layers))

    def reset_parameters(self) -> None:
        # Zeros: equal weights after the softmax, as s3prl starts.
        init.zeros_(self.layer_weights)

    def forward(self, layers: Sequence[Tensor]) -> Tensor:
        """Sequence of L (B, T, P) tensors -> (B, T, P)."""
        weights = torch.softmax(self.layer_weights, dim=-1).to(layers[0].dtype)
        return (torch.stack(tuple(layers)) * weights[:, None, None, None]).sum(dim=0)


class ARMHubertSpecAugment(nn.Module):
    """SpecAugment for fine-tuning, as transformers' HuBERT applies it (training only): spans of frames of the
    encoder input become a mask embedding (`config.mask_time_*`), spans of channels zeros (`mask_feature_*`).
    ARM / Mask models mask with their distilled `mask_emb`; STaR models get a learnable embedding here.
    """

    def __init__(self, config: ARMHubertConfig, has_mask_embedding: bool):
        super().__init__()
        self.config = config
        if has_mask_embedding or config.mask_time_prob <= 0:
            self.masked_spec_embed = None
        else:
            self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())

    def reset_parameters(self) -> None:
        if self.masked_spec_embed is not None:
            init.uniform_(self.masked_spec_embed)

    @torch.compiler.disable
    def _draw_spans(
        self, kind: str, shape: tuple[int, int], device: torch.device, real: Tensor | None = None
    ) -> Tensor:
        """(B, N) bool spans as `config.mask_{kind}_prob`, `_length` and `_min_masks` ask, over the lengths in
        `real` ((B, N) long, 1 = real), by `transformers`' `_compute_mask_indices`. Drawn on the host with
        NumPy, outside any `torch.compile` graph (the data-dependent span counts cannot be traced): a
        compiled training step breaks the graph here (`fullgraph=False`) instead of failing."""
        prob, length, min_masks = (
            getattr(self.config, f"mask_{kind}_{name}") for name in ("prob", "length", "min_masks")
        )
        return torch.as_tensor(_compute_mask_indices(shape, prob, length, real, min_masks), device=device)

    def forward(
        self, hidden_states: Tensor, key_padding_mask: Tensor | None = None, mask_embedding: Tensor | None = None
    ) -> Tensor:
        """hidden_states (B, T, D); key_padding_mask (B, T) bool, True = padding (never masked)."""
        config = self.config
        (batch, frames, channels), device = hidden_states.shape, hidden_states.device
        embedding = mask_embedding if mask_embedding is not None else self.masked_spec_embed
        if config.mask_time_prob > 0 and embedding is not None and frames >= config.mask_time_length:
            real = None if key_padding_mask is None else (~key_padding_mask).long()
            spans = self._draw_spans("time", (batch, frames), device, real)
            hidden_states = torch.where(spans[..., None], embedding.to(hidden_states.dtype), hidden_states)
        if config.mask_feature_prob > 0 and channels >= config.mask_feature_length:
            spans = self._draw_spans("feature", (batch, channels), device)
            hidden_states = hidden_states.masked_fill(spans[:, None, :], 0.0)
        return hidden_states


class ARMHubertTaskModel(ARMHubertPreTrainedModel):
    """What the task heads share: the encoder, the optional weighted layer sum and SpecAugment.

    A head reads `last_hidden_state`, or with `config.use_weighted_layer_sum` a learned weighted sum of
    `superb_layer_outputs`, `head_input_size(config)` wide. Every parameter trains (DDP needs no
    `find_unused_parameters`): only the last projection head is built without the layer sum, and a
    distilled `mask_emb` that SpecAugment does not use is frozen.
    """

    def __init__(self, config: ARMHubertConfig):
        super().__init__(config)
        last_head_only = config.has_projection_heads and not config.use_weighted_layer_sum
        self.armhubert = ARMHubertModel(config, last_head_only=last_head_only)
        if last_head_only:
            logger.info(
                "%s reads only the last projection head (no use_weighted_layer_sum): heads 0..%d are not built "
                "and their weights are skipped when loading.",
                type(self).__name__,
                config.num_hidden_layers - 2,
            )
        self.output_size = head_input_size(config)
        self.layer_sum = ARMHubertWeightedLayerSum(config.num_hidden_layers) if config.use_weighted_layer_sum else None
        if config.apply_spec_augment:
            self.spec_augment = ARMHubertSpecAugment(config, has_mask_embedding=self.armhubert.mask_emb is not None)
        else:
            self.spec_augment = None
        if self.armhubert.mask_emb is not None and (self.spec_augment is None or config.mask_time_prob <= 0):
            self.armhubert.mask_emb.requires_grad_(False)  # nothing in a task model reads it then

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the CNN feature encoder (the usual set-up for fine-tuning)."""
        self.armhubert.freeze_feature_encoder()

    def freeze_base_model(self) -> None:
        """Train only the head (and the layer weights), as SUPERB trains on a frozen upstream."""
        for param in self.armhubert.parameters():
            param.requires_grad = False

    def _encode(self, input_values, attention_mask, output_hidden_states, output_attentions):
        """Run the encoder, SpecAugment in training: (its output, the head input (B, T, P), frame mask (B, T) or None)."""
        features, hidden_states, padding_mask = self.armhubert.encoder_input(input_values, attention_mask)
        if self.training and self.spec_augment is not None:
            hidden_states = self.spec_augment(hidden_states, padding_mask, self.armhubert.mask_emb)
        outputs = self.armhubert.encode(
            features, hidden_states, padding_mask, self.layer_sum is not None or output_hidden_states, output_attentions
        )
        if self.layer_sum is not None:
            features = self.layer_sum(superb_layer_outputs(self.config, outputs))
        else:
            features = outputs.last_hidden_state
        return outputs, features, outputs.frame_attention_mask

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        """The head's logits for raw 16 kHz audio, and its loss when `labels` are given (see `_logits_and_loss`).

        Args:
            input_values, attention_mask, output_hidden_states, output_attentions: as for [`ARMHubertModel`].
            labels: CTC token ids (B, U) or class ids (B,).
        """
        output_hidden_states, output_attentions, return_dict = self._output_flags(
            output_hidden_states, output_attentions, return_dict
        )
        outputs, features, frame_mask = self._encode(
            input_values, attention_mask, output_hidden_states, output_attentions
        )
        logits, loss = self._logits_and_loss(features, frame_mask, labels)
        output = self.output_class(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class ARMHubertForCTC(ARMHubertTaskModel):
    """ARMHubert with a linear CTC head, as `HubertForCTC`.

    `config.vocab_size` outputs, blank = `config.pad_token_id`. One logit frame per
    `config.inputs_to_logits_ratio` samples (320: 20 ms), which chunked ASR pipelines align to.
    """

    output_class = CausalLMOutput

    def __init__(self, config: ARMHubertConfig):
        super().__init__(config)
        if not config.vocab_size or config.vocab_size < 2:
            raise ValueError(
                f"ARMHubertForCTC needs config.vocab_size >= 2 (blank + at least one token), got {config.vocab_size}. "
                "Pass vocab_size=len(tokenizer) to from_pretrained or the config."
            )
        if config.pad_token_id is None or not 0 <= config.pad_token_id < config.vocab_size:
            raise ValueError(
                f"ARMHubertForCTC uses config.pad_token_id as the CTC blank; got {config.pad_token_id} for "
                f"vocab_size={config.vocab_size}. Pass pad_token_id=tokenizer.pad_token_id."
            )
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(self.output_size, config.vocab_size)
        self.post_init()

    def _check_labels(self, labels, logit_lengths):
        """Clear errors for labels that are not (B, U) integer ids, ids outside the vocabulary, and
        transcripts longer than their audio."""
        batch = logit_lengths.shape[0]
        if not torch.is_tensor(labels) or labels.is_floating_point() or labels.dim() != 2 or labels.shape[0] != batch:
            given = f"shape {tuple(labels.shape)} {labels.dtype}" if torch.is_tensor(labels) else type(labels).__name__
            raise ValueError(
                f"CTC labels must be an integer tensor of shape (batch, tokens) = ({batch}, U) for these inputs, "
                f"got {given}; give one row of token ids per utterance, padded with -100."
            )
        vocab_size, blank = self.config.vocab_size, self.config.pad_token_id
        ignored = (labels == -100) | (labels == blank)
        outside = ~ignored & ((labels < 0) | (labels >= vocab_size))
        if bool(outside.any()):
            bad = sorted(set(labels[outside].tolist()))[:5]
            raise ValueError(
                f"labels hold ids {bad} outside the vocabulary [0, {vocab_size}); pad label rows with -100 and "
                "encode transcripts with the tokenizer the model was built for."
            )
        target_lengths = (~ignored).sum(-1).to(logit_lengths.device)
        too_long = target_lengths > logit_lengths
        if bool(too_long.any()) and not self.config.ctc_zero_infinity:
            row = int(too_long.nonzero()[0, 0])
            raise ValueError(
                f"labels row {row} has {int(target_lengths[row])} tokens but its audio gives only "
                f"{int(logit_lengths[row])} frames ({self.config.inputs_to_logits_ratio} samples each); CTC needs "
                "at least one frame per token. Drop such utterances or set config.ctc_zero_infinity=True."
            )

    def _logits_and_loss(self, features, frame_mask, labels):
        """CTC logits (B, T, vocab_size), and the CTC loss over the real frames when `labels` (B, U) are given.

        Label positions holding -100 (or the blank id) are padding.
        """
        logits = self.lm_head(self.dropout(features))
        if labels is None:
            return logits, None
        if frame_mask is not None:
            logit_lengths = frame_mask.sum(-1).long()
        else:
            logit_lengths = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
        self._check_labels(labels, logit_lengths)
        loss = self.loss_function(
            logits=logits,
            labels=labels,
            logit_lengths=logit_lengths,
            blank_token_id=self.config.pad_token_id,
            reduction=self.config.ctc_loss_reduction,
            zero_infinity=self.config.ctc_zero_infinity,
        )
        return logits, loss


class ARMHubertForSequenceClassification(ARMHubertTaskModel):
    """Utterance classification, as `HubertForSequenceClassification`: projector -> mean over the real frames
    -> linear classifier over `config.num_labels`; the loss follows `config.problem_type`."""

    output_class = SequenceClassifierOutput

    def __init__(self, config: ARMHubertConfig):
        super().__init__(config)
        self.projector = nn.Linear(self.output_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)
        self.post_init()

    def _logits_and_loss(self, features, frame_mask, labels):
        """Class logits (B, num_labels) of the mean over real frames, and the loss when `labels` (B,) are given."""
        hidden_states = self.projector(features)
        if frame_mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            weights = frame_mask.to(hidden_states.dtype)[..., None]
            pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1)
        logits = self.classifier(pooled)
        if labels is None:
            return logits, None
        if not labels.is_floating_point():
            outside = (labels < 0) | (labels >= self.config.num_labels)
            if bool(outside.any()):
                raise ValueError(
                    f"labels hold class ids {sorted(set(labels[outside].tolist()))[:5]} outside "
                    f"[0, {self.config.num_labels}); set num_labels / label2id to cover every class."
                )
        return logits, self.loss_function(labels=labels, pooled_logits=logits, config=self.config)


AutoModel.register(ARMHubertConfig, ARMHubertModel, exist_ok=True)
ARMHubertModel.register_for_auto_class("AutoModel")
AutoModelForCTC.register(ARMHubertConfig, ARMHubertForCTC, exist_ok=True)
ARMHubertForCTC.register_for_auto_class("AutoModelForCTC")
AutoModelForAudioClassification.register(ARMHubertConfig, ARMHubertForSequenceClassification, exist_ok=True)
ARMHubertForSequenceClassification.register_for_auto_class("AutoModelForAudioClassification")
