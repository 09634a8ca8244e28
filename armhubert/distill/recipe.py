"""Distillation recipes: `DistillArguments`, the Trainer defaults, YAML loading with key=value overrides.

A recipe is a flat YAML mapping of `DistillArguments` and `transformers.TrainingArguments` fields,
given as a file or by the name of a bundled recipe (`quickstart`, `armhubert-960h`, ...: `conf/`).
`key=value` overrides are parsed as YAML (`student_config.hidden_size=64` sets one entry of a
mapping). Relative input paths in a recipe file (`data_source`, `teacher`, `student`, `deepspeed`)
are relative to the file's folder, so a recipe runs from any folder; on the command line they are
relative to the current folder, as any argument. `build_arguments` validates the recipe into the two
argument objects; every problem is a `UserError` naming the key.
"""

import dataclasses
import difflib
import logging
import math
import os
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path

import yaml
from transformers import TrainingArguments
from transformers.integrations import is_tensorboard_available

from configuration_armhubert import PRESETS

from ..cli import UserError
from ..files.untrusted import brief, load_yaml_file, parse_yaml_text
from ..resources import BUNDLED_RECIPES, HUB_DATASET, recipe_names
from ..threads import available_cores
from ..training.guarded_trainer import check_training_values
from .losses import STAR_LAYER0, STAR_NORMALIZATIONS, STAR_REDUCTIONS

logger = logging.getLogger(__name__)

DISTILL_MODES = ("masking", "star", "regression")
LOSS_NORMALIZATIONS = ("valid", "original")
LIBRISPEECH_960H = ["train-clean-100", "train-clean-360", "train-other-500"]
# STaR's loss options: the documented defaults, and named variants that set all of them at once.
STAR_DEFAULTS = dict(
    star_normalization="l2",
    star_reduction="mean",
    star_layer0="encoder-input",
    star_layer_weight=1.0,
    star_intra_weight=1.0,
)
STAR_VARIANTS = {
    # The one public reimplementation that came within about a point of the paper (100 h): raw Grams,
    # mean squared error over all T x T entries, the CNN output as layer 0, plain sum of both losses.
    "public-reimplementation": dict(
        star_normalization="none",
        star_reduction="mean",
        star_layer0="cnn",
        star_layer_weight=1.0,
        star_intra_weight=1.0,
    ),
}


