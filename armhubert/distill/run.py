"""One distillation run: validate everything first, then train and save the student (`distill`)."""

import logging
from collections.abc import Sequence
from pathlib import Path

import datasets
import transformers
import yaml
from transformers import PreTrainedModel, TrainerCallback, TrainingArguments

from configuration_armhubert import SAMPLING_RATE
from pipeline_armhubert import release_feature_extractor

from ..cli import UserError
from ..files.atomic import atomic_write_text
from ..files.lock import output_lock
from ..files.placement import check_output_location
from ..files.untrusted import brief, load_yaml_file
from ..folders.cards import DistillationFacts, distilled_card, format_duration, last_logged
from ..speech.chunking import check_window
from ..speech.librispeech import AudioCollator, load_librispeech
from ..teachers.encoders import TeacherEncoder
from ..training.checkpoints import train_keeping_complete_checkpoints
from ..training.guarded_trainer import save_trained_model
from .masks import recipe_masker
from .models import teacher_and_student
from .recipe import DistillTrainingArguments, apply_effective_batch_size, parse_command_line
from .resume import check_resume_checkpoint, find_resume_checkpoint
from .trainer import DistillTrainer

logger = logging.getLogger(__name__)


def setup_logging(training_args: TrainingArguments) -> None:
    """Timestamped log lines; this package at INFO on the logging process, WARNING on the others."""
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("armhubert").setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))


def _min_samples(teacher: TeacherEncoder, student: PreTrainedModel) -> int:
    """Shortest waveform both models turn into at least one frame (shorter utterances are dropped)."""
    return max(student.config.receptive_field, teacher.min_samples())


def _load_splits(args: DistillTrainingArguments, min_samples: int) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, eval) datasets without utterances shorter than `min_samples` (no eval split: no evaluation)."""

    def load(splits):
        dataset = load_librispeech(args.data_source, splits)
        return dataset.filter(lambda n: n >= min_samples, input_columns="num_samples")

    return load(args.train_splits), load(args.eval_split) if args.eval_split else None


def _parameters(model: PreTrainedModel) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def _training_seconds(train_dataset: datasets.Dataset, max_samples: int | None) -> float:
    """Audio seconds training reads: each utterance up to its crop (a 20 h file cropped to 2 s counts 2 s)."""
    lengths = train_dataset["num_samples"]
    return sum(lengths if max_samples is None else (min(n, max_samples) for n in lengths)) / SAMPLING_RATE


# The recipe keys that make two runs the same model: a checkpoint of another teacher, student or objective
# would load (or be refused deep inside) with no word about what it is.
RUN_IDENTITY = ("distill_mode", "teacher", "teacher_config", "student", "student_config", "reuse_layers")
RECIPE_FILE = "distill_recipe.yaml"


def check_same_run(checkpoint: str | Path, recipe: dict) -> None:
    """Refuse resuming a checkpoint whose run (the `distill_recipe.yaml` beside it) trained another model."""
    saved_path = Path(checkpoint).parent / RECIPE_FILE
    if not saved_path.is_file():
        return  # a checkpoint copied on its own: the weights check (check_resume_checkpoint) still applies
    saved = load_yaml_file(saved_path, str(saved_path))
    if not isinstance(saved, dict):
        raise UserError(f"--resume: {saved_path} is not a recipe; resume a checkpoint of a distill_trainer.py run")
    differ = [key for key in RUN_IDENTITY if saved.get(key) != recipe.get(key)]
    if differ:
        key = differ[0]
        raise UserError(
            f"--resume: {checkpoint} belongs to a run with {key}={brief(saved.get(key))}, this recipe has "
            f"{key}={brief(recipe.get(key))}; resume with that run's recipe, or start a new output_dir"
        )


def _student_card(
    trainer: DistillTrainer, distill_args: DistillTrainingArguments, utterances: int, seconds: float
) -> str:
    """The student's README.md: teacher, recipe, data, steps and the last logged losses."""
    history = trainer.state.log_history
    splits = distill_args.train_splits
    return distilled_card(
        DistillationFacts(
            output_dir=str(trainer.args.output_dir),
            teacher=distill_args.teacher,
            recipe=distill_args.distill_mode,
            student_layout=distill_args.student,
            parameters=_parameters(trainer.model),
            data_source=distill_args.data_source,
            train_splits=list(splits),
            train_utterances=utterances,
            train_seconds=seconds,
            steps=trainer.state.global_step,
            final_train_loss=last_logged(history, "loss"),
            final_eval_loss=last_logged(history, "eval_loss"),
        )
    )


