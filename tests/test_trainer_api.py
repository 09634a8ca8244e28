"""The Trainer subclasses customise `transformers.Trainer` through its public methods and callbacks only.

Private methods (`_get_train_sampler`, `_maybe_log_save_evaluate`, `_save_checkpoint`, ...) change between
releases; an override of one would silently stop running, or break, after an upgrade.
"""

import pytest
from transformers import Trainer, TrainerCallback

from armhubert.distill.trainer import DistillTrainer, _DistillCallback
from armhubert.training.guarded_trainer import GuardedTrainer


@pytest.mark.parametrize("cls", [GuardedTrainer, DistillTrainer, _DistillCallback])
def test_no_private_method_of_the_base_class_is_overridden(cls):
    base = TrainerCallback if issubclass(cls, TrainerCallback) else Trainer
    own = [name for name in vars(cls) if name.startswith("_") and not name.startswith("__")]
    assert [name for name in own if hasattr(base, name)] == []  # each private name is the project's own helper
