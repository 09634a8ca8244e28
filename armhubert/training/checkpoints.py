"""Checkpoints of a training run: which `checkpoint-<step>` folders are complete, and the one rotation.

The Trainer's own rotation (`save_total_limit`) deletes the oldest `checkpoint-N` folders of output_dir,
whoever wrote them (a previous run's, a user's `checkpoint-0/`), and cannot keep the best few by a
metric. `CheckpointRotation` replaces it for every command (distillation keeps the best k by eval_loss
plus the last; fine-tuning the last `save_total_limit` plus the best model): it removes only checkpoints
this run saved, or those of the run it resumes.
"""

import math
import re
import shutil
from pathlib import Path

from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..files.atomic import WriteFailure, reported_write_failures


def checkpoint_step(path: Path) -> int | None:
    """The step of a `checkpoint-<step>` folder name, None for any other name."""
    match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-<step> folders whose trainer state was written (the Trainer writes it last), by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(step, path) for path in folder.iterdir() if (step := checkpoint_step(path)) is not None]
    return [path for step, path in sorted(found) if (path / TRAINER_STATE_NAME).is_file()]


class CheckpointRotation(TrainerCallback):
    """After each save, keep the last `keep_last` checkpoints, the `keep_best` best by the run's metric and the
    Trainer's best model; delete the run's other checkpoints.

    The run's checkpoints are those it saved, plus, when it resumes, the complete ones of its output_dir up
    to the step it resumes from. The metric is `metric_for_best_model` (eval_loss when unset), lower is
    better unless `greater_is_better`; a checkpoint without an evaluation at its step is never "best".
    `keep_last=None` keeps every checkpoint (no rotation). Installing it turns the Trainer's rotation off.
    """

    def __init__(self, args, keep_last: int | None, keep_best: int = 0):
        args.save_total_limit = None
        self.keep_last, self.keep_best = keep_last, keep_best
        self.saved: list[Path] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:  # resumed: the run's earlier checkpoints are its own
            earlier = complete_checkpoints(args.output_dir)
            self.saved = [path for path in earlier if checkpoint_step(path) <= state.global_step]

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.keep_last is None:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder not in self.saved:
            self.saved.append(folder)
        keep = set(self.saved[-self.keep_last :]) if self.keep_last > 0 else set()
        keep |= set(self._best(args, state.log_history)[: self.keep_best])
        if state.best_model_checkpoint:
            keep.add(Path(state.best_model_checkpoint))
        for old in [folder for folder in self.saved if folder not in keep]:
            shutil.rmtree(old, ignore_errors=True)
            self.saved.remove(old)

    def _best(self, args, log_history: list[dict]) -> list[Path]:
        """The run's checkpoints evaluated at their step, best first."""
        metric = args.metric_for_best_model or "loss"
        metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        scores = {entry["step"]: entry[metric] for entry in log_history if isinstance(entry.get(metric), (int, float))}
        sign = -1 if args.greater_is_better else 1
        scored = [
            (sign * scores[step], step, path)
            for path in self.saved
            if (step := checkpoint_step(path)) in scores and math.isfinite(scores[step])
        ]
        return [path for _, _, path in sorted(scored)]


def train_keeping_complete_checkpoints(trainer: Trainer, resume: str | None):
    """`trainer.train` (its TrainOutput); a checkpoint that could not be written (a full disk) is removed and reported in one line.

    torch and safetensors report a failed write as RuntimeError / SafetensorError, not OSError; the
    checkpoint-N the run was writing is incomplete (no trainer state) and is deleted, earlier ones stay.
    """
    before = set(Path(trainer.args.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"))
    try:
        with reported_write_failures(f"a checkpoint into {trainer.args.output_dir}"):
            return trainer.train(resume_from_checkpoint=resume)
    except (WriteFailure, OSError):
        complete = set(complete_checkpoints(trainer.args.output_dir))
        for folder in set(Path(trainer.args.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")) - before - complete:
            shutil.rmtree(folder, ignore_errors=True)
        raise
