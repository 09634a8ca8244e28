"""The installed transformers' own common tests (`tests/test_modeling_common.py`, `tests/test_configuration_common.py`),
taken from its source distribution on PyPI, never copied into this repository.

`fetch()` downloads the sdist of exactly the installed version (`pip download --no-deps --no-binary :all:`) and
unpacks its `tests/` folder into `~/.cache/armhubert/transformers-<version>-tests/` once (the `parameterized`
those tests import comes with the dev extra). `load()` imports that folder as
the package `transformers_sdist_tests`, with stand-ins for the three helper modules the sdist lacks:
`exporters/test_export.py` and `generation/test_utils.py` (mixins of export and generation tests: empty here, as
this encoder cannot generate and tests/test_export_onnx.py covers its export) and `utils/test_configuration_utils.py`
(`config_common_kwargs`: the general `PreTrainedConfig` arguments that every config must keep).

`.ci/run` fetches before the tests (`python tests/transformers_sdist.py`); the tests fetch themselves when the
folder is missing, and fail in one line when PyPI cannot be reached.
"""

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers
from filelock import FileLock

VERSION = transformers.__version__
PACKAGE = "transformers_sdist_tests"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "armhubert" / f"transformers-{VERSION}-tests"

# General config arguments with values other than their defaults (stand-in for the sdist's missing
# `tests/utils/test_configuration_utils.py`): `ConfigTester.check_config_arguments_init` builds a config
# from them and checks that each one is kept.
CONFIG_COMMON_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["ARMHubertModel"],
    "finetuning_task": "asr",
    "id2label": {0: "yes", 1: "no"},
    "label2id": {"yes": 0, "no": 1},
    "problem_type": "single_label_classification",
    "tokenizer_class": "Wav2Vec2CTCTokenizer",
    "prefix": "speech",
    "bos_token_id": 6,
    "pad_token_id": 7,
    "eos_token_id": 8,
    "sep_token_id": 9,
}


class FetchError(RuntimeError):
    """The sdist could not be downloaded or unpacked (PyPI unreachable, or no such version)."""


def _pip_download(requirement: str, destination: str) -> Path:
    """`pip download --no-deps --no-binary :all:` (the sdist) of one requirement into `destination`; the file."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    command += ["-d", destination, requirement]
    done = subprocess.run(command, capture_output=True, text=True)
    files = sorted(Path(destination).iterdir())
    if done.returncode or not files:
        last = (done.stderr.strip().splitlines() or ["no file downloaded"])[-1]
        raise FetchError(
            f"could not download {requirement} from PyPI for transformers' common tests ({last}); "
            "check the network and pip's index (PIP_INDEX_URL), then rerun."
        )
    return files[0]


def fetch(cache: Path = CACHE) -> Path:
    """The cache folder holding `tests/` of transformers==VERSION's sdist (downloaded on the first call)."""
    if (cache / "tests" / "__init__.py").is_file():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    # pytest-xdist's workers import the tests at once: one fetches, the others wait and find its folder.
    with FileLock(cache / "fetch.lock"):
        if not (cache / "tests" / "__init__.py").is_file():
            _fetch_into(cache)
    return cache


def _fetch_into(cache: Path) -> None:
    with tempfile.TemporaryDirectory(dir=cache) as work:
        sdist = _pip_download(f"transformers=={VERSION}", str(Path(work) / "sdist"))
        root = f"transformers-{VERSION}/tests/"
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(root) and (m.isfile() or m.isdir())]
            for member in members:
                member.name = member.name[len(root) - len("tests/") :]
            archive.extractall(Path(work) / "unpacked", members=members, filter="data")
        if not (Path(work) / "unpacked" / "tests" / "test_modeling_common.py").is_file():
            raise FetchError(
                f"transformers=={VERSION}'s sdist has no tests/test_modeling_common.py; pin another version."
            )
        # As in transformers' repository (the sdist leaves it out): test_configuration_common.py imports it.
        (Path(work) / "unpacked" / "tests" / "__init__.py").touch()
        if (cache / "tests").exists():  # a partial folder from an interrupted run
            (cache / "tests").rename(Path(work) / "stale")
        (Path(work) / "unpacked" / "tests").rename(cache / "tests")


def _stub(name: str, **attributes) -> None:
    module = types.ModuleType(f"{PACKAGE}.{name}")
    module.__dict__.update(attributes)
    sys.modules[module.__name__] = module


def load(cache: Path = CACHE) -> types.ModuleType:
    """Import the sdist's tests as the package `PACKAGE` (fetching them first if needed) and return it, with its
    `test_modeling_common` and `test_configuration_common` modules imported."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    cache = fetch(cache)
    init = cache / "tests" / "__init__.py"
    spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(init.parent)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    for name in ("exporters", "generation", "utils"):
        _stub(name)
    _stub("exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
    _stub("generation.test_utils", GenerationTesterMixin=type("GenerationTesterMixin", (), {}))
    _stub("utils.test_configuration_utils", config_common_kwargs=CONFIG_COMMON_KWARGS)
    for name in ("test_modeling_common", "test_configuration_common"):
        setattr(package, name, importlib.import_module(f"{PACKAGE}.{name}"))
    return package


if __name__ == "__main__":  # .ci/run: fetch once before the tests
    print(f"transformers {VERSION} common tests in {fetch()}")
