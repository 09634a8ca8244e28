"""What int8 (ONNX Runtime) and bf16 (PyTorch) cost a model in fidelity, layer by layer, on your audio.

The command lives in `armhubert.commands.quantization_report` (installed as `armhubert-quantization-report`); see its docstring."""

import sys

from armhubert.commands.quantization_report import main

if __name__ == "__main__":
    sys.exit(main())
