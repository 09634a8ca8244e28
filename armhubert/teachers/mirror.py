"""A student that mirrors a teacher's encoder layer for layer, from the teacher's weights, with map reuse.

`student_from_teacher(teacher, reuse_layers=[2, 4])` gives an `ARMHubertModel` of the teacher's shape
whose layers 2 and 4 (1-based) drop their query and key projections and reuse the attention map of
the layer before: the papers' attention-map reuse applied to another backbone. Without reuse layers the
student computes what the teacher computes (to float32 rounding). Teachers mirrored:

- Whisper encoders (`WhisperModel`, `WhisperForConditionalGeneration`, `WhisperEncoder`): the log-mel
  front-end, absolute positions, pre-LN layers and a 30 s window, as Whisper; its decoder reads the
  student's `last_hidden_state` in place of the encoder's.
- HuBERT and wav2vec2 (the layout ARMHuBERT inherits: CNN, feature projection, convolutional positions).

The reusing layers use the reused probabilities as they are (`reuse_softmax="probabilities"`): the
release's second softmax is a quirk of its trained weights, not part of the method. What cannot be
mirrored (another family, a Whisper variant or positional embedding the student lacks, a layer that has no
map before it to reuse) is refused by the rules of MIRROR_RULES, before anything is built.
"""

from collections.abc import Sequence

import torch
from transformers import HubertModel, PreTrainedModel, Wav2Vec2Model
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from configuration_armhubert import ARMHubertConfig
from modeling_armhubert import ARMHubertModel

from ..cli import refuse_broken
from ..files.weights import check_state_fits
from ..folders.remote_code import add_remote_code_entries
from .encoders import whisper_encoder

WHISPER_WINDOW_SAMPLES = 480_000  # Whisper's fixed 30 s input
# Every mirror: reused probabilities as they are, no heads or mask embedding, no dropout (the teacher's eval).
MIRROR_FIELDS = {
    "reuse_softmax": "probabilities",
    "projection_head_size": None,
    "use_mask_embedding": False,
    "hidden_dropout": 0.0,
    "activation_dropout": 0.0,
    "attention_dropout": 0.0,
    "feat_proj_dropout": 0.0,
}

# What `student_from_teacher` mirrors, checked by `refuse_broken` in order: rules over the `teacher`, its Whisper
# encoder (`whisper`, None for other models), the `layers` of what is mirrored and the 1-based `reuse` layers.
MIRROR_RULES = (
    (
        lambda teacher, whisper, **_: whisper is None and not isinstance(teacher, (HubertModel, Wav2Vec2Model)),
        "cannot mirror a {teacher.__class__.__name__}: student_from_teacher mirrors Whisper encoders and HuBERT / "
        "wav2vec2 models; distil a preset student from it instead",
    ),
    (
        lambda whisper, **_: (
            whisper is not None
            and (whisper.config.activation_function != "gelu" or getattr(whisper.config, "scale_embedding", False))
        ),
        "only Whisper encoders with GELU activations and unscaled embeddings can be mirrored",
    ),
    (
        lambda teacher, whisper, **_: (
            whisper is None
            and (
                getattr(teacher.config, "num_conv_pos_embedding_groups", None) is None
                or getattr(teacher.config, "conv_pos_batch_norm", False)
            )
        ),
        "{teacher.__class__.__name__} cannot be mirrored: its positional embedding is not wav2vec2's",
    ),
    (
        lambda layers, reuse, **_: any(not 2 <= layer <= layers for layer in reuse),
        "reuse_layers must name layers in 2..{layers} (1-based; layer 1 has no map to reuse), got {reuse}",
    ),
)


def _whisper_config(encoder: WhisperEncoder, flags: list[bool]) -> ARMHubertConfig:
    config = encoder.config
    return ARMHubertConfig(
        frontend="log_mel",
        num_mel_bins=config.num_mel_bins,
        frontend_window_samples=WHISPER_WINDOW_SAMPLES,
        position_embeddings="absolute",
        max_position_embeddings=config.max_source_positions,
        hidden_size=config.d_model,
        intermediate_size=config.encoder_ffn_dim,
        num_attention_heads=config.encoder_attention_heads,
        num_hidden_layers=config.encoder_layers,
        layer_reuses_attention_map=flags,
        do_stable_layer_norm=True,
        hidden_act="gelu",
        feat_extract_activation="gelu",
        **MIRROR_FIELDS,
    )


