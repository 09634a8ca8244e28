"""What tests share: paths of the fixtures, tiny configurations and models, the original release's formats.

Test modules import from here (never from each other or from `conftest`, which holds pytest fixtures only).
"""

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: a Hub lookup would hang

import torch  # noqa: E402 -- after the environment above, as every import below

import convert_checkpoint  # noqa: E402 -- the command, run in-process by `run_main`
from configuration_armhubert import ARMHubertConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_CKPT = FIXTURES / "armhubert-tiny.ckpt"
TINY_YAML = FIXTURES / "armhubert-tiny.yaml"
TINY_IO = FIXTURES / "armhubert-tiny.io.pt"
# What every model folder this project writes holds: the five remote-code files beside the weights,
# config and feature-extractor config.
REMOTE_CODE = [
    "attention_armhubert.py",
    "configuration_armhubert.py",
    "modeling_armhubert.py",
    "ops_armhubert.py",
    "pipeline_armhubert.py",
]
MODEL_FOLDER_FILES = sorted(["config.json", "model.safetensors", "preprocessor_config.json", *REMOTE_CODE])


def tiny_config(**overrides):
    """A 4-layer, 48-wide model with the release's CNN shape shrunk (total stride 320)."""
    fields = dict(
        conv_dim=[32, 32, 32, 32, 32, 32, 48, 48, 48],
        conv_kernel=[10, 1, 3, 3, 3, 3, 1, 2, 2],
        conv_stride=[5, 1, 2, 2, 2, 2, 1, 2, 2],
        hidden_size=48,
        intermediate_size=96,
        num_attention_heads=4,
        num_hidden_layers=4,
        layer_reuses_attention_map=[False, True, False, True],
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        projection_head_size=64,
    )
    fields.update(overrides)
    return ARMHubertConfig(**fields)


# Configurations beyond the fixture: every path the original release has.
VARIANTS = {
    "arm-post-ln": {},
    "arm-pre-ln": dict(do_stable_layer_norm=True),
    "reuse-twice": dict(layer_reuses_attention_map=[False, True, True, False]),
    "reuse-probabilities": dict(reuse_softmax="probabilities"),
    "multiples": dict(crop_seq_to_multiple=3, required_seq_len_multiple=5),
    "mask-hubert": dict(layer_reuses_attention_map=[False] * 4),
    "star": dict(layer_reuses_attention_map=[False] * 4, projection_head_size=None, use_mask_embedding=False),
    "layer-norm-cnn-projection": dict(
        feat_extract_norm="layer", conv_dim=[32, 32, 32, 32, 32, 32, 40, 40, 40], conv_bias=True
    ),
}


def random_model(config, seed=0):
    from modeling_armhubert import ARMHubertModel

    torch.manual_seed(seed)
    model = ARMHubertModel(config).eval()
    # Non-trivial norms and biases, so that no path hides behind ones and zeros.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def waveform(num_samples, seed):
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(1, num_samples, generator=generator)


def load_script(name):
    """The module behind a command, for tests that call its functions: `armhubert.commands.<name>` for the
    scripts that are entry points over it, else scripts/<name>.py or benchmarks/<name>.py loaded from its file
    (scripts are entry points, not on sys.path)."""
    if (ROOT / "armhubert" / "commands" / f"{name}.py").is_file():
        return importlib.import_module(f"armhubert.commands.{name}")
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path if path.exists() else ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------
# The original release's formats: key names, YAML sections, the checkpoint layout; the converter command

# Our key -> the original release's key (written independently of the converter's own table).
_TO_ORIGINAL = [
    (r"^feature_extractor\.conv_layers\.0\.layer_norm\.", "feature_extractor.conv_layers.0.2."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"^feature_layer_norm\.", "layer_norm."),
    (r"^encoder\.pos_conv_embed\.conv\.bias$", "encoder.pos_conv.0.bias"),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", "encoder.pos_conv.0.weight_g"),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", "encoder.pos_conv.0.weight_v"),
    (r"^encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"^projection_heads\.(\d+)\.", r"proj_head.\1.lin_proj."),
]


def to_original(key):
    for pattern, replacement in _TO_ORIGINAL:
        key, count = re.subn(pattern, replacement, key)
        if count:
            break
    return key


def distiller_section(config):
    """The original YAML's distiller section for one of our tiny configs."""
    layers = list(zip(config.conv_dim, config.conv_kernel, config.conv_stride))
    return {
        "extractor_mode": "default",
        "conv_feature_layers": " + ".join(f"[{layer}]" for layer in layers),
        "conv_bias": False,
        "conv_pos": config.num_conv_pos_embeddings,
        "conv_pos_groups": config.num_conv_pos_embedding_groups,
        "pos_conv_depth": 1,
        "encoder_layers": config.num_hidden_layers,
        "encoder_embed_dim": config.hidden_size,
        "encoder_ffn_embed_dim": config.intermediate_size,
        "encoder_attention_heads": config.num_attention_heads,
        "activation_fn": "gelu",
        "layer_norm_first": config.do_stable_layer_norm,
        "layer_grad_scale": False,
        "reuse_pattern": str([not reuses for reuses in config.layer_reuses_attention_map]),
        "layerwise_proj": config.projection_head_size is not None,
        "pred_head_final_dim": config.projection_head_size or 768,
        "pred_head_inter_dim": 0,
        "required_seq_len_multiple": 1,
        "crop_seq_to_multiple": 1,
    }


