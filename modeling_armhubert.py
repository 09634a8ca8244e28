"""PyTorch ARMHuBERT: compressed HuBERT-class speech encoders with attention-map reuse.

Top to bottom, as `transformers`' `modeling_wavlm.py`: the front-ends (`ARMHubertFeatureEncoder`, the CNN;
`ARMHubertLogMelFrontEnd`, Whisper's), the positional convolution, `ARMHubertAttention` (computing or reusing a map),
`ARMHubertEncoderLayer`, `ARMHubertEncoder` (which picks the attention path once per forward),
`ARMHubertPreTrainedModel`, `ARMHubertModel` (+ per-layer projection heads), then the CTC and classification heads.
The attention kernels behind them (reuse without maps, the attention paths) are `kernels` (`attention_armhubert.py`);
weight caches, convolutions, the log-mel spectrogram and input checks `ops`.

Numerics follow the original release (see the project README): post-LN layers, float32 softmax,
and in reusing layers a second softmax over the reused probability map. Unlike the original, maps
are always paired per utterance and per head, so batched outputs equal per-utterance outputs.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModel, AutoModelForAudioClassification, AutoModelForCTC, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices
from transformers.utils import ModelOutput, can_return_tuple, logging

# `save_pretrained` copies the files this one imports as `from .x import` (not `from . import x`) beside it: the
# configuration, `kernels` (attention_armhubert.py) and `ops` (ops_armhubert.py). The pipeline file, which this one
# does not import, is shipped by the code that saves model folders (`armhubert.folders.remote_code.ship_pipeline`).
try:  # loaded as remote code from a model folder
    from . import attention_armhubert as kernels
    from . import ops_armhubert as ops
    from .attention_armhubert import AttentionOutput, AttentionPath, Handover, Mask
    from .configuration_armhubert import MEL_HOP, MEL_WINDOW, ARMHubertConfig
    from .ops_armhubert import ConvolutionByFFT, DerivedWeightsModule
except ImportError:  # installed as a top-level module
    import attention_armhubert as kernels
    import ops_armhubert as ops
    from attention_armhubert import AttentionOutput, AttentionPath, Handover, Mask
    from configuration_armhubert import MEL_HOP, MEL_WINDOW, ARMHubertConfig
    from ops_armhubert import ConvolutionByFFT, DerivedWeightsModule

logger = logging.get_logger(__name__)


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
        frame_attention_mask (`(B, T)` long, or `None`): 1 for real frames, 0 for padding; present whenever an
            `attention_mask` is given (all ones when nothing is padded), except for a model with a window.
    """

    last_hidden_state: torch.FloatTensor = None
    extract_features: torch.FloatTensor = None
    hidden_states: tuple | None = None
    projected_hidden_states: tuple | None = None
    attentions: tuple | None = None
    frame_attention_mask: torch.LongTensor | None = None


# --------------------------------------------------------------------------------------------------
# Front-ends: the CNN feature encoder, and Whisper's log-mel one


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
        hidden_states = ops.conv1d_channels_last(self.conv, hidden_states, kernel)
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
        init.copy_(self.mel_filters, ops.mel_filters(self.num_mel_bins))
        init.copy_(self.window, torch.hann_window(MEL_WINDOW))

    def log_mel(self, input_values: Tensor) -> Tensor:
        """(B, N) -> (B, num_mel_bins, N // 160), float32 whatever the weights' dtype."""
        return ops.log_mel_spectrogram(input_values, self.window, self.mel_filters)

    def forward(self, input_values: Tensor) -> Tensor:
        """(B, N) -> (B, D, T)."""
        features = self.log_mel(input_values).to(self.conv1.weight.dtype)
        return self.activation(self.conv2(self.activation(self.conv1(features))))


# --------------------------------------------------------------------------------------------------
# Transformer encoder


