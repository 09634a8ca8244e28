"""Convert an original ARMHuBERT / ARMwavLM / MaskHuBERT / STaRHuBERT checkpoint to a Transformers folder.

    python convert_checkpoint.py CKPT [--config YAML] --output-dir DIR [--overwrite]

The original release stores PyTorch-Lightning checkpoints whose `state_dict` holds the frozen teacher
and the student (`student_model.*`), with the model configuration in
`hyper_parameters["cfg"]["distiller"]`. STaR checkpoints have no hyper-parameters: pass their YAML
with `--config`. DIR receives `config.json` (with `auto_map`), `model.safetensors`, the two code
files and `preprocessor_config.json`, so `AutoModel.from_pretrained(DIR, trust_remote_code=True)`
loads it. Nothing is ever unpickled beyond plain tensors and containers (`weights_only=True`).
Errors exit with status 2 and one line, and leave DIR as it was.
"""

import argparse
import ast
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from transformers import Wav2Vec2FeatureExtractor

from configuration_armhubert import ARMHubertConfig
from modeling_armhubert import ARMHubertModel

STUDENT_PREFIX = "student_model."
KNOWN_FAMILIES = ("armhubert", "armwavlm", "maskhubert", "starhubert", "star")
# Student keys the original loader deletes: STaR's unused pre-training projection.
DROPPED_KEYS = ("final_proj.weight", "final_proj.bias")


class ConversionError(Exception):
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
# Reading the original weights


def load_original_checkpoint(path):
    """`torch.load(weights_only=True)` with one-line errors for files that are not checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist or is not a file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt, truncated or foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "Unsupported global" in str(error) or "weights_only" in str(error):
            reason = "it holds pickled Python objects that are not tensors; refusing to unpickle them"
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint: {reason}") from None
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


def build_model(config, student):
    """Instantiate the model and load the renamed student tensors strictly."""
    model = ARMHubertModel(config)
    state = {rename_original_key(key): value for key, value in student.items()}
    expected = model.state_dict()
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
    model.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    return model.eval()


def convert(checkpoint_path, config_path=None):
    """Read an original checkpoint (and optional YAML) and return the converted `ARMHubertModel`."""
    checkpoint = load_original_checkpoint(checkpoint_path)
    training_config = read_training_config(checkpoint, config_path)
    student = student_state_dict(checkpoint)
    del checkpoint  # drop the teacher and optimizer tensors before building the student
    config = config_from_distiller(training_config.get("distiller"), has_mask_embedding="mask_emb" in student)
    return build_model(config, student)


# --------------------------------------------------------------------------------------------------
# Writing the output folder


def feature_extractor_for(config):
    """What the releases expect: raw 16 kHz audio, no normalisation, attention mask for padding."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False, return_attention_mask=True
    )


def save_model_folder(model, output_dir, overwrite=False):
    """Write model, config, code files and preprocessor config into output_dir atomically.

    Everything is written to a temporary folder beside the target and renamed at the end, so an
    interrupted run never leaves a half-written folder; an existing target is only replaced with
    `overwrite`, and only once the new folder is complete.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"output {output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(f"output folder {output_dir} is not empty; pass --overwrite to replace it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        feature_extractor_for(model.config).save_pretrained(staging)
        if output_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old.", dir=output_dir.parent))
            os.replace(output_dir, retired / "previous")
            os.replace(staging, output_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def convert_checkpoint(checkpoint_path, output_dir, config_path=None, overwrite=False):
    """Convert one original checkpoint into a Transformers folder; returns the folder's path."""
    output_dir = Path(output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(f"output folder {output_dir} is not empty; pass --overwrite to replace it")
    model = convert(checkpoint_path, config_path)
    return save_model_folder(model, output_dir, overwrite=overwrite)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="original .ckpt file (PyTorch-Lightning format)")
    parser.add_argument("--config", help="training YAML (required for STaR checkpoints, overrides the ckpt's)")
    parser.add_argument("--output-dir", required=True, help="folder to write the converted model into")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        output = convert_checkpoint(args.checkpoint, args.output_dir, args.config, args.overwrite)
    except ConversionError as error:
        print(f"convert_checkpoint.py: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
