"""PyTorch ARMHuBERT: compressed HuBERT-class speech encoders with attention-map reuse.

Class hierarchy (as in `transformers`' `modeling_hubert.py`):
`ARMHubertFeatureEncoder` (CNN) -> `ARMHubertEncoderLayer` (attention computing or reusing) ->
`ARMHubertEncoder` -> `ARMHubertPreTrainedModel` -> `ARMHubertModel` (+ per-layer projection heads).

Numerics follow the original release (see the project README): post-LN layers, float32 softmax,
and in reusing layers a second softmax over the reused probability map. Unlike the original, maps
are always paired per utterance and per head, so batched outputs equal per-utterance outputs.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

try:  # loaded as remote code from a model folder
    from .configuration_armhubert import ARMHubertConfig
except ImportError:  # installed as a top-level module
    from configuration_armhubert import ARMHubertConfig


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""

    @staticmethod
    def forward(ctx, tensor, scale):
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_gradient(tensor, scale):
    if scale == 1.0 or not tensor.requires_grad:
        return tensor
    return _ScaleGradient.apply(tensor, scale)


@dataclass
class ARMHubertModelOutput(ModelOutput):
    """Output of [`ARMHubertModel`].

    Args:
        last_hidden_state (`(B, T, D_out)`): the last projection head's output when the model has
            heads (D_out = projection_head_size), else the last layer's output (D_out = hidden_size).
            For pre-LN models the last layer's output is taken after the encoder's final LayerNorm.
        extract_features (`(B, T, C)`): CNN output after its LayerNorm; padded frames are zero.
        hidden_states (tuple of L+1 `(B, T, D)`, when asked): the encoder input (after the positional
            convolution, and the LayerNorm for post-LN models), then every layer's output.
        projected_hidden_states (tuple of L `(B, T, P)`, when asked and the model has heads):
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
# Feature encoder


class ARMHubertConvLayer(nn.Module):
    """Conv1d -> optional norm -> activation. `layer_norm` is a GroupNorm or a channel LayerNorm."""

    def __init__(self, config, layer_id):
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

    def forward(self, hidden_states):
        """(B, C_in, N) -> (B, C_out, N')."""
        hidden_states = self.conv(hidden_states)
        if isinstance(self.layer_norm, nn.LayerNorm):
            hidden_states = self.layer_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        elif self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        return self.activation(hidden_states)


class ARMHubertFeatureEncoder(nn.Module):
    """Raw waveform (B, N) -> frame features (B, C, T)."""

    def __init__(self, config):
        super().__init__()
        self.conv_layers = nn.ModuleList(ARMHubertConvLayer(config, i) for i in range(config.num_feat_extract_layers))
        self._requires_grad = True

    def _freeze_parameters(self):
        for param in self.parameters():
            param.requires_grad = False
        self._requires_grad = False

    def forward(self, input_values):
        hidden_states = input_values[:, None]
        for conv_layer in self.conv_layers:
            hidden_states = conv_layer(hidden_states)
        return hidden_states


# --------------------------------------------------------------------------------------------------
# Transformer encoder


class ARMHubertPositionalConvEmbedding(nn.Module):
    """Weight-normed grouped Conv1d over time -> drop the last frame for even kernels -> GELU."""

    def __init__(self, config):
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        self.conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            kernel_size=kernel,
            padding=kernel // 2,
            groups=config.num_conv_pos_embedding_groups,
        )
        # Normalised over dim 2, i.e. one gain per kernel tap, as in the original weights.
        self.conv = nn.utils.parametrizations.weight_norm(self.conv, name="weight", dim=2)
        self.num_pad_remove = 1 if kernel % 2 == 0 else 0
        self.activation = ACT2FN[config.feat_extract_activation]

    def forward(self, hidden_states):
        """(B, T, D) -> (B, T, D)."""
        hidden_states = self.conv(hidden_states.transpose(1, 2))
        if self.num_pad_remove:
            hidden_states = hidden_states[:, :, : -self.num_pad_remove]
        return self.activation(hidden_states).transpose(1, 2)


