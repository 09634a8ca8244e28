"""The prepared GPU check: correctness, inference, distillation, profile and features of one GPU, in one run.

    python benchmarks/gpu_check.py                 # one CUDA GPU, <= 8 minutes on an H200
    python benchmarks/gpu_check.py --quick         # the headline cases only (about 2 minutes)
    python benchmarks/gpu_check.py --dry-run       # every section on the CPU at toy sizes (what the tests run)

Prints one table and writes runs/gpu_check.json (--output). Sections (benchmarks/gpu/):
1. correctness: fused (SDPA), FlexAttention and explicit reuse paths against a float64 explicit
   reference, in fp32, half weights and fp32 weights under autocast, padded batches, crop / required
   multiples; fused against explicit gradients (fp32 and autocast); activation checkpointing
   (reentrant and not) against plain gradients per reuse path; CPU against the GPU in fp32;
2. inference: ARMHuBERT-960h, MaskHuBERT-960h, STaRHuBERT, HuBERT Base at batch 1 and 32 x 10 s,
   fp32 / bf16 / fp16, FlexAttention and torch.compile rows: latency, audio seconds per second, peak memory;
3. distillation: the armhubert-960h, maskhubert-960h and starhubert-960h recipes at their per-GPU batch
   (random HuBERT Base teacher, bf16 and fp16): steps per second, audio-hours per GPU-hour, peak memory,
   MFU, teacher share of the step, the largest batch of 15 s utterances that fits; a DDP smoke step
   (NCCL: 2 processes on 2 GPUs, else 1; gloo, one CPU process, in the dry run);
4. profile: the recipe step's top operators by self time;
5. features: the bundled corpus (train-clean-100 + dev-clean) through extract_features on the GPU against a
   naive one-file-at-a-time loop, taking turns: audio seconds per second and tool / naive (target >= 2).
Without a CUDA GPU it refuses to start (exit status 2) unless --dry-run.
"""

import json
import os
import sys
from dataclasses import dataclass, field

import torch
from gpu.report import format_table, run_check
from gpu.scales import DRY_RUN, FULL, QUICK, Scale

from armhubert.cli import CommandParser, UserError, above, run_main
from armhubert.files.atomic import atomic_write_text

PROG = "gpu_check.py"


@dataclass
class CheckArguments:
    quick: bool = field(default=False, metadata={"help": "Only the headline cases (bf16, batch 32, one recipe)."})
    dry_run: bool = field(default=False, metadata={"help": "Every section on the CPU at toy sizes (no GPU needed)."})
    output: str = field(default="runs/gpu_check.json", metadata={"help": "Where the JSON report goes."})
    peak_tflops: float | None = field(
        default=None,
        metadata={
            "help": "The GPU's dense bf16 peak in TFLOP/s for MFU (default: known GPUs by name).",
            "bounds": above(0),
        },
    )


def parse_args(argv=None) -> CheckArguments:
    (args,) = CommandParser([CheckArguments], prog=PROG).parse_into_dataclasses(argv)
    return args


def choose(args: CheckArguments) -> tuple[Scale, torch.device]:
    """The scale and device of the run; no GPU without --dry-run is a UserError."""
    if args.dry_run:
        return DRY_RUN, torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            "no CUDA GPU (torch.cuda.is_available() is False): run it on a GPU machine, or pass --dry-run to run "
            "every section on the CPU at toy sizes"
        )
    return (QUICK if args.quick else FULL), torch.device("cuda")


def main(argv=None) -> None:
    args = parse_args(argv)
    scale, device = choose(args)
    output = os.path.abspath(args.output)
    report = run_check(scale, device, args.peak_tflops, log=lambda line: print(line, file=sys.stderr))
    print(format_table(report))
    atomic_write_text(output, json.dumps(report, indent=1, default=str))
    print(f"wrote {output}")


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