def _whisper_weights(encoder: WhisperEncoder, flags: list[bool]) -> dict[str, torch.Tensor]:
    """ARMHubert state-dict entries from a Whisper encoder's (K gets a zero bias: Whisper's has none)."""
    source = encoder.state_dict()
    state = {
        f"feature_extractor.{conv}.{field}": source[f"{conv}.{field}"]
        for conv in ("conv1", "conv2")
        for field in ("weight", "bias")
    }
    state["encoder.embed_positions.weight"] = source["embed_positions.weight"]
    state["encoder.layer_norm.weight"], state["encoder.layer_norm.bias"] = (
        source["layer_norm.weight"],
        source["layer_norm.bias"],
    )
    renames = {
        "self_attn.v_proj": "attention.v_proj",
        "self_attn.out_proj": "attention.out_proj",
        "self_attn_layer_norm": "layer_norm",
        "fc1": "feed_forward.intermediate_dense",
        "fc2": "feed_forward.output_dense",
        "final_layer_norm": "final_layer_norm",
    }
    for index, reuses in enumerate(flags):
        theirs, ours = f"layers.{index}", f"encoder.layers.{index}"
        names = dict(renames) if reuses else {**renames, "self_attn.q_proj": "attention.q_proj"}
        for their_name, our_name in names.items():
            state[f"{ours}.{our_name}.weight"] = source[f"{theirs}.{their_name}.weight"]
            state[f"{ours}.{our_name}.bias"] = source[f"{theirs}.{their_name}.bias"]
        if not reuses:
            key = source[f"{theirs}.self_attn.k_proj.weight"]
            state[f"{ours}.attention.k_proj.weight"] = key
            state[f"{ours}.attention.k_proj.bias"] = key.new_zeros(key.shape[0])
    return state


def _wav2vec2_config(teacher: PreTrainedModel, flags: list[bool]) -> ARMHubertConfig:
    config = teacher.config
    return ARMHubertConfig(
        conv_dim=list(config.conv_dim),
        conv_kernel=list(config.conv_kernel),
        conv_stride=list(config.conv_stride),
        conv_bias=config.conv_bias,
        feat_extract_norm=config.feat_extract_norm,
        feat_extract_activation=config.feat_extract_activation,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_hidden_layers=config.num_hidden_layers,
        layer_reuses_attention_map=flags,
        do_stable_layer_norm=config.do_stable_layer_norm,
        hidden_act=config.hidden_act,
        num_conv_pos_embeddings=config.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=config.num_conv_pos_embedding_groups,
        layer_norm_eps=config.layer_norm_eps,
        **MIRROR_FIELDS,
    )


def _wav2vec2_weights(teacher: PreTrainedModel, flags: list[bool]) -> dict[str, torch.Tensor]:
    """ARMHubert names are transformers' HuBERT names but for the feature projection's two modules."""
    renames = {
        "feature_projection.layer_norm.": "feature_layer_norm.",
        "feature_projection.projection.": "feature_projection.",
    }
    dropped = tuple(f"encoder.layers.{i}.attention.{p}_proj." for i, reuses in enumerate(flags) if reuses for p in "qk")
    state = {}
    for name, value in teacher.state_dict().items():
        if name.startswith(dropped) or name == "masked_spec_embed":
            continue
        for theirs, ours in renames.items():
            if name.startswith(theirs):
                name = ours + name[len(theirs) :]
        state[name] = value
    return state


def student_from_teacher(teacher: PreTrainedModel, reuse_layers: Sequence[int] = ()) -> ARMHubertModel:
    """An `ARMHubertModel` mirroring `teacher`'s encoder, initialised from its weights, with the 1-based
    `reuse_layers` reusing the map of the layer before (their Q and K dropped). Float32, train mode off."""
    whisper = whisper_encoder(teacher)
    layers = whisper.config.encoder_layers if whisper is not None else getattr(teacher.config, "num_hidden_layers", 0)
    reuse = sorted({int(layer) for layer in reuse_layers})
    refuse_broken(MIRROR_RULES, teacher=teacher, whisper=whisper, layers=layers, reuse=reuse)
    flags = [index + 1 in reuse for index in range(layers)]  # `layer_reuses_attention_map`
    if whisper is not None:
        config, state = _whisper_config(whisper, flags), _whisper_weights(whisper, flags)
    else:
        config, state = _wav2vec2_config(teacher, flags), _wav2vec2_weights(teacher, flags)
    add_remote_code_entries(config)
    student = ARMHubertModel(config)
    expected = {name: value.shape for name, value in student.state_dict().items() if name != "mask_emb"}
    shapes = {name: value.shape for name, value in state.items()}
    check_state_fits(
        shapes, expected, f"the {type(teacher).__name__} teacher", "its mirrored student", "it cannot be mirrored"
    )
    student.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return student.eval()