class ARMHubertPositionalConvEmbedding(ConvolutionByFFT):
    """Weight-normed grouped Conv1d over time -> drop the last frame for even kernels -> GELU.

    Long inputs in inference convolve by FFT, others directly (`ConvolutionByFFT`, same numbers to float32
    rounding; `fft = False` for MAC counting).
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

    def forward(self, hidden_states: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        hidden_states = self.convolve(hidden_states)
        if self.num_pad_remove:
            hidden_states = hidden_states[:, : -self.num_pad_remove]
        return self.activation(hidden_states)


# --------------------------------------------------------------------------------------------------
# Attention, computing or reusing a map (its kernels and paths: attention_armhubert.py)


class ARMHubertAttention(nn.Module):
    """Multi-head self-attention that computes its own map (q/k/v/out projections) or reuses the most recent
    computing layer's (v/out only; a second softmax in "resoftmax" mode), handed over as a `Handover`. How
    is the encoder's choice, passed in as an `AttentionPath`."""

    def __init__(self, config: ARMHubertConfig, reuses_map: bool):
        super().__init__()
        self.config = config  # the kernels' block sizes and switches, read at every call
        self.is_causal = False  # read by the attention functions registered with transformers
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
        `choose_attention`; `handover` the latest computing layer's. Returns (output (B, T, D), the `Handover` for
        the next layer: a computing layer's own or None, a reusing layer's input; the applied weights (B, H, T, T)
        on the explicit path or None)."""
        value = self._split_heads(self.v_proj(hidden_states))
        dropout = self.dropout if self.training else 0.0
        if self.reuses_map:
            if handover is None:
                raise ValueError("A reusing attention layer needs the map of an earlier layer.")
            output, weights = path.reuse(self, handover, value, key_padding_mask, dropout)  # passed on
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
        mean = kernels.real_mean(value, key_padding_mask)
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
        """(B, T, D) -> ((B, T, D), the `Handover` for the next layer, applied weights or None); `attention_inputs`
        are `ARMHubertAttention.forward`'s key_padding_mask, path and handover."""
        if self.attention.reuses_map:
            kernels.check_not_reentrant(hidden_states)
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
    each forward's attention paths (`choose_attention`)."""

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
        hidden_states, key_padding_mask, pad = kernels.pad_to_multiple(
            self.dropout(hidden_states), key_padding_mask, self.config.required_seq_len_multiple
        )

        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (hidden_states, *self.parameters()))
        pair, lone = kernels.choose_attention(self.config, hidden_states, grad, self.training, output_attentions)
        grad_scale = self.config.layer_grad_scale if self.training else False
        # As WavLM's position_bias, the handover is returned by a computing layer and passed on by the reusing ones.
        layer_outputs, attentions, handover = [], [], None
        for index, layer in enumerate(self.layers):
            skip = self.training and self.config.layerdrop > 0 and torch.rand([]) < self.config.layerdrop
            if skip and not self._map_needed_by_next[index]:
                layer_outputs.append(hidden_states)
                attentions.append(None)
                continue
            if not layer.attention.reuses_map:
                handover = None  # this layer makes its own map: free the previous one first
            path = pair if layer.attention.reuses_map or self._map_needed_by_next[index] else lone
            output, handover, weights = layer(hidden_states, key_padding_mask, path, handover)
            # Keep a (B, H, T, T) map only when it is returned: holding all L of them would dominate memory.
            attentions.append(weights if output_attentions else None)
            head_input, hidden_states = ops.split_layer_gradient(output, index, len(self.layers), grad_scale)
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
    # pairs through FlexAttention in inference (meant for GPUs); "eager": explicit maps; a function registered
    # with transformers' `AttentionInterface`: the computing layers whose map nobody reuses. See `choose_attention`.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = True

    @classmethod
    def _can_set_attn_implementation(cls):
        """`set_attn_implementation` works on a built or loaded model: the encoder reads
        `config._attn_implementation` at every forward (transformers would guess from the module's source)."""
        return True

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func: Callable = None, **kwargs):
        """Refuse reentrant checkpointing of a model whose layers reuse maps (`kernels.check_checkpointing`)."""
        if enable:
            kernels.check_checkpointing(self.config, gradient_checkpointing_func)
        if gradient_checkpointing_func is not None:
            kwargs["gradient_checkpointing_func"] = gradient_checkpointing_func
        super()._set_gradient_checkpointing(enable, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with every Auto class of `AUTO_CLASSES` in `config.auto_map` (transformers
        records only the saving class): the folder opens as remote code through any of them, whoever saved it."""
        module = type(self).__module__.split(".")[-1]  # "modeling_armhubert", also as a folder's remote code
        entries = {auto.__name__: f"{module}.{model.__name__}" for auto, model in AUTO_CLASSES.items()}
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **entries}
        return super().save_pretrained(save_directory, *args, **kwargs)

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

    # Outputs: `can_return_tuple` as transformers' models. Not `capture_outputs`' hooks: hidden states are taken after
    # `layer_grad_scale`'s split and the `required_seq_len_multiple` crop, and maps exist on the explicit path only.
    def _output_flags(self, output_hidden_states, output_attentions):
        """The two output switches of a forward, `None` meaning the config's value (`return_dict` is
        `can_return_tuple`'s)."""
        config = self.config
        return (
            bool(config.output_hidden_states if output_hidden_states is None else output_hidden_states),
            bool(config.output_attentions if output_attentions is None else output_attentions),
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

    `config.last_head_only` (set by the task models without `use_weighted_layer_sum`) builds only the last
    projection head, the one they read; `projection_heads` stays numbered by layer (the others `None`), so
    its state-dict key is kept and a full encoder's other heads are skipped on loading without a warning.
    """

    def __init__(self, config: ARMHubertConfig):
        super().__init__(config)
        last_head_only = config.last_head_only
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
        return (ops.scale_gradient(features, mult) if self.training else features).transpose(1, 2)

    def _frame_padding_mask(self, num_frames, attention_mask):
        """(B, T) bool, True = padded frame, whenever an attention_mask is given, padded or not (so that the
        output's fields never depend on the data); None without one or when a window is attended whole."""
        if attention_mask is None or self.config.frontend_window_samples is not None:
            return None
        return ~self._get_feature_vector_attention_mask(num_frames, attention_mask).bool()

    def encoder_input(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Raw audio (B, N) -> (CNN features (B, T, C), encoder input (B, T, D), frame padding mask (B, T) or None:
        `_frame_padding_mask`).

        The encoder input is where HuBERT masks: after the feature projection, with `mask_time_indices`
        frames replaced by `mask_emb` (and where the task heads apply SpecAugment).
        """
        ops.check_model_inputs(self, input_values, attention_mask, mask_time_indices)
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
        encoded = self.encoder(hidden_states, kernels.padded_or_none(padding_mask), output_attentions=output_attentions)
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

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
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
            return_dict: `False` for a tuple (`can_return_tuple`; the config's by default).
        """
        output_hidden_states, output_attentions = self._output_flags(output_hidden_states, output_attentions)
        frames = self.encoder_input(input_values, attention_mask, mask_time_indices)
        return self.encode(*frames, output_hidden_states, output_attentions)


# --------------------------------------------------------------------------------------------------
# Task heads (as transformers' `HubertForCTC` / `HubertForSequenceClassification`) and their SpecAugment


def superb_layer_outputs(config: ARMHubertConfig, output: ARMHubertModelOutput) -> tuple[Tensor, ...]:
    """The per-layer representations behind the published SUPERB numbers: the L projected outputs
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
        if config.last_head_only != last_head_only:  # set only where it differs: other configs save as before
            config.last_head_only = last_head_only
        self.armhubert = ARMHubertModel(config)
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
        """Run the encoder, SpecAugment in training: (its output, the head input (B, T, P), frame mask (B, T) or None
        where nothing is padded on a CPU: the heads' numbers do not depend on whether a mask was given)."""
        features, hidden_states, padding_mask = self.armhubert.encoder_input(input_values, attention_mask)
        padded = kernels.padded_or_none(padding_mask)
        if self.training and self.spec_augment is not None:
            hidden_states = self.spec_augment(hidden_states, padded, self.armhubert.mask_emb)
        outputs = self.armhubert.encode(
            features, hidden_states, padding_mask, self.layer_sum is not None or output_hidden_states, output_attentions
        )
        if self.layer_sum is not None:
            features = self.layer_sum(superb_layer_outputs(self.config, outputs))
        else:
            features = outputs.last_hidden_state
        return outputs, features, None if padded is None else (~padded).long()

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> ModelOutput | tuple:
        """The head's logits for raw 16 kHz audio, and its loss when `labels` are given (see `_logits_and_loss`).

        Args:
            input_values, attention_mask, output_hidden_states, output_attentions: as for [`ARMHubertModel`].
            labels: CTC token ids (B, U) or class ids (B,).
            return_dict: `False` for a tuple (`can_return_tuple`; the config's by default).
        """
        output_hidden_states, output_attentions = self._output_flags(output_hidden_states, output_attentions)
        outputs, features, frame_mask = self._encode(
            input_values, attention_mask, output_hidden_states, output_attentions
        )
        logits, loss = self._logits_and_loss(features, frame_mask, labels)
        hidden_states = outputs.hidden_states if output_hidden_states else None
        return self.output_class(loss=loss, logits=logits, hidden_states=hidden_states, attentions=outputs.attentions)


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
        ops.check_ctc_labels(labels, logit_lengths, self.config)
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


# Every Auto class opens every saved folder (`ARMHubertPreTrainedModel.save_pretrained` records them all).
AUTO_CLASSES = {
    AutoModel: ARMHubertModel,
    AutoModelForCTC: ARMHubertForCTC,
    AutoModelForAudioClassification: ARMHubertForSequenceClassification,
}
for auto_class, model_class in AUTO_CLASSES.items():
    auto_class.register(ARMHubertConfig, model_class, exist_ok=True)
    model_class.register_for_auto_class(auto_class.__name__)
