"""Writing converted models: one folder per checkpoint, or one repository with a subfolder per release.

A folder holds `config.json` (with `auto_map`), `model.safetensors`, the five code files,
`preprocessor_config.json` and a model card (`README.md`), so
`AutoModel.from_pretrained(DIR, trust_remote_code=True)` loads it. A repository keeps the code files
once at its root (`from_pretrained(REPO_DIR, subfolder="ARMHuBERT-960h", ...)` finds them there).
Every output is built in a temporary folder beside the target (`armhubert.files.atomic.staged_folder`) and
renamed at the end, so an error or interruption leaves the target as it was.
"""

import os
import shutil
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transformers import PreTrainedModel

from modeling_armhubert import ARMHubertModel
from pipeline_armhubert import release_feature_extractor

from ..cli import UserError, refuse_broken
from ..files.atomic import staged_folder
from ..files.untrusted import check_code_text, check_safe_name
from ..files.weights import check_finite_weights
from ..folders.remote_code import add_remote_code_entries, ship_pipeline
from .cards import CardFacts, file_sha256, model_card, repository_card
from .hubert_export import hubert_additions, to_hubert_model
from .original import convert_with_training_config
from .releases import guess_family, resolve_release

OutputFormat = Literal["armhubert", "hubert"]
OUTPUT_FORMATS = typing.get_args(OutputFormat)  # the command's --format choices: it refuses any other
ROOT_FILE_SUFFIXES = (".md", ".py", ".json", ".safetensors", ".txt", ".yaml")  # files a repository's root holds
PREFERRED_DEFAULT = "ARMHuBERT-960h"  # what a repository's bare id loads when it holds this release
# What `--all` needs, checked by `refuse_broken` in order: of its `source` folder and the `checkpoints` found there,
# then of each checkpoint's `path` (its name becomes a subfolder, beside the files a repository's root holds).
SOURCE_RULES = (
    (lambda source, checkpoints: not source.is_dir(), "--all needs a folder of checkpoints; {source} is not a folder"),
    (lambda source, checkpoints: not checkpoints, "{source} holds no .ckpt files"),
)
CHECKPOINT_RULES = (
    (
        lambda path: path.stem.lower().endswith(ROOT_FILE_SUFFIXES),
        "checkpoint {path.name}: a subfolder named {path.stem} would look like a repository file; rename it",
    ),
)
# The variant the repository root holds where there is no PREFERRED_DEFAULT (`choose_default`): rules over the
# variants' `titles` (`choices`: the same, for the message) and the `default` asked for.
DEFAULT_RULES = (
    (
        lambda titles, choices, default: default is None and len(titles) != 1,
        f"no {PREFERRED_DEFAULT} among the checkpoints, so the repository root needs a model: pass --default NAME "
        "with one of: {choices}",
    ),
    (
        lambda titles, choices, default: default is not None and default.lower() not in map(str.lower, titles),
        "--default {default}: no such variant; choose one of: {choices}",
    ),
)


def _write_model(model, folder):
    """`save_pretrained` (which also copies the code files of auto-registered classes), the pipeline file
    and the preprocessor."""
    check_finite_weights(model, "the converted model")
    if isinstance(model, ARMHubertModel):
        add_remote_code_entries(
            model.config, type(model)
        )  # AutoModelForCTC / audio classification / feature pipeline too
    model.save_pretrained(folder)  # a failed write is reported by `staged_folder`, naming the target
    ship_pipeline(folder)
    release_feature_extractor().save_pretrained(folder)


