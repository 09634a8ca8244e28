"""Configuration of the ARMHuBERT family of compressed speech encoders.

One configuration class covers every released student: ARMHuBERT and ARMwavLM (attention-map reuse,
Recycle-and-Distill, Interspeech 2023), MaskHuBERT (masking distillation, same paper) and STaRHuBERT
(temporal-relation distillation, ICASSP 2024). Field names follow `transformers`' `HubertConfig`
wherever the meaning is the same, so HuBERT users find what they expect.
"""

import difflib
from collections.abc import Sequence

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import TRANSFORMERS_DYNAMIC_MODULE_NAME

SAMPLING_RATE = 16000  # every release and teacher: 16 kHz mono
RELEASE_CONV_LAYERS = "release"


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Fewest input samples a stack of 1-D convolutions needs to yield one output frame."""
    field = 1
    for kernel, stride in zip(reversed(kernels), reversed(strides)):
        field = (field - 1) * stride + kernel
    return field


def release_conv_layers(width: int) -> tuple[list[int], list[int], list[int]]:
    """The thin 9-layer CNN shared by every released student, as (dims, kernels, strides).

    `[(128, 10, 5)] + [(256, 1, 1)] + [(256, 3, 2)] * 4 + [(width, 1, 1)] + [(width, 2, 2)] * 2`:
    total stride 320 (20 ms at 16 kHz), receptive field 400 samples.
    """
    layers = [(128, 10, 5)] + [(256, 1, 1)] + [(256, 3, 2)] * 4 + [(width, 1, 1)] + [(width, 2, 2)] * 2
    dims, kernels, strides = (list(column) for column in zip(*layers))
    return dims, kernels, strides


def _release_preset(width, ffn, reuse, heads):
    dims, kernels, strides = release_conv_layers(width)
    return {
        "conv_dim": dims,
        "conv_kernel": kernels,
        "conv_stride": strides,
        "hidden_size": width,
        "intermediate_size": ffn,
        "layer_reuses_attention_map": [False, True] * 6 if reuse else [False] * 12,
        "projection_head_size": 768 if heads else None,
        # The ARM recipes train with layer_grad_scale (True = "release"); MaskHuBERT and STaR do not.
        "layer_grad_scale": reuse,
        # Only masking-distilled students carry a learnable mask embedding.
        "use_mask_embedding": heads,
    }


# Every released model, by its release name (lower case). Parameter counts are exact and tested.
PRESETS = {
    "armhubert-960h": _release_preset(480, 864, reuse=True, heads=True),  # 26,448,448
    "armhubert-s-100h": _release_preset(432, 816, reuse=True, heads=True),  # 22,394,080
    "armhubert-s-960h": _release_preset(432, 816, reuse=True, heads=True),
    "armwavlm-s-100h": _release_preset(432, 816, reuse=True, heads=True),
    "armwavlm-s-960h": _release_preset(432, 816, reuse=True, heads=True),
    "maskhubert-960h": _release_preset(480, 640, reuse=False, heads=True),  # 26,635,840
    "starhubert": _release_preset(432, 976, reuse=False, heads=False),  # 22,308,592
    # STaRHuBERT-L: the paper reports 26.6 M parameters and 511.9 G MACs. Two shapes of the release
    # family fit the parameter count (D 432 / FFN 1392: 26,626,672, and D 480 / FFN 1024:
    # 26,630,752); only the first also matches the MACs, so it is the preset. A real STaR
    # checkpoint comes with its YAML, which `convert_checkpoint.py` reads instead.
    "starhubert-l": _release_preset(432, 1392, reuse=False, heads=False),
}

REUSE_SOFTMAX_MODES = ("resoftmax", "probabilities")
FRONTENDS = ("cnn", "log_mel")
POSITION_EMBEDDINGS = ("conv", "absolute")
# Whisper's log-mel front-end: 25 ms windows every 10 ms, then a stride-2 convolution (20 ms frames).
MEL_WINDOW, MEL_HOP = 400, 160
FEATURE_NORMS = ("group", "layer")
# `layer_grad_scale` modes (see `ARMHubertConfig`); `True` means "release", `False` / `None` off.
LAYER_GRAD_SCALE_MODES = ("release", "uniform")
# Config attributes with class-level defaults, outside `__init__` (see the `ARMHubertConfig` docstring).
RUNTIME_FIELDS = (
    "last_head_only",
    "explicit_map_elements",
    "reuse_block_elements",
    "reuse_block_rows",
    "fused_cpu_attention",
)


def layer_grad_scale_mode(value: str | bool | None) -> str | bool:
    """Canonical `layer_grad_scale`: False (off), "release" or "uniform"; old boolean configs load as before.

    `True` (what configs saved before the modes existed hold, and what the converter reads from the
    release's YAML) means the release's scaling. Unknown strings are returned unchanged for
    validation to refuse.
    """
    if value is None or value is False:
        return False
    if value is True:
        return "release"
    return value.lower() if isinstance(value, str) else value


class ARMHubertConfig(PreTrainedConfig):
    r"""Configuration for [`ARMHubertModel`] and its task heads.

    Defaults build ARMHuBERT-960h. `ARMHubertConfig.from_preset(name)` builds any released model.

    Args:
        conv_dim, conv_kernel, conv_stride (`list[int]`):
            Output channels, kernel sizes and strides of the CNN feature encoder, one entry per layer.
        conv_bias (`bool`): Whether the CNN convolutions have a bias (no in the releases).
        frontend (`str`): `"cnn"` (default, every release): the waveform CNN above. `"log_mel"`: Whisper's
            front-end, computed inside the model from the same raw 16 kHz audio: an 80-bin log-mel
            spectrogram (25 ms windows, 10 ms hop, Whisper's scaling), then Conv1d(k=3) -> GELU ->
            Conv1d(k=3, stride 2) -> GELU to `hidden_size` channels: 20 ms frames, the CNN's grid. It
            has no feature LayerNorm or projection (as Whisper); `conv_*` fields are then unused.
        num_mel_bins (`int`): Mel bins of the "log_mel" front-end (80 for Whisper tiny ... large-v2).
        frontend_window_samples (`int` or `None`): Pad every input with zeros to this many samples and
            attend over the whole window, padding included (Whisper: 480000 = 30 s; longer inputs are
            refused). `None` (default): no window; padded frames are masked out of attention.
        position_embeddings (`str`): `"conv"` (default, every release): the convolutional positional
            embedding. `"absolute"`: a learned table of `max_position_embeddings` rows added to the
            front-end's frames (Whisper's `embed_positions`).
        max_position_embeddings (`int`): Rows of the "absolute" table: the most frames an input may have.
        feat_extract_norm (`str`): `"group"`: GroupNorm in the first CNN layer only (fairseq's
            "default" extractor mode, all releases); `"layer"`: LayerNorm after every CNN layer.
        feat_extract_activation (`str`): Activation of the CNN layers.
        hidden_size (`int`): Transformer width D. When it differs from `conv_dim[-1]` a linear
            feature projection maps the CNN output to it.
        intermediate_size (`int`): Feed-forward width.
        num_attention_heads (`int`): Attention heads; must divide `hidden_size`.
        num_hidden_layers (`int`): Number of transformer layers.
        layer_reuses_attention_map (`list[bool]`): One entry per layer; `True` means the layer has
            no query/key projections and reuses the attention map of the most recent layer that
            computes one. The first layer must compute its own map. `None` means every layer computes.
        reuse_softmax (`str`): How a reusing layer turns the reused map into weights.
            `"resoftmax"` (default): the original release applies softmax again to the reused
            probabilities (padded keys masked); the released weights were trained this way and need
            it. `"probabilities"`: use the reused probabilities as they are.
        reuse_recompute_backward (`bool`): Training in "resoftmax" mode: `False` (default) saves the
            explicit (B, H, T, T) maps of every computing / reusing pair for the backward pass;
            `True` saves only Q, K, V and the log-sum-exp and rebuilds the map block by block in the
            backward pass (same gradients, memory O(B*H*T*d) per pair instead of three maps, some
            extra compute). Not combined with `reuse_attention_dropout` > 0 (that keeps the maps).
        do_stable_layer_norm (`bool`): Pre-LayerNorm layers (`True`) or post-LayerNorm (`False`,
            all releases).
        hidden_act (`str`): Activation of the feed-forward layers.
        num_conv_pos_embeddings, num_conv_pos_embedding_groups (`int`): Kernel size and groups of the
            weight-normed convolutional positional embedding.
        projection_head_size (`int` or `None`): Width of the per-layer projection heads (768 for the
            ARM/Mask releases, matching the teacher). `None`: no heads (STaR).
        use_mask_embedding (`bool`): Whether the model has the learnable `mask_emb` that replaces
            masked frames (masking distillation; no in the STaR releases).
        hidden_dropout, activation_dropout, attention_dropout (`float`): Dropouts inside the layers.
        reuse_attention_dropout (`float`): Dropout on the weights of reusing layers (0 in the release).
        feat_proj_dropout (`float`): Dropout on the CNN features before the encoder ("dropout_input").
        layerdrop (`float`): Probability of skipping a whole layer in training.
        layer_norm_eps (`float`): Epsilon of every LayerNorm.
        layer_grad_scale (`str` or `bool`): Training only, forward identity: how the gradient is split
            between the layers and the projection heads. Needs projection heads. With layer i counted
            from 0 of L:
            - `"release"` (or `True`; the ARM recipes): what the original training computed. The
              gradient from layer i's output into the rest of the network is scaled by
              m_i = (L-i)/(L-i+1), and the head branch is taken from the already scaled tensor and
              scaled by 1-m_i, so head i's gradient is scaled by (1-m_i)*m_i (the last layer too:
              m = 1/2, head gradient 1/4). The share of head i's gradient reaching the encoder input is
              (L-i)/((L-i+1)(L+1)): 0.071 for the first head of 12, 0.038 for the last. (The
              original's comment says i counts from 1, which would leave the last layer's whole
              gradient to its head, as "uniform" does; its code counts from 0, and this mode
              reproduces the code, i.e. the released weights.)
            - `"uniform"`: m_i = (L-i-1)/(L-i) into the next layer and 1-m_i = 1/(L-i) into head i,
              not compounded, so every head's share reaching the encoder input is 1/L. Not what the
              release trained; earlier versions of this project used it for `True`.
            - `False` / `None`: off.
        feature_grad_mult (`float`): Scale of the gradient reaching the CNN (0 freezes it).
        crop_seq_to_multiple (`int`): Drop trailing frames so the frame count is a multiple of this.
        required_seq_len_multiple (`int`): Pad frames inside the encoder to a multiple of this.
        initializer_range (`float`): Std of the normal init of linear layers.
        vocab_size, pad_token_id, ctc_loss_reduction, ctc_zero_infinity, final_dropout: CTC head.
        use_weighted_layer_sum, classifier_proj_size: task heads.
        apply_spec_augment, mask_time_prob, mask_time_length, mask_time_min_masks, mask_feature_prob,
        mask_feature_length, mask_feature_min_masks: SpecAugment-style masking of task heads in
            training, as in `HubertConfig`.

    Attributes set on a config (keyword arguments too) but saved only when set, since existing configs
    do not hold them:
        last_head_only (`bool`, default `False`): build only the last projection head (the task models
            set it when they read nothing else); the others stay `None` in `projection_heads`. Never saved:
            a task model derives it, and its folder opens as a full encoder too (whose tools then find the
            heads the folder lacks by their missing weights).
        explicit_map_elements (`int`, default 2**18): on a CPU, a (B, H, T, T) map of at most this many
            elements (1 MiB in float32: one 12-head utterance of T <= 147 frames, about 3 s) is handed to
            the reusing layer explicitly: in cache, holding it is faster than rebuilding it.
        reuse_block_elements, reuse_block_rows (`int`, defaults 2**19 and 256): the blocks in which the
            reusing kernels rebuild the map, about this many scores on a CPU (2 MiB in float32, a core's
            L2 cache; 64x elsewhere) and at most this many query rows.
        fused_cpu_attention (`bool`, default `True`): on a CPU, compute SDPA and its log-sum-exp in one
            private kernel call where torch has it (else the public SDPA plus one more Q K^T pass).
    """

    model_type = "armhubert"

    # Run-time choices between kernels that give the same numbers (see `RUNTIME_FIELDS`): class-level
    # defaults, so that a config saves exactly as before unless one is set on it.
    explicit_map_elements = 2**18
    reuse_block_elements = 2**19
    reuse_block_rows = 256
    fused_cpu_attention = True
    # Set by the task models that read only the last projection head (see `ARMHubertModel`).
    last_head_only = False

    def __init__(
        self,
        conv_dim: list[int] | None = None,
        conv_kernel: list[int] | None = None,
        conv_stride: list[int] | None = None,
        conv_bias: bool = False,
        frontend: str = "cnn",
        num_mel_bins: int = 80,
        frontend_window_samples: int | None = None,
        position_embeddings: str = "conv",
        max_position_embeddings: int = 1500,
        feat_extract_norm: str = "group",
        feat_extract_activation: str = "gelu",
        hidden_size: int = 480,
        intermediate_size: int = 864,
        num_attention_heads: int = 12,
        num_hidden_layers: int = 12,
        layer_reuses_attention_map: list[bool] | None = None,
        reuse_softmax: str = "resoftmax",
        reuse_recompute_backward: bool = False,
        do_stable_layer_norm: bool = False,
        hidden_act: str = "gelu",
        num_conv_pos_embeddings: int = 128,
        num_conv_pos_embedding_groups: int = 16,
        projection_head_size: int | None = 768,
        use_mask_embedding: bool = True,
        hidden_dropout: float = 0.1,
        activation_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        reuse_attention_dropout: float = 0.0,
        feat_proj_dropout: float = 0.05,
        layerdrop: float = 0.0,
        layer_norm_eps: float = 1e-5,
        layer_grad_scale: str | bool | None = False,
        feature_grad_mult: float = 1.0,
        crop_seq_to_multiple: int = 1,
        required_seq_len_multiple: int = 1,
        initializer_range: float = 0.02,
        vocab_size: int | None = 32,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        ctc_loss_reduction: str = "mean",
        ctc_zero_infinity: bool = False,
        final_dropout: float = 0.1,
        use_weighted_layer_sum: bool = False,
        classifier_proj_size: int = 256,
        apply_spec_augment: bool = True,
        mask_time_prob: float = 0.05,
        mask_time_length: int = 10,
        mask_time_min_masks: int = 2,
        mask_feature_prob: float = 0.0,
        mask_feature_length: int = 10,
        mask_feature_min_masks: int = 0,
        **kwargs,
    ) -> None:
        default_dims, default_kernels, default_strides = release_conv_layers(hidden_size)
        self.conv_dim = list(conv_dim) if conv_dim is not None else default_dims
        self.conv_kernel = list(conv_kernel) if conv_kernel is not None else default_kernels
        self.conv_stride = list(conv_stride) if conv_stride is not None else default_strides
        self.conv_bias = conv_bias
        self.frontend = frontend
        self.num_mel_bins = num_mel_bins
        self.frontend_window_samples = frontend_window_samples
        self.position_embeddings = position_embeddings
        self.max_position_embeddings = max_position_embeddings
        self.feat_extract_norm = feat_extract_norm
        self.feat_extract_activation = feat_extract_activation
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        if layer_reuses_attention_map is None:
            layer_reuses_attention_map = [False] * num_hidden_layers
        self.layer_reuses_attention_map = [bool(flag) for flag in layer_reuses_attention_map]
        self.reuse_softmax = reuse_softmax
        self.reuse_recompute_backward = bool(reuse_recompute_backward)
        self.do_stable_layer_norm = do_stable_layer_norm
        self.hidden_act = hidden_act
        self.num_conv_pos_embeddings = num_conv_pos_embeddings
        self.num_conv_pos_embedding_groups = num_conv_pos_embedding_groups
        self.projection_head_size = projection_head_size
        self.use_mask_embedding = use_mask_embedding
        self.hidden_dropout = hidden_dropout
        self.activation_dropout = activation_dropout
        self.attention_dropout = attention_dropout
        self.reuse_attention_dropout = reuse_attention_dropout
        self.feat_proj_dropout = feat_proj_dropout
        self.layerdrop = layerdrop
        self.layer_norm_eps = layer_norm_eps
        self.layer_grad_scale = layer_grad_scale_mode(layer_grad_scale)
        self.feature_grad_mult = feature_grad_mult
        self.crop_seq_to_multiple = crop_seq_to_multiple
        self.required_seq_len_multiple = required_seq_len_multiple
        self.initializer_range = initializer_range
        self.vocab_size = vocab_size
        self.ctc_loss_reduction = ctc_loss_reduction
        self.ctc_zero_infinity = ctc_zero_infinity
        self.final_dropout = final_dropout
        self.use_weighted_layer_sum = use_weighted_layer_sum
        self.classifier_proj_size = classifier_proj_size
        self.apply_spec_augment = apply_spec_augment
        self.mask_time_prob = mask_time_prob
        self.mask_time_length = mask_time_length
        self.mask_time_min_masks = mask_time_min_masks
        self.mask_feature_prob = mask_feature_prob
        self.mask_feature_length = mask_feature_length
        self.mask_feature_min_masks = mask_feature_min_masks
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self._validate()

    def _validate(self):
        def fail(field, problem, fix):
            raise ValueError(f"ARMHubertConfig.{field}: {problem}. {fix}")

        for field in (
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_hidden_layers",
            "num_conv_pos_embeddings",
            "num_conv_pos_embedding_groups",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(field, f"got {value!r}", "Use a positive integer.")
        layers = (self.conv_dim, self.conv_kernel, self.conv_stride)
        if len({len(column) for column in layers}) != 1 or not self.conv_dim:
            fail(
                "conv_dim/conv_kernel/conv_stride",
                f"got lists of lengths {[len(column) for column in layers]}",
                "Give one (equal-length, non-empty) entry per CNN layer in each list.",
            )
        if any(int(v) <= 0 for column in layers for v in column):
            fail("conv_dim/conv_kernel/conv_stride", "every entry must be a positive integer", "Fix the CNN lists.")
        if self.frontend not in FRONTENDS:
            fail("frontend", f"got {self.frontend!r}", f"Use one of {FRONTENDS}.")
        if self.position_embeddings not in POSITION_EMBEDDINGS:
            fail("position_embeddings", f"got {self.position_embeddings!r}", f"Use one of {POSITION_EMBEDDINGS}.")
        for field in ("num_mel_bins", "max_position_embeddings"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(field, f"got {value!r}", "Use a positive integer.")
        window = self.frontend_window_samples
        if window is not None and (
            not isinstance(window, int) or isinstance(window, bool) or window < self.receptive_field
        ):
            fail("frontend_window_samples", f"got {window!r}", f"Use None or at least {self.receptive_field} samples.")
        if self.feat_extract_norm not in FEATURE_NORMS:
            fail("feat_extract_norm", f"got {self.feat_extract_norm!r}", f"Use one of {FEATURE_NORMS}.")
        if self.hidden_size % self.num_attention_heads:
            fail(
                "hidden_size",
                f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}",
                "Choose a width that is a multiple of the number of heads.",
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            fail(
                "num_conv_pos_embedding_groups",
                f"{self.num_conv_pos_embedding_groups} does not divide hidden_size={self.hidden_size}",
                "Choose a group count that divides the width.",
            )
        if len(self.layer_reuses_attention_map) != self.num_hidden_layers:
            fail(
                "layer_reuses_attention_map",
                f"has {len(self.layer_reuses_attention_map)} entries for num_hidden_layers={self.num_hidden_layers}",
                "Give exactly one boolean per layer.",
            )
        if self.layer_reuses_attention_map and self.layer_reuses_attention_map[0]:
            fail(
                "layer_reuses_attention_map",
                "the first layer cannot reuse a map (no earlier layer computes one)",
                "Set its first entry to False.",
            )
        if self.reuse_softmax not in REUSE_SOFTMAX_MODES:
            fail("reuse_softmax", f"got {self.reuse_softmax!r}", f"Use one of {REUSE_SOFTMAX_MODES}.")
        if self.projection_head_size is not None and int(self.projection_head_size) <= 0:
            fail(
                "projection_head_size",
                f"got {self.projection_head_size}",
                "Use a positive width, or None for no heads.",
            )
        if self.layer_grad_scale and self.layer_grad_scale not in LAYER_GRAD_SCALE_MODES:
            fail(
                "layer_grad_scale",
                f"got {self.layer_grad_scale!r}",
                f"Use one of {LAYER_GRAD_SCALE_MODES}, True (= 'release') or False (off).",
            )
        if self.layer_grad_scale and self.projection_head_size is None:
            fail("layer_grad_scale", "needs projection heads", "Set projection_head_size or layer_grad_scale=False.")
        for field in ("crop_seq_to_multiple", "required_seq_len_multiple"):
            if int(getattr(self, field)) < 1:
                fail(field, f"got {getattr(self, field)}", "Use 1 (no effect) or a larger integer.")
        if self.feature_grad_mult < 0:
            fail("feature_grad_mult", f"got {self.feature_grad_mult}", "Use 0 (frozen CNN) or a positive scale.")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ARMHubertConfig":
        """Configuration of a released model, by release name (case-insensitive).

        Names: armhubert-960h, armhubert-s-100h, armhubert-s-960h, armwavlm-s-100h, armwavlm-s-960h,
        maskhubert-960h, starhubert, starhubert-l. `overrides` replace any field; an unknown one (a typo)
        is refused, with the closest field named.
        """
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(f"Unknown ARMHubert preset {name!r}. Available presets: {', '.join(PRESETS)}.")
        cls.check_fields(overrides)
        return cls(**{**PRESETS[key], **overrides})

    def to_dict(self) -> dict:
        """`PreTrainedConfig.to_dict` without `last_head_only` (see the class docstring)."""
        output = super().to_dict()
        output.pop("last_head_only", None)
        return output

    @classmethod
    def check_fields(cls, values: dict) -> None:
        """Raise a ValueError naming the first key of `values` that is no field of this config, with a suggestion.

        Fields: those a default config saves, plus what `PreTrainedConfig` takes besides
        (`attn_implementation`, `num_labels`).
        """
        known = {*cls().to_dict(), *RUNTIME_FIELDS, "attn_implementation", "num_labels"}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"Did you mean {close[0]!r}?" if close else f"See the {cls.__name__} docstring for its fields."
                raise ValueError(f"{cls.__name__}.{key}: no such field. {hint}")

    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def frame_kernels_and_strides(self) -> tuple[list[int], list[int]]:
        """The front-end as a stack of (kernel, stride) layers in samples: the CNN's, or the log-mel window
        and hop followed by the two convolutions over mel frames."""
        if self.frontend == "log_mel":
            return [MEL_WINDOW, 3, 3], [MEL_HOP, 1, 2]
        return self.conv_kernel, self.conv_stride

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Samples per output frame (320 for the releases and the log-mel front-end)."""
        ratio = 1
        for stride in self.frame_kernels_and_strides[1]:
            ratio *= stride
        return ratio

    @property
    def receptive_field(self) -> int:
        """Fewest input samples that yield one output frame (400 for the releases)."""
        return receptive_field(*self.frame_kernels_and_strides)

    @property
    def has_projection_heads(self) -> bool:
        return self.projection_head_size is not None


def is_remote_code_copy(module_name: str) -> bool:
    """Whether a module is a copy that `trust_remote_code` imported from a model folder (perhaps an older
    version of this file): such a copy must not replace classes already registered, e.g. the installed
    package's, or `AutoConfig.for_model("armhubert")` would change after loading any folder."""
    return module_name.startswith(TRANSFORMERS_DYNAMIC_MODULE_NAME + ".")


if not is_remote_code_copy(__name__) or "armhubert" not in CONFIG_MAPPING:
    AutoConfig.register("armhubert", ARMHubertConfig, exist_ok=True)
ARMHubertConfig.register_for_auto_class()
