"""Encode a whole corpus to disk: features of chosen layers, long recordings in chunks, discrete units.

    python scripts/extract_features.py --input data --split dev-clean --model runs/quickstart --output_dir feats
    python scripts/extract_features.py --input my_audio/ --model converted/armhubert-960h --layers 4,8,12 \\
        --dtype float16 --output_dir feats
    python scripts/extract_features.py --input data --split train-clean-100 --model converted/armhubert-960h \\
        --representation projected --layers 9 --units 500 --save_features false --output_dir units
    accelerate launch --num_processes 4 scripts/extract_features.py ...   # every process a part of the corpus

Inputs: a folder of audio files, a LibriSpeech-layout root with --split, a `datasets` folder
(save_to_disk) or Hub id (--audio_column). Output: safetensors shards and index.json (read them with
`armhubert.features.storage.FeatureIndex`), or `--format arrow` a datasets folder `dataset/`
(`datasets.load_from_disk`). A killed run continues with --resume. See docs/features.md.
"""

import sys
from collections.abc import Sequence

import datasets
from transformers.utils import logging as transformers_logging

from armhubert.cli import CommandParser, run_main
from armhubert.features.plan import ExtractionArguments
from armhubert.features.run import extract_features

PROG = "extract_features.py"


def parse_arguments(argv: Sequence[str] | None) -> ExtractionArguments:
    """The command line as `ExtractionArguments`; a malformed value becomes a UserError."""
    (args,) = CommandParser([ExtractionArguments], prog=PROG).parse_into_dataclasses(argv)
    return args


def command(argv: Sequence[str] | None = None) -> dict:
    args = parse_arguments(argv)
    transformers_logging.disable_progress_bar()  # loading a small model's weights needs no bar
    if not (args.progress and sys.stderr.isatty()):
        datasets.disable_progress_bars()
    return extract_features(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 with one line on stderr for bad input."""
    return run_main(PROG, command, argv)