def distill(
    config_path: str | Path,
    overrides: Sequence[str] = (),
    resume: str | bool | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> DistillTrainer:
    """`distill_command_line` of `--config config_path`, the words `overrides` (`key=value` or `--key value`) and,
    when `resume` is given, `--resume_from_checkpoint` ("last", true or a checkpoint folder). Returns the trainer."""
    words = ["--config", str(config_path), *overrides]
    if resume:
        words += ["--resume_from_checkpoint", "last" if resume is True else str(resume)]
    return distill_command_line(words, callbacks)


def distill_command_line(argv: Sequence[str], callbacks: Sequence[TrainerCallback] = ()) -> DistillTrainer:
    """Read and validate the recipe, models and data of a distill_trainer.py command line, then train and save the
    student. Returns the trainer.

    `resume_from_checkpoint` (`--resume`): "last" (the last complete checkpoint of output_dir) or a checkpoint
    folder; without it, a fresh run, which needs an empty output_dir. `callbacks`: extra `TrainerCallback`s.
    """
    args, recipe = parse_command_line(argv)
    inputs = [args.data_source, args.teacher, args.student]  # those that are paths
    check_output_location(args.output_dir, inputs)
    setup_logging(args)
    if not args.should_save:  # the main process holds the output_dir's lock for all
        return _distill(recipe, args, callbacks)
    with output_lock(args.output_dir):
        return _distill(recipe, args, callbacks)


def _distill(recipe: dict, args: DistillTrainingArguments, callbacks: Sequence[TrainerCallback]) -> DistillTrainer:
    """`distill_command_line` once the recipe is read and the output_dir is this run's."""
    resume = find_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if resume is not None:
        check_same_run(resume.folder, recipe)
    apply_effective_batch_size(args)

    teacher, student, pairs = teacher_and_student(args, args.seed)
    if student.config.layerdrop > 0 and "ddp_find_unused_parameters" not in recipe:
        args.ddp_find_unused_parameters = True  # a dropped layer leaves its parameters without gradient
    min_samples = _min_samples(teacher, student)
    max_samples = None
    if args.crop_seconds is not None:
        check_window(
            args.crop_seconds,
            min_samples,
            f"crop_seconds={args.crop_seconds}",
            f"use at least {min_samples / SAMPLING_RATE:.3f}",
        )
        max_samples = int(args.crop_seconds * SAMPLING_RATE)
    train_dataset, eval_dataset = _load_splits(args, min_samples)
    feature_extractor = release_feature_extractor()
    trainer = DistillTrainer(
        model=student,
        args=args,
        teacher=teacher,
        distill_args=args,
        teacher_layers=pairs,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=AudioCollator(
            feature_extractor,
            max_samples,
            min_samples,
            masker=recipe_masker(args, args, student.config),
            with_ids=args.cache_teacher_outputs,
        ),
        processing_class=feature_extractor,
        callbacks=list(callbacks),
    )
    if resume is not None:
        check_resume_checkpoint(resume, trainer)
    if args.should_save:  # the recipe this run trains with, also after a resume with new settings
        saved = {key: value for key, value in recipe.items() if key != "resume_from_checkpoint"}
        atomic_write_text(Path(args.output_dir) / RECIPE_FILE, yaml.safe_dump(saved, sort_keys=False))
    seconds = _training_seconds(train_dataset, max_samples)
    logger.info(  # only once every check passed: a refusal is the run's one line
        "Distilling %s (%s) into a %s-parameter student (%s layout): %d training utterances (%s), teacher layers %s",
        args.teacher,
        args.distill_mode,
        f"{_parameters(student):,}",
        args.student,
        len(train_dataset),
        format_duration(seconds),
        pairs,
    )
    train_keeping_complete_checkpoints(trainer, None if resume is None else str(resume.folder))
    card = _student_card(trainer, args, len(train_dataset), seconds)
    save_trained_model(trainer, args.output_dir, card=card)
    if args.should_save:  # where the student is, and what it really is
        print(f"saved the student ({_parameters(student):,} parameters) to {args.output_dir}")
    if args.push_to_hub:
        trainer.create_model_card = lambda *args, **kwargs: None  # keep the student's card, not Trainer's generic one
        trainer.push_to_hub(commit_message="Distilled student")
    return trainer
