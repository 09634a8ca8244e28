"""A `DistillTrainer` driven by hand on synthetic batches: what the step benchmark and the GPU check time.

`timing_recipe` loads a recipe set up for timing (no reports, no evaluation, no data workers),
`timing_trainer` builds its trainer as `distill` does but without data, `synthetic_batch` pads noise
waveforms as `AudioCollator` does and `optimiser_step` runs one step as `Trainer.train` does.
"""

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from armhubert.distill.masks import SpanMasker, recipe_masker
from armhubert.distill.models import teacher_and_student
from armhubert.distill.recipe import load_recipe, recipe_arguments
from armhubert.distill.trainer import DistillTrainer
from configuration_armhubert import SAMPLING_RATE
from pipeline_armhubert import release_feature_extractor


def timing_recipe(
    config: str | os.PathLike, precision: str, use_cpu: bool, output_dir: str, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The recipe with `key=value` `overrides`, computing in `precision` ("bf16", "fp16" or "fp32"), on the
    CPU if `use_cpu`, writing nothing but into `output_dir`."""
    timing = [
        f"output_dir={output_dir}",
        f"bf16={str(precision == 'bf16').lower()}",
        f"fp16={str(precision == 'fp16').lower()}",
        f"use_cpu={str(use_cpu).lower()}",
        "report_to=none",
        "eval_strategy=no",
        "dataloader_num_workers=0",
    ]
    return load_recipe(config, [*overrides, *timing])


def timing_trainer(recipe: dict[str, Any]) -> tuple[DistillTrainer, SpanMasker | None]:
    """(trainer, span masker or None) for a recipe dict: models as `distill` builds them, no data.

    The optimiser and scheduler exist and gradient accumulation is 1, so `optimiser_step` can drive it.
    """
    distill_args = training_args = recipe_arguments(recipe)
    teacher, student, pairs = teacher_and_student(distill_args, training_args.seed)
    trainer = DistillTrainer(
        model=student, args=training_args, teacher=teacher, distill_args=distill_args, teacher_layers=pairs
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # Trainer.train() sets it per step
    return trainer, recipe_masker(distill_args, training_args, student.config)


def synthetic_batch(
    trainer: DistillTrainer, masker: SpanMasker | None, batch: int, seconds: float, spread: float, seed: int = 0
) -> tuple[dict[str, torch.Tensor], float]:
    """A padded batch of noise as `AudioCollator` makes it (lengths within +-`spread` of `seconds`, masks
    when `masker`), on the trainer's device. Returns (inputs, seconds of real audio in them)."""
    rng = np.random.default_rng(seed)
    lengths = (rng.uniform(1 - spread, 1 + spread, size=batch) * seconds * SAMPLING_RATE).astype(int)
    waveforms = [0.1 * rng.standard_normal(n).astype(np.float32) for n in lengths]
    padded = release_feature_extractor()(
        waveforms, sampling_rate=SAMPLING_RATE, padding=True, return_attention_mask=True, return_tensors="pt"
    )
    inputs = {
        "input_values": padded["input_values"],
        "attention_mask": padded["attention_mask"],
        "num_unreadable": torch.tensor(0),
    }
    if masker is not None:
        ids = [str(i) for i in range(batch)]
        inputs["mask_time_indices"] = masker(list(lengths), padded["input_values"].shape[1], ids)
    return {k: v.to(trainer.args.device) for k, v in inputs.items()}, float(lengths.sum()) / SAMPLING_RATE


def optimiser_step(trainer: DistillTrainer, inputs: dict[str, torch.Tensor]) -> None:
    """One training step as `Trainer.train` runs it: `training_step` (forward, loss, backward) under the
    accelerator's autocast (as its prepared model runs), then the optimiser through the gradient scaler
    when there is one (fp16: the step is skipped on overflow and the scale adjusted)."""
    with trainer.accelerator.autocast():
        trainer.training_step(trainer.model, dict(inputs))
    scaler = getattr(trainer.accelerator, "scaler", None)
    if scaler is not None:
        scaler.step(trainer.optimizer)
        scaler.update()
    else:
        trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
