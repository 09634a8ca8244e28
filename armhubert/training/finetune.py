"""What the fine-tuning recipes (`scripts/finetune_ctc.py`, `scripts/finetune_classification.py`) share.

Model arguments and loading of the task model, argument parsing and seeding, audio batching, the
minimum-duration check and the train / evaluate / save tail. Audio is read by `armhubert.speech.audio`, the
final save is `armhubert.training.guarded_trainer.save_trained_model`; nothing here depends on distillation.

    model_args, data_args, training_args = parse_run_arguments(DataArguments, argv, "finetune_x.py")
    model = load_head_model(ARMHubertForCTC, model_args, vocab_size=32)
    ...
    return train_evaluate_and_save(trainer, training_args.output_dir, make_card)
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    BatchFeature,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from configuration_armhubert import PRESETS, SAMPLING_RATE, ARMHubertConfig

from ..cli import CommandParser, UserError, above, check_fields
from ..distill.resume import ResumeCheckpoint, check_resume_checkpoint, find_resume_checkpoint
from ..files.lock import output_lock
from ..files.placement import check_apart, check_output_folder
from ..files.untrusted import check_code_text
from ..folders.model_folders import ModelFolder, open_model_folder
from ..folders.remote_code import add_remote_code_entries
from ..speech.audio import DataError, read_audio, window
from ..threads import use_machine_threads
from .checkpoints import CheckpointRotation, train_keeping_complete_checkpoints
from .guarded_trainer import BoundedTrainingArguments, save_trained_model

FLAG_RESUME = "--resume_from_checkpoint"


@dataclass
class ModelArguments:
    """Which encoder to start from and how to train it (`--model_name_or_path` or `--preset`, masking, freezing).

    Exactly one of the two model choices is given (`RULES`), checked when the arguments are made: the command
    parser's and a Python caller's alike, so `load_head_model` trusts it."""

    RULES = (
        (
            lambda args: bool(args.model_name_or_path and args.preset),
            "give either --model_name_or_path or --preset, not both",
        ),
        (
            lambda args: not args.model_name_or_path and not args.preset,
            "no model given: pass --model_name_or_path (a converted or distilled model folder, or a Hub id) "
            "or --preset NAME for random weights",
        ),
    )

    model_name_or_path: str = field(
        default=None,
        metadata={
            "help": "Encoder to fine-tune: a folder written by convert_checkpoint.py or distill_trainer.py, or a Hub id."
        },
    )
    preset: str = field(
        default=None,
        metadata={"help": f"Start from random weights of a release shape instead (smoke tests): {', '.join(PRESETS)}."},
    )
    freeze_feature_encoder: bool = field(default=True, metadata={"help": "Keep the CNN feature encoder frozen."})
    freeze_base_model: bool = field(
        default=False,
        metadata={"help": "Train only the head (and layer weights), as SUPERB does with a frozen upstream."},
    )
    use_weighted_layer_sum: bool = field(
        default=False,
        metadata={"help": "Feed the head a learned weighted sum of the layers SUPERB used instead of the last output."},
    )
    apply_spec_augment: bool = field(default=True, metadata={"help": "SpecAugment-style masking while training."})
    mask_time_prob: float = field(
        default=0.05, metadata={"help": "Share of frames masked (mask_time_length-frame spans)."}
    )
    mask_time_length: int = field(default=10, metadata={"help": "Length of a time-mask span, in frames."})
    mask_feature_prob: float = field(default=0.0, metadata={"help": "Share of channels zeroed."})
    mask_feature_length: int = field(default=10, metadata={"help": "Length of a channel-mask span."})
    final_dropout: float = field(default=0.1, metadata={"help": "Dropout before the CTC head."})
    layerdrop: float = field(default=0.0, metadata={"help": "Probability of skipping a whole layer while training."})
    # The checked --model_name_or_path (`parse_run_arguments` opens it), not an argument.
    model_folder: ModelFolder | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        check_fields(self)

    def open_model_folder(self) -> ModelFolder:
        """--model_name_or_path through the model-folder door, once: it takes one model's folder."""
        if self.model_folder is None:
            self.model_folder = open_model_folder(self.model_name_or_path, subfolder_option=None)
        return self.model_folder


def max_duration_field() -> Any:
    """The --max_duration argument of a fine-tuning data class: seconds, checked by `check_fields`."""
    return field(
        default=20.0,
        metadata={"help": "Drop training utterances longer than this (seconds).", "bounds": above(0, 86_400)},
    )


