"""Encode a whole corpus to disk: features of chosen layers, long recordings in chunks, discrete units.

The command lives in `armhubert.commands.extract_features` (installed as `armhubert-extract-features`); see its docstring."""

import sys

from armhubert.commands.extract_features import main

if __name__ == "__main__":
    sys.exit(main())