def save_model_folder(model: PreTrainedModel, output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
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
    """Convert one checkpoint into `folder` (model and preprocessor); returns the facts its card needs. The command
    offers OUTPUT_FORMATS only; another `output_format` is a Python caller's mistake (ValueError), not a guess."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    model, training = convert_with_training_config(conversion.checkpoint, conversion.config_path)
    release = resolve_release(model.config, training, conversion.checkpoint, conversion.name)
    written, additions = model, {}
    if output_format == "hubert":
        written = to_hubert_model(model)
        additions = hubert_additions(model, written)
    _write_model(written, folder)
    return CardFacts(
        title=release.name if release else conversion.checkpoint.stem,
        release=release,
        family=guess_family(model.config, training),
        output_format=output_format,
        parameters=sum(parameter.numel() for parameter in written.parameters()),
        hubert_additions=additions,
        source_name=conversion.checkpoint.name,
        source_sha256=file_sha256(conversion.checkpoint),
        config=model.config,
    )


def convert_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    name: str | None = None,
    output_format: OutputFormat = "armhubert",
    repo_id: str | None = None,
) -> Path:
    """Convert one original checkpoint into a Transformers folder with its model card; returns the folder.

    `name` names the release ("none": it is no release; default: the file's name if it is one, else
    detected); `repo_id` is the Hub id the card's load example uses (default: `output_dir`).
    """
    conversion = Conversion(Path(checkpoint_path), config_path and Path(config_path), name)
    repo = check_code_text(repo_id or str(output_dir), "the repository id / output folder")
    check_code_text(conversion.checkpoint.name, "the checkpoint file name")  # the card shows it
    inputs = (conversion.checkpoint, conversion.config_path)
    with staged_folder(output_dir, overwrite, inputs) as staging:  # checks the target before converting
        facts = _write_variant(conversion, staging, output_format)
        model_card(facts, repo=repo).save(staging / "README.md")
    return Path(output_dir)


def find_checkpoints(source_dir: str | os.PathLike) -> list[Conversion]:
    """Every `*.ckpt` of a folder, each with the `.yaml` of the same name when there is one (STaR pairs)."""
    source_dir = Path(source_dir)
    checkpoints = sorted(source_dir.glob("*.ckpt"))  # none where it is not a folder
    refuse_broken(SOURCE_RULES, source=source_dir, checkpoints=checkpoints)
    for path in checkpoints:  # a file's name becomes a subfolder and appears in the cards' code
        check_safe_name(path.stem, f"checkpoint file name {path.name}: the name")
        refuse_broken(CHECKPOINT_RULES, path=path)
    return [
        Conversion(path, path.with_suffix(".yaml") if path.with_suffix(".yaml").is_file() else None)
        for path in checkpoints
    ]


def _move_code_files_to_root(variant_folder, root):
    """`save_pretrained` copied the model's code files into the variant; the repository keeps one set at its root."""
    for code_file in Path(variant_folder).glob("*.py"):
        os.replace(code_file, Path(root) / code_file.name)


def choose_default(titles: Sequence[str], default: str | None) -> str:
    """The variant the repository root holds: ARMHuBERT-960h when present, else `default`, else the only
    variant there is; refuse otherwise (DEFAULT_RULES: the choice would be arbitrary)."""
    by_name = {title.lower(): title for title in titles}
    if PREFERRED_DEFAULT.lower() in by_name:
        return by_name[PREFERRED_DEFAULT.lower()]
    refuse_broken(DEFAULT_RULES, titles=titles, choices=", ".join(titles), default=default)
    return titles[0] if default is None else by_name[default.lower()]


def _copy_variant_to_root(variant_folder, root):
    """The root holds a complete copy of the default variant (everything but its card), so the bare id loads."""
    for path in Path(variant_folder).iterdir():
        if path.is_file() and path.name != "README.md":
            shutil.copyfile(path, Path(root) / path.name)


def convert_folder(
    source_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    output_format: OutputFormat = "armhubert",
    repo_id: str | None = None,
    default: str | None = None,
) -> Path:
    """Convert every checkpoint of `source_dir` into its own subfolder of one repository at `output_dir`.

    Subfolders are named after the release (or the file when it is not a known release); code files
    are written once at the root, next to a complete copy of the default variant (ARMHuBERT-960h when
    present, else `default`; see `choose_default`) and a card that lists the variants, so the bare
    repository id loads a model. One model is in memory at a time.
    """
    conversions = find_checkpoints(source_dir)
    repo = check_code_text(repo_id or str(output_dir), "the repository id / output folder")
    variants = []
    inputs = [source_dir] + [
        path for conversion in conversions for path in (conversion.checkpoint, conversion.config_path)
    ]
    with staged_folder(output_dir, overwrite, inputs) as staging:
        for conversion in conversions:
            # Written under a scratch name: the subfolder is named after the release, known after loading.
            scratch = staging / f".{conversion.checkpoint.name}"
            facts = _write_variant(conversion, scratch, output_format)
            if any(variant.title == facts.title for variant in variants):
                raise UserError(f"two checkpoints of {source_dir} are both {facts.title}")
            folder = staging / facts.title
            os.replace(scratch, folder)
            _move_code_files_to_root(folder, staging)
            model_card(facts, repo=repo, subfolder=facts.title).save(folder / "README.md")
            variants.append(facts)
        chosen = choose_default([facts.title for facts in variants], default)
        _copy_variant_to_root(staging / chosen, staging)
        title = repo_id or Path(output_dir).name
        default_facts = next(facts for facts in variants if facts.title == chosen)
        repository_card(title, variants, repo=repo, default=default_facts).save(staging / "README.md")
    return Path(output_dir)
