"""Time one distillation step of a recipe: teacher pass(es), student forward/backward, whole step.

    python scripts/benchmark_distill.py --config conf/armhubert-960h.yaml [--seconds 12] [--steps 10]
    python scripts/benchmark_distill.py --config conf/quickstart.yaml --precision fp32     # CPU

Prints the median time of
- the teacher: the configured pass(es) (masked + unmasked as one doubled batch, or two passes),
- the student: forward with masks, the loss against the (precomputed) teacher states, backward,
- the whole step: `DistillTrainer.training_step` (teacher + student + loss + backward) plus the
  optimiser step, as the Trainer runs it,
and the overhead ratio step / (teacher + student) (target <= 1.1), plus seconds (= hours) of audio
per second (= hour). Waveforms are synthetic (lengths spread +-5 % around --seconds, as in a
length-grouped batch); the teacher has random weights of the recipe teacher's architecture unless
--pretrained-teacher (timings do not depend on the weights). Extra `key=value` arguments override
the recipe as in distill_trainer.py.
"""

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from armhubert.cli import run_main
from armhubert.distill.masks import SpanMasker
from armhubert.distill.models import build_student, check_frame_rates, layer_pairs, load_teacher
from armhubert.distill.recipe import build_arguments, load_recipe
from armhubert.distill.trainer import DistillTrainer
from configuration_armhubert import SAMPLING_RATE
from modeling_armhubert import release_feature_extractor

