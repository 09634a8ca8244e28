"""`--format hubert`: a converted model as a plain `transformers.HubertModel` (no remote code needed).

Only models without attention-map reuse, projection heads, frame cropping and pre-LN (the STaR
models) compute what `HubertModel` computes; anything else is refused with the reason.
"""

import torch
from transformers import HubertConfig, HubertModel

from configuration_armhubert import ARMHubertConfig
from modeling_armhubert import ARMHubertModel

from ..cli import UserError
from .original import rename_key

# Our parameter names -> `HubertModel`'s, where they differ.
_HUBERT_KEY_RULES = [
    (r"^feature_layer_norm\.", "feature_projection.layer_norm."),
    (r"^feature_projection\.", "feature_projection.projection."),
    (r"^mask_emb$", "masked_spec_embed"),
]

# Fields `HubertConfig` shares with `ARMHubertConfig` under the same name and meaning.
_SHARED_FIELDS = (
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "feat_extract_activation",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "hidden_act",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "do_stable_layer_norm",
    "layer_norm_eps",
    "hidden_dropout",
    "activation_dropout",
    "attention_dropout",
    "feat_proj_dropout",
    "layerdrop",
    "initializer_range",
    "vocab_size",
    "ctc_loss_reduction",
    "ctc_zero_infinity",
    "final_dropout",
    "use_weighted_layer_sum",
    "classifier_proj_size",
    "apply_spec_augment",
    "mask_time_prob",
    "mask_time_length",
    "mask_time_min_masks",
    "mask_feature_prob",
    "mask_feature_length",
    "mask_feature_min_masks",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)


def _hubert_incompatibilities(config):
    problems = []
    if any(config.layer_reuses_attention_map):
        problems.append("its layers reuse attention maps")
    if config.has_projection_heads:
        problems.append("it has projection heads")
    if config.crop_seq_to_multiple != 1 or config.required_seq_len_multiple != 1:
        problems.append("it crops or pads frames to a multiple")
    if config.do_stable_layer_norm:
        # transformers 5's HubertModel reports hidden_states[-1] before the final LayerNorm; ours after.
        problems.append("it is pre-LN (HubertModel's last hidden state would differ)")
    return problems


def hubert_config_for(config: ARMHubertConfig) -> HubertConfig:
    """The `HubertConfig` that computes what `config` does (same field names wherever they exist)."""
    problems = _hubert_incompatibilities(config)
    if problems:
        raise UserError(
            f"--format hubert needs a model without map reuse or heads (STaR models), but {' and '.join(problems)}; "
            "use the default --format armhubert"
        )
    return HubertConfig(feat_proj_layer_norm=True, **{field: getattr(config, field) for field in _SHARED_FIELDS})


def to_hubert_model(model: ARMHubertModel) -> HubertModel:
    """A `transformers.HubertModel` with the same weights and outputs as `model` (no remote code needed).

    `HubertModel` always projects the CNN features; where our model has no projection (width = CNN
    width, as in every release) it gets an exact identity. Its `masked_spec_embed` (used only by
    SpecAugment in fine-tuning) keeps HubertModel's own initialisation unless the model has `mask_emb`.
    """
    config = model.config
    hubert = HubertModel(hubert_config_for(config)).eval()
    state = {rename_key(key, _HUBERT_KEY_RULES): value for key, value in model.state_dict().items()}
    if model.feature_projection is None:
        state["feature_projection.projection.weight"] = torch.eye(config.hidden_size)
        state["feature_projection.projection.bias"] = torch.zeros(config.hidden_size)
    expected = hubert.state_dict()
    if "masked_spec_embed" not in expected:
        state.pop("masked_spec_embed", None)
    elif "masked_spec_embed" not in state:
        state["masked_spec_embed"] = expected["masked_spec_embed"]
    hubert.load_state_dict(state, strict=True)  # the converted model's own weights: they fit (hubert_config_for)
    return hubert


def hubert_additions(model: ARMHubertModel, hubert: HubertModel) -> dict[str, int]:
    """What `hubert` (from `to_hubert_model(model)`) has that the original has not: description -> parameters."""
    width = model.config.hidden_size
    additions = {}
    if model.feature_projection is None:
        additions["an identity feature projection (exact: the outputs are unchanged)"] = width * (width + 1)
    if model.mask_emb is None and getattr(hubert, "masked_spec_embed", None) is not None:
        additions["a newly initialised SpecAugment mask embedding (used only in fine-tuning)"] = width
    return additions
