"""int8 (ONNX Runtime dynamic quantisation, by model part) and fp16 versions of an exported graph."""

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from armhubert.cli import UserError, first_line

PRECISIONS = ("fp32", "int8", "fp16")
# Model parts whose products int8 can take, by where the node sits (its module path) and its op types.
QUANTIZABLE_PARTS = {
    "cnn": "the CNN front-end's convolutions and frame matmuls (model.feature_extractor)",
    "positional_conv": "the positional convolution (model.encoder.pos_conv_embed)",
    "linear": "the weight products: feature projection, attention and feed-forward layers, projection heads",
    "attention_maps": "the activation x activation products Q K^T and P V",
}
# Chosen from the measurements in docs/deployment.md: quantising the CNN front-end or the map
# products costs cosine, and time is spent in the linear layers.
DEFAULT_INT8_PARTS = ("linear",)
Int8Part = Literal[tuple(QUANTIZABLE_PARTS)]  # the commands' `--int8_parts` items: their one door is `check_fields`


def _part(node) -> str | None:
    """Which of QUANTIZABLE_PARTS a MatMul / Conv node belongs to (from its module path), else None."""
    if node.op_type not in ("MatMul", "Conv", "Gemm"):
        return None
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
    if "feature_extractor" in scopes:
        return "cnn"
    if "pos_conv_embed" in scopes:
        return "positional_conv"
    return None  # decided by its inputs (see `node_parts`)


def node_parts(proto) -> dict[str, str]:
    """Node name -> part (of QUANTIZABLE_PARTS) for every MatMul / Conv / Gemm of the graph."""
    weights = {initializer.name for initializer in proto.graph.initializer}
    # Weights reach products directly or through a Transpose / Reshape of an initializer.
    for node in proto.graph.node:
        if node.op_type in ("Transpose", "Reshape", "Identity") and node.input and node.input[0] in weights:
            weights.update(node.output)
    parts = {}
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Conv", "Gemm"):
            continue
        part = _part(node)
        if part is None:
            part = "linear" if any(name in weights for name in node.input[1:]) else "attention_maps"
        parts[node.name] = part
    return parts


def quantize_int8(
    model_bytes: bytes, parts: Sequence[str] = DEFAULT_INT8_PARTS, per_channel: bool = True, reduce_range: bool = True
) -> bytes:
    """ONNX Runtime dynamic int8 (U8S8) of the products in `parts` (of QUANTIZABLE_PARTS); the rest stays fp32.

    `reduce_range`: 7-bit weights, so that the file gives the same numbers on every x86 CPU. Without VNNI
    (AVX2, AVX-512 without VNNI) ONNX Runtime sums pairs of u8 x s8 products in int16, which full-range
    weights overflow (measured: the fixture's worst layer cosine 0.987 with 8-bit weights, 0.9997 with 7).
    The commands' arguments hold QUANTIZABLE_PARTS only (`Int8Part`).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load_from_string(model_bytes)
    node_part = node_parts(proto)
    chosen = [name for name, part in node_part.items() if part in parts]
    if not chosen:
        raise UserError("this graph has no matrix products to quantise to int8; export it with --precision fp32")
    excluded = [name for name in node_part if name not in chosen]
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(model_bytes)
        with _quiet_quantizer(), _quantizer_errors():
            quantize_dynamic(
                source,
                target,
                op_types_to_quantize=sorted({"MatMul", "Conv", "Gemm"}),
                nodes_to_exclude=excluded,
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                extra_options={"MatMulConstBOnly": False},
            )
        return target.read_bytes()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """quantize_dynamic logs "Please consider to run pre-processing" on the root logger: not our case
    (shape inference runs; the graph comes straight from the exporter)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _quantizer_errors() -> Iterator[None]:
    """The quantizer's refusals (a product whose weight is computed in the graph, an op it cannot
    take) as one UserError line."""
    try:
        yield
    except (ValueError, RuntimeError, KeyError) as error:
        reason = first_line(error)
        raise UserError(
            f"cannot quantise this model to int8 ({reason}); export it with --precision fp32, or choose "
            "other --int8-parts"
        ) from None


def convert_fp16(model_bytes: bytes) -> bytes:
    """Weights and activations in float16, inputs and outputs float32 (for GPUs / fp16 accelerators).

    Layer norms stay float32 (`LayerNormalization` / `InstanceNormalization` accumulate variances),
    as the casts around them cost little.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load_from_string(model_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the model is not valid after shape inference" noise
        converted = convert_float_to_float16(
            proto, keep_io_types=True, op_block_list=["LayerNormalization", "InstanceNormalization", "Range"]
        )
    return converted.SerializeToString()


def convert_precision(model_bytes: bytes, precision: str, int8_parts: Sequence[str] = DEFAULT_INT8_PARTS) -> bytes:
    """The fp32 graph in `precision` (one of PRECISIONS: the command checks `--precision` before the export)."""
    convert = {
        "fp32": lambda: model_bytes,
        "int8": lambda: quantize_int8(model_bytes, int8_parts),
        "fp16": lambda: convert_fp16(model_bytes),
    }
    return convert[precision]()
