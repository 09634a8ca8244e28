"""What every Trainer-based command (distillation, fine-tuning) shares: value ranges, the non-finite loss guard,
the final model save."""

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from ..cli import UserError
from ..files.atomic import move_files_into
from ..files.untrusted import check_finite_weights
from ..folders.remote_code import ship_pipeline
from ..progress import on_terminal
from .curves import save_loss_curves

# Under fp16 the gradient scaler skips a step whose gradients overflow (and lowers its scale); this
# many non-finite losses in a row are divergence, not overflow.
MAX_SKIPPED_FP16_STEPS = 10


# TrainingArguments values a recipe or command line may set, with their ranges: (smallest, largest, smallest allowed itself).
_TRAINING_RANGES = {
    "per_device_train_batch_size": (1, None, True),
    "per_device_eval_batch_size": (1, None, True),
    "gradient_accumulation_steps": (1, None, True),
    "learning_rate": (0, None, False),
    "logging_steps": (0, None, False),
    "save_steps": (0, None, False),
    "eval_steps": (0, None, False),
    "num_train_epochs": (0, None, True),
    "weight_decay": (0, None, True),
    "warmup_steps": (0, None, True),
    "max_grad_norm": (0, None, True),
    "adam_epsilon": (0, None, True),
    "adam_beta1": (0, 1, True),
    "adam_beta2": (0, 1, True),
    "dataloader_num_workers": (0, None, True),
    "seed": (0, 2**32 - 1, True),
    "data_seed": (0, 2**32 - 1, True),
}


def check_training_values(values: Mapping[str, Any]) -> None:
    """Refuse TrainingArguments values outside their range, NaN or infinite numbers, and a run that would take no step."""
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key} must be a finite number, got {value}")
    for key, (low, high, inclusive) in _TRAINING_RANGES.items():
        value = values.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value < low or (value == low and not inclusive) or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}" if inclusive else f"> {low}"
            raise UserError(f"{key} must be {bound}, got {value}")
    max_steps = values.get("max_steps", -1)
    if max_steps == 0 or max_steps < -1:
        raise UserError(f"max_steps must be -1 (use num_train_epochs) or a positive number of steps, got {max_steps}")
    if max_steps < 0 and values.get("num_train_epochs", 3) == 0:
        raise UserError("num_train_epochs is 0 and max_steps is not set: the run would train no step")


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
