"""A checkpoint to resume from, checked against the run before the Trainer reads any of it.

The Trainer trusts its checkpoint folders: a truncated `trainer_state.json`, a random `optimizer.pt`,
a `global_step` of 10**15 or the weights of another student end in a traceback, or worse, in exit 0
with an untrained student whose card claims 10**15 steps. Two steps, one door:

- `find_resume_checkpoint` (before any model is built): the folder `--resume` names, or output_dir's last
  complete checkpoint, with its trainer state read, bounded, and its weights file there: a `ResumeCheckpoint`;
- `check_resume_checkpoint` (once the Trainer is built): its step lies within the run's schedule, every
  weight has the student's name and shape (read by `open_safetensors`), and each pickled file the Trainer
  will read passes the door of `torch.save` files (`armhubert.files.untrusted.load_torch_file`).
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, Trainer
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..cli import UserError
from ..files.untrusted import Limit, brief, load_json_file, load_torch_file, open_safetensors
from ..files.weights import check_state_fits
from ..training.checkpoints import complete_checkpoints

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


@dataclass(frozen=True)
class ResumeCheckpoint:
    """A checkpoint folder whose trainer state was read and holds a step count (`find_resume_checkpoint`)."""

    folder: Path
    global_step: int
    flag: str  # the command's name for resuming, in messages


def _read_state(folder: Path, flag: str) -> ResumeCheckpoint:
    """The checkpoint `folder` if it is complete: a readable trainer state holding a step count, and the weights;
    else one refusal naming what is wrong."""
    path, problem, step = folder / TRAINER_STATE_NAME, None, None
    try:  # bounded in bytes, values and depth before anything is built
        state = load_json_file(path, str(path), "a trainer state is a few MB", MAX_STATE_BYTES, MAX_STATE_VALUES)
    except UserError as error:
        problem = f"not a complete checkpoint folder ({error})"
    else:
        step = state.get("global_step") if isinstance(state, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            problem = f"{TRAINER_STATE_NAME} says global_step {brief(step)}, not a step count"
        elif not (folder / "model.safetensors").is_file():
            problem = "not a complete checkpoint folder (no model.safetensors)"
    if problem:
        raise UserError(f"{flag} {folder}: {problem}; resume an earlier checkpoint")
    return ResumeCheckpoint(folder, step, flag)


def find_resume_checkpoint(
    resume: str | bool | None, output_dir: str | os.PathLike, flag: str = "--resume"
) -> ResumeCheckpoint | None:
    """The checkpoint to resume from (None for a fresh run, which needs an empty output_dir): `resume` "last"
    (or true) is output_dir's last complete checkpoint, else the folder it names. `flag`: the command's name
    for resuming, in messages."""
    output = Path(output_dir)
    if resume is True or resume in ("true", "True"):  # resume_from_checkpoint: true in a recipe
        resume = "last"
    if resume is None or resume is False:
        if output.is_dir() and any(output.iterdir()):
            raise UserError(
                f"output_dir {output} is not empty; pass {flag} to continue its last checkpoint, or choose a new output_dir"
            )
        return None
    if resume != "last":
        return _read_state(Path(resume), flag)
    checkpoints = complete_checkpoints(output)
    if not checkpoints:
        raise UserError(f"{flag}: no complete {PREFIX_CHECKPOINT_DIR}-<step> folder in {output} to resume from")
    return _read_state(checkpoints[-1], flag)


def _check_weights(checkpoint: Path, student: PreTrainedModel, flag: str) -> None:
    path = checkpoint / "model.safetensors"  # there (`_read_state`); read through the door of safetensors files
    with open_safetensors(path, f"{flag}: {path}") as weights:
        shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118 -- safe_open has no __iter__
    expected = {key: value.shape for key, value in student.state_dict().items()}
    check_state_fits(
        shapes, expected, f"{flag}: {path}", "this run's student", "resume a checkpoint of the same student"
    )


def check_resume_checkpoint(resume: ResumeCheckpoint, trainer: Trainer) -> None:
    """Refuse a checkpoint the Trainer could not resume correctly, with one line naming the file and the fault.

    Checks the step against the run's schedule, the weights (names and shapes of the student) and every
    pickled file (optimizer, scheduler, scaler, RNG states) as untrusted input: bounded, CRC-checked, no
    allocating callables, readable.
    """
    checkpoint, steps = resume.folder, total_steps(trainer)
    if resume.global_step > steps:
        raise UserError(
            f"{resume.flag}: {checkpoint / TRAINER_STATE_NAME} says global_step {resume.global_step}, but this run's "
            f"schedule has {steps:,} steps; resume a checkpoint of this run (or raise max_steps / num_train_epochs)"
        )
    _check_weights(checkpoint, trainer.accelerator.unwrap_model(trainer.model), resume.flag)
    for name in (OPTIMIZER_NAME, SCHEDULER_NAME, "scaler.pt"):
        if (checkpoint / name).exists():
            load_torch_file(checkpoint / name, f"{resume.flag}: {checkpoint / name}")
    for path in sorted(checkpoint.glob("rng_state*.pth")):
        value = load_torch_file(path, f"{resume.flag}: {path}", _RNG_GLOBALS, "numpy's generator state")
        if not torch.is_tensor(value.get("cpu")):
            raise UserError(f"{resume.flag}: {path} is not a saved generator state (no 'cpu' tensor)")
