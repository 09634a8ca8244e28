"""Time one distillation step of a recipe: teacher pass(es), student forward/backward, whole step.

    python benchmarks/benchmark_distill.py --config conf/armhubert-960h.yaml [--seconds 12] [--steps 10]
    python benchmarks/benchmark_distill.py --config conf/quickstart.yaml --precision fp32     # CPU

Prints the median time of
- the teacher: the configured pass(es) (masked + unmasked as one doubled batch, or two passes),
- the student: forward with masks, the loss against the (precomputed) teacher states, backward,
- the whole step: `DistillTrainer.training_step` (teacher + student + loss + backward) plus the
  optimiser step, as the Trainer runs it,
and the overhead ratio step / (teacher + student) (target <= 1.1), plus seconds (= hours) of audio
per second (= hour). Waveforms are synthetic (lengths spread +-5 % around --seconds, as in a
length-grouped batch); the teacher has random weights of the recipe teacher's architecture unless
--pretrained_teacher (timings do not depend on the weights). Extra `key=value` arguments override
the recipe as in distill_trainer.py.
"""

import statistics
import sys
import time

import torch
from instruments.distill_timing import optimiser_step, synthetic_batch, timing_recipe, timing_trainer
from instruments.profiling import device_name

from armhubert.cli import CommandParser, run_main
from armhubert.deploy.timing import synchronize

# Recipe teachers by architecture: a random model of the same shape times the same.
RANDOM_TWINS = {"facebook/hubert-base-ls960": "random-hubert", "microsoft/wavlm-base": "random-wavlm"}


def parse_args(argv=None):
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="recipe YAML")
    parser.add_argument("--batch_size", type=int, help="utterances per step (default: the recipe's per-device batch)")
    parser.add_argument("--seconds", type=float, default=12.0, help="mean utterance length (LibriSpeech: 12.3 s)")
    parser.add_argument("--steps", type=int, default=10, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument(
        "--pretrained_teacher", action="store_true", help="load the recipe's teacher weights (needs the Hub)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args(argv)


def build_trainer(args):
    """(trainer, masker or None, precision) of the recipe, with a random twin of its teacher unless
    --pretrained_teacher."""
    cuda = torch.cuda.is_available()
    precision = args.precision or ("bf16" if cuda else "fp32")
    overrides = list(args.overrides)
    if args.batch_size:
        overrides.append(f"per_device_train_batch_size={args.batch_size}")
    recipe = timing_recipe(args.config, precision, not cuda, "/tmp/benchmark_distill", overrides)
    if not args.pretrained_teacher and recipe.get("teacher") in RANDOM_TWINS:
        recipe["teacher"] = RANDOM_TWINS[recipe["teacher"]]
    trainer, masker = timing_trainer(recipe)
    return trainer, masker, precision


def timed(functions, steps, warmup, device):
    """Median seconds of each function, timed round-robin so that drifts in machine load hit all alike."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    times = {name: [] for name in functions}
    for _ in range(steps):
        for name, function in functions.items():
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None):
    args = parse_args(argv)
    trainer, masker, precision = build_trainer(args)
    device = trainer.args.device
    batch_size = trainer.args.per_device_train_batch_size
    inputs, audio_seconds = synthetic_batch(trainer, masker, batch_size, args.seconds, spread=0.05)
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

    functions = {"teacher": teacher_pass, "student": student_step, "step": lambda: optimiser_step(trainer, inputs)}
    if mask is not None:
        functions["teacher_two_passes"] = teacher_two_passes
    medians = timed(functions, args.steps, args.warmup, device)
    t_teacher, t_student, t_step = medians["teacher"], medians["student"], medians["step"]
    t_two = medians.get("teacher_two_passes")

    print(
        f"recipe {args.config}  mode {trainer.distill_args.distill_mode}  device {device_name(device)}  "
        f"precision {precision}"
    )
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
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    sys.exit(run_main("benchmark_distill.py", main))
