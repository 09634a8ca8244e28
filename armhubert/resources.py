"""What the package ships and names: the bundled recipes (`conf/`), the bundled corpus (`data/`), LibriSpeech's Hub id.

The recipes and the corpus live at the repository root (`conf/`, `data/`). A wheel carries them as
package data inside the package (`armhubert/conf`, `armhubert/data`: see `[tool.setuptools.package-dir]`
in pyproject.toml); a source checkout or an editable install finds them at the root. `bundled_folder`
is the one place that knows both. Light on purpose (no datasets / soundfile): cards and recipes import it.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
HUB_DATASET = "openslr/librispeech_asr"


def bundled_folder(name: str) -> Path:
    """`conf` or `data`: the installed package's copy (wheel), else the source checkout's (editable, clone)."""
    packaged = _PACKAGE / name
    return packaged if packaged.is_dir() else _PACKAGE.parent / name


BUNDLED_RECIPES = bundled_folder("conf")
# The synthetic corpus in LibriSpeech layout (scripts/make_corpus.py); recipes name its parent folder.
BUNDLED_DATA = bundled_folder("data")
BUNDLED_CORPUS = BUNDLED_DATA / "LibriSpeech"


def is_hub_librispeech(source: object) -> bool:
    """Whether a data source names LibriSpeech on the Hub (HUB_DATASET or an `hf://` path), not a local folder."""
    return str(source).lower() == HUB_DATASET or str(source).startswith("hf://")


def recipe_names() -> list[str]:
    """The bundled recipes' names (`quickstart`, `armhubert-960h`, ...), sorted."""
    return sorted(path.stem for path in BUNDLED_RECIPES.glob("*.yaml"))
