"""Character-level CTC fine-tuning of an ARMHuBERT-family encoder on LibriSpeech, with `Trainer`.

The command lives in `armhubert.commands.finetune_ctc` (installed as `armhubert-finetune-ctc`); see its docstring."""

import sys

from armhubert.commands.finetune_ctc import main

if __name__ == "__main__":
    sys.exit(main())