@dataclass
class OutputArguments:
    """Whether --output_dir may hold a previous output of these scripts (replaced at the end)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace a previous fine-tuned model in --output_dir (a folder of other files is refused)."},
    )


@dataclass
class FinetuneTrainingArguments(BoundedTrainingArguments):
    """`TrainingArguments` (their ranges declared) whose checkpoints stay small unless asked: one kept, model weights only.
    --output_dir is required (the Trainer's default `trainer_output` is no place for a model a user asked for)."""

    RULES = (
        (lambda args: args.output_dir in (None, "trainer_output"), "--output_dir is required"),
        *BoundedTrainingArguments.RULES,
    )

    save_total_limit: int | None = field(
        default=1, metadata={"help": "Keep at most this many checkpoint-N folders (default 1: the last)."}
    )
    save_only_model: bool = field(
        default=True,
        metadata={
            "help": "Checkpoints hold the model only, no optimizer / scheduler / RNG state (default); pass "
            "--save_only_model false to be able to continue a run with --resume_from_checkpoint."
        },
    )
    # The checkpoint --resume_from_checkpoint names, its trainer state read (`parse_run_arguments`), not an argument.
    resume_checkpoint: ResumeCheckpoint | None = field(default=None, init=False, repr=False)


def parse_arguments(dataclass_types: Sequence[type], argv: Sequence[str] | None, prog: str) -> tuple:
    """The command parser over the dataclasses + FinetuneTrainingArguments; invalid values are one UserError line."""
    return CommandParser((*dataclass_types, FinetuneTrainingArguments), prog=prog).parse_into_dataclasses(argv)


def parse_run_arguments(
    data_arguments_class: type, argv: Sequence[str] | None, prog: str
) -> tuple[ModelArguments, Any, TrainingArguments]:
    """Parse and check (model, data, training) arguments of a fine-tuning run and seed it.

    The output folder must be apart from every input (the model folder and the data class's
    `INPUT_FIELDS`) and empty, or hold a previous output of these scripts with --overwrite_output_dir:
    a user's own files are never overwritten.
    """
    parsed = parse_arguments((ModelArguments, data_arguments_class, OutputArguments), argv, prog)
    model_args, data_args, output_args, training_args = parsed  # each one's fields and RULES checked
    if model_args.model_name_or_path:  # checked before any data is read (and progress shown)
        model_args.open_model_folder()
    check_code_text(training_args.output_dir, "--output_dir")  # both appear in the model card's code
    check_code_text(model_args.model_name_or_path or "", "--model_name_or_path")
    data_paths = [getattr(data_args, name) for name in getattr(data_arguments_class, "INPUT_FIELDS", ())]
    inputs = [model_args.model_name_or_path, *data_paths]
    resume = training_args.resume_from_checkpoint
    if resume:  # continue a run in its own output_dir: a complete checkpoint, the folder apart from the inputs
        last = str(resume).lower() in ("true", "last")
        checkpoint = find_resume_checkpoint("last" if last else resume, training_args.output_dir, FLAG_RESUME)
        training_args.resume_checkpoint = checkpoint
        training_args.resume_from_checkpoint = str(checkpoint.folder)
        check_apart(training_args.output_dir, inputs)
    else:
        check_output_folder(
            training_args.output_dir, output_args.overwrite_output_dir, inputs, flag="--overwrite_output_dir"
        )
    # Rows keep their undecoded audio for the collator; length grouping reads `num_samples`.
    training_args.remove_unused_columns = False
    training_args.length_column_name = "num_samples"
    if training_args.ddp_find_unused_parameters is None:
        # Every parameter of a task model gets a gradient each step (it builds only the heads it reads),
        # so DDP needs no search for unused ones, unless layer drop skips whole layers.
        training_args.ddp_find_unused_parameters = model_args.layerdrop > 0
    set_seed(training_args.seed)
    use_machine_threads(prog)
    return model_args, data_args, training_args


def load_head_model(
    head_class: type[PreTrainedModel], model_args: ModelArguments, **head_config: Any
) -> PreTrainedModel:
    """The task model, from a saved encoder / model (`model_name_or_path`) or a random preset.

    `head_config` sets head fields (vocab_size, num_labels, ...). The ARM recipes' distillation-only
    gradient scaling (`layer_grad_scale`) is switched off: it damps lower layers' gradients by up to 1/L.
    """
    overrides = dict(
        use_weighted_layer_sum=model_args.use_weighted_layer_sum,
        apply_spec_augment=model_args.apply_spec_augment,
        mask_time_prob=model_args.mask_time_prob,
        mask_time_length=model_args.mask_time_length,
        mask_feature_prob=model_args.mask_feature_prob,
        mask_feature_length=model_args.mask_feature_length,
        final_dropout=model_args.final_dropout,
        layerdrop=model_args.layerdrop,
        layer_grad_scale=False,
        **head_config,
    )
    if model_args.model_name_or_path:  # or else a preset: one of the two (ModelArguments.RULES)
        # the installed class: no folder code
        model = model_args.open_model_folder().load(head_class.from_pretrained, **overrides)
    else:
        try:
            model = head_class(ARMHubertConfig.from_preset(model_args.preset, **overrides))
        except ValueError as error:
            raise UserError(str(error)) from None
    if model_args.freeze_feature_encoder:
        model.freeze_feature_encoder()
    if model_args.freeze_base_model:
        model.freeze_base_model()
    return model


def decode_audio_batch(
    rows: Sequence[dict],
    feature_extractor: Callable[..., BatchFeature],
    transform: Callable[[np.ndarray, dict], np.ndarray] | None = None,
) -> BatchFeature:
    """Decode each row's undecoded `audio` dict, apply `transform(samples, row)` if given, and pad.

    Returns `input_values` (batch, samples) float32 at 16 kHz and `attention_mask` (batch, samples).
    An empty file is a DataError: it would give the model no frame to classify or transcribe.
    """
    arrays = []
    for row in rows:
        samples = read_audio(row["audio"], target_rate=SAMPLING_RATE)
        if samples.size == 0:
            raise DataError(f"audio {row['audio'].get('path') or row.get('id')} is empty")
        arrays.append(samples if transform is None else transform(samples, row))
    return feature_extractor(
        arrays, sampling_rate=SAMPLING_RATE, padding=True, return_attention_mask=True, return_tensors="pt"
    )


def random_window(samples: np.ndarray, max_samples: int, generator: torch.Generator | None = None) -> np.ndarray:
    """A window of at most `max_samples` of `samples` (time,) at a uniformly random offset.

    Training augmentation for small data: each epoch sees other windows of the same utterances. The
    offset comes from torch's random numbers (`generator`, else the global one), so a run repeats under
    the Trainer's seed and data-loader workers, each seeded apart by torch, draw different windows.
    """
    return window(samples, max_samples, lambda choices: int(torch.randint(0, choices, (), generator=generator)))


def check_min_duration(dataset: Any, config: ARMHubertConfig, what: str) -> None:
    """Refuse utterances (`num_samples` column) shorter than the CNN's receptive field, naming one."""
    field_samples = config.receptive_field
    too_short = dataset.filter(lambda n: n < field_samples, input_columns="num_samples")
    if len(too_short):
        example = too_short[0].get("id") or too_short[0]["audio"].get("path")
        raise DataError(
            f"{len(too_short)} {what} utterance(s) are shorter than {field_samples} samples "
            f"({1000 * field_samples / SAMPLING_RATE:.0f} ms), e.g. {example}; remove them"
        )


def train_evaluate_and_save(
    trainer: Trainer, output_dir: str | Path, make_card: Callable[[dict, int], str]
) -> dict[str, Any]:
    """Train, evaluate, then save model, processor and `make_card(metrics, steps)` atomically.

    The saved config lists every Auto class and the head's pipeline (`add_remote_code_entries`).
    Checkpoint rotation removes only this run's checkpoints (`CheckpointRotation`); a second run into
    the same output_dir at the same time is refused (`output_lock`).
    Returns {"train": TrainOutput, "eval": metrics, "log_history": the Trainer's log entries}.
    """
    resume = getattr(trainer.args, "resume_checkpoint", None)  # FinetuneTrainingArguments' (parse_run_arguments)
    if resume is not None:  # its weights and pickles, as distillation checks them, before the Trainer reads them
        check_resume_checkpoint(resume, trainer)
    trainer.add_callback(CheckpointRotation(trainer.args, keep_last=trainer.args.save_total_limit))
    if not trainer.args.should_save:  # the main process holds the lock for all
        return _train_evaluate_and_save(trainer, output_dir, make_card)
    with output_lock(output_dir, "--output_dir"):
        return _train_evaluate_and_save(trainer, output_dir, make_card)


def final_evaluation(trainer: Trainer) -> dict:
    """The evaluation of the trained model: the one logged at the last step when there was one (the Trainer
    evaluates there whenever `eval_steps` divides the step count), else a new `trainer.evaluate()`."""
    step = trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            if entry.get("step") == step:
                return {name: value for name, value in entry.items() if name != "step"}
            break
    return trainer.evaluate()


def _train_evaluate_and_save(trainer: Trainer, output_dir: str | Path, make_card: Callable[[dict, int], str]) -> dict:
    train_result = train_keeping_complete_checkpoints(trainer, trainer.args.resume_from_checkpoint)
    metrics = final_evaluation(trainer)
    trainer.log_metrics("eval", metrics)
    add_remote_code_entries(trainer.model.config, type(trainer.model))  # the head's own pipeline
    save_trained_model(trainer, output_dir, card=make_card(metrics, train_result.global_step))
    return {"train": train_result, "eval": metrics, "log_history": trainer.state.log_history}
