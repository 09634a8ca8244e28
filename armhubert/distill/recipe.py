"""Distillation recipes: `DistillTrainingArguments`, read by `HfArgumentParser` from a YAML recipe and the command line.

A recipe is a flat YAML mapping of `DistillTrainingArguments` fields (the distillation options and every
`transformers.TrainingArguments` field), given as a file or by the name of a bundled recipe (`quickstart`,
`armhubert-960h`, ...: `conf/`). The command line changes it in two spellings:

- `key=value` replaces a recipe entry; the value is YAML, as in the file (`eval_split=null`,
  `train_splits=[a, b]`; `student_config.hidden_size=64` sets one entry of a mapping);
- `--key value` (or `--key-value`-style dashes) is the `HfArgumentParser` flag of the same field, and wins
  over both the file and `key=value`.

The file and the `key=value` entries are read exactly as flags would be: each entry becomes `--key value`
for the one parser, so a value has its field's type wherever it was written (`seed: 1.5` is refused like
`--seed 1.5`). Relative input paths in a recipe file (`data_source`, `teacher`, `student`, `deepspeed`) are
relative to the file's folder, so a recipe runs from any folder; on the command line they are relative to
the current folder, as any argument. Every refusal is one `UserError` line naming the key.
"""

import argparse
import dataclasses
import difflib
import functools
import logging
import os
import re
import typing
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Literal

import yaml
from transformers.integrations import is_tensorboard_available
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from configuration_armhubert import PRESETS

from ..cli import (
    CommandParser,
    UserError,
    above,
    at_least,
    between,
    check_fields,
    first_line,
    refuse_broken,
    type_options,
)
from ..files.untrusted import brief, load_yaml_file, parse_yaml_text
from ..resources import BUNDLED_RECIPES, HUB_DATASET, recipe_names
from ..threads import available_cores
from ..training.guarded_trainer import BoundedTrainingArguments
from .losses import STAR_LAYER0, STAR_NORMALIZATIONS, STAR_REDUCTIONS

logger = logging.getLogger(__name__)

PROG = "distill_trainer.py"
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
# TrainingArguments fields a distillation run needs as they are: the dataset keeps its audio column for the
# collator; lengths come from num_samples; checkpoints are rotated by the trainer (best-k by eval_loss plus last).
TRAINING_FIXED = dict(
    remove_unused_columns=False,
    length_column_name="num_samples",
    save_total_limit=None,
    metric_for_best_model="eval_loss",
    greater_is_better=False,
    label_names=[],
)


# Rules between recipe values (`check_fields` checks them after each field's own range and choices): the fixed
# Trainer settings, the star_* options a star_variant owns, the names a run needs, and what the teacher cache keeps.
RECIPE_RULES = (
    *(
        (
            lambda args, key=key, value=value: getattr(args, key) != value,
            f"{key} is fixed to {value!r} by {PROG}; remove it from the recipe",
        )
        for key, value in TRAINING_FIXED.items()
    ),
    *(
        (
            lambda args, variant=variant, key=key, value=value: (
                args.star_variant == variant and getattr(args, key) not in (None, value)
            ),
            f"star_variant {variant} sets {key}={value}; remove {key}={{args.{key}}} from the recipe",
        )
        for variant, options in STAR_VARIANTS.items()
        for key, value in options.items()
    ),
    *(
        (lambda args, name=name: not getattr(args, name).strip(), f"{name} must not be empty")
        for name in ("teacher", "student", "data_source")
    ),
    (
        lambda args: args.cache_teacher_outputs and args.distill_mode == "masking",
        "cache_teacher_outputs keeps clean teacher passes only; use it with regression or star",
    ),
)
# Rules over the recipe and the launch: the processes it started (`world_size`) share one optimiser step.
LAUNCH_RULES = (
    (
        lambda args: (
            args.effective_batch_size is not None
            and args.effective_batch_size % (args.per_device_train_batch_size * args.world_size) != 0
        ),
        "effective_batch_size {args.effective_batch_size} is not a multiple of per_device_train_batch_size "
        "{args.per_device_train_batch_size} x {args.world_size} process(es); adjust one of them",
    ),
)


def _report_to_default() -> list[str] | str:
    return ["tensorboard"] if is_tensorboard_available() else "none"


