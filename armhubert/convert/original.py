"""The original release's checkpoints: safe reading, training-config parsing, key mapping, conversion.

The release stores PyTorch-Lightning checkpoints whose `state_dict` holds the frozen teacher and the
student (`student_model.*`), with the model configuration in `hyper_parameters["cfg"]["distiller"]`;
their optimizer state holds a pickled `s3prl.optimizers.WarmupLinearSchedule`. STaR checkpoints have no
hyper-parameters: their YAML is read instead. Checkpoints are read with `torch.load(weights_only=True)`:
the few known non-tensor classes of the training stack unpickle into inert stand-ins, any other class
is refused by name, and nothing from a pickle is ever run. Config expressions such as
`"[(128, 10, 5)] + [(256, 3, 2)] * 4"` are parsed as literals, never passed to `eval`.
"""

import ast
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers.activations import ACT2FN

from configuration_armhubert import ARMHubertConfig
from modeling_armhubert import ARMHubertModel

from ..cli import UserError
from ..files.untrusted import Limit, brief, check_plain_data, load_torch_file, load_yaml_file
from ..files.weights import check_state_fits, check_weight_tensor
from ..progress import progress

STUDENT_PREFIX = "student_model."
# The model families of the release, as the training config's `model` field names them.
FAMILIES = ("armhubert", "armwavlm", "maskhubert", "starhubert")
FAMILY_ALIASES = {"star": "starhubert"}  # STaR's own YAMLs say `model: star`
KNOWN_FAMILIES = (*FAMILIES, *FAMILY_ALIASES)
# Student keys the original loader deletes: STaR's unused pre-training projection.
DROPPED_KEYS = ("final_proj.weight", "final_proj.bias")
# Bounds of a config expression and of what it builds (the release's have ~100 characters, 7 layers).
EXPRESSION_CHARACTERS = Limit(10_000, "config expression of {count:,} characters; at most {most:,} are read")
EXPRESSION_ITEMS = Limit(10_000, "config expression {text} builds more than {most:,} items; refusing it")


# --------------------------------------------------------------------------------------------------
# Reading the original configuration


def _is_literal_node(node: ast.AST) -> bool:
    """Whether a config expression may hold `node`: a literal (number, boolean, text, None), a list, a tuple,
    unary minus (not of a boolean), `+` or `*` (with the `Load` and operator nodes under them)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float, bool, str, type(None)))
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub) and not (
            isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, bool)
        )
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, (ast.Add, ast.Mult))
    return isinstance(node, (ast.Expression, ast.List, ast.Tuple, ast.Load, ast.USub, ast.Add, ast.Mult))


def _evaluate(node: ast.AST, text: str) -> Any:
    """The value of an expression node of `text` that `_is_literal_node` allows, with all below it; TypeError for
    `+` or `*` of values that do not go together, or minus of a non-number. A list, tuple or string longer than
    EXPRESSION_ITEMS is refused before it is built."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_evaluate(element, text) for element in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.UnaryOp):
        return -_evaluate(node.operand, text)
    left, right, add = _evaluate(node.left, text), _evaluate(node.right, text), isinstance(node.op, ast.Add)
    if any(isinstance(value, (list, tuple, str)) for value in (left, right)):
        lengths = [
            len(v) if isinstance(v, (list, tuple, str)) else abs(v) if isinstance(v, int) else 1 for v in (left, right)
        ]
        EXPRESSION_ITEMS.check(sum(lengths) if add else math.prod(lengths), "config expression", text=brief(text))
    return left + right if add else left * right


