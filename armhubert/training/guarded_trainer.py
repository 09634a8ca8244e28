"""What every Trainer-based command (distillation, fine-tuning) shares: value ranges, the non-finite loss guard,
the final model save."""

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from ..cli import Bounds, UserError, above, at_least, between
from ..files.atomic import move_files_into
from ..files.weights import check_finite_weights
from ..folders.remote_code import ship_pipeline
from ..progress import on_terminal
from .curves import save_loss_curves

# Under fp16 the gradient scaler skips a step whose gradients overflow (and lowers its scale); this
# many non-finite losses in a row are divergence, not overflow.
MAX_SKIPPED_FP16_STEPS = 10


def _bounded(name: str, bounds: Bounds) -> Any:
    """TrainingArguments' own field `name` (its default and help), with `bounds`."""
    inherited = TrainingArguments.__dataclass_fields__[name]
    return dataclasses.field(default=inherited.default, metadata={**inherited.metadata, "bounds": bounds})


@dataclasses.dataclass
class BoundedTrainingArguments(TrainingArguments):
    """`TrainingArguments` whose numbers a recipe or command line may set declare their ranges, and whose step
    count is a rule (`check_fields`): max_steps is -1 or positive, and a run takes at least one step."""

    RULES = (
        (
            lambda args: args.max_steps == 0 or args.max_steps < -1,
            "max_steps must be -1 (use num_train_epochs) or a positive number of steps, got {args.max_steps}",
        ),
        (
            lambda args: args.max_steps < 0 and args.num_train_epochs == 0,
            "num_train_epochs is 0 and max_steps is not set: the run would train no step",
        ),
    )

    per_device_train_batch_size: int = _bounded("per_device_train_batch_size", at_least(1))
    per_device_eval_batch_size: int = _bounded("per_device_eval_batch_size", at_least(1))
    gradient_accumulation_steps: int = _bounded("gradient_accumulation_steps", at_least(1))
    learning_rate: float = _bounded("learning_rate", above(0))
    logging_steps: float = _bounded("logging_steps", above(0))
    save_steps: float = _bounded("save_steps", above(0))
    eval_steps: float | None = _bounded("eval_steps", above(0))
    num_train_epochs: float = _bounded("num_train_epochs", at_least(0))
    weight_decay: float = _bounded("weight_decay", at_least(0))
    warmup_steps: float = _bounded("warmup_steps", at_least(0))
    max_grad_norm: float = _bounded("max_grad_norm", at_least(0))
    adam_epsilon: float = _bounded("adam_epsilon", at_least(0))
    adam_beta1: float = _bounded("adam_beta1", between(0, 1))
    adam_beta2: float = _bounded("adam_beta2", between(0, 1))
    dataloader_num_workers: int = _bounded("dataloader_num_workers", at_least(0))
    seed: int = _bounded("seed", between(0, 2**32 - 1))
    data_seed: int | None = _bounded("data_seed", between(0, 2**32 - 1))


class GuardedTrainer(Trainer):
    """`Trainer` that stops at a non-finite training loss instead of training (and saving) a NaN model.

    Without fp16 the first NaN / infinite loss stops the run: its gradients would make every weight
    NaN at the next optimiser step. With fp16 the gradient scaler skips such steps, so only
    MAX_SKIPPED_FP16_STEPS in a row stop it. The stop is a `UserError` (one line, exit status 2);
    checkpoints saved before it are kept, nothing is saved as the final model. All processes agree
    (one scalar all-reduce per step), so no rank waits forever for another. A run that took no
    optimiser step at all is refused the same way.
    """

    def __init__(self, model=None, args=None, *rest, **kwargs):
        if args is not None and not on_terminal():
            args.disable_tqdm = True  # off a terminal: the Trainer prints one line per log, no progress-bar redraws
        super().__init__(model, args, *rest, **kwargs)
        self._non_finite_steps = 0

    def train(self, *args, **kwargs):
        """`Trainer.train`, refusing a run that took no optimiser step (it would save an untrained model)."""
        output = super().train(*args, **kwargs)
        if self.state.global_step == 0:
            raise UserError(
                "training took no optimiser step (check num_train_epochs, max_steps and the batch sizes against the "
                "data); no model was saved"
            )
        return output

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = torch.logical_not(torch.isfinite(loss.detach())).float()
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        self._non_finite_steps = self._non_finite_steps + 1 if bool(bad > 0) else 0
        allowed = MAX_SKIPPED_FP16_STEPS if getattr(self.accelerator, "scaler", None) is not None else 0
        if self._non_finite_steps > allowed:
            raise UserError(
                f"the training loss is {float(loss):.4g} at step {self.state.global_step + 1}: training stopped and no "
                "final model was saved (earlier checkpoints are kept); lower learning_rate, check the data for broken "
                "audio or use bf16 instead of fp16"
            )
        return loss


def _check_finite(trainer: Trainer) -> None:
    """Refuse to save a model with non-finite weights (decided on every process alike)."""
    message = None
    try:
        check_finite_weights(trainer.accelerator.unwrap_model(trainer.model), "the trained model")
    except UserError as error:
        message = str(error)
    broken = torch.tensor(float(message is not None), device=trainer.args.device)
    if trainer.accelerator.num_processes > 1:
        broken = trainer.accelerator.reduce(broken, reduction="sum")
    if bool(broken > 0):
        raise UserError(
            message or "the trained model has NaN or infinite weights (found by another process); nothing was saved"
        )


def save_trained_model(trainer: Trainer, output_dir: str | Path, card: str | None = None) -> None:
    """Write the trained model (safetensors, config, code files, processor config, optional model card).

    A model with non-finite weights is refused (`UserError`), never saved.
    `Trainer.save_model` runs on every rank (it gathers sharded weights under DeepSpeed / FSDP) into a
    staging folder; the main process then moves the files in with `config.json` last, so a crash never
    leaves something that looks like a complete model. No pickled `training_args.bin` is kept: the
    recipe or the card says how the model was trained. The logged losses are drawn into `loss.png`
    beside the model (`armhubert.training.curves`).
    """
    _check_finite(trainer)
    output_dir = Path(output_dir)
    staging = output_dir / ".student-staging"
    if trainer.args.should_save:
        shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted run
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if not trainer.args.should_save:
        return
    try:
        ship_pipeline(staging)
        if card is not None:
            (staging / "README.md").write_text(card, encoding="utf-8")
        (staging / "training_args.bin").unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_files_into(staging, output_dir)
    save_loss_curves(trainer.state.log_history, output_dir, title=output_dir.name)