def _arg(default, help_text, bounds=None):
    metadata = {"help": help_text} if bounds is None else {"help": help_text, "bounds": bounds}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class DistillTrainingArguments(BoundedTrainingArguments):
    """Every option of a distillation run: what to distil, from what, on which data, with which loss, and the
    `TrainingArguments` (whose defaults here are the release's optimiser and schedule).

    `__post_init__` refuses what no run can use (out-of-range values; RULES: a fixed Trainer setting changed,
    options that do not go together) with one line each, so the code after parsing trusts every field.
    `HfArgumentParser` reads it: a value has the type its field declares wherever it was written (recipe file
    or command line).
    """

    distill_mode: Literal[DISTILL_MODES] = _arg(
        "masking", "masking (MaskHuBERT/ARM*), star (STaRHuBERT) or regression (no masking)."
    )
    teacher: str = _arg(
        "facebook/hubert-base-ls960",
        "A transformers speech encoder's model id or folder (HuBERT, WavLM, wav2vec2, data2vec-audio, "
        "wav2vec2-conformer, UniSpeech-SAT, Whisper, w2v-BERT 2.0), a CTranslate2 Whisper folder, or random-hubert / "
        "random-wavlm / random-wav2vec2 / random-data2vec-audio / random-wav2vec2-conformer / random-unispeech-sat / "
        "random-whisper / random-w2v-bert (random weights from teacher_config, for offline runs).",
    )
    teacher_config: dict | str | None = _arg(None, "Config fields of a random-* teacher (a mapping, or its YAML).")
    teacher_layers: list[int] | None = _arg(
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
    student_config: dict | str | None = _arg(
        None, "Student config fields that replace the preset's (a mapping, or its YAML)."
    )
    reuse_layers: list[int] | None = _arg(
        None, "`student: mirror`: the layers (1-based, from 2) that reuse the previous layer's attention map."
    )
    trainable_layers: list[int] | None = _arg(
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
    train_splits: list[str] = _arg(list(LIBRISPEECH_960H), "LibriSpeech training split(s), concatenated.")
    eval_split: str | None = _arg("dev-clean", "Validation split (unmasked student vs unmasked teacher); null: none.")
    crop_seconds: float | None = _arg(
        None, "Crop longer utterances to a window of this many seconds (null: whole).", above(0)
    )
    mask_prob: float = _arg(
        0.8, "Masking distillation: mask probability (0.8 for 960 h, 0.4 for 100 h).", between(0, 1)
    )
    mask_length: int = _arg(10, "Mean span length; span lengths are uniform on 0..2*mask_length.", at_least(1))
    mask_min_spans: int = _arg(2, "Fewest spans per utterance.", at_least(0))
    mask_min_space: int = _arg(1, "Unmasked frames kept between spans.", at_least(0))
    mask_same_count: bool = _arg(True, "Thin every row to the batch's smallest masked count (as the release).")
    loss_type: Literal["mse", "l1"] = _arg("mse", "Frame error of masking / regression losses: mse or l1.")
    hint_layer_weight: float = _arg(0.1, "Weight of layers 1..L-1 (hint) in masking / regression losses.", at_least(0))
    last_layer_weight: float = _arg(1.0, "Weight of the last layer.", at_least(0))
    loss_normalization: Literal[LOSS_NORMALIZATIONS] = _arg(
        "valid",
        "valid: exclude padded frames, divide by real frames; original: as the release (padding counted, / B*T).",
    )
    star_variant: Literal[tuple(STAR_VARIANTS)] | None = _arg(
        None,
        "STaR: public-reimplementation = the public reimplementation that reached the paper's numbers (raw Grams, "
        "MSE over all T x T entries, CNN output as layer 0); it sets the star_* options below. null: those options.",
    )
    star_normalization: Literal[STAR_NORMALIZATIONS] | None = _arg(
        None, "STaR Gram normalisation: l2 (cosine, default), dim (/ width) or none (raw)."
    )
    star_reduction: Literal[STAR_REDUCTIONS] | None = _arg(
        None, "STaR: mean over real (t, t') entries (default), or sum per utterance."
    )
    star_layer0: Literal[STAR_LAYER0] | None = _arg(
        None,
        "STaR: layer 0 of the intra-layer Grams: encoder-input (default; after the positional conv) or cnn (the "
        "CNN features as the transformer receives them, before the positional conv).",
    )
    star_layer_weight: float | None = _arg(None, "STaR: weight of the layer-wise TGM loss (default 1).", at_least(0))
    star_intra_weight: float | None = _arg(None, "STaR: weight of the intra-layer TGM loss (default 1).", at_least(0))
    star_recompute: bool = _arg(
        True, "STaR: recompute each layer's Grams in backward (memory O(B T^2), not O(L B T^2))."
    )
    effective_batch_size: int | None = _arg(
        None,
        "Utterances per optimiser step over all GPUs; sets gradient_accumulation_steps for the actual GPU count.",
        at_least(1),
    )
    keep_best_checkpoints: int | None = _arg(
        3, "Keep this many checkpoints with the best eval_loss, plus the last.", at_least(1)
    )

    # Distillation defaults of TrainingArguments (spec: AdamW (0.9, 0.98), eps 1e-6, weight decay 0.01,
    # 5 % linear warm-up then linear decay); a recipe may replace any of them.
    adam_beta1: float = _arg(0.9, "AdamW beta1.")
    adam_beta2: float = _arg(0.98, "AdamW beta2 (the release's 0.98).")
    adam_epsilon: float = _arg(1e-6, "AdamW epsilon.")
    weight_decay: float = _arg(0.01, "Weight decay of every parameter but biases.")
    warmup_steps: float = _arg(0.05, "Warm-up: steps, or a fraction of all steps when below 1 (0.05: 5 percent).")
    train_sampling_strategy: str = _arg("group_by_length", "Batches of similar lengths (less padding).")
    eval_strategy: IntervalStrategy | str = _arg("epoch", "When to evaluate (no eval_split: never).")
    save_strategy: SaveStrategy | str = _arg("epoch", "When to save a checkpoint.")
    logging_steps: float = _arg(50, "Steps between logged losses.")
    dataloader_num_workers: int = dataclasses.field(
        default_factory=lambda: min(4, available_cores()),
        metadata={"help": "Data-loading processes (default 4, at most the CPUs available)."},
    )
    # Parameters a mode does not use are frozen (build_student), so DDP needs no unused-parameter search.
    ddp_find_unused_parameters: bool | None = _arg(
        False, "DDP's search for parameters without gradient (switched on for a student that drops layers)."
    )
    # No gradient clipping: the release never clipped (Lightning's default; its optimiser does not clip).
    max_grad_norm: float = _arg(0.0, "Gradient clipping norm; 0 (the release) clips nothing.")
    report_to: None | str | list[str] = dataclasses.field(
        default_factory=_report_to_default, metadata={"help": "Loggers: tensorboard when installed, else none."}
    )
    # TRAINING_FIXED: refused when changed.
    remove_unused_columns: bool = _arg(False, "Fixed: the collator reads the audio column.")
    length_column_name: str = _arg("num_samples", "Fixed: lengths for length-grouped batches.")
    save_total_limit: int | None = _arg(None, "Fixed: keep_best_checkpoints rotates checkpoints.")
    metric_for_best_model: str | None = _arg("eval_loss", "Fixed: checkpoints are ranked by eval_loss.")
    greater_is_better: bool | None = _arg(False, "Fixed: a lower eval_loss is better.")
    label_names: list[str] | None = _arg([], "Fixed: distillation has no labels.")

    RULES = (*RECIPE_RULES, *BoundedTrainingArguments.RULES)

    def __post_init__(self):
        self._read_config_mappings()
        if isinstance(self.train_splits, str):  # a Python caller's single split
            self.train_splits = [self.train_splits]
        check_fields(self, prefix="", null="null")  # choices and ranges, every number finite, then RULES
        self._resolve_star_options()
        if self.eval_split is None:
            self.eval_strategy = "no"  # nothing to evaluate on
        super().__post_init__()

    def _read_config_mappings(self):
        """`student_config` / `teacher_config` given as text (a command-line flag) are read as YAML mappings."""
        for name in ("student_config", "teacher_config"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = parse_yaml_text(value, name, RecipeLoader)
            if value is not None and not (isinstance(value, dict) and all(isinstance(key, str) for key in value)):
                raise UserError(f"{name} must be a mapping or null, got {brief(value)}")
            setattr(self, name, value)

    def _resolve_star_options(self):
        """Fill unset star_* options from `star_variant` (which then owns them all: a different value given is
        refused by RECIPE_RULES) or the documented defaults."""
        chosen = STAR_DEFAULTS if self.star_variant is None else STAR_VARIANTS[self.star_variant]
        for field, value in chosen.items():
            if getattr(self, field) is None or self.star_variant is not None:
                setattr(self, field, value)


@functools.cache
def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(DistillTrainingArguments)


class RecipeLoader(yaml.SafeLoader):
    """YAML for recipes: YAML 1.2 booleans (only true / false, so `eval_strategy: no` stays the text "no" that
    the field takes), and a key given twice is refused (the last would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses it below
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


# Recipe keys that name an input file or folder (a Hub id, preset or random-* teacher is left as it is).
PATH_KEYS = ("data_source", "teacher", "student", "deepspeed")
# A command-line word that replaces a recipe entry: `key=value` or `mapping.key=value`.
OVERRIDE = re.compile(r"[A-Za-z_]\w*(?:\.[\w.]+)?=")


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


def _override(recipe: dict[str, typing.Any], word: str) -> None:
    """Apply one `key=value` word (the value read as YAML, never eval; text that is not YAML stays text)."""
    key, _, text = word.partition("=")
    try:
        value = parse_yaml_text(text, f"override {key}", RecipeLoader) if text else None
    except UserError:
        value = text  # not YAML (e.g. a path with a colon): the text itself
    top, dot, sub = key.partition(".")
    if not dot:
        recipe[key] = value
        return
    mapping = recipe.get(top) or {}  # one entry of a mapping field, e.g. student_config.hidden_size=64
    if not isinstance(mapping, dict):
        raise UserError(f"override {word!r}: {top} is not a mapping")
    recipe[top] = {**mapping, sub: value}


def load_recipe(config: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, typing.Any]:
    """The recipe (a file or a bundled recipe's name) as a dict, its relative input paths resolved against the
    file's folder and its worker count capped at the CPUs, then the `key=value` overrides applied."""
    path = find_recipe(config)
    recipe = load_yaml_file(path, "recipe", RecipeLoader) or {}
    if not isinstance(recipe, dict):
        raise UserError(f"{path} must be a mapping of key: value lines, found a {type(recipe).__name__}")
    _resolve_paths(recipe, path.resolve().parent)
    _cap_workers(recipe)
    for word in overrides:
        _override(recipe, word)
    return recipe


def did_you_mean(key: str, known: typing.Iterable[str]) -> str:
    """` (did you mean a, b?)` with the known names closest to a mistyped `key`, or "" when none is close."""
    close = difflib.get_close_matches(key, sorted(known), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


class RecipeParser(CommandParser):
    """The command parser of `DistillTrainingArguments`."""

    def __init__(self, **kwargs):
        super().__init__([DistillTrainingArguments], prog=PROG, **kwargs)

    def fields(self) -> set[str]:
        return {action.dest for action in self._actions if action.dest in _field_types()}


def command_parser() -> RecipeParser:
    """The command line of distill_trainer.py: every field's flag, `--config` and `--resume`."""
    parser = RecipeParser(
        description="Distil an ARMHuBERT-family student from a HuBERT / WavLM teacher on LibriSpeech.",
        epilog="Example: accelerate launch distill_trainer.py --config conf/armhubert-s-100h.yaml --bf16 --fp16 false"
        " (or bf16=true fp16=false). key=value words replace recipe entries (YAML values); --key value flags win.",
    )
    parser.add_argument(
        "--config",
        required=True,
        help="recipe YAML file, or the name of a bundled recipe (conf/<name>.yaml), e.g. quickstart or armhubert-960h",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="last",
        dest="resume_from_checkpoint",
        metavar="CHECKPOINT",
        help="continue the last complete checkpoint in output_dir (or the given checkpoint folder) exactly; "
        "the same as --resume_from_checkpoint",
    )
    return parser


def _given_flags(words: Sequence[str]) -> dict[str, typing.Any]:
    """The values of the `--key value` flags among `words` (only those given), typed by the parser."""
    parser = command_parser()
    if {"-h", "--help"} & set(words):
        parser.parse_args(["--help"])  # prints the options with their defaults, and exits
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # so that the namespace holds only what was given
    given, unknown = parser.parse_known_args(words)
    if unknown:
        word = unknown[0]
        flags = [option for action in parser._actions for option in action.option_strings]
        hint = did_you_mean(word.partition("=")[0], flags) if word.startswith("-") else ""
        raise UserError(f"unrecognised argument {word!r}{hint}; give options as --key value or key=value")
    return vars(given)


def _word(value: typing.Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _type_name(annotation: typing.Any) -> str:
    """A field's type as a message names it: `float`, `list[int] or null`."""
    return " or ".join(
        "null"
        if option is type(None)
        else str(option).replace("typing.", "")
        if typing.get_args(option)
        else getattr(option, "__name__", str(option))
        for option in type_options(annotation)
    )


def _as_flags(recipe: dict[str, typing.Any], parser: RecipeParser) -> tuple[list[str], dict[str, typing.Any]]:
    """(command-line words, parser defaults) that give the parser `recipe`: every scalar and list the way a flag
    gives it, so that the parser types it; null, mappings and the lists of list-or-text fields (`report_to`),
    which no word can carry, as defaults where the field takes them."""
    list_fields = {action.dest for action in parser._actions if action.nargs == "+"}
    words, defaults = [], {}
    for key, value in recipe.items():
        if key in list_fields and isinstance(value, (list, str, int, float)):
            words += [f"--{key}", *map(_word, value if isinstance(value, list) else [value])]
        elif isinstance(value, (str, int, float)):
            words.append(f"--{key}={_word(value)}")
        elif type(value) in {typing.get_origin(option) or option for option in type_options(_field_types()[key])}:
            defaults[key] = value
        else:
            raise UserError(f"{key} takes {_type_name(_field_types()[key])}, not {brief(value)}")
    return words, defaults


def recipe_arguments(recipe: dict[str, typing.Any]) -> DistillTrainingArguments:
    """The recipe dict read by the one parser into `DistillTrainingArguments`; any unknown key or bad value is a
    `UserError` naming it."""
    parser = RecipeParser()
    known = parser.fields()
    for key in recipe:
        if key not in known:
            raise UserError(
                f"unknown recipe key {key!r}{did_you_mean(key, known)}; keys are DistillTrainingArguments fields "
                "(armhubert/distill/recipe.py), TrainingArguments' included"
            )
    if not recipe.get("output_dir"):
        raise UserError("the recipe sets no output_dir folder; add output_dir: <folder> or pass output_dir=<folder>")
    words, defaults = _as_flags(recipe, parser)
    parser.set_defaults(**defaults)
    try:
        (arguments,) = parser.parse_args_into_dataclasses(words, look_for_args_file=False)
    except (TypeError, ValueError) as error:  # TrainingArguments' own refusals
        raise UserError(f"invalid recipe: {first_line(error)}") from None
    return arguments


def parse_command_line(argv: Sequence[str]) -> tuple[DistillTrainingArguments, dict[str, typing.Any]]:
    """(arguments, recipe) of a distill_trainer.py command line: `--config`'s recipe, then its `key=value` words,
    then its `--key value` flags. The recipe dict is what `distill_recipe.yaml` records."""
    overrides = [word for word in argv if OVERRIDE.match(word)]
    flags = _given_flags([word for word in argv if not OVERRIDE.match(word)])
    recipe = load_recipe(flags.pop("config"), overrides)
    recipe.update(flags)
    return recipe_arguments(recipe), recipe


def apply_effective_batch_size(arguments: DistillTrainingArguments) -> None:
    """Set gradient accumulation so that per-GPU batch x GPUs x accumulation = effective_batch_size."""
    refuse_broken(LAUNCH_RULES, args=arguments)
    if arguments.effective_batch_size is None:
        return
    accumulation = arguments.effective_batch_size // (arguments.per_device_train_batch_size * arguments.world_size)
    if accumulation != arguments.gradient_accumulation_steps:
        logger.warning(
            "gradient_accumulation_steps %d -> %d so that %d process(es) x %d x %d = effective_batch_size %d",
            arguments.gradient_accumulation_steps,
            accumulation,
            arguments.world_size,
            arguments.per_device_train_batch_size,
            accumulation,
            arguments.effective_batch_size,
        )
        arguments.gradient_accumulation_steps = accumulation