def parse_literal_expression(text: Any) -> Any:
    """Evaluate the release's config expressions, such as `"[(128, 10, 5)] + [(256, 3, 2)] * 4"`.

    Only literals (numbers, booleans, strings, None), lists, tuples, unary minus, `+` and `*` are
    allowed (`_is_literal_node`, checked on the whole tree before anything is built); anything else
    (names, calls, attributes) is refused. Nothing is passed to `eval`. The text and every list, tuple or
    string it builds are bounded (`[0] * 10**9` is refused before it is built). What is wrong with an
    expression is one refusal.
    """
    text = str(text)
    EXPRESSION_CHARACTERS.check(len(text), "config expression")
    try:
        tree = ast.parse(text, mode="eval")
        unlisted = next((node for node in ast.walk(tree) if not _is_literal_node(node)), None)
        if unlisted is None:
            return _evaluate(tree.body, text)
        problem = f"uses {brief(ast.unparse(unlisted))}; only list/tuple literals, + and * are allowed"
    except (SyntaxError, ValueError) as error:  # ValueError: a null byte
        problem = f"cannot be parsed: {getattr(error, 'msg', None) or type(error).__name__}"
    except TypeError as error:
        problem = f"cannot be evaluated ({error}); only numbers, text, lists and tuples of them, + and * are allowed"
    except (RecursionError, MemoryError):  # MemoryError: CPython's parser on thousands of nested `-`
        problem = "nests too deeply"
    raise UserError(f"config expression {brief(text)} {problem}")


def _literal(value):
    """Config values are either already parsed (YAML lists) or Python-literal strings."""
    return parse_literal_expression(value) if isinstance(value, str) else value


def _is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Field:
    """A field of the distiller section: its default, what it must do (`be ...`, for the message), the test of
    that, and whether it may be written as a config expression (`parse_literal_expression`)."""

    default: Any
    must: str
    accepts: Callable[[Any], bool]
    expression: bool = False


def _size(default, maximum):
    return _Field(default, f"be an integer in 1..{maximum}", lambda value: _is_integer(value) and 1 <= value <= maximum)


def _rate(default, maximum=1.0):
    return _Field(
        default, f"be a number in [0, {maximum:g}]", lambda value: _is_number(value) and 0 <= value <= maximum
    )


def _is_flag(value):
    """A boolean, or the integer 0 or 1; not text such as "false", nor 0.0 or 1.0."""
    return isinstance(value, bool) or _is_integer(value) and value in (0, 1)


def _flag(default=False):
    return _Field(default, "be true or false", _is_flag)


def _one_of(*allowed, why=""):
    return _Field(allowed[0], f"be one of {', '.join(map(repr, allowed))}{why}", lambda value: value in allowed)


MAX_CONV_LAYERS, MAX_CONV_VALUE = 64, 65536


def _conv_layers_valid(layers):
    return (
        isinstance(layers, (list, tuple))
        and 1 <= len(layers) <= MAX_CONV_LAYERS
        and all(
            isinstance(layer, (list, tuple))
            and len(layer) == 3
            and all(_is_integer(v) and 1 <= v <= MAX_CONV_VALUE for v in layer)
            for layer in layers
        )
    )


EXTRACTOR_MODES = {"default": "group", "layer_norm": "layer"}  # the release's extractor_mode -> feat_extract_norm
UNRELEASED = " (the released architectures)"
# What the distiller section may hold, checked by `_distiller_values` alone. The size bounds only stop absurd
# values early (a model with them would never fit in memory); every release is far below them.
DISTILLER_FIELDS = {
    "encoder_layers": _size(12, 1024),
    "encoder_embed_dim": _size(None, 65536),
    "encoder_ffn_embed_dim": _size(3072, 262144),
    "encoder_attention_heads": _size(12, 1024),
    "conv_pos": _size(128, 4096),
    "conv_pos_groups": _size(16, 65536),
    "pred_head_final_dim": _size(768, 65536),
    "required_seq_len_multiple": _size(1, 1024),
    "crop_seq_to_multiple": _size(1, 1024),
    "dropout": _rate(0.1),
    "attention_dropout": _rate(0.1),
    "activation_dropout": _rate(0.0),
    "dropout_input": _rate(0.0),
    "encoder_layerdrop": _rate(0.0),
    "feature_grad_mult": _rate(1.0, maximum=1e6),
    "conv_feature_layers": _Field(
        None,
        f"be a list of 1..{MAX_CONV_LAYERS} (dim, kernel, stride) integers in 1..{MAX_CONV_VALUE}",
        _conv_layers_valid,
        expression=True,
    ),
    "extractor_mode": _one_of(*EXTRACTOR_MODES),
    "conv_bias": _flag(),
    "layer_norm_first": _flag(),
    "layer_grad_scale": _flag(),
    "layerwise_proj": _flag(),
    "activation_fn": _Field(
        "gelu", "be an activation transformers knows", lambda value: isinstance(value, str) and value in ACT2FN
    ),
    # Architectures no release has: refused rather than converted into something else.
    "pos_conv_depth": _one_of(1, why=UNRELEASED),
    "layer_type": _one_of("transformer", why=UNRELEASED),
    "pred_head_inter_dim": _one_of(0, None, why=UNRELEASED),
    "enable_tr_layer": _one_of(False, None, why=UNRELEASED),
    "attn_type": _one_of("", None, why=UNRELEASED),
    "pos_enc_type": _one_of("abs", None, why=UNRELEASED),
}


