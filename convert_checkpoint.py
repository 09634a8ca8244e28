"""Convert original ARMHuBERT / ARMwavLM / MaskHuBERT / STaRHuBERT checkpoints to Transformers folders.

    python convert_checkpoint.py CKPT [--config YAML] [--name RELEASE] --output-dir DIR [--overwrite]
    python convert_checkpoint.py --all SRC_DIR --output-dir REPO_DIR [--overwrite]
        [--format {armhubert,hubert}] [--push-to-hub REPO_ID [--private]]

The original release stores PyTorch-Lightning checkpoints whose `state_dict` holds the frozen teacher
and the student (`student_model.*`), with the model configuration in
`hyper_parameters["cfg"]["distiller"]`; their optimizer state holds a pickled
`s3prl.optimizers.WarmupLinearSchedule`. STaR checkpoints have no hyper-parameters: pass their YAML
with `--config` (with `--all`, `NAME.yaml` next to `NAME.ckpt` is used). Checkpoints are read with
`torch.load(weights_only=True)`: the few known non-tensor classes of the training stack unpickle
into inert stand-ins, any other class is refused by name, and nothing from a pickle is ever run.

DIR receives `config.json` (with `auto_map`), `model.safetensors`, the two code files,
`preprocessor_config.json` and a model card (`README.md`), so
`AutoModel.from_pretrained(DIR, trust_remote_code=True)` loads it. `--all` writes one subfolder per
release (`from_pretrained(REPO_DIR, subfolder="ARMHuBERT-960h", ...)`) with the code files once at the
root. `--format hubert` writes a plain `transformers` `HubertModel` (STaR models only: no map reuse, no
heads). Every output is built in a temporary folder beside the target and renamed at the end.
Errors exit with status 2 and one line, and leave the target as it was.
"""

import argparse
import ast
import hashlib
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData
from transformers import HubertConfig, HubertModel
from transformers.utils import logging as transformers_logging

from armhubert.cli import UserError
from armhubert.io import staged_folder
from configuration_armhubert import ARMHubertConfig
from modeling_armhubert import ARMHubertModel, add_remote_code_entries, release_feature_extractor

STUDENT_PREFIX = "student_model."
KNOWN_FAMILIES = ("armhubert", "armwavlm", "maskhubert", "starhubert", "star")
# Student keys the original loader deletes: STaR's unused pre-training projection.
DROPPED_KEYS = ("final_proj.weight", "final_proj.bias")
OUTPUT_FORMATS = ("armhubert", "hubert")


class ConversionError(UserError):
    """A problem with the user's input, reported as one line."""


# --------------------------------------------------------------------------------------------------
# Reading the original configuration


