"""Pytest fixtures shared by the test modules; plain helpers (paths, tiny configs, models) are in `helpers.py`."""

import pytest
import torch
from helpers import TINY_CKPT, TINY_IO, VARIANTS, tiny_config

from armhubert.convert.original import convert

# Tiny models: with two threads on a busy 2-core machine OpenMP spin-waits cost more than they give.
torch.set_num_threads(1)


@pytest.fixture(params=sorted(VARIANTS))
def variant_config(request):
    return tiny_config(**VARIANTS[request.param])


@pytest.fixture(scope="session")
def reference_io():
    return torch.load(TINY_IO, weights_only=True)


@pytest.fixture(scope="session")
def converted_tiny():
    return convert(TINY_CKPT)