def run_main(capsys, *args):
    """The CLI's code path in this process (each subprocess costs ~10 s of imports)."""
    code = convert_checkpoint.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.err


# --------------------------------------------------------------------------------------------------
# The original training stack's classes, defined here so that pickles name them as the release does.


class WarmupLinearSchedule:
    """Shaped like s3prl's schedule: plain attributes, pickled by reference to its module."""

    def __init__(self, warmup=0.05, t_total=400_000):
        self.warmup = warmup
        self.t_total = t_total
        self.warned_for_t_total_at_progress = -1


class AttributeDict(dict):
    """Shaped like Lightning 1.7's hyper-parameter dict."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as error:
            raise AttributeError(key) from error


WarmupLinearSchedule.__module__ = "s3prl.optimizers"
AttributeDict.__module__ = "pytorch_lightning.utilities.parsing"


@contextlib.contextmanager
def training_stack_importable():
    """Make the two classes picklable under their original names only while a checkpoint is saved."""
    modules = {}
    for cls in (WarmupLinearSchedule, AttributeDict):
        parts = cls.__module__.split(".")
        for depth in range(1, len(parts) + 1):
            modules.setdefault(".".join(parts[:depth]), types.ModuleType(".".join(parts[:depth])))
        setattr(modules[cls.__module__], cls.__name__, cls)
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


TRAIN_960H = ["train-clean-100", "train-clean-360", "train-other-500"]


def genuine_checkpoint(path, student_state, cfg, teacher_numel=1000, with_hparams=True, extra_student=None):
    """A checkpoint laid out like the released files (the original release's format).

    Teacher tensors, then `student_model.*`; Lightning training state; an optimizer state with moments for
    every student tensor and the s3prl schedule object in its param group; hyper-parameters in an AttributeDict.
    """
    state = {"teacher_model.model.encoder.weight": torch.zeros(teacher_numel)}
    state.update({f"student_model.{key}": value for key, value in student_state.items()})
    state.update({f"student_model.{key}": value for key, value in (extra_student or {}).items()})
    moments = {
        index: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(value), "exp_avg_sq": torch.zeros_like(value)}
        for index, value in enumerate(student_state.values())
    }
    group = {"lr": 5e-4, "betas": (0.9, 0.98), "schedule": WarmupLinearSchedule(), "params": list(moments)}
    checkpoint = {
        "epoch": 35,
        "global_step": 123_456,
        "pytorch-lightning_version": "1.7.7",
        "state_dict": state,
        "loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": 123_456}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'v_loss'}": {"best_model_score": torch.tensor(0.43)}},
        "optimizer_states": [{"state": moments, "param_groups": [group]}],
        "lr_schedulers": [],
        "NativeMixedPrecisionPlugin": {"scale": 65536.0, "_growth_tracker": 12},
        "hparams_name": "kwargs",
    }
    if with_hparams:
        checkpoint["hyper_parameters"] = AttributeDict(cfg=cfg)
    with training_stack_importable():
        torch.save(checkpoint, path)
    return path


def original_state(model):
    return {to_original(key): value for key, value in model.state_dict().items()}


def release_cfg(model, family, train_set=TRAIN_960H):
    return {"model": family, "distiller": distiller_section(model.config), "data": {"train_set": list(train_set)}}


TORCHRUN_TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run_offline(command: list, cwd=None) -> subprocess.CompletedProcess:
    """Run a command offline on one thread each (the tiny models gain nothing from more) and assert it succeeded."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Traceback" not in result.stderr
    return result


_ONNX_GRAPHS = {}  # the graphs `memoize_onnx_export` exported in this process, by model


def memoize_onnx_export(module, setattr=setattr):
    """Replace `module.export_onnx` (the command's `armhubert.deploy.export_onnx`) by one that exports each model
    once in this process and gives the same bytes for a model equal to it (class, config and every tensor), for
    tests that run a command on one model several times: each export costs 10-30 s of CPU. Pass
    `monkeypatch.setattr` as `setattr` to have it undone after the test."""
    import hashlib

    export = module.export_onnx

    def export_once(model, opset=None):
        digest = hashlib.sha256(f"{type(model).__name__} {model.config.to_json_string()} {opset}".encode())
        for name, tensor in model.state_dict().items():
            digest.update(
                name.encode() + tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            )
        key = digest.hexdigest()
        if key not in _ONNX_GRAPHS:
            _ONNX_GRAPHS[key] = export(model, opset)
        return _ONNX_GRAPHS[key]

    setattr(module, "export_onnx", export_once)
