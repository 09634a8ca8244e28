"""Pytest fixtures shared by the test modules; plain helpers (paths, tiny configs, models) are in `helpers.py`."""

import pytest
import torch
from helpers import TINY_CKPT, TINY_IO, VARIANTS, random_model, tiny_config

from armhubert.convert.original import convert
from armhubert.folders.remote_code import ship_pipeline

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved folder of a random tiny encoder (`random_model(tiny_config())`) with the releases' preprocessing."""
    from pipeline_armhubert import release_feature_extractor

    folder = tmp_path_factory.mktemp("tiny-model")
    random_model(tiny_config()).save_pretrained(folder)
    ship_pipeline(folder)
    release_feature_extractor().save_pretrained(folder)
    return folder


def _show_library_bars(show: bool) -> None:
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as transformers_logging

    (datasets.enable_progress_bars if show else datasets.disable_progress_bars)()
    (hub.enable_progress_bars if show else hub.disable_progress_bars)()
    (transformers_logging.enable_progress_bar if show else transformers_logging.disable_progress_bar)()


@pytest.fixture
def progress_bars():
    """The libraries' progress bars on, as for a user on a terminal (they share stderr with the error line); off
    again afterwards, as for every other test."""
    _show_library_bars(True)
    yield
    _show_library_bars(False)


# Tests read stderr line by line: the libraries' progress bars are off from the first test on, not only once a
# command has run (`run_main` turns them off when piped); under xdist a worker may start with any test. Turned
# off by call, not by the environment variables, which the libraries read once, when imported.
_show_library_bars(False)