# Recipe teachers by architecture: a random model of the same shape times the same.
RANDOM_TWINS = {"facebook/hubert-base-ls960": "random-hubert", "microsoft/wavlm-base": "random-wavlm"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="recipe YAML")
    parser.add_argument("--batch-size", type=int, help="utterances per step (default: the recipe's per-device batch)")
    parser.add_argument("--seconds", type=float, default=12.0, help="mean utterance length (LibriSpeech: 12.3 s)")
    parser.add_argument("--steps", type=int, default=10, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument(
        "--pretrained-teacher", action="store_true", help="load the recipe's teacher weights (needs the Hub)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args(argv)


def build_trainer(args):
    cuda = torch.cuda.is_available()
    precision = args.precision or ("bf16" if cuda else "fp32")
    overrides = list(args.overrides) + [
        "output_dir=/tmp/benchmark_distill",
        f"bf16={str(precision == 'bf16').lower()}",
        f"fp16={str(precision == 'fp16').lower()}",
        f"use_cpu={str(not cuda).lower()}",
        "report_to=none",
        "eval_strategy=no",
    ]
    recipe = load_recipe(args.config, overrides)
    if not args.pretrained_teacher and recipe.get("teacher") in RANDOM_TWINS:
        recipe["teacher"] = RANDOM_TWINS[recipe["teacher"]]
    distill_args, training_args = build_arguments(recipe)
    if args.batch_size:
        training_args.per_device_train_batch_size = args.batch_size
    teacher = load_teacher(distill_args, training_args.seed)
    student = build_student(distill_args, teacher.config, training_args.seed)
    check_frame_rates(teacher, student)
    pairs = layer_pairs(distill_args, student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    trainer = DistillTrainer(
        model=student, args=training_args, teacher=teacher, distill_args=distill_args, teacher_layers=pairs
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # set per step inside Trainer.train()
    return trainer, precision


def synthetic_batch(trainer, batch_size, seconds, seed=0):
    """Zero-padded noise waveforms with lengths +-5 % around `seconds`, plus masks as the collator draws them."""
    rng = np.random.default_rng(seed)
    lengths = (rng.uniform(0.95, 1.05, size=batch_size) * seconds * SAMPLING_RATE).astype(int)
    waveforms = [0.1 * rng.standard_normal(n).astype(np.float32) for n in lengths]
    config = trainer.model.config
    masker = None
    if trainer.distill_args.distill_mode == "masking":
        d = trainer.distill_args
        masker = SpanMasker(
            config.conv_kernel,
            config.conv_stride,
            d.mask_prob,
            d.mask_length,
            d.mask_min_spans,
            d.mask_min_space,
            d.mask_same_count,
        )
    padded = release_feature_extractor()(
        waveforms, sampling_rate=SAMPLING_RATE, padding=True, return_attention_mask=True, return_tensors="pt"
    )
    batch = {
        "input_values": padded["input_values"],
        "attention_mask": padded["attention_mask"],
        "num_unreadable": torch.tensor(0),
    }
    if masker is not None:
        batch["mask_time_indices"] = masker(
            list(lengths), padded["input_values"].shape[1], [str(i) for i in range(batch_size)]
        )
    return {k: v.to(trainer.args.device) for k, v in batch.items()}, float(lengths.sum()) / SAMPLING_RATE


def timed(functions, steps, warmup, cuda):
    """Median seconds of each function, timed round-robin so that drifts in machine load hit all alike."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    times = {name: [] for name in functions}
    for _ in range(steps):
        for name, function in functions.items():
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            function()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None):
    args = parse_args(argv)
    trainer, precision = build_trainer(args)
    cuda = trainer.args.device.type == "cuda"
    batch_size = trainer.args.per_device_train_batch_size
    inputs, audio_seconds = synthetic_batch(trainer, batch_size, args.seconds)
    model = trainer.model
    model.train()
    mask = inputs.get("mask_time_indices")
    x, attention = inputs["input_values"], inputs["attention_mask"]

    def teacher_pass():
        trainer.teacher_hidden_states(x, attention, mask)

    def teacher_two_passes():
        single, trainer._teacher_single_pass = trainer._teacher_single_pass, False
        trainer.teacher_hidden_states(x, attention, mask)
        trainer._teacher_single_pass = single

    clean, masked = trainer.teacher_hidden_states(x, attention, mask)

    def student_step():
        # The student's share of a step: forward, loss against the precomputed teacher states, backward.
        original = trainer.teacher_hidden_states
        trainer.teacher_hidden_states = lambda *a, **k: (clean, masked)
        try:
            with trainer.accelerator.autocast():
                loss, _ = trainer.distillation_loss(model, inputs, masked=True)
            loss.backward()
        finally:
            trainer.teacher_hidden_states = original
        model.zero_grad(set_to_none=True)

    def whole_step():
        with trainer.accelerator.autocast():
            trainer.training_step(model, dict(inputs))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    functions = {"teacher": teacher_pass, "student": student_step, "step": whole_step}
    if mask is not None:
        functions["teacher_two_passes"] = teacher_two_passes
    medians = timed(functions, args.steps, args.warmup, cuda)
    t_teacher, t_student, t_step = medians["teacher"], medians["student"], medians["step"]
    t_two = medians.get("teacher_two_passes")

    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"recipe {args.config}  mode {trainer.distill_args.distill_mode}  device {device}  precision {precision}")
    print(
        f"batch {batch_size} x {args.seconds:.1f} s = {audio_seconds:.1f} s of audio, "
        f"{x.shape[1] // 320} frames; student {sum(p.numel() for p in model.parameters()):,} parameters"
    )
    passes = (
        "masked + unmasked as one doubled batch"
        if mask is not None and trainer._teacher_single_pass
        else ("two passes" if mask is not None else "one pass")
    )
    print(f"teacher ({passes}):  {t_teacher * 1000:8.1f} ms")
    if t_two is not None:
        print(f"teacher (two passes, for comparison): {t_two * 1000:8.1f} ms")
    print(f"student forward + loss + backward:     {t_student * 1000:8.1f} ms")
    print(f"whole step (training_step + optimiser): {t_step * 1000:8.1f} ms")
    print(f"ratio step / (teacher + student): {t_step / (t_teacher + t_student):.3f}  (target <= 1.1)")
    print(f"throughput: {audio_seconds / t_step:.1f} s of audio per second = hours of audio per hour, one device")
    if cuda:
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    sys.exit(run_main("benchmark_distill.py", main))