def parse_literal_expression(text):
    """Evaluate the release's config expressions, such as `"[(128, 10, 5)] + [(256, 3, 2)] * 4"`.

    Only literals (numbers, booleans, strings, None), lists, tuples, unary minus, `+` and `*` are
    allowed; anything else (names, calls, attributes) is refused. Nothing is passed to `eval`.
    """
    try:
        tree = ast.parse(str(text), mode="eval")
    except SyntaxError as error:
        raise ConversionError(f"cannot parse config expression {text!r}: {error.msg}") from None

    def evaluate(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool, str, type(None))):
            return node.value
        if isinstance(node, ast.List):
            return [evaluate(element) for element in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(evaluate(element) for element in node.elts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -evaluate(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = evaluate(node.left), evaluate(node.right)
            try:
                return left + right if isinstance(node.op, ast.Add) else left * right
            except TypeError:
                pass
        raise ConversionError(
            f"config expression {text!r} uses {ast.unparse(node)!r}; only list/tuple literals, + and * are allowed"
        )

    return evaluate(tree.body)


def _literal(value):
    """Config values are either already parsed (YAML lists) or Python-literal strings."""
    return parse_literal_expression(value) if isinstance(value, str) else value


def _check_supported(distiller):
    unsupported = {
        "pos_conv_depth": (1,),
        "layer_type": ("transformer",),
        "pred_head_inter_dim": (0, None),
        "enable_tr_layer": (False, None),
        "attn_type": ("", None),
        "pos_enc_type": ("abs", None),
    }
    for field, allowed in unsupported.items():
        if field in distiller and distiller[field] not in allowed:
            raise ConversionError(
                f"distiller.{field}={distiller[field]!r} is not a released architecture; supported: {allowed}"
            )


def config_from_distiller(distiller, has_mask_embedding=True):
    """Build an `ARMHubertConfig` from the original `distiller` section."""
    if not isinstance(distiller, dict) or "encoder_embed_dim" not in distiller:
        raise ConversionError("the config has no usable 'distiller' section (expected encoder_embed_dim and friends)")
    _check_supported(distiller)
    layers = distiller.get("encoder_layers", 12)
    conv_layers = _literal(distiller["conv_feature_layers"])
    try:
        dims, kernels, strides = (list(column) for column in zip(*conv_layers))
    except (TypeError, ValueError):
        raise ConversionError(f"conv_feature_layers must be a list of (dim, kernel, stride), got {conv_layers!r}")
    computes = _literal(distiller.get("reuse_pattern") or [True] * layers)
    modes = {"default": "group", "layer_norm": "layer"}
    mode = distiller.get("extractor_mode", "default")
    if mode not in modes:
        raise ConversionError(f"distiller.extractor_mode={mode!r} is unknown; expected one of {list(modes)}")
    heads = bool(distiller.get("layerwise_proj", False))
    try:
        return ARMHubertConfig(
            conv_dim=dims,
            conv_kernel=kernels,
            conv_stride=strides,
            conv_bias=bool(distiller.get("conv_bias", False)),
            feat_extract_norm=modes[mode],
            hidden_size=distiller["encoder_embed_dim"],
            intermediate_size=distiller.get("encoder_ffn_embed_dim", 3072),
            num_attention_heads=distiller.get("encoder_attention_heads", 12),
            num_hidden_layers=layers,
            # The release's reuse_pattern says True = "computes attention"; ours says True = "reuses".
            layer_reuses_attention_map=[not flag for flag in computes],
            do_stable_layer_norm=bool(distiller.get("layer_norm_first", False)),
            hidden_act=distiller.get("activation_fn", "gelu"),
            num_conv_pos_embeddings=distiller.get("conv_pos", 128),
            num_conv_pos_embedding_groups=distiller.get("conv_pos_groups", 16),
            projection_head_size=distiller.get("pred_head_final_dim", 768) if heads else None,
            use_mask_embedding=has_mask_embedding,
            hidden_dropout=distiller.get("dropout", 0.1),
            attention_dropout=distiller.get("attention_dropout", 0.1),
            activation_dropout=distiller.get("activation_dropout", 0.0),
            feat_proj_dropout=distiller.get("dropout_input", 0.0),
            layerdrop=distiller.get("encoder_layerdrop", 0.0),
            layer_grad_scale=bool(distiller.get("layer_grad_scale", False)) and heads,
            feature_grad_mult=distiller.get("feature_grad_mult", 1.0),
            crop_seq_to_multiple=distiller.get("crop_seq_to_multiple", 1),
            required_seq_len_multiple=distiller.get("required_seq_len_multiple", 1),
        )
    except ValueError as error:
        raise ConversionError(f"the distiller section does not describe a valid model: {error}") from None


def read_training_config(checkpoint, config_path=None):
    """The training config as a dict: the YAML when given, else the checkpoint's hyper-parameters."""
    if config_path is not None:
        try:
            with open(config_path, encoding="utf-8") as handle:
                config = yaml.safe_load(handle)
        except OSError as error:
            raise ConversionError(f"cannot read config {config_path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ConversionError(f"{config_path} is not valid YAML: {str(error).splitlines()[0]}") from None
    else:
        config = (checkpoint.get("hyper_parameters") or {}).get("cfg")
        if config is None:
            raise ConversionError(
                "the checkpoint has no hyper_parameters['cfg'] (STaR checkpoints do not): pass its YAML with --config"
            )
    if not isinstance(config, dict):
        raise ConversionError("the training config is not a mapping of sections")
    family = config.get("model")
    if family is not None and str(family).lower() not in KNOWN_FAMILIES:
        raise ConversionError(f"unknown model family {family!r}; this converter knows {', '.join(KNOWN_FAMILIES)}")
    return config


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


def _refused(path, names):
    known = ", ".join(KNOWN_PICKLED_CLASSES)
    return ConversionError(
        f"refusing to load {path}: its pickle needs {', '.join(sorted(names))}; only tensors, plain containers and "
        f"the known classes of the original training stack ({known}) are allowed, so nothing from it was run"
    )


def _unreadable(path, error):
    message = str(error).strip()
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if unsupported:
        return _refused(path, [unsupported.group(1)])
    if "weights_only" in message:
        reason = "it holds pickled Python objects that are not tensors; refusing to unpickle them"
    else:
        reason = message.splitlines()[0] if message else type(error).__name__
    return ConversionError(f"{path} is not a readable PyTorch checkpoint: {reason}")


def load_original_checkpoint(path):
    """`torch.load(weights_only=True)` of an original checkpoint, with one-line errors.

    Known training-stack classes unpickle into inert stand-ins; a file whose pickle names any other
    class or function is refused before anything is unpickled. Zip checkpoints (every torch.save since
    torch 1.6, hence Lightning 1.7) are memory-mapped, so the teacher and optimizer tensors are never
    read into memory: only the student's pages are touched, when its tensors are copied out.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist or is not a file")
    zipped = zipfile.is_zipfile(path)
    with torch.serialization.safe_globals(_STAND_INS):
        try:
            if zipped:
                # A static scan of the pickle's globals names every unknown class at once.
                unknown = torch.serialization.get_unsafe_globals_in_checkpoint(path)
                if unknown:
                    raise _refused(path, unknown)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
        except ConversionError:
            raise
        except Exception as error:  # torch raises many types for corrupt, truncated or foreign files
            raise _unreadable(path, error) from None
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def student_state_dict(checkpoint):
    """Student tensors with the `student_model.` prefix stripped, as the original loader does."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise ConversionError("the checkpoint's state_dict is not a mapping")
    student = {
        key.split(STUDENT_PREFIX, 1)[1]: value
        for key, value in state.items()
        if STUDENT_PREFIX in key and torch.is_tensor(value)
    }
    if not student:
        raise ConversionError("the checkpoint has no 'student_model.*' tensors; is it an original distillation checkpoint?")
    for key in DROPPED_KEYS:
        student.pop(key, None)
    return student


_KEY_RULES = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)$", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
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


def rename_original_key(key):
    for pattern, replacement in _KEY_RULES:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return key


def _describe(keys, limit=6):
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_keys_and_shapes(state, expected):
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected {_describe(unexpected)}")
        raise ConversionError("checkpoint and config disagree: " + "; ".join(parts))
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f"shape mismatch for {key}: checkpoint {tuple(value.shape)}, config expects {tuple(expected[key].shape)}"
            )


def build_model(config, student):
    """Build the model around the renamed student tensors, loaded strictly.

    The model is created on the meta device and takes the tensors over (`assign=True`), so the student
    exists once in memory; each tensor is copied out of the (memory-mapped) checkpoint as it is taken.
    """
    with torch.device("meta"):
        model = ARMHubertModel(config)
    state = {rename_original_key(key): value for key, value in student.items()}
    _check_keys_and_shapes(state, model.state_dict())
    owned = {key: state.pop(key).to(torch.float32, copy=True) for key in list(state)}
    model.load_state_dict(owned, strict=True, assign=True)
    return model.eval()


def _convert(checkpoint_path, config_path=None):
    """(converted model, training config) of an original checkpoint and optional YAML."""
    checkpoint = load_original_checkpoint(checkpoint_path)
    training_config = read_training_config(checkpoint, config_path)
    student = student_state_dict(checkpoint)
    del checkpoint  # drop the teacher and optimizer entries (never read from disk) before building
    config = config_from_distiller(training_config.get("distiller"), has_mask_embedding="mask_emb" in student)
    return build_model(config, student), training_config


def convert(checkpoint_path, config_path=None):
    """Read an original checkpoint (and optional YAML) and return the converted `ARMHubertModel`."""
    return _convert(checkpoint_path, config_path)[0]


# --------------------------------------------------------------------------------------------------
# Released models: names, provenance and published results

HUB_SOURCE = "the `sungnyun/ARMHuBERT` Hub repository"
STAR_SOURCE = "the STaRHuBERT release (`.ckpt` + `.yaml` pairs)"


@dataclass(frozen=True)
class Release:
    """One released model. `preset` names the `ARMHubertConfig` preset of its public shape (None: not public)."""

    name: str
    family: str
    teacher: str | None
    hours: int | None
    preset: str | None
    source: str


RELEASES = {
    release.name.lower(): release
    for release in [
        Release("ARMHuBERT-960h", "armhubert", "HuBERT Base", 960, "armhubert-960h", HUB_SOURCE),
        Release("ARMHuBERT-S-100h", "armhubert", "HuBERT Base", 100, "armhubert-s-100h", HUB_SOURCE),
        Release("ARMHuBERT-S-960h", "armhubert", "HuBERT Base", 960, "armhubert-s-960h", HUB_SOURCE),
        Release("ARMwavLM-S-100h", "armwavlm", "WavLM Base", 100, "armwavlm-s-100h", HUB_SOURCE),
        Release("ARMwavLM-S-960h", "armwavlm", "WavLM Base", 960, "armwavlm-s-960h", HUB_SOURCE),
        Release("MaskHuBERT-960h", "maskhubert", "HuBERT Base", 960, "maskhubert-960h", HUB_SOURCE),
        Release("STaRHuBERT", "starhubert", "HuBERT Base", 960, "starhubert", STAR_SOURCE),
        Release("STaRHuBERT-100h", "starhubert", "HuBERT Base", 100, "starhubert", STAR_SOURCE),
        # Shapes not public: the checkpoint's YAML is authoritative, so no shape check.
        Release("STaRHuBERT-L", "starhubert", "HuBERT Base", 960, None, STAR_SOURCE),
        Release("STaRHuBERT-S", "starhubert", None, None, None, STAR_SOURCE),
        Release("STaRHuBERT-XS", "starhubert", None, None, None, STAR_SOURCE),
    ]
}

# SUPERB as reported in the two papers (Recycle-and-Distill, STaR); blank = not reported.
SUPERB_COLUMNS = [
    ("params M", "params (M)"), ("MACs G", "MACs (G)"), ("overall", "overall ↑"), ("PR", "PR PER ↓"),
    ("ASR", "ASR WER ↓"), ("KS", "KS acc ↑"), ("QbE", "QbE MTWV ↑"), ("SID", "SID acc ↑"), ("ASV", "ASV EER ↓"),
    ("SD", "SD DER ↓"), ("IC", "IC acc ↑"), ("SF-F1", "SF F1 ↑"), ("SF-CER", "SF CER ↓"), ("ER", "ER acc ↑"),
]
_PAPER_TABLE = """
HuBERT Base      | 94.70 | 1669  | 80.8 | 5.41  | 6.42  | 96.30 | 0.0736 | 81.42 | 5.11 | 5.88 | 98.34 | 88.53 | 25.20 | 64.92
WavLM Base       | 94.70 |       | 81.9 | 4.84  | 6.21  | 96.79 | 0.0870 | 84.51 | 4.69 | 4.55 | 98.63 | 89.38 | 22.86 | 65.94
MaskHuBERT-960h  | 26.64 |       | 77.8 | 7.30  | 9.77  | 96.36 | 0.0664 | 62.83 | 5.38 | 6.79 | 97.05 | 87.31 | 27.10 | 62.37
ARMHuBERT-960h   | 26.45 |       | 78.1 | 7.72  | 9.96  | 96.88 | 0.0635 | 65.03 | 5.68 | 7.10 | 97.07 | 87.59 | 26.06 | 62.86
ARMHuBERT-S-960h | 22.39 | 449.4 | 77.5 | 8.63  | 10.82 | 96.82 | 0.0720 | 63.76 | 5.58 | 7.01 | 97.02 | 86.34 | 29.02 | 62.96
ARMwavLM-S-960h  | 22.39 |       | 78.9 | 7.42  | 10.03 | 97.01 | 0.0741 | 71.29 | 5.99 | 7.11 | 97.76 | 87.41 | 26.97 | 64.54
ARMHuBERT-S-100h | 22.39 | 449.4 | 76.8 | 9.17  | 11.83 | 96.01 | 0.0569 | 66.48 | 5.92 | 6.23 | 95.97 | 83.89 | 33.29 | 63.29
ARMwavLM-S-100h  | 22.39 |       | 77.0 | 8.33  | 11.37 | 96.30 | 0.0579 | 65.40 | 6.38 | 7.41 | 96.76 | 84.89 | 31.95 | 63.41
STaRHuBERT       | 22.31 | 463.5 | 79.5 | 8.16  | 9.35  | 96.27 | 0.0688 | 77.58 | 5.39 | 6.05 | 97.55 | 87.94 | 25.31 | 63.01
STaRHuBERT-L     | 26.63 | 511.9 | 79.8 | 7.97  | 8.91  | 96.56 | 0.0677 | 78.66 | 5.45 | 5.83 | 97.50 | 88.01 | 25.36 | 63.48
STaRHuBERT-100h  | 22.31 | 463.5 | 77.8 | 9.17  | 10.92 | 96.46 | 0.0626 | 72.26 | 5.66 | 5.97 | 97.21 | 84.89 | 30.77 | 61.22
"""
PAPER_RESULTS = {
    cells[0]: dict(zip((key for key, _ in SUPERB_COLUMNS), cells[1:]))
    for cells in ([cell.strip() for cell in line.split("|")] for line in _PAPER_TABLE.strip().splitlines())
}
# The STaR paper shows its smaller students only in a plot.
PLOT_READINGS = {
    "STaRHuBERT-S": "14.1 M parameters; ASR WER about 10.3, SID about 70.0, IC about 96.2 (read off a plot)",
    "STaRHuBERT-XS": "9.39 M parameters; ASR WER about 11.3, SID about 64.8, IC about 94.1 (read off a plot)",
}
MACS_NOTE = "as reported in the STaR paper, for roughly 225 s of audio in utterances of about 10 s"
COMPUTE_CLAIMS = {"ARMHuBERT-960h": "the paper: 28 % of HuBERT Base's parameters and 30 % of its MACs"}

# Fields that fix a model's shape (and so its parameter count); a release name must match them.
_SHAPE_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "layer_reuses_attention_map",
    "projection_head_size", "do_stable_layer_norm", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
    "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm",
)


def release_by_name(name):
    release = RELEASES.get(str(name).lower())
    if release is None:
        names = ", ".join(release.name for release in RELEASES.values())
        raise ConversionError(f"unknown release name {name!r}; the releases are {names}")
    return release


def _shape_differences(config, release):
    """Shape fields in which `config` differs from the release's public shape (empty if none is public)."""
    if release.preset is None:
        return []
    reference = ARMHubertConfig.from_preset(release.preset)
    return [
        f"{field} {getattr(config, field)!r} (release: {getattr(reference, field)!r})"
        for field in _SHAPE_FIELDS
        if getattr(config, field) != getattr(reference, field)
    ]


def check_release_shape(config, release, what):
    differences = _shape_differences(config, release)
    if differences:
        raise ConversionError(
            f"{what} does not have the shape of {release.name}: {'; '.join(differences[:3])}; "
            "name the checkpoint after its real release (or leave the name out)"
        )


def _training_family(training_config):
    family = str(training_config.get("model") or "").lower()
    return "starhubert" if family == "star" else family


def _training_hours(training_config):
    """100 or 960 from the training config's LibriSpeech subsets; None when they do not say."""
    data = training_config.get("data")
    subsets = set(data.get("train_set") or []) if isinstance(data, dict) else set()
    if subsets == {"train-clean-100"}:
        return 100
    if {"train-clean-100", "train-clean-360", "train-other-500"} <= subsets:
        return 960
    return None


def detect_release(config, training_config):
    """The one release whose public shape, family and training hours fit the checkpoint, else None."""
    family, hours = _training_family(training_config), _training_hours(training_config)
    candidates = [
        release
        for release in RELEASES.values()
        if release.preset is not None
        and not _shape_differences(config, release)
        and family in ("", release.family)
        and hours in (None, release.hours)
    ]
    return candidates[0] if len(candidates) == 1 else None


def resolve_release(config, training_config, checkpoint_path, name=None):
    """The release a checkpoint is: `name` if given, else its file name if that is a release name, else detected.

    A named release must have the checkpoint's shape, so a card never shows another model's results.
    """
    if name is not None:
        release = release_by_name(name)
        check_release_shape(config, release, f"checkpoint {Path(checkpoint_path).name} (--name {name})")
        return release
    release = RELEASES.get(Path(checkpoint_path).stem.lower())
    if release is not None:
        check_release_shape(config, release, f"checkpoint {Path(checkpoint_path).name}")
        return release
    return detect_release(config, training_config)


# --------------------------------------------------------------------------------------------------
# Plain HuBERT export (models without map reuse and heads)

# Our parameter names -> `HubertModel`'s, where they differ.
_HUBERT_KEY_RULES = [
    (r"^feature_layer_norm\.", "feature_projection.layer_norm."),
    (r"^feature_projection\.", "feature_projection.projection."),
    (r"^mask_emb$", "masked_spec_embed"),
]


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


def hubert_config_for(config):
    """The `HubertConfig` that computes what `config` does (same field names wherever they exist)."""
    problems = _hubert_incompatibilities(config)
    if problems:
        raise ConversionError(
            f"--format hubert needs a model without map reuse or heads (STaR models), but {' and '.join(problems)}; "
            "use the default --format armhubert"
        )
    shared = (
        "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "feat_extract_activation",
        "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "hidden_act",
        "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "do_stable_layer_norm", "layer_norm_eps",
        "hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout", "layerdrop",
        "initializer_range", "vocab_size", "ctc_loss_reduction", "ctc_zero_infinity", "final_dropout",
        "use_weighted_layer_sum", "classifier_proj_size", "apply_spec_augment", "mask_time_prob", "mask_time_length",
        "mask_time_min_masks", "mask_feature_prob", "mask_feature_length", "mask_feature_min_masks",
        "pad_token_id", "bos_token_id", "eos_token_id",
    )
    return HubertConfig(feat_proj_layer_norm=True, **{field: getattr(config, field) for field in shared})


def to_hubert_model(model):
    """A `transformers.HubertModel` with the same weights and outputs as `model` (no remote code needed).

    `HubertModel` always projects the CNN features; where our model has no projection (width = CNN
    width, as in every release) it gets an exact identity. Its `masked_spec_embed` (used only by
    SpecAugment in fine-tuning) keeps HubertModel's own initialisation unless the model has `mask_emb`.
    """
    config = model.config
    hubert = HubertModel(hubert_config_for(config)).eval()
    state = {}
    for key, value in model.state_dict().items():
        for pattern, replacement in _HUBERT_KEY_RULES:
            key, count = re.subn(pattern, replacement, key)
            if count:
                break
        state[key] = value
    if model.feature_projection is None:
        state["feature_projection.projection.weight"] = torch.eye(config.hidden_size)
        state["feature_projection.projection.bias"] = torch.zeros(config.hidden_size)
    expected = hubert.state_dict()
    if "masked_spec_embed" not in expected:
        state.pop("masked_spec_embed", None)
    elif "masked_spec_embed" not in state:
        state["masked_spec_embed"] = expected["masked_spec_embed"]
    _check_keys_and_shapes(state, expected)
    hubert.load_state_dict(state, strict=True)
    return hubert


# --------------------------------------------------------------------------------------------------
# Model cards

FAMILY_TITLES = {
    "armhubert": "ARMHuBERT",
    "armwavlm": "ARMwavLM",
    "maskhubert": "MaskHuBERT",
    "starhubert": "STaRHuBERT",
}
CITATIONS = {
    "recycle-and-distill": """@inproceedings{jang2023recycle,
  title     = {Recycle-and-Distill: Universal Compression Strategy for Transformer-based Speech SSL Models
               with Attention Map Reusing and Masking Distillation},
  author    = {Jang, Kangwook and Kim, Sungnyun and Yun, Se-Young and Kim, Hoirin},
  booktitle = {Interspeech 2023},
  year      = {2023},
  note      = {arXiv:2305.11685}
}""",
    "star": """@inproceedings{jang2024star,
  title     = {STaR: Distilling Speech Temporal Relation for Lightweight Speech Self-Supervised Learning Models},
  author    = {Jang, Kangwook and Kim, Sungnyun and Kim, Hoirin},
  booktitle = {ICASSP 2024},
  year      = {2024},
  note      = {arXiv:2312.09040}
}""",
}


@dataclass
class CardFacts:
    """What a variant's card says, gathered during conversion."""

    title: str
    release: Release | None
    family: str
    output_format: str
    parameters: int
    hubert_additions: dict  # what HubertModel has that the original has not: description -> parameters
    source_name: str
    source_sha256: str
    config: ARMHubertConfig


def guess_family(config, training_config):
    """The training config's family, else the one the structure implies (reuse: ARM, heads: Mask, none: STaR)."""
    family = _training_family(training_config)
    if family in FAMILY_TITLES:
        return family
    if any(config.layer_reuses_attention_map):
        return "armhubert"
    return "maskhubert" if config.has_projection_heads else "starhubert"


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_data(families):
    tags = ["audio", "speech", "self-supervised-learning", "knowledge-distillation", "hubert"]
    tags += sorted(set(families))
    return ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="feature-extraction",
        datasets=["librispeech_asr"],
        language=["en"],
        tags=tags,
    )