def _reuse_pattern(layers: int) -> _Field:
    """The `reuse_pattern` field of a model of `layers` layers: which layers compute their attention map."""

    def accepts(value):
        return isinstance(value, (list, tuple)) and len(value) == layers and all(map(_is_flag, value))

    return _Field([True] * layers, f"list {layers} booleans (one per layer)", accepts, expression=True)


def _checked(name: str, field: _Field, value: Any) -> Any:
    """`value` of the distiller section's `name` (a config expression parsed first where `field` takes one),
    if `field` accepts it; else one UserError naming the field."""
    value = _literal(value) if field.expression else value
    if not field.accepts(value):
        raise UserError(f"distiller.{name} must {field.must}, got {brief(value)}")
    return value


def _distiller_values(distiller: dict) -> dict[str, Any]:
    """{field: value} of every DISTILLER_FIELDS field (its default where the section has none) and of
    `reuse_pattern` (every layer computes its map where the section has none or null), each checked."""
    values = {
        name: _checked(name, field, distiller.get(name, field.default)) for name, field in DISTILLER_FIELDS.items()
    }
    pattern = _reuse_pattern(values["encoder_layers"])
    values["reuse_pattern"] = _checked("reuse_pattern", pattern, distiller.get("reuse_pattern") or pattern.default)
    return values


def config_from_distiller(distiller: Any, has_mask_embedding: bool = True) -> ARMHubertConfig:
    """Build an `ARMHubertConfig` from the original `distiller` section."""
    if not isinstance(distiller, dict) or not {"encoder_embed_dim", "conv_feature_layers"} <= set(distiller):
        raise UserError(
            "the config has no usable 'distiller' section (expected encoder_embed_dim, conv_feature_layers, ...)"
        )
    values = _distiller_values(distiller)
    layers = values["encoder_layers"]
    dims, kernels, strides = (list(column) for column in zip(*values["conv_feature_layers"]))
    computes = values["reuse_pattern"]
    heads = bool(values["layerwise_proj"])
    try:
        return ARMHubertConfig(
            conv_dim=dims,
            conv_kernel=kernels,
            conv_stride=strides,
            conv_bias=bool(values["conv_bias"]),
            feat_extract_norm=EXTRACTOR_MODES[values["extractor_mode"]],
            hidden_size=values["encoder_embed_dim"],
            intermediate_size=values["encoder_ffn_embed_dim"],
            num_attention_heads=values["encoder_attention_heads"],
            num_hidden_layers=layers,
            # The release's reuse_pattern says True = "computes attention"; ours says True = "reuses".
            layer_reuses_attention_map=[not flag for flag in computes],
            do_stable_layer_norm=bool(values["layer_norm_first"]),
            hidden_act=values["activation_fn"],
            num_conv_pos_embeddings=values["conv_pos"],
            num_conv_pos_embedding_groups=values["conv_pos_groups"],
            projection_head_size=values["pred_head_final_dim"] if heads else None,
            use_mask_embedding=has_mask_embedding,
            hidden_dropout=values["dropout"],
            attention_dropout=values["attention_dropout"],
            activation_dropout=values["activation_dropout"],
            feat_proj_dropout=values["dropout_input"],
            layerdrop=values["encoder_layerdrop"],
            layer_grad_scale=bool(values["layer_grad_scale"]) and heads,
            feature_grad_mult=values["feature_grad_mult"],
            crop_seq_to_multiple=values["crop_seq_to_multiple"],
            required_seq_len_multiple=values["required_seq_len_multiple"],
        )
    except (ValueError, TypeError, ZeroDivisionError) as error:
        raise UserError(f"the distiller section does not describe a valid model: {error}") from None


