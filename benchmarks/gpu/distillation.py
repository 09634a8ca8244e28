"""The GPU check's distillation rows: one step of each bundled recipe (random teacher of the recipe
teacher's shape, synthetic length-grouped batches) timed, its FLOPs and memory, the largest batch that fits."""

import tempfile
from collections.abc import Callable
from typing import Any

import torch
from instruments.distill_timing import optimiser_step, synthetic_batch, timing_recipe, timing_trainer
from instruments.profiling import count_macs, median_seconds

from armhubert.distill.masks import SpanMasker
from armhubert.distill.trainer import DistillTrainer
from armhubert.resources import BUNDLED_RECIPES

from .rows import free_memory, guarded
from .scales import TINY_TEACHER, Scale, tiny_student_fields


def recipe_trainer(
    recipe: str, precision: str, scale: Scale, device: torch.device, output_dir: str
) -> tuple[DistillTrainer, SpanMasker | None]:
    """(trainer, masker or None) for conf/<recipe>.yaml with a random teacher of the recipe teacher's shape.

    HubertConfig's defaults are HuBERT Base (timings do not need its weights); the dry run shrinks teacher
    and student to the toy shapes. No data: the check feeds synthetic batches.
    """
    batch = [f"per_device_train_batch_size={scale.distill_batch}"] if scale.distill_batch else []
    settings = timing_recipe(BUNDLED_RECIPES / f"{recipe}.yaml", precision, device.type != "cuda", output_dir, batch)
    settings["teacher"] = "random-hubert"
    settings["teacher_config"] = dict(TINY_TEACHER) if scale.tiny else None
    if scale.tiny:
        settings["student_config"] = {
            **(settings.get("student_config") or {}),
            **tiny_student_fields(settings["student"]),
        }
    return timing_trainer(settings)


def step_flops(trainer: DistillTrainer, num_samples: int) -> float:
    """FLOPs of one utterance's step: student forward + backward (3x its forward) and the teacher pass(es)."""
    student = trainer.accelerator.unwrap_model(trainer.model)
    teacher_passes = 2 if trainer.distill_args.distill_mode == "masking" else 1
    macs = 3 * count_macs(student, num_samples) + teacher_passes * count_macs(trainer.teacher.model, num_samples)
    return 2.0 * macs


def bounded_search(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """Largest n <= limit with fits(n), for a monotone `fits`: doubling from `start`, then bisection to ~6 %.

    0 when even min(start, limit) does not fit; `limit` when it fits (the caller reports ">=").
    """
    good, bad = 0, None
    size = max(1, min(start, limit))
    while bad is None and good < limit:
        if fits(size):
            good, size = size, min(2 * size, limit)
        else:
            bad = size
    while bad is not None and bad - good > max(1, good // 16):
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


def largest_batch(
    trainer: DistillTrainer, masker: SpanMasker | None, start: int, seconds: float, limit: int
) -> dict[str, Any]:
    """Largest batch of `seconds`-long utterances whose step fits in memory: doubling, then bisection.

    Bounded: at most `limit` utterances (then reported with `bounded`). The trainer's fallback to two
    teacher passes when the doubled batch does not fit is reset after each probe and reported.
    """
    single_pass = trainer._teacher_single_pass
    fallback = False

    def fits(batch):
        nonlocal fallback
        inputs, _ = synthetic_batch(trainer, masker, batch, seconds, spread=0.0)
        try:
            optimiser_step(trainer, inputs)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            fallback |= trainer._teacher_single_pass != single_pass
            trainer._teacher_single_pass = single_pass
            trainer.optimizer.zero_grad(set_to_none=True)
            del inputs
            free_memory()

    good = bounded_search(fits, start, limit)
    return dict(largest_batch=good, largest_batch_bounded=good >= limit, teacher_two_pass_fallback=fallback)


def distillation_row(
    scale: Scale, device: torch.device, recipe: str, precision: str, tflops: float | None, probe: bool, keep: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Steps/s, audio-hours per GPU-hour, peak memory, MFU and teacher share of one recipe step; with `probe`
    the largest batch too. Returns (row, {"trainer", "inputs"} when `keep` and the step ran, else {})."""
    state = {}

    def measure():
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as output_dir:  # nothing is written there
            trainer, masker = recipe_trainer(recipe, precision, scale, device, output_dir)
        trainer.model.train()
        batch = trainer.args.per_device_train_batch_size
        inputs, audio_seconds = synthetic_batch(trainer, masker, batch, scale.distill_seconds, spread=0.05)
        mask = inputs.get("mask_time_indices")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step = median_seconds(lambda: optimiser_step(trainer, inputs), scale.distill_steps, device)
        memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        teacher = median_seconds(
            lambda: trainer.teacher_hidden_states(inputs["input_values"], inputs["attention_mask"], mask),
            scale.distill_steps,
            device,
        )
        flops = step_flops(trainer, int(inputs["attention_mask"].sum(1).float().mean())) * batch
        figures = dict(
            batch=batch,
            audio_seconds=audio_seconds,
            step_ms=1000 * step,
            steps_per_second=1 / step,
            audio_hours_per_gpu_hour=audio_seconds / step,
            peak_memory_mib=memory,
            tflops=flops / step / 1e12,
            mfu=None if tflops is None else flops / step / (tflops * 1e12),
            teacher_share=teacher / step,
            passed=True,
        )
        if probe:
            figures.update(largest_batch(trainer, masker, batch, scale.probe_seconds, scale.probe_limit))
        if keep:
            state.update(trainer=trainer, inputs=inputs)
        return figures

    result = guarded("distillation", f"{recipe} {precision}", measure)
    result.update(recipe=recipe, precision=precision)
    return result, state


def distillation(
    scale: Scale, device: torch.device, tflops: float | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for every recipe x precision; also returns the first recipe's first trainer and batch (for the profile)."""
    rows, kept = [], {}
    for recipe in scale.recipes:
        for index, precision in enumerate(scale.distill_precisions):
            keep = not kept and index == 0
            result, state = distillation_row(scale, device, recipe, precision, tflops, probe=index == 0, keep=keep)
            rows.append(result)
            kept = kept or state
            free_memory()
    return rows, kept
