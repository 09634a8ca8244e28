"""Export a converted model to ONNX (fp32, int8 or fp16), check it against PyTorch, and time both on CPU.

The command lives in `armhubert.commands.export_onnx` (installed as `armhubert-export-onnx`); see its docstring."""

import sys

from armhubert.commands.export_onnx import main

if __name__ == "__main__":
    sys.exit(main())