def _arg(default, help_text):
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help_text})
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass
class DistillArguments:
    """What to distil, from what, on which data, with which loss. Everything else is `TrainingArguments`."""

    distill_mode: str = _arg("masking", "masking (MaskHuBERT/ARM*), star (STaRHuBERT) or regression (no masking).")
    teacher: str = _arg(
        "facebook/hubert-base-ls960",
        "A transformers speech encoder's model id or folder (HuBERT, WavLM, wav2vec2, data2vec-audio, "
        "wav2vec2-conformer, UniSpeech-SAT, Whisper, w2v-BERT 2.0), a CTranslate2 Whisper folder, or random-hubert / "
        "random-wavlm / random-wav2vec2 / random-data2vec-audio / random-wav2vec2-conformer / random-unispeech-sat / "
        "random-whisper / random-w2v-bert (random weights from teacher_config, for offline runs).",
    )
    teacher_config: dict | None = _arg(None, "Config fields of a random-* teacher.")
    teacher_layers: list | None = _arg(
        None, "Teacher layer (1-based) distilled into each student layer; default 1:1, or evenly spaced."
    )
    teacher_single_pass: bool = _arg(
        True, "Run the masked and unmasked teacher passes as one forward over a doubled batch (falls back on OOM)."
    )
    student: str = _arg(
        "armhubert-960h",
        f"A preset ({', '.join(PRESETS)}), an ARMHubert config.json / folder, or `mirror`: the teacher's own "
        "encoder, from its weights (Whisper, HuBERT, wav2vec2), with map reuse in reuse_layers.",
    )
    student_config: dict | None = _arg(None, "Student config fields that replace the preset's.")
    reuse_layers: list | None = _arg(
        None, "`student: mirror`: the layers (1-based, from 2) that reuse the previous layer's attention map."
    )
    trainable_layers: list | None = _arg(
        None,
        "Student layers (1-based) that train; the front-end, positions and other layers stay frozen (e.g. a mirror's "
        "layers from the first reusing one). null: everything trains.",
    )
    cache_teacher_outputs: bool = _arg(
        False,
        "Keep each utterance's teacher hidden states after its first pass instead of recomputing them every epoch: "
        "for many epochs over a small corpus. regression / star only, with fixed crops; in memory on the device.",
    )
    data_source: str = _arg(HUB_DATASET, "Local folder holding LibriSpeech/<split>/..., or the Hub id.")
    train_splits: list = _arg(list(LIBRISPEECH_960H), "LibriSpeech training split(s), concatenated.")
    eval_split: str | None = _arg("dev-clean", "Validation split (unmasked student vs unmasked teacher); null: none.")
    crop_seconds: float | None = _arg(None, "Crop longer utterances to a window of this many seconds (null: whole).")
    mask_prob: float = _arg(0.8, "Masking distillation: mask probability (0.8 for 960 h, 0.4 for 100 h).")
    mask_length: int = _arg(10, "Mean span length; span lengths are uniform on 0..2*mask_length.")
    mask_min_spans: int = _arg(2, "Fewest spans per utterance.")
    mask_min_space: int = _arg(1, "Unmasked frames kept between spans.")
    mask_same_count: bool = _arg(True, "Thin every row to the batch's smallest masked count (as the release).")
    loss_type: str = _arg("mse", "Frame error of masking / regression losses: mse or l1.")
    hint_layer_weight: float = _arg(0.1, "Weight of layers 1..L-1 (hint) in masking / regression losses.")
    last_layer_weight: float = _arg(1.0, "Weight of the last layer.")
    loss_normalization: str = _arg(
        "valid",
        "valid: exclude padded frames, divide by real frames; original: as the release (padding counted, / B*T).",
    )
    star_variant: str | None = _arg(
        None,
        "STaR: public-reimplementation = the public reimplementation that reached the paper's numbers (raw Grams, "
        "MSE over all T x T entries, CNN output as layer 0); it sets the star_* options below. null: those options.",
    )
    star_normalization: str | None = _arg(
        None, "STaR Gram normalisation: l2 (cosine, default), dim (/ width) or none (raw)."
    )
    star_reduction: str | None = _arg(None, "STaR: mean over real (t, t') entries (default), or sum per utterance.")
    star_layer0: str | None = _arg(
        None,
        "STaR: layer 0 of the intra-layer Grams: encoder-input (default; after the positional conv) or cnn (the "
        "CNN features as the transformer receives them, before the positional conv).",
    )
    star_layer_weight: float | None = _arg(None, "STaR: weight of the layer-wise TGM loss (default 1).")
    star_intra_weight: float | None = _arg(None, "STaR: weight of the intra-layer TGM loss (default 1).")
    star_recompute: bool = _arg(
        True, "STaR: recompute each layer's Grams in backward (memory O(B T^2), not O(L B T^2))."
    )
    effective_batch_size: int | None = _arg(
        None, "Utterances per optimiser step over all GPUs; sets gradient_accumulation_steps for the actual GPU count."
    )
    keep_best_checkpoints: int | None = _arg(3, "Keep this many checkpoints with the best eval_loss, plus the last.")

    def __post_init__(self):
        def choose(field, allowed):
            if getattr(self, field) not in allowed:
                raise UserError(f"{field} must be one of {', '.join(allowed)}, got {brief(getattr(self, field))}")

        if isinstance(self.train_splits, str):
            self.train_splits = [self.train_splits]
        hints = typing.get_type_hints(DistillArguments)
        for field in dataclasses.fields(self):
            check_value_type(getattr(self, field.name), hints[field.name], field.name)

        choose("distill_mode", DISTILL_MODES)
        choose("loss_type", ("mse", "l1"))
        choose("loss_normalization", LOSS_NORMALIZATIONS)
        self._resolve_star_options()
        choose("star_normalization", STAR_NORMALIZATIONS)
        choose("star_reduction", STAR_REDUCTIONS)
        choose("star_layer0", STAR_LAYER0)
        self._check_ranges()
        if not 0.0 <= self.mask_prob <= 1.0:
            raise UserError(f"mask_prob must lie in [0, 1], got {self.mask_prob}")
        if self.mask_length < 1 or self.mask_min_space < 0 or self.mask_min_spans < 0:
            raise UserError("mask_length must be >= 1, mask_min_space and mask_min_spans >= 0")
        if self.cache_teacher_outputs and self.distill_mode == "masking":
            raise UserError("cache_teacher_outputs keeps clean teacher passes only; use it with regression or star")
        if self.keep_best_checkpoints is not None and self.keep_best_checkpoints < 1:
            raise UserError(f"keep_best_checkpoints must be >= 1 or null, got {self.keep_best_checkpoints}")
        if self.crop_seconds is not None and self.crop_seconds <= 0:
            raise UserError(f"crop_seconds must be positive or null, got {self.crop_seconds}")

    def _resolve_star_options(self):
        """Fill unset star_* options from `star_variant` (which then owns them all) or the documented defaults."""
        if self.star_variant is None:
            for field, value in STAR_DEFAULTS.items():
                if getattr(self, field) is None:
                    setattr(self, field, value)
            return
        if self.star_variant not in STAR_VARIANTS:
            raise UserError(
                f"star_variant must be one of {', '.join(STAR_VARIANTS)} or null, got {self.star_variant!r}"
            )
        for field, value in STAR_VARIANTS[self.star_variant].items():
            given = getattr(self, field)
            if given is not None and given != value:
                raise UserError(
                    f"star_variant {self.star_variant} sets {field}={value}; remove {field}={given} from the recipe"
                )
            setattr(self, field, value)

    def _check_ranges(self):
        """Values of the right type but outside what the run can use."""
        for name in ("teacher", "student", "data_source"):
            if not getattr(self, name).strip():
                raise UserError(f"{name} must not be empty")
        if not self.train_splits or not all(isinstance(split, str) and split for split in self.train_splits):
            raise UserError(
                f"train_splits must be a split name or a non-empty list of names, got {brief(self.train_splits)}"
            )
        for name in ("teacher_layers", "reuse_layers", "trainable_layers"):
            layers = getattr(self, name)
            if layers is not None and not all(
                isinstance(layer, int) and not isinstance(layer, bool) for layer in layers
            ):
                raise UserError(f"{name} must list integers (1-based layers), got {brief(layers)}")
        for name in ("student_config", "teacher_config"):
            if not all(isinstance(key, str) for key in getattr(self, name) or {}):
                raise UserError(f"{name} must map field names to values, got {brief(getattr(self, name))}")
        for name in ("hint_layer_weight", "last_layer_weight", "star_layer_weight", "star_intra_weight"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise UserError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.effective_batch_size is not None and self.effective_batch_size < 1:
            raise UserError(
                f"effective_batch_size must be a positive number of utterances or null, got {self.effective_batch_size}"
            )


# Distillation defaults for TrainingArguments (spec: AdamW (0.9, 0.98), eps 1e-6, weight decay 0.01,
# 5 % linear warm-up then linear decay); a recipe may replace any of them.
TRAINING_DEFAULTS = dict(
    adam_beta1=0.9,
    adam_beta2=0.98,
    adam_epsilon=1e-6,
    weight_decay=0.01,
    lr_scheduler_type="linear",
    warmup_steps=0.05,
    train_sampling_strategy="group_by_length",
    eval_strategy="epoch",
    save_strategy="epoch",
    logging_steps=50,
    dataloader_num_workers=4,  # at most the CPUs available (see `available_cores`)
    # Parameters a mode does not use are frozen (build_student), so DDP needs no unused-parameter search.
    ddp_find_unused_parameters=False,
    # No gradient clipping: the release never clipped (Lightning's default; its optimiser does not
    # clip). 0 switches off the Trainer's default of 1.0; a recipe may set a norm.
    max_grad_norm=0.0,
)
# Fixed: the dataset keeps its audio column for the collator; lengths come from num_samples; we
# rotate checkpoints ourselves (best-k by eval_loss plus last).
TRAINING_FIXED = dict(
    remove_unused_columns=False,
    length_column_name="num_samples",
    save_total_limit=None,
    metric_for_best_model="eval_loss",
    greater_is_better=False,
    label_names=[],
)


def _parse_scalar(text, kind):
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ValueError(text)
    return kind(text)


def _options(annotation):
    """The alternatives of a (possibly Optional / union) annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def check_value_type(value: typing.Any, annotation: typing.Any, key: str) -> None:
    """Refuse a value whose type the field does not take: `seed=1.5`, `learning_rate=[1]`, `student_config=5`.

    Fields typed with enums or classes are left to their own validation (TrainingArguments checks them);
    an int is accepted where a float is, a bool only where a bool is.
    """
    accepted = []
    for option in _options(annotation):
        kind = typing.get_origin(option) or option
        if kind not in (int, float, str, bool, list, dict, type(None)):
            return
        accepted.append(kind)
    if isinstance(value, bool):
        valid = bool in accepted
    elif isinstance(value, int):
        valid = int in accepted or float in accepted
    else:
        valid = isinstance(value, tuple(accepted))
    if isinstance(value, float) and valid and not math.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {value}")
    if not valid:
        names = {
            int: "an integer",
            float: "a number",
            str: "text",
            bool: "true or false",
            list: "a list",
            dict: "a mapping",
            type(None): "null",
        }
        raise UserError(f"{key} must be {' or '.join(names[kind] for kind in accepted)}, got {brief(value)}")


def _coerce(value, annotation, key):
    """YAML leaves some values as strings (e.g. 5e-3): convert them to the field's scalar type."""
    if not isinstance(value, str):
        return value
    options = typing.get_args(annotation) or (annotation,)
    if str in options:
        return value
    for kind in (bool, int, float):
        if kind in options:
            try:
                return _parse_scalar(value, kind)
            except ValueError:
                raise UserError(f"{key} must be a {kind.__name__}, got {value!r}") from None
    return value


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so `eval_strategy: no` stays the string "no"."""


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


# Recipe keys that name an input file or folder (a Hub id, preset or random-* teacher is left as it is).
PATH_KEYS = ("data_source", "teacher", "student", "deepspeed")


def find_recipe(config: str | os.PathLike) -> Path:
    """The recipe file `config` names: a path, or the name of a bundled recipe (`quickstart`, `armhubert-960h`)."""
    path = Path(config)
    if path.is_file():
        return path
    bundled = BUNDLED_RECIPES / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.name == str(config) and bundled.is_file():  # a bare name, not a path elsewhere
        return bundled
    raise UserError(
        f"recipe {config} not found; give a recipe file or the name of a bundled recipe: {', '.join(recipe_names())}"
    )


def _resolve_paths(recipe: dict[str, typing.Any], folder: Path) -> None:
    """Make the relative input paths of a recipe file absolute against its folder, where they exist there."""
    for key in PATH_KEYS:
        value = recipe.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (folder / value).exists():
            recipe[key] = str((folder / value).resolve())


def _cap_workers(recipe: dict[str, typing.Any]) -> None:
    """A recipe file's `dataloader_num_workers`, at most the CPUs available (the release recipes say 8)."""
    workers, cpus = recipe.get("dataloader_num_workers"), available_cores()
    if isinstance(workers, int) and not isinstance(workers, bool) and workers > cpus:
        logger.info(
            "dataloader_num_workers %d -> %d, the CPUs available; pass dataloader_num_workers=N to set it",
            workers,
            cpus,
        )
        recipe["dataloader_num_workers"] = cpus


def load_recipe(config: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, typing.Any]:
    """The recipe (a file or a bundled recipe's name) as a dict, its relative input paths resolved against the
    file's folder and its worker count capped at the CPUs, then the `key=value` overrides applied (values
    parsed as YAML, never eval; as given)."""
    path = find_recipe(config)
    recipe = load_yaml_file(path, "recipe", _RecipeLoader) or {}
    if not isinstance(recipe, dict):
        raise UserError(f"{path} must be a mapping of key: value lines, found a {type(recipe).__name__}")
    _resolve_paths(recipe, path.resolve().parent)
    _cap_workers(recipe)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise UserError(f"override {override!r} is not of the form key=value")
        try:
            value = parse_yaml_text(text, f"override {key}", _RecipeLoader) if text else None
        except UserError:
            value = text  # not YAML (e.g. a path with a colon): the text itself
        if "." in key:  # one entry of a mapping field, e.g. student_config.hidden_size=64
            top, sub = key.split(".", 1)
            if recipe.get(top) is None:
                recipe[top] = {}
            if not isinstance(recipe[top], dict):
                raise UserError(f"override {override!r}: {top} is not a mapping")
            recipe[top][sub] = value
        else:
            recipe[key] = value
    return recipe


def did_you_mean(key: str, known: typing.Iterable[str]) -> str:
    """` (did you mean a, b?)` with the known names closest to a mistyped `key`, or "" when none is close."""
    close = difflib.get_close_matches(key, sorted(known), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _report_to_default():
    return ["tensorboard"] if is_tensorboard_available() else "none"


def build_arguments(recipe: dict[str, typing.Any]) -> tuple[DistillArguments, TrainingArguments]:
    """(DistillArguments, TrainingArguments) from a recipe dict; unknown keys and bad values raise UserError."""
    distill_fields = {f.name for f in dataclasses.fields(DistillArguments)}
    training_fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key in recipe:
        if key not in distill_fields and key not in training_fields:
            raise UserError(
                f"unknown recipe key {key!r}{did_you_mean(key, distill_fields | training_fields)}; keys are DistillArguments fields "
                "(armhubert/distill/recipe.py) or transformers.TrainingArguments fields"
            )
        if key in TRAINING_FIXED and recipe[key] != TRAINING_FIXED[key]:
            raise UserError(
                f"{key} is fixed to {TRAINING_FIXED[key]!r} by distill_trainer.py; remove it from the recipe"
            )
    if not recipe.get("output_dir") or not isinstance(recipe["output_dir"], str):
        raise UserError("the recipe sets no output_dir folder; add output_dir: <folder> or pass output_dir=<folder>")
    distill_types = typing.get_type_hints(DistillArguments)
    training_types = typing.get_type_hints(TrainingArguments)
    distill_values = {k: _coerce(v, distill_types[k], k) for k, v in recipe.items() if k in distill_fields}
    training_values = {k: _coerce(v, training_types[k], k) for k, v in recipe.items() if k in training_fields}
    for key, value in training_values.items():
        check_value_type(value, training_types[key], key)
    check_training_values(training_values)
    defaults = {
        **TRAINING_DEFAULTS,
        "dataloader_num_workers": min(TRAINING_DEFAULTS["dataloader_num_workers"], available_cores()),
    }
    training_values = {**defaults, "report_to": _report_to_default(), **training_values, **TRAINING_FIXED}
    try:
        distill_args = DistillArguments(**distill_values)
        training_args = TrainingArguments(**training_values)
    except (TypeError, ValueError) as error:
        raise UserError(f"invalid recipe: {str(error).strip().splitlines()[0]}") from None
    return distill_args, training_args


def apply_effective_batch_size(distill_args: DistillArguments, training_args: TrainingArguments) -> None:
    """Set gradient accumulation so that per-GPU batch x GPUs x accumulation = effective_batch_size."""
    if distill_args.effective_batch_size is None:
        return
    per_step = training_args.per_device_train_batch_size * training_args.world_size
    if distill_args.effective_batch_size % per_step:
        raise UserError(
            f"effective_batch_size {distill_args.effective_batch_size} is not a multiple of per_device_train_batch_size "
            f"{training_args.per_device_train_batch_size} x {training_args.world_size} process(es); adjust one of them"
        )
    accumulation = distill_args.effective_batch_size // per_step
    if accumulation != training_args.gradient_accumulation_steps:
        logger.warning(
            "gradient_accumulation_steps %d -> %d so that %d process(es) x %d x %d = effective_batch_size %d",
            training_args.gradient_accumulation_steps,
            accumulation,
            training_args.world_size,
            training_args.per_device_train_batch_size,
            accumulation,
            distill_args.effective_batch_size,
        )
        training_args.gradient_accumulation_steps = accumulation
