"""The Trainer subclasses customise `transformers.Trainer` through its public methods and callbacks only.

Private methods (`_get_train_sampler`, `_maybe_log_save_evaluate`, `_save_checkpoint`, ...) change between
releases; an override of one would silently stop running, or break, after an upgrade.
"""

from pathlib import Path

import pytest
from transformers import Trainer, TrainerCallback

from armhubert.distill.trainer import DistillTrainer, _DistillCallback
from armhubert.training.checkpoints import CheckpointRotation
from armhubert.training.guarded_trainer import GuardedTrainer


@pytest.mark.parametrize("cls", [GuardedTrainer, DistillTrainer, _DistillCallback, CheckpointRotation])
def test_no_private_method_of_the_base_class_is_overridden(cls):
    base = TrainerCallback if issubclass(cls, TrainerCallback) else Trainer
    own = [name for name in vars(cls) if name.startswith("_") and not name.startswith("__")]
    assert [name for name in own if hasattr(base, name)] == []  # each private name is the project's own helper


def _save(rotation, args, state, step, eval_loss=None):
    """What the Trainer does at a save: log the evaluation before it, write the checkpoint, call on_save."""
    if eval_loss is not None:
        state.log_history.append({"step": step, "eval_loss": eval_loss})
    state.global_step = step
    folder = Path(args.output_dir) / f"checkpoint-{step}"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    rotation.on_save(args, state, None)


def test_rotation_keeps_the_best_by_the_metric_and_the_last_and_adopts_a_resumed_runs_checkpoints(tmp_path):
    """Distillation's rule (best 2 by eval_loss plus the last); after a resume the earlier checkpoints up to the
    resumed step count as the run's, later ones and a user's folders are never touched."""
    from transformers import TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), save_total_limit=5, report_to="none")
    rotation, state = CheckpointRotation(args, keep_last=1, keep_best=2), TrainerState()
    assert args.save_total_limit is None  # the Trainer's own rotation is off
    (tmp_path / "checkpoint-0").mkdir()  # a user's folder, no trainer state
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 0.5), (5, 4.0)]:
        _save(rotation, args, state, step, loss)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-0",
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-5",
    ]

    resumed, state = CheckpointRotation(args, keep_last=1, keep_best=1), TrainerState(global_step=4)
    state.log_history = [{"step": 2, "eval_loss": 1.0}, {"step": 4, "eval_loss": 0.5}]
    resumed.on_train_begin(args, state, None)
    assert [p.name for p in resumed.saved] == [
        "checkpoint-2",
        "checkpoint-4",
    ]  # not checkpoint-5: after the resume step
    _save(resumed, args, state, 6, 0.9)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-0",
        "checkpoint-4",
        "checkpoint-5",
        "checkpoint-6",
    ]


def test_rotation_with_a_greater_is_better_metric(tmp_path):
    from transformers import TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", metric_for_best_model="accuracy")
    args.greater_is_better = True
    rotation, state = CheckpointRotation(args, keep_last=0, keep_best=1), TrainerState()
    for step, accuracy in [(1, 0.2), (2, 0.9), (3, 0.5)]:
        state.log_history.append({"step": step, "eval_accuracy": accuracy})
        _save(rotation, args, state, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
