"""Evaluate a fine-tuned model folder: WER / CER for CTC, accuracy and confusion matrix for a classifier.

The command lives in `armhubert.commands.evaluate` (installed as `armhubert-evaluate`); see its docstring."""

import sys

from armhubert.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
