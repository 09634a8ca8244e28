"""Distil a compact speech encoder (ARMHuBERT, ARMwavLM, MaskHuBERT, STaRHuBERT) from a HuBERT-class teacher.

    accelerate launch distill_trainer.py --config conf/armhubert-960h.yaml [key=value ...] [--resume [CHECKPOINT]]
    python distill_trainer.py --config conf/quickstart.yaml              # one process, e.g. on CPU
    python -m distill_trainer --config quickstart output_dir=runs/q      # installed: bundled recipe by name

A recipe is a flat YAML mapping of `DistillArguments` and `transformers.TrainingArguments` fields;
`key=value` arguments override it (values are parsed as YAML, `student_config.hidden_size=64` sets
one entry of a mapping). This file is the command line only; the work is done by `armhubert.distill`
(masks, losses, recipe, models, trainer, run) and `armhubert.speech.librispeech` (data): import those.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from transformers import TrainerCallback

from armhubert.cli import run_main
from armhubert.distill.run import distill
from armhubert.distill.trainer import DistillTrainer
from armhubert.threads import use_machine_threads


def parse_cli(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`config`, `resume` (None, "last" or a checkpoint folder) and `overrides` (key=value strings)."""
    parser = argparse.ArgumentParser(
        prog="distill_trainer.py",
        description="Distil an ARMHuBERT-family student from a HuBERT / WavLM teacher on LibriSpeech.",
        epilog="Example: accelerate launch distill_trainer.py --config conf/armhubert-s-100h.yaml bf16=true fp16=false",
    )
    parser.add_argument(
        "--config",
        required=True,
        help="recipe YAML file, or the name of a bundled recipe (conf/<name>.yaml), e.g. quickstart or armhubert-960h",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="CHECKPOINT",
        help="continue the last complete checkpoint in output_dir (or the given checkpoint folder) exactly",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="replace recipe entries")
    cli = parser.parse_intermixed_args(argv)
    if cli.resume not in (None, "last") and "=" in cli.resume and not Path(cli.resume).exists():
        cli.overrides.insert(0, cli.resume)  # `--resume key=value`: the flag took an override
        cli.resume = "last"
    return cli


def run(argv: Sequence[str] | None = None, callbacks: Sequence[TrainerCallback] = ()) -> DistillTrainer:
    """Parse the command line, validate everything, then train and save the student. Returns the trainer."""
    cli = parse_cli(argv)
    return distill(cli.config, cli.overrides, cli.resume, callbacks)


def main(argv: Sequence[str] | None = None) -> int:
    """The command: a `UserError` (bad recipe, data or output folder) is one line on stderr and exit status 2.

    A single process takes the cores the machine's load leaves free (two spinning threads on a busy 2-core
    machine run 5x slower than one); launched processes (torchrun, accelerate) keep their launcher's setting.
    """

    def job(arguments):
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            use_machine_threads("distill_trainer.py")
        return run(arguments)

    return run_main("distill_trainer.py", job, argv)


if __name__ == "__main__":
    sys.exit(main())