def _mapping(value: Any, what: str, of: str = "") -> dict:
    """`value` if it is a dict (the sections and entries of a checkpoint), else one UserError naming `what`."""
    if not isinstance(value, dict):
        raise UserError(f"{what} is a {type(value).__name__}, not a mapping{of}")
    return value


@dataclass(frozen=True)
class TrainingConfig:
    """What the converter takes from an original run's training config, as its door (`read_training_config`)
    checked it."""

    family: str  # one of FAMILIES, "" when the config names none
    hours: int | None  # 100 or 960 from its LibriSpeech subsets; None when they do not say
    distiller: Any  # the model section, checked field by field by `config_from_distiller`


def _training_hours(config: dict) -> int | None:
    """100 or 960 from the training config's LibriSpeech subsets; None when they do not say."""
    data = config.get("data")
    subsets = data.get("train_set") if isinstance(data, dict) else None
    subsets = {subset for subset in subsets if isinstance(subset, str)} if isinstance(subsets, list) else set()
    if subsets == {"train-clean-100"}:
        return 100
    if {"train-clean-100", "train-clean-360", "train-other-500"} <= subsets:
        return 960
    return None


def read_training_config(checkpoint: Mapping[str, Any], config_path: str | os.PathLike | None = None) -> TrainingConfig:
    """The training config, from the YAML when given, else the checkpoint's hyper-parameters: plain data whose
    model family, if it names one, is known."""
    if config_path is not None:
        config = load_yaml_file(config_path, "config")
    else:
        config = _mapping(checkpoint.get("hyper_parameters") or {}, "the checkpoint's hyper_parameters").get("cfg")
        if config is None:
            raise UserError(
                "the checkpoint has no hyper_parameters['cfg'] (STaR checkpoints do not): pass its YAML with --config"
            )
    check_plain_data(_mapping(config, "the training config", " of sections"), "the training config")
    family = config.get("model")
    if family is not None and (not isinstance(family, str) or family.lower() not in KNOWN_FAMILIES):
        raise UserError(f"unknown model family {brief(family)}; this converter knows {', '.join(KNOWN_FAMILIES)}")
    family = (family or "").lower()
    return TrainingConfig(FAMILY_ALIASES.get(family, family), _training_hours(config), config.get("distiller"))


# --------------------------------------------------------------------------------------------------
# Reading the original weights, safely


class _PickledObject:
    """Inert stand-in for a known non-tensor class of the original training stack.

    The weights-only unpickler creates it (`__new__`) and hands it the pickled state (`__setstate__`);
    it keeps that state as data and has no other behaviour, so loading runs no code of the real class.
    """

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _PickledDict:
    """Stand-in for a `dict` subclass: it unpickles as a plain dict (its items are set afterwards)."""

    def __new__(cls, *args, **kwargs):
        return dict(*args, **kwargs)


# Non-tensor classes found in the release's PyTorch-Lightning 1.7 checkpoints, by pickled name.
KNOWN_PICKLED_CLASSES = {
    # The optimizer's param groups hold the s3prl learning-rate schedule object.
    "s3prl.optimizers.WarmupLinearSchedule": _PickledObject,
    # Lightning keeps hyper-parameters in this dict subclass.
    "pytorch_lightning.utilities.parsing.AttributeDict": _PickledDict,
}
_STAND_INS = [(stand_in, name) for name, stand_in in KNOWN_PICKLED_CLASSES.items()]


