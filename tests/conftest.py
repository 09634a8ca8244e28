"""Pytest fixtures shared by the test modules; plain helpers (paths, tiny configs, models) are in `helpers.py`."""

import pytest
import torch
from helpers import TINY_CKPT, TINY_IO, VARIANTS, random_model, tiny_config

from armhubert.convert.original import convert
from armhubert.folders.remote_code import ship_pipeline
from armhubert.progress import quiet_when_piped

# Tiny models: with two threads on a busy 2-core machine OpenMP spin-waits cost more than they give.
torch.set_num_threads(1)
# Tests read stderr line by line: the libraries' progress bars stay off from the first test on, not only once a
# command has run (`run_main` turns them off the same way); under xdist a worker may start with any test.
quiet_when_piped()


@pytest.fixture(params=sorted(VARIANTS))
def variant_config(request):
    return tiny_config(**VARIANTS[request.param])


@pytest.fixture(scope="session")
def reference_io():
    return torch.load(TINY_IO, weights_only=True)


@pytest.fixture(scope="session")
def converted_tiny():
    return convert(TINY_CKPT)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved folder of a random tiny encoder (`random_model(tiny_config())`) with the releases' preprocessing."""
    from pipeline_armhubert import release_feature_extractor

    folder = tmp_path_factory.mktemp("tiny-model")
    random_model(tiny_config()).save_pretrained(folder)
    ship_pipeline(folder)
    release_feature_extractor().save_pretrained(folder)
    return folder
