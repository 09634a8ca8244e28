"""Distil a compact speech encoder (ARMHuBERT, ARMwavLM, MaskHuBERT, STaRHuBERT) from a HuBERT-class teacher.

    accelerate launch distill_trainer.py --config conf/armhubert-960h.yaml [key=value ...] [--key value ...] [--resume [CHECKPOINT]]
    python distill_trainer.py --config conf/quickstart.yaml              # one process, e.g. on CPU
    python -m distill_trainer --config quickstart --output_dir runs/q    # installed: bundled recipe by name

A recipe is a flat YAML mapping of `DistillTrainingArguments` fields (the distillation options and every
`transformers.TrainingArguments` field). On the command line, `--key value` sets a field as
`HfArgumentParser` reads it, and `key=value` replaces a recipe entry with a YAML value (`eval_split=null`;
`student_config.hidden_size=64` sets one entry of a mapping). This file is the command line only; the work
is done by `armhubert.distill` (masks, losses, recipe, models, trainer, run) and `armhubert.speech.librispeech`
(data): import those.
"""

import os
import sys
from collections.abc import Sequence

from transformers import TrainerCallback

from armhubert.cli import run_main
from armhubert.distill.run import distill_command_line
from armhubert.distill.trainer import DistillTrainer
from armhubert.threads import use_machine_threads


def run(argv: Sequence[str] | None = None, callbacks: Sequence[TrainerCallback] = ()) -> DistillTrainer:
    """Parse the command line, validate everything, then train and save the student. Returns the trainer."""
    return distill_command_line(sys.argv[1:] if argv is None else argv, callbacks)


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
