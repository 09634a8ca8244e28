"""A checkpoint to resume from, checked against the run before the Trainer reads any of it.

The Trainer trusts its checkpoint folders: a truncated `trainer_state.json`, a random `optimizer.pt`,
a `global_step` of 10**15 or the weights of another student end in a traceback, or worse, in exit 0
with an untrained student whose card claims 10**15 steps. `check_resume_checkpoint` reads each file
the Trainer will read, bounded (`armhubert.files.untrusted`), and compares it with the run: the step lies
within the schedule, every weight has the student's name and shape.
"""

import math
from pathlib import Path

import numpy as np
import safetensors
import torch
from transformers import PreTrainedModel, Trainer
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME

from ..cli import UserError
from ..files.untrusted import Limit, brief, check_state_fits, load_json_file, load_torch_file

MAX_STATE_BYTES = 64 * 1024 * 1024  # trainer_state.json: the log history of a long run is a few MB
MAX_STATE_VALUES = 2_000_000  # JSON values in it: 100,000 logged steps of ~20 values
# numpy's saved generator state: an array of 624 words.
RNG_ARRAY_ELEMENTS = Limit(1 << 16, "a pickled array claims {count:,} elements; a generator state has a few hundred")

_NUMPY_CORE = np._core if hasattr(np, "_core") else np.core


def _bounded_reconstruct(subtype, shape, dtype):
    """numpy's `_reconstruct` (how a pickled array starts) for shapes of at most RNG_ARRAY_ELEMENTS elements.

    The real one allocates the shape it is given before the data arrives: a few bytes of pickle could
    ask for gigabytes.
    """
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UserError(f"a pickled array has the shape {brief(shape)}; not a saved generator state")
    RNG_ARRAY_ELEMENTS.check(math.prod(shape), "a pickled array")
    return _NUMPY_CORE.multiarray._reconstruct(subtype, shape, dtype)


_RNG_GLOBALS = [
    (_bounded_reconstruct, f"{_NUMPY_CORE.__name__}.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]


def total_steps(trainer: Trainer) -> int:
    """Optimiser steps the run's schedule has: max_steps, else epochs x steps per epoch."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    batches = len(trainer.get_train_dataloader())
    return math.ceil(args.num_train_epochs * max(1, math.ceil(batches / args.gradient_accumulation_steps)))


def _read_state(checkpoint: Path, steps: int) -> dict:
    path = checkpoint / TRAINER_STATE_NAME
    try:  # bounded in bytes, values and depth before anything is built
        state = load_json_file(path, str(path), "a trainer state is a few MB", MAX_STATE_BYTES, MAX_STATE_VALUES)
    except UserError as error:
        raise UserError(
            f"--resume: {path} is not a complete trainer state ({error}); resume an earlier checkpoint"
        ) from None
    step = state.get("global_step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= steps:
        raise UserError(
            f"--resume: {path} says global_step {brief(step)}, but this run's schedule has {steps:,} steps; "
            "resume a checkpoint of this run (or raise max_steps / num_train_epochs)"
        )
    return state


def _check_weights(checkpoint: Path, student: PreTrainedModel) -> None:
    path = checkpoint / "model.safetensors"
    if not path.is_file():
        raise UserError(f"--resume: {checkpoint} has no model.safetensors; resume a complete checkpoint")
    try:
        with safetensors.safe_open(str(path), framework="pt") as weights:
            shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118 -- safe_open has no __iter__
    except Exception as error:  # noqa: BLE001 -- SafetensorError, OSError: a truncated or foreign file
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise UserError(f"--resume: {path} is not a readable safetensors file ({reason})") from None
    expected = {key: value.shape for key, value in student.state_dict().items()}
    check_state_fits(
        shapes, expected, f"--resume: {path}", "this run's student", "resume a checkpoint of the same student"
    )


def check_resume_checkpoint(checkpoint: str | Path, trainer: Trainer) -> None:
    """Refuse a checkpoint the Trainer could not resume correctly, with one line naming the file and the fault.

    Checks the trainer state (complete JSON, global_step within the schedule), the weights (names and
    shapes of the student) and every pickled file (optimizer, scheduler, scaler, RNG states) as untrusted
    input: bounded, CRC-checked, no allocating callables, readable.
    """
    checkpoint = Path(checkpoint)
    _read_state(checkpoint, total_steps(trainer))
    _check_weights(checkpoint, trainer.accelerator.unwrap_model(trainer.model))
    for name in (OPTIMIZER_NAME, SCHEDULER_NAME, "scaler.pt"):
        if (checkpoint / name).exists():
            load_torch_file(checkpoint / name, f"--resume: {checkpoint / name}")
    for path in sorted(checkpoint.glob("rng_state*.pth")):
        value = load_torch_file(path, f"--resume: {path}", _RNG_GLOBALS, "numpy's generator state")
        if not torch.is_tensor(value.get("cpu")):
            raise UserError(f"--resume: {path} is not a saved generator state (no 'cpu' tensor)")