class ARMHubertAttention(nn.Module):
    """Multi-head self-attention that either computes its own map or reuses an earlier one.

    A computing layer has q/k/v/out projections; a reusing layer only v and out, and applies the
    probability map of the most recent computing layer (after a second softmax in "resoftmax" mode).
    """

    def __init__(self, config, reuses_map):
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

    def _weights_from_scores(self, scores, key_padding_mask):
        """Masked float32 softmax over keys. key_padding_mask: (B, T) bool, True = padding."""
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        return torch.softmax(scores.float(), dim=-1).to(scores.dtype)

    def forward(self, hidden_states, key_padding_mask=None, reused_map=None, need_map=False):
        """Attend over time.

        Args:
            hidden_states: (B, T, D).
            key_padding_mask: (B, T) bool, True marks padded frames; `None` when nothing is padded.
            reused_map: (B, H, T, T) probabilities of the layer whose map this layer reuses.
            need_map: return this layer's probability map (for a later reusing layer or the output).

        Returns:
            (attention output (B, T, D), probability map (B, H, T, T) or None, applied weights or None).
        """
        value = self._split_heads(self.v_proj(hidden_states))
        dropout = self.dropout if self.training else 0.0
        if self.reuses_map:
            if reused_map is None:
                raise ValueError("A reusing attention layer needs the map of an earlier layer.")
            if self.reuse_softmax == "resoftmax":
                weights = self._weights_from_scores(reused_map, key_padding_mask)
            else:
                weights = reused_map.to(value.dtype)
            output = torch.matmul(F.dropout(weights, dropout, self.training), value)
            return self.out_proj(self._merge_heads(output)), None, weights

        query = self._split_heads(self.q_proj(hidden_states))
        key = self._split_heads(self.k_proj(hidden_states))
        if not need_map:
            mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            output = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=dropout, scale=self.scaling
            )
            return self.out_proj(self._merge_heads(output)), None, None

        scores = torch.matmul(query * self.scaling, key.transpose(-1, -2))
        probabilities = self._weights_from_scores(scores, key_padding_mask)
        output = torch.matmul(F.dropout(probabilities, dropout, self.training), value)
        return self.out_proj(self._merge_heads(output)), probabilities, probabilities


class ARMHubertFeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states):
        hidden_states = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(hidden_states)))
        return self.output_dropout(self.output_dense(hidden_states))


class ARMHubertEncoderLayer(GradientCheckpointingLayer):
    """One transformer layer, post-LN (releases) or pre-LN (`do_stable_layer_norm`)."""

    def __init__(self, config, reuses_map):
        super().__init__()
        self.attention = ARMHubertAttention(config, reuses_map)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = ARMHubertFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pre_layer_norm = config.do_stable_layer_norm

    def forward(self, hidden_states, key_padding_mask=None, reused_map=None, need_map=False):
        """(B, T, D) -> ((B, T, D), own probability map or None, applied weights or None)."""
        residual = hidden_states
        if self.pre_layer_norm:
            hidden_states = self.layer_norm(hidden_states)
        hidden_states, probabilities, weights = self.attention(hidden_states, key_padding_mask, reused_map, need_map)
        hidden_states = residual + self.dropout(hidden_states)
        if self.pre_layer_norm:
            hidden_states = hidden_states + self.feed_forward(self.final_layer_norm(hidden_states))
        else:
            hidden_states = self.layer_norm(hidden_states)
            hidden_states = self.final_layer_norm(hidden_states + self.feed_forward(hidden_states))
        return hidden_states, probabilities, weights


@dataclass
class ARMHubertEncoderOutput(ModelOutput):
    """Encoder input (B, T, D), each layer's output (L x (B, T, D)), the final state and the weights."""

    encoder_input: torch.FloatTensor = None
    layer_outputs: tuple = None
    last_hidden_state: torch.FloatTensor = None
    attentions: tuple | None = None


class ARMHubertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.pos_conv_embed = ARMHubertPositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(
            ARMHubertEncoderLayer(config, reuses) for reuses in config.layer_reuses_attention_map
        )
        reuse = config.layer_reuses_attention_map
        # A computing layer materialises its map only when the next layer reuses it.
        self._map_needed_by_next = [i + 1 < len(reuse) and reuse[i + 1] for i in range(len(reuse))]
        self.gradient_checkpointing = False

    def _pad_to_multiple(self, hidden_states, key_padding_mask):
        multiple = self.config.required_seq_len_multiple
        pad = -hidden_states.shape[1] % multiple
        if pad == 0:
            return hidden_states, key_padding_mask, 0
        batch, time, _ = hidden_states.shape
        hidden_states = F.pad(hidden_states, (0, 0, 0, pad))
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(batch, time, dtype=torch.bool, device=hidden_states.device)
        key_padding_mask = F.pad(key_padding_mask, (0, pad), value=True)
        return hidden_states, key_padding_mask, pad

    def forward(self, hidden_states, key_padding_mask=None, output_attentions=False):
        """hidden_states (B, T, D); key_padding_mask (B, T) bool, True = padding, or None."""
        if key_padding_mask is not None:
            hidden_states = hidden_states.masked_fill(key_padding_mask[..., None], 0.0)
        hidden_states = hidden_states + self.pos_conv_embed(hidden_states)
        if not self.config.do_stable_layer_norm:
            hidden_states = self.layer_norm(hidden_states)
        encoder_input = hidden_states
        hidden_states, key_padding_mask, pad = self._pad_to_multiple(self.dropout(hidden_states), key_padding_mask)

        use_explicit = output_attentions or self.config._attn_implementation == "eager"
        num_layers = len(self.layers)
        grad_scale = self.config.layer_grad_scale and self.training
        layer_outputs, attentions = [], []
        reused_map = None
        for index, layer in enumerate(self.layers):
            skip = self.training and self.config.layerdrop > 0 and torch.rand([]) < self.config.layerdrop
            if skip and not self._map_needed_by_next[index]:
                layer_outputs.append(hidden_states)
                attentions.append(None)
                continue
            need_map = use_explicit or self._map_needed_by_next[index]
            output, probabilities, weights = layer(hidden_states, key_padding_mask, reused_map, need_map)
            if probabilities is not None:
                reused_map = probabilities
            attentions.append(weights)
            if grad_scale:
                # ARM recipe: after layer i of L the next layer gets (L-i)/(L-i+1) of the gradient.
                keep = (num_layers - index - 1) / (num_layers - index)
                layer_outputs.append(scale_gradient(output, 1.0 - keep))
                output = scale_gradient(output, keep)
            else:
                layer_outputs.append(output)
            hidden_states = output

        if self.config.do_stable_layer_norm:
            # Pre-LN: the final LayerNorm belongs to the last layer's output (as in transformers' HuBERT),
            # so the last projection head and hidden_states[-1] see it too.
            layer_outputs[-1] = self.layer_norm(layer_outputs[-1])
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
    # Computing layers whose map nobody needs run through torch SDPA; "eager" forces explicit maps.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, nn.Conv1d):
            init.kaiming_normal_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ARMHubertModel) and module.mask_emb is not None:
            init.uniform_(module.mask_emb)

    def _get_feat_extract_output_lengths(self, input_lengths):
        """Frames produced from `input_lengths` samples: L <- floor((L - k) / s) + 1 per CNN layer."""
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            input_lengths = torch.div(input_lengths - kernel, stride, rounding_mode="floor") + 1
        return input_lengths

    def _get_feature_vector_attention_mask(self, feature_vector_length, attention_mask):
        """Sample mask (B, N), 1 = real -> frame mask (B, T) of the same dtype, 1 = real frame."""
        lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1)).to(torch.long)
        frames = torch.arange(feature_vector_length, device=attention_mask.device)
        return (frames[None, :] < lengths[:, None]).to(attention_mask.dtype)