def _layer_list(indices):
    return ", ".join(str(index) for index in indices)


def describe_architecture(config):
    layers = f"{config.num_hidden_layers} {'pre' if config.do_stable_layer_norm else 'post'}-LN transformer layers"
    text = (
        f"{len(config.conv_dim)}-layer CNN feature encoder ({config.inputs_to_logits_ratio} samples per frame, "
        f"{16000 / config.inputs_to_logits_ratio:g} frames/s at 16 kHz); {layers} of width {config.hidden_size}, "
        f"feed-forward {config.intermediate_size}, {config.num_attention_heads} attention heads"
    )
    reusing = [index + 1 for index, flag in enumerate(config.layer_reuses_attention_map) if flag]
    if reusing:
        text += (
            f"; layers {_layer_list(reusing)} have no query/key projections and reuse the attention map of the "
            "most recent layer that computes one"
        )
    if config.has_projection_heads:
        text += f"; one projection head per layer, Linear({config.hidden_size} → {config.projection_head_size})"
    else:
        text += "; no projection heads"
    return text


def _what_it_is(facts):
    release, family = facts.release, FAMILY_TITLES[facts.family]
    if release is None:
        return (
            f"A speech encoder of the {family} family, converted from an original checkpoint. Which release it is "
            "could not be determined (convert with `--name` to name it), so no published results are listed."
        )
    source = " ".join(
        part
        for part in (
            f"from {release.teacher}" if release.teacher else "",
            f"on LibriSpeech {release.hours} h" if release.hours else "on LibriSpeech",
        )
        if part
    )
    method = {
        "armhubert": "Recycle-and-Distill: attention-map reuse (the reusing layers have no query/key projections) "
        "and masking distillation",
        "armwavlm": "Recycle-and-Distill: attention-map reuse (the reusing layers have no query/key projections) "
        "and masking distillation",
        "maskhubert": "Recycle-and-Distill's masking distillation, without attention-map reuse",
        "starhubert": "speech temporal-relation (STaR) distillation",
    }[release.family]
    return (
        f"**{release.name}** is a compressed self-supervised speech encoder distilled {source} with {method}. "
        "It turns raw 16 kHz audio into frame features for downstream speech tasks."
    )