def load_original_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict of an original `.ckpt`, read by the door of `torch.save` files (`load_torch_file`).

    Known training-stack classes unpickle into inert stand-ins; a file whose pickle names any other
    class or function is refused before anything is unpickled. The teacher and optimizer tensors are
    memory-mapped and never read: only the student's pages are touched, when its tensors are copied out.
    """
    known = f"the known classes of the original training stack ({', '.join(KNOWN_PICKLED_CLASSES)})"
    return load_torch_file(path, str(path), _STAND_INS, known, "a checkpoint dict")


def student_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Student tensors with the `student_model.` prefix stripped, as the original loader does."""
    state = _mapping(checkpoint.get("state_dict", checkpoint), "the checkpoint's state_dict")
    for key in state:
        if not isinstance(key, str):
            raise UserError(
                f"the checkpoint's state_dict has a key {brief(key)} that is not a name; not a release file"
            )
    student = {
        key.split(STUDENT_PREFIX, 1)[1]: value
        for key, value in state.items()
        if STUDENT_PREFIX in key and torch.is_tensor(value)
    }
    for key, value in progress(student.items(), len(student), "checking the student", "tensor"):
        check_weight_tensor(value, f"student tensor {brief(key)}")
    if not student:
        raise UserError("the checkpoint has no 'student_model.*' tensors; is it an original distillation checkpoint?")
    for key in DROPPED_KEYS:
        student.pop(key, None)
    return student


# --------------------------------------------------------------------------------------------------
# Key mapping and the converted model

# The original student's parameter names -> ours; the first matching rule applies.
ORIGINAL_KEY_RULES = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)$", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (
        r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$",
        r"feature_extractor.conv_layers.\1.layer_norm.\2",
    ),
    (r"^layer_norm\.", "feature_layer_norm."),
    (r"^post_extract_proj\.", "feature_projection."),
    (r"^encoder\.pos_conv\.0\.bias$", "encoder.pos_conv_embed.conv.bias"),
    (r"^encoder\.pos_conv\.0\.weight_g$", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv\.0\.weight_v$", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.", r"encoder.layers.\1.attention."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.layers.\1.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.fc1\.", r"encoder.layers.\1.feed_forward.intermediate_dense."),
    (r"^encoder\.layers\.(\d+)\.fc2\.", r"encoder.layers.\1.feed_forward.output_dense."),
    (r"^proj_head\.(\d+)\.lin_proj\.", r"projection_heads.\1."),
]


def rename_key(key: str, rules: list[tuple[str, str]]) -> str:
    """`key` rewritten by the first of `rules` (regex, replacement) that matches it; unchanged if none does."""
    for pattern, replacement in rules:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return key


def rename_original_key(key: str) -> str:
    """Our parameter name for an original student key."""
    return rename_key(key, ORIGINAL_KEY_RULES)


def build_model(config: ARMHubertConfig, student: Mapping[str, torch.Tensor]) -> ARMHubertModel:
    """Build the model around the renamed student tensors, loaded strictly.

    The model is created on the meta device and takes the tensors over (`assign=True`), so the student
    exists once in memory; each tensor is copied out of the (memory-mapped) checkpoint as it is taken.
    """
    with torch.device("meta"):
        model = ARMHubertModel(config)
    state = {rename_original_key(key): value for key, value in student.items()}
    shapes = {key: value.shape for key, value in state.items()}
    expected = {key: value.shape for key, value in model.state_dict().items()}
    check_state_fits(shapes, expected, "the checkpoint", "its config", "pass the training YAML it was trained with")
    keys = progress(list(state), len(state), "reading the student", "tensor")  # from disk, when memory-mapped
    owned = {key: state.pop(key).to(torch.float32, copy=True) for key in keys}
    model.load_state_dict(owned, strict=True, assign=True)
    return model.eval()


def convert_with_training_config(
    checkpoint_path: str | os.PathLike, config_path: str | os.PathLike | None = None
) -> tuple[ARMHubertModel, TrainingConfig]:
    """(converted model, training config) of an original checkpoint and optional YAML."""
    checkpoint = load_original_checkpoint(checkpoint_path)
    training = read_training_config(checkpoint, config_path)
    student = student_state_dict(checkpoint)
    del checkpoint  # drop the teacher and optimizer entries (never read from disk) before building
    config = config_from_distiller(training.distiller, has_mask_embedding="mask_emb" in student)
    return build_model(config, student), training


def convert(checkpoint_path: str | os.PathLike, config_path: str | os.PathLike | None = None) -> ARMHubertModel:
    """Read an original checkpoint (and optional YAML) and return the converted `ARMHubertModel`."""
    return convert_with_training_config(checkpoint_path, config_path)[0]
