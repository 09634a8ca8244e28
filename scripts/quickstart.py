"""Build a model from a preset, encode bundled utterances, print shapes, size and speed.

The command lives in `armhubert.commands.quickstart` (installed as `armhubert-quickstart`); see its docstring."""

import sys

from armhubert.commands.quickstart import main

if __name__ == "__main__":
    sys.exit(main())
