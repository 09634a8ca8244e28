"""Deployment on CPUs: ONNX export in fp32 / int8 / fp16, ONNX Runtime sessions, per-layer fidelity,
and PyTorch inference with oneDNN products.

    from armhubert.deploy import export_onnx, quantize_int8, onnx_session, run_onnx, optimize_for_cpu

    fast = optimize_for_cpu(model)                   # PyTorch: float32 products on oneDNN, not MKL

    graph = export_onnx(model)                       # bytes: fp32, dynamic batch / time, optional mask
    int8 = quantize_int8(graph)                      # dynamic U8S8 int8 of the transformer's products
    session = onnx_session(int8, threads=2)
    outputs = run_onnx(session, audio)               # {"last_hidden_state": ..., "hidden_states": ...}
    outputs = run_onnx(session, padded, attention_mask=mask)   # padded batch: 1 = real sample

The graph takes `input_values` (batch, samples) float32 raw 16 kHz audio and, optionally,
`attention_mask` (batch, samples) int64, 1 = real sample; left out it means "nothing padded". It
returns the fields of the PyTorch output, stacked: `last_hidden_state` (batch, frames, D_out),
`hidden_states` (L+1, batch, frames, D) and, for models with projection heads,
`projected_hidden_states` (L, batch, frames, P). With a layer-norm CNN (`feat_extract_norm="layer"`)
each row of a padded batch gets what the utterance gets alone; the releases' group-norm CNN
normalises its first layer over the whole padded row, in ONNX as in PyTorch.

int8 is ONNX Runtime's dynamic quantisation (`quantize_dynamic`: weights int8 per output channel,
activations uint8 per tensor at run time, i.e. U8S8, which AVX-512 VNNI runs natively; 7-bit weights, see
`quantize_int8`). What it
quantises is chosen by model part (`QUANTIZABLE_PARTS`), from per-layer measurements (see
docs/deployment.md): the transformer's weight products by default; the CNN front-end, the positional
convolution and the attention-map products stay float. The exported graph is rewritten where
ONNX Runtime ran PyTorch's idioms slowly (`masked_fills_as_arithmetic`, `pointwise_convolutions`).
"""

from .cpu import (
    CPUInferenceModel,
    OneDNNProducts,
    cpu_has_bf16,
    cpu_has_vnni,
    onednn_available,
    optimize_for_cpu,
)
from .fidelity import (
    LayerFidelity,
    bfloat16_copy,
    concatenate_frames,
    fidelity_report,
    layer_fidelity,
    max_abs_differences,
    run_autocast,
)
from .graph import (
    FOLD_LIMIT,
    INPUT_NAME,
    MASK_NAME,
    OUTPUT_NAMES,
    SLOWER_FUSIONS,
    StackedOutputs,
    export_onnx,
    fold_weight_constants,
    load_model,
    make_mask_optional,
    masked_fills_as_arithmetic,
    min_samples,
    onnx_session,
    pointwise_convolutions,
    quiet_exporter,
    run_onnx,
    run_torch,
)
from .quantize import (
    DEFAULT_INT8_PARTS,
    PRECISIONS,
    QUANTIZABLE_PARTS,
    Int8Part,
    convert_fp16,
    convert_precision,
    node_parts,
    quantize_int8,
)

__all__ = [
    "CPUInferenceModel",
    "DEFAULT_INT8_PARTS",
    "FOLD_LIMIT",
    "INPUT_NAME",
    "LayerFidelity",
    "MASK_NAME",
    "OUTPUT_NAMES",
    "OneDNNProducts",
    "PRECISIONS",
    "QUANTIZABLE_PARTS",
    "SLOWER_FUSIONS",
    "StackedOutputs",
    "bfloat16_copy",
    "Int8Part",
    "concatenate_frames",
    "convert_fp16",
    "convert_precision",
    "cpu_has_bf16",
    "cpu_has_vnni",
    "export_onnx",
    "fidelity_report",
    "fold_weight_constants",
    "layer_fidelity",
    "load_model",
    "make_mask_optional",
    "masked_fills_as_arithmetic",
    "max_abs_differences",
    "min_samples",
    "node_parts",
    "onednn_available",
    "onnx_session",
    "optimize_for_cpu",
    "pointwise_convolutions",
    "quantize_int8",
    "quiet_exporter",
    "run_autocast",
    "run_onnx",
    "run_torch",
]