class ARMHubertModel(ARMHubertPreTrainedModel):
    """The bare encoder: waveform in, per-layer features and (when configured) projected features out."""

    def __init__(self, config):
        super().__init__(config)
        self.config = config
        self.feature_extractor = ARMHubertFeatureEncoder(config)
        self.feature_layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        if config.conv_dim[-1] != config.hidden_size:
            self.feature_projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        else:
            self.feature_projection = None
        self.feature_dropout = nn.Dropout(config.feat_proj_dropout)
        if config.use_mask_embedding:
            self.mask_emb = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        else:
            self.mask_emb = None
        self.encoder = ARMHubertEncoder(config)
        if config.has_projection_heads:
            self.projection_heads = nn.ModuleList(
                nn.Linear(config.hidden_size, config.projection_head_size) for _ in range(config.num_hidden_layers)
            )
        else:
            self.projection_heads = None
        self.post_init()

    def freeze_feature_encoder(self):
        """Stop gradients into the CNN feature encoder (common when fine-tuning)."""
        self.feature_extractor._freeze_parameters()

    def _check_inputs(self, input_values, attention_mask, mask_time_indices):
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
        field = self.config.receptive_field
        if input_values.shape[1] < field:
            raise ValueError(
                f"input_values has {input_values.shape[1]} samples per row, fewer than the {field}-sample "
                f"receptive field of the feature encoder ({field / 16000 * 1000:.0f} ms at 16 kHz). Pad or drop it."
            )
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(input_values.shape):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but input_values has "
                    f"{tuple(input_values.shape)}; they must match (1 = real sample, 0 = padding)."
                )
            shortest = int(attention_mask.sum(-1).min())
            if shortest < field:
                raise ValueError(
                    f"attention_mask marks only {shortest} real samples in some row, fewer than the "
                    f"{field}-sample receptive field. Drop such rows."
                )
        if mask_time_indices is not None and mask_time_indices.dim() != 2:
            raise ValueError(
                f"mask_time_indices must have shape (batch, frames), got {tuple(mask_time_indices.shape)}."
            )

    def _extract_features(self, input_values):
        """(B, N) -> (B, T, C), with `feature_grad_mult` applied to the CNN's gradient."""
        mult = self.config.feature_grad_mult
        if mult == 0.0 or not self.feature_extractor._requires_grad:
            with torch.no_grad():
                features = self.feature_extractor(input_values)
        else:
            features = scale_gradient(self.feature_extractor(input_values), mult) if self.training else (
                self.feature_extractor(input_values)
            )
        return features.transpose(1, 2)

    def _frame_padding_mask(self, num_frames, attention_mask):
        """(B, T) bool, True = padded frame; None when nothing is padded."""
        if attention_mask is None:
            return None
        real = self._get_feature_vector_attention_mask(num_frames, attention_mask).bool()
        return None if bool(real.all()) else ~real

    def forward(
        self,
        input_values,
        attention_mask=None,
        mask_time_indices=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        **kwargs,
    ):
        """Encode raw 16 kHz audio.

        Args:
            input_values (`(B, N)` float): raw waveforms, not normalised (the releases used none).
            attention_mask (`(B, N)`): 1 = real sample, 0 = padding; `None` = nothing padded.
            mask_time_indices (`(B, T)` bool): frames to replace by the learnable `mask_emb`
                (masking distillation).
            output_hidden_states: also return `hidden_states` and `projected_hidden_states`.
            output_attentions: also return every layer's attention weights (explicit path).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_inputs(input_values, attention_mask, mask_time_indices)

        features = self.feature_layer_norm(self._extract_features(input_values))
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
            if self.mask_emb is None:
                raise ValueError("mask_time_indices needs a model built with use_mask_embedding=True.")
            if tuple(mask_time_indices.shape) != (hidden_states.shape[0], num_frames):
                raise ValueError(
                    f"mask_time_indices has shape {tuple(mask_time_indices.shape)}, expected (batch, frames) = "
                    f"{(hidden_states.shape[0], num_frames)} for this input."
                )
            mask = mask_time_indices[:, :crop].to(device=hidden_states.device, dtype=torch.bool)
            hidden_states = torch.where(mask[..., None], self.mask_emb.to(hidden_states.dtype), hidden_states)

        encoded = self.encoder(hidden_states, padding_mask, output_attentions=bool(output_attentions))
        projected = None
        if self.projection_heads is not None:
            projected = tuple(head(output) for head, output in zip(self.projection_heads, encoded.layer_outputs))
            last_hidden_state = projected[-1]
        else:
            last_hidden_state = encoded.last_hidden_state

        output = ARMHubertModelOutput(
            last_hidden_state=last_hidden_state,
            extract_features=features,
            hidden_states=(encoded.encoder_input,) + encoded.layer_outputs if output_hidden_states else None,
            projected_hidden_states=projected if output_hidden_states else None,
            attentions=encoded.attentions,
            frame_attention_mask=None if padding_mask is None else (~padding_mask).long(),
        )
        return output if return_dict else output.to_tuple()


AutoModel.register(ARMHubertConfig, ARMHubertModel, exist_ok=True)
ARMHubertModel.register_for_auto_class("AutoModel")
