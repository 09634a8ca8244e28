"""Synthesise a tiny, deterministic speech corpus in LibriSpeech layout.

The command lives in `armhubert.commands.make_corpus` (installed as `armhubert-make-corpus`); see its docstring."""

import sys

from armhubert.commands.make_corpus import main

if __name__ == "__main__":
    sys.exit(main())