def _parameters_cell(facts):
    text = f"{facts.parameters:,} (counted from the weights"
    if facts.hubert_additions:
        added = sum(facts.hubert_additions.values())
        text += f"; {added:,} of them are `HubertModel`'s own: {' and '.join(facts.hubert_additions)}"
    paper = PAPER_RESULTS.get(facts.release.name) if facts.release else None
    if paper:
        text += f"; paper: {paper['params M']} M"
    return text + ")"


def _macs_cell(facts):
    paper = PAPER_RESULTS.get(facts.release.name) if facts.release else None
    if paper and paper["MACs G"]:
        return f"{paper['MACs G']} G ({MACS_NOTE})"
    if facts.release and facts.release.name in COMPUTE_CLAIMS:
        return f"not reported in G ({COMPUTE_CLAIMS[facts.release.name]})"
    return "not reported"


def _results_section(facts):
    release = facts.release
    if release is None:
        return ""
    if release.name in PLOT_READINGS:
        return f"## Published results\n\nThe STaR paper shows this model in a plot only: {PLOT_READINGS[release.name]}.\n"
    rows = [PAPER_RESULTS[release.name]]
    names = [release.name]
    if release.teacher in PAPER_RESULTS:
        rows.append(PAPER_RESULTS[release.teacher])
        names.append(f"{release.teacher} (teacher)")
    columns = SUPERB_COLUMNS[2:]
    lines = [
        "| model | " + " | ".join(title for _, title in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, row in zip(names, rows):
        lines.append(f"| {name} | " + " | ".join(row[key] or "–" for key, _ in columns) + " |")
    return (
        "## SUPERB results (from the paper)\n\n"
        + "\n".join(lines)
        + "\n\nOverall is the mean over the 11 metrics with error rates as (100 − x) and MTWV × 100. The numbers were "
        "obtained with the original code and s3prl's downstream recipes; this conversion has the same weights.\n"
    )


def _load_arguments(repo, subfolder):
    return f'"{repo}"' + (f', subfolder="{subfolder}"' if subfolder else "")


def _usage_section(facts, repo, subfolder):
    arguments = _load_arguments(repo, subfolder)
    hubert = facts.output_format == "hubert"
    remote = "" if hubert else ", trust_remote_code=True"
    if facts.config.has_projection_heads:
        layers = (
            f"torch.stack(outputs.projected_hidden_states)  # ({facts.config.num_hidden_layers}, batch, frames, "
            f"{facts.config.projection_head_size})"
        )
    else:
        layers = (
            f"torch.stack(outputs.hidden_states[1:])  # ({facts.config.num_hidden_layers}, batch, frames, "
            f"{facts.config.hidden_size})"
        )
    loading = (
        "A plain `transformers` `HubertModel`: no remote code is needed, and `HubertForCTC` / "
        "`HubertForSequenceClassification` `.from_pretrained(...)` start fine-tuning from these weights."
        if hubert
        else "The model code (`modeling_armhubert.py`, `configuration_armhubert.py`) ships with the repository, "
        "hence `trust_remote_code=True`."
    )
    return f"""## How to use

{loading}

```python
import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained({arguments}{remote}).eval()
extractor = AutoFeatureExtractor.from_pretrained({arguments})
waveforms = [np.zeros(16000, np.float32), np.zeros(24000, np.float32)]  # 16 kHz mono, not normalised
batch = extractor(waveforms, sampling_rate=16000, padding=True, return_tensors="pt")
with torch.no_grad():
    outputs = model(batch.input_values, attention_mask=batch.attention_mask, output_hidden_states=True)
layer_features = {layers}
```

Pass `attention_mask` for padded batches. The `feature-extraction` pipeline of `transformers` 5 takes text only,
so call the model as above to get audio features.
"""


def _outputs_section(facts):
    config = facts.config
    if config.has_projection_heads:
        text = (
            f"For SUPERB-style learned weighted sums use the {config.num_hidden_layers} `projected_hidden_states` "
            f"(each layer's output through its projection head, {config.projection_head_size}-d): that is the set "
            "the published numbers used. `hidden_states` holds the encoder input and every layer's raw "
            f"{config.hidden_size}-d output; `last_hidden_state` is the last head's output."
        )
    else:
        text = (
            f"For SUPERB-style learned weighted sums use `hidden_states[1:]`, the {config.num_hidden_layers} layer "
            f"outputs ({config.hidden_size}-d): that is the set the published numbers used (`hidden_states[0]` is the "
            "encoder input). `last_hidden_state` is the last layer's output."
        )
    if facts.output_format == "armhubert":
        text += " In padded batches `frame_attention_mask` marks the real frames (1) and padding (0)."
    return f"## Which outputs to use\n\n{text}\n"


def _differences_section(facts):
    if any(facts.config.layer_reuses_attention_map):
        reuse = (
            "- **Batch invariance (a fix).** The original code paired a reused attention map with the wrong "
            "utterance and head whenever a batch held more than one utterance, so its batched outputs depended on "
            "the other utterances in the batch (1e-2 to 3.5e-2 max-abs on a small test model). Here maps are paired "
            "per utterance and head: each row of a batch equals that utterance run alone; with batch size 1 "
            "nothing changes.\n"
            "- Reusing layers apply softmax again to the reused probability map, as the original does; the released "
            "weights were trained that way (`reuse_softmax=\"resoftmax\"`).\n"
        )
    else:
        reuse = (
            "- The original's batch-mixing defect concerned attention-map reuse only; this model reuses no maps, so "
            "batched and single-utterance outputs agree with the original alike.\n"
        )
    hubert = "".join(f"- Stored as a plain `HubertModel`: {addition}.\n" for addition in facts.hubert_additions)
    return (
        "## Numerics and differences from the original implementation\n\n"
        "The weights are the released student's, unchanged (the teacher and optimizer state of the original "
        "checkpoint are not included), and the outputs equal the original code's to float32 rounding.\n\n"
        + reuse
        + hubert
        + "- As in the original (and `transformers`' group-norm HuBERT), the first CNN layer's GroupNorm takes "
        "statistics over the whole padded time axis, so a padded row equals the zero-padded utterance run alone.\n"
    )


def _citation(facts):
    key = "star" if facts.family == "starhubert" else "recycle-and-distill"
    return f"## Citation\n\n```bibtex\n{CITATIONS[key]}\n```\n"


def model_card(facts, repo=None, subfolder=None):
    """The `README.md` card of one converted variant."""
    repo = repo or "path/to/this/repository"
    provenance = f"Converted from `{facts.source_name}` (sha256 `{facts.source_sha256}`)"
    if facts.release is not None:
        provenance += f", published in {facts.release.source}"
    table = "\n".join(
        [
            "| | |",
            "|---|---|",
            f"| architecture | {describe_architecture(facts.config)} |",
            f"| parameters | {_parameters_cell(facts)} |",
            f"| MACs | {_macs_cell(facts)} |",
            f"| teacher | {(facts.release and facts.release.teacher) or 'not stated'} |",
            "| input | raw 16 kHz mono audio, not normalised |",
            f"| format | {'plain transformers `HubertModel`' if facts.output_format == 'hubert' else 'ARMHuBERT (remote code)'} |",
        ]
    )
    body = "\n".join(
        [
            f"# {facts.title}\n",
            _what_it_is(facts) + "\n",
            table + "\n",
            f"{provenance}.\n",
            _results_section(facts),
            _usage_section(facts, repo, subfolder),
            _outputs_section(facts),
            _differences_section(facts),
            _citation(facts),
            "## License\n\nApache-2.0, as the original release.\n",
        ]
    )
    return ModelCard(f"---\n{card_data([facts.family]).to_yaml()}\n---\n\n{body}")


def repository_card(title, variants, repo=None):
    """The root `README.md` of a multi-variant repository: what each subfolder holds and how to load it."""
    repo = repo or "path/to/this/repository"
    lines = ["| subfolder | parameters | MACs | SUPERB overall (paper) | format |", "|---|---|---|---|---|"]
    for facts in variants:
        paper = PAPER_RESULTS.get(facts.release.name) if facts.release else None
        overall = paper["overall"] if paper else "–"
        fmt = "`HubertModel`" if facts.output_format == "hubert" else "ARMHuBERT (remote code)"
        macs = f"{paper['MACs G']} G" if paper and paper["MACs G"] else "not reported"
        lines.append(f"| [`{facts.title}`]({facts.title}/README.md) | {facts.parameters:,} | {macs} | {overall} | {fmt} |")
    example = variants[0]
    remote = "" if example.output_format == "hubert" else ", trust_remote_code=True"
    body = f"""# {title}

Compressed self-supervised speech encoders (ARMHuBERT, ARMwavLM, MaskHuBERT, STaRHuBERT), converted from the
original release checkpoints. Each model sits in its own subfolder, with its own card (architecture, published
SUPERB results, which outputs to use, differences from the original code).

{chr(10).join(lines)}

MACs {MACS_NOTE}.

```python
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained({_load_arguments(repo, example.title)}{remote})
extractor = AutoFeatureExtractor.from_pretrained({_load_arguments(repo, example.title)})
```

## License

Apache-2.0, as the original release.
"""
    return ModelCard(f"---\n{card_data([facts.family for facts in variants]).to_yaml()}\n---\n\n{body}")


# --------------------------------------------------------------------------------------------------
# Writing outputs atomically


def _write_model(model, folder):
    """`save_pretrained` (which also copies the code files of auto-registered classes) plus the preprocessor."""
    if isinstance(model, ARMHubertModel):
        add_remote_code_entries(model.config)  # AutoModelForCTC / audio classification / feature pipeline too
    model.save_pretrained(folder)
    release_feature_extractor().save_pretrained(folder)


def save_model_folder(model, output_dir, overwrite=False):
    """Write model, config, code files and preprocessor config into output_dir atomically."""
    with staged_folder(output_dir, overwrite) as staging:
        _write_model(model, staging)
    return Path(output_dir)


@dataclass
class Conversion:
    """One checkpoint to convert: its file, its YAML (if any) and the release name asked for (if any)."""

    checkpoint: Path
    config_path: Path | None = None
    name: str | None = None


def _write_variant(conversion, folder, output_format):
    """Convert one checkpoint into `folder` (model and preprocessor); returns the facts its card needs."""
    model, training_config = _convert(conversion.checkpoint, conversion.config_path)
    release = resolve_release(model.config, training_config, conversion.checkpoint, conversion.name)
    written, additions = model, {}
    if output_format == "hubert":
        written = to_hubert_model(model)
        width = model.config.hidden_size
        if model.feature_projection is None:
            additions["an identity feature projection (exact: the outputs are unchanged)"] = width * (width + 1)
        if model.mask_emb is None and getattr(written, "masked_spec_embed", None) is not None:
            additions["a newly initialised SpecAugment mask embedding (used only in fine-tuning)"] = width
    _write_model(written, folder)
    return CardFacts(
        title=release.name if release else conversion.checkpoint.stem,
        release=release,
        family=guess_family(model.config, training_config),
        output_format=output_format,
        parameters=sum(parameter.numel() for parameter in written.parameters()),
        hubert_additions=additions,
        source_name=conversion.checkpoint.name,
        source_sha256=file_sha256(conversion.checkpoint),
        config=model.config,
    )


def _check_format(output_format):
    if output_format not in OUTPUT_FORMATS:
        raise ConversionError(f"unknown output format {output_format!r}; use one of {', '.join(OUTPUT_FORMATS)}")


def convert_checkpoint(
    checkpoint_path, output_dir, config_path=None, overwrite=False, name=None, output_format="armhubert", repo_id=None
):
    """Convert one original checkpoint into a Transformers folder with its model card; returns the folder."""
    _check_format(output_format)
    conversion = Conversion(Path(checkpoint_path), config_path and Path(config_path), name)
    with staged_folder(output_dir, overwrite) as staging:  # checks the target before converting
        facts = _write_variant(conversion, staging, output_format)
        model_card(facts, repo=repo_id or str(output_dir)).save(staging / "README.md")
    return Path(output_dir)


def find_checkpoints(source_dir):
    """Every `*.ckpt` of a folder, each with the `.yaml` of the same name when there is one (STaR pairs)."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise ConversionError(f"--all needs a folder of checkpoints; {source_dir} is not a folder")
    checkpoints = sorted(source_dir.glob("*.ckpt"))
    if not checkpoints:
        raise ConversionError(f"{source_dir} holds no .ckpt files")
    return [
        Conversion(path, path.with_suffix(".yaml") if path.with_suffix(".yaml").is_file() else None)
        for path in checkpoints
    ]


def _move_code_files_to_root(variant_folder, root):
    """`save_pretrained` copied the model's code files into the variant; the repository keeps one set at its root."""
    for code_file in Path(variant_folder).glob("*.py"):
        os.replace(code_file, Path(root) / code_file.name)


def convert_folder(source_dir, output_dir, overwrite=False, output_format="armhubert", repo_id=None):
    """Convert every checkpoint of `source_dir` into its own subfolder of one repository at `output_dir`.

    Subfolders are named after the release (or the file when it is not a known release); code files
    are written once at the root, next to a card that lists the variants. One model is in memory at a time.
    """
    _check_format(output_format)
    conversions = find_checkpoints(source_dir)
    repo = repo_id or str(output_dir)
    variants = []
    with staged_folder(output_dir, overwrite) as staging:
        for conversion in conversions:
            # Written under a scratch name: the subfolder is named after the release, known after loading.
            scratch = staging / f".{conversion.checkpoint.name}"
            facts = _write_variant(conversion, scratch, output_format)
            if any(variant.title == facts.title for variant in variants):
                raise ConversionError(f"two checkpoints of {source_dir} are both {facts.title}")
            folder = staging / facts.title
            os.replace(scratch, folder)
            _move_code_files_to_root(folder, staging)
            model_card(facts, repo=repo, subfolder=facts.title).save(folder / "README.md")
            variants.append(facts)
        title = repo_id or Path(output_dir).name
        repository_card(title, variants, repo=repo).save(staging / "README.md")
    return Path(output_dir)


# --------------------------------------------------------------------------------------------------
# Publishing


class PublishError(Exception):
    """The Hub upload failed; the local output is complete and kept."""


def push_to_hub(folder, repo_id, private=False):
    """Create `repo_id` if needed and upload `folder` to it as one commit; returns the commit URL.

    Offline mode and missing or rejected credentials are found before anything is created. As the
    upload is a single commit, a failure leaves the repository's files as they were.
    """
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise PublishError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to publish")
    api = HfApi()
    try:
        api.whoami()
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message="Convert the original release checkpoints with convert_checkpoint.py",
        )
    except Exception as error:  # network, authentication and Hub errors come in many types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise PublishError(f"{type(error).__name__}: {reason}".rstrip(": ")) from None
    return commit.commit_url


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="original .ckpt file (PyTorch-Lightning format)")
    parser.add_argument("--config", help="training YAML (required for STaR checkpoints, overrides the ckpt's)")
    parser.add_argument(
        "--name", help="release name, e.g. ARMHuBERT-960h (default: the file's name if it is one, else detected)"
    )
    parser.add_argument(
        "--all", metavar="SRC_DIR", dest="source_dir",
        help="convert every .ckpt of SRC_DIR (with NAME.yaml where present) into subfolders of --output-dir",
    )
    parser.add_argument("--output-dir", required=True, help="folder to write the converted model (or repository) into")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument(
        "--format", dest="output_format", choices=OUTPUT_FORMATS, default="armhubert",
        help="armhubert: this repo's model (remote code); hubert: plain transformers HubertModel (STaR models only)",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the finished output to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.source_dir is None):
        parser.error("give either one CHECKPOINT or --all SRC_DIR")
    if args.source_dir is not None and (args.config or args.name):
        parser.error("--config and --name apply to one CHECKPOINT; with --all, name files after their releases")
    if args.private and not args.push_to_hub:
        parser.error("--private needs --push-to-hub")
    return args


def main(argv=None):
    args = parse_args(argv)
    transformers_logging.disable_progress_bar()  # the CLI reports in its own lines
    try:
        if args.source_dir is not None:
            output = convert_folder(args.source_dir, args.output_dir, args.overwrite, args.output_format, args.push_to_hub)
        else:
            output = convert_checkpoint(
                args.checkpoint, args.output_dir, args.config, args.overwrite, args.name, args.output_format,
                args.push_to_hub,
            )
    except UserError as error:
        print(f"convert_checkpoint.py: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    if args.push_to_hub:
        try:
            url = push_to_hub(output, args.push_to_hub, private=args.private)
        except PublishError as error:
            print(
                f"convert_checkpoint.py: error: could not publish to {args.push_to_hub}: {error}. Nothing was "
                f"committed; the converted output is complete in {output} (upload it later with "
                f"`hf upload {args.push_to_hub} {output}`).",
                file=sys.stderr,
            )
            return 2
        print(f"published {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
