"""Utterance classification with an ARMHuBERT-family encoder, with `Trainer` (accuracy metric).

The command lives in `armhubert.commands.finetune_classification` (installed as `armhubert-finetune-classification`); see its docstring."""

import sys

from armhubert.commands.finetune_classification import main

if __name__ == "__main__":
    sys.exit(main())
