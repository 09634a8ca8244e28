"""Shared fixtures: tiny configurations, the original-format fixture checkpoint and its outputs."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a Hub lookup would hang: tests never need it
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configuration_armhubert import ARMHubertConfig  # noqa: E402

# Tiny models: with two threads on a busy 2-core machine OpenMP spin-waits cost more than they give.
torch.set_num_threads(1)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_CKPT = FIXTURES / "armhubert-tiny.ckpt"
TINY_YAML = FIXTURES / "armhubert-tiny.yaml"
TINY_IO = FIXTURES / "armhubert-tiny.io.pt"


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


# Configurations beyond the fixture: every path of the spec.
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


@pytest.fixture(params=sorted(VARIANTS))
def variant_config(request):
    return tiny_config(**VARIANTS[request.param])


@pytest.fixture(scope="session")
def reference_io():
    return torch.load(TINY_IO, weights_only=True)


@pytest.fixture(scope="session")
def converted_tiny():
    from convert_checkpoint import convert

    return convert(TINY_CKPT)


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
    """scripts/<name>.py as a module, for tests that call a script's functions (scripts are entry points,
    not on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved folder of a random tiny encoder (`random_model(tiny_config())`) with the releases' preprocessing."""
    from modeling_armhubert import release_feature_extractor

    folder = tmp_path_factory.mktemp("tiny-model")
    random_model(tiny_config()).save_pretrained(folder)
    release_feature_extractor().save_pretrained(folder)
    return folder
