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
activations uint8 per tensor at run time, i.e. U8S8, which AVX-512 VNNI runs natively). What it
quantises is chosen by model part (`QUANTIZABLE_PARTS`), from per-layer measurements (see
docs/deployment.md): the transformer's weight products by default; the CNN front-end, the positional
convolution and the attention-map products stay float. The exported graph is rewritten where
ONNX Runtime ran PyTorch's idioms slowly (`masked_fills_as_arithmetic`, `pointwise_convolutions`).
"""

import contextlib
import copy
import logging
import math
import tempfile
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from transformers import PreTrainedModel

from armhubert.cli import UserError

PRECISIONS = ("fp32", "int8", "fp16")
OUTPUT_NAMES = ("last_hidden_state", "hidden_states", "projected_hidden_states")
INPUT_NAME, MASK_NAME = "input_values", "attention_mask"
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


class StackedOutputs(torch.nn.Module):
    """The model with tensor outputs only: last_hidden_state, stacked hidden_states (and projections)."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        self.has_projections = getattr(model.config, "projection_head_size", None) is not None

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple:
        """(B, N)[, (B, N) mask] -> (B, T, D_out), (L+1, B, T, D)[, (L, B, T, P)]."""
        output = self.model(input_values, attention_mask=attention_mask, output_hidden_states=True)
        outputs = (output.last_hidden_state, torch.stack(output.hidden_states))
        if self.has_projections:
            outputs += (torch.stack(output.projected_hidden_states),)
        return outputs

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUT_NAMES[: 3 if self.has_projections else 2])


def load_model(model: str, subfolder: str | None = None) -> PreTrainedModel:
    """A converted model (ARMHuBERT or HuBERT format) in eval mode, float32; UserError when it cannot be loaded."""
    from transformers import AutoModel

    import modeling_armhubert  # noqa: F401  (registers the armhubert model type: no remote code needed)
    from armhubert.model_folders import check_model_folder, load_pretrained

    check_model_folder(model, subfolder)
    return load_pretrained(AutoModel.from_pretrained, model, subfolder, dtype=torch.float32).eval()


def min_samples(config) -> int:
    """Fewest samples the graph accepts: two frames (torch.export specialises a length-1 time axis)."""
    from configuration_armhubert import receptive_field

    return receptive_field(config.conv_kernel, config.conv_stride) + math.prod(config.conv_stride)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's noise that is no user's business.

    torch.onnx logs "torchvision is not installed. Skipping torchvision::nms" (and three more) on
    every export, and torch.export warns about its own deprecated pytree API and about axis names
    it merges: none of them says anything about the model.
    """
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: PreTrainedModel, opset: int | None = None) -> bytes:
    """`model` as one self-contained fp32 ONNX file (its bytes): dynamic batch and time, optional mask.

    The file stays in memory until it has passed the parity check (the models are far below
    protobuf's 2 GB limit).
    """
    from configuration_armhubert import SAMPLING_RATE

    wrapper = StackedOutputs(model).eval()
    example = torch.zeros(2, SAMPLING_RATE)
    shape = {0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=min_samples(model.config))}
    with quiet_exporter():
        program = torch.onnx.export(
            wrapper,
            (example, torch.ones(example.shape, dtype=torch.long)),
            dynamo=True,
            input_names=[INPUT_NAME, MASK_NAME],
            output_names=wrapper.output_names,
            dynamic_shapes=(shape, shape),
            opset_version=opset,
            verbose=False,
        )
    fold_weight_constants(program.model)
    proto = program.model_proto
    make_mask_optional(proto)
    masked_fills_as_arithmetic(proto)
    pointwise_convolutions(proto)
    return proto.SerializeToString()


# Largest tensor (elements) the constant folding computes ahead: the positional convolution's
# weight-normed kernel has D * D / G * K values (1.8 M for the releases).
FOLD_LIMIT = 2**26


def fold_weight_constants(model) -> None:
    """Compute the parts of the graph that depend on weights only (weight norm, kernel re-layouts) once,
    at export, in place (`model`: the exporter's ONNX IR model).

    The exporter folds only small constants: the positional convolution's weight norm would run on
    every call (a fixed cost), and int8 quantisation needs the kernel as a constant.
    """
    import onnxscript.optimizer

    onnxscript.optimizer.optimize(model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)


def make_mask_optional(proto) -> None:
    """Give the graph's `attention_mask` input a default, "all real", in place.

    ONNX makes an input optional by giving it an initializer of the same name (ONNX Runtime lists it
    as an overridable initializer). The default is a (1, 1) one broadcast to the input's shape
    (`Expand`), so any batch and length work without a mask, and a fed (B, N) mask passes unchanged.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    expanded = f"{MASK_NAME}_expanded"
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == MASK_NAME:
                node.input[index] = expanded
    shape = f"{INPUT_NAME}_shape"
    graph.node.insert(0, helper.make_node("Shape", [INPUT_NAME], [shape], name="mask_default_shape"))
    graph.node.insert(1, helper.make_node("Expand", [MASK_NAME, shape], [expanded], name="mask_default_expand"))
    graph.initializer.append(numpy_helper.from_array(np.ones((1, 1), np.int64), MASK_NAME))


def _consumers(graph) -> dict[str, list]:
    """Tensor name -> the nodes that read it."""
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _scalar_initializers(graph) -> dict[str, float]:
    from onnx import numpy_helper

    return {i.name: float(numpy_helper.to_array(i)) for i in graph.initializer if not i.dims and i.data_type == 1}


def masked_fills_as_arithmetic(proto) -> None:
    """`Where(mask, 0, x)` as `x * keep` and `Where(mask, -inf, x)` as `x + bias`, in place.

    The exporter writes PyTorch's `masked_fill` (padded frames to 0, padded keys' scores to -inf) as
    `Where` with the (B, 1, 1, T)-shaped mask broadcast over the (B, H, T, T) scores; ONNX Runtime's
    broadcasting `Where` took 8 % of the int8 graph's time (12 x 3-5 ms at 10 s), its `Mul` / `Add`
    a fraction. keep = not mask (float) and bias = where(mask, -inf, 0) are computed once per mask,
    on the mask's small shape. The same numbers for finite x (x * 1, x * 0, x + 0, x + -inf).
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    constants = _scalar_initializers(graph)
    made, nodes = {}, []
    for node in graph.node:
        fill = constants.get(node.input[1]) if node.op_type == "Where" else None
        if fill not in (0.0, -math.inf):
            nodes.append(node)
            continue
        mask, values = node.input[0], node.input[2]
        if (mask, fill) not in made:
            operand = f"{mask}_{'keep' if fill == 0.0 else 'bias'}"
            if fill == 0.0:
                nodes.append(helper.make_node("Not", [mask], [f"{operand}_bool"], name=f"{operand}_not"))
                nodes.append(helper.make_node("Cast", [f"{operand}_bool"], [operand], name=operand, to=1))
            else:
                graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), f"{operand}_zero"))
                nodes.append(
                    helper.make_node("Where", [mask, node.input[1], f"{operand}_zero"], [operand], name=operand)
                )
            made[mask, fill] = operand
        replacement = helper.make_node("Mul" if fill == 0.0 else "Add", [values, made[mask, fill]], list(node.output))
        replacement.name = node.name
        replacement.metadata_props.extend(node.metadata_props)
        nodes.append(replacement)
    del graph.node[:]
    graph.node.extend(nodes)


def pointwise_convolutions(proto) -> None:
    """`Transpose(0, 2, 3, 1) -> MatMul(W) -> Transpose(0, 3, 1, 2)` as one 1 x 1 `Conv`, in place.

    The model runs its 1 x 1 CNN convolutions as one matmul over the channels-last view (free in
    PyTorch); in ONNX the two layout changes are copies of the CNN's largest tensors (the first
    one's transposes took 9 % of the int8 graph's time at 10 s). ONNX Runtime's convolution takes
    the channels-first tensor as it is. Same products, another summation order.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    weights = {i.name: i for i in graph.initializer if len(i.dims) == 2}
    readers = _consumers(graph)
    producer = {name: node for node in graph.node for name in node.output}
    replaced, convolutions = set(), {}
    for matmul in graph.node:
        if matmul.op_type != "MatMul" or matmul.input[1] not in weights:
            continue
        before, after = producer.get(matmul.input[0]), readers.get(matmul.output[0], [])
        if not (_is_transpose(before, [0, 2, 3, 1]) and len(after) == 1 and _is_transpose(after[0], [0, 3, 1, 2])):
            continue
        if len(readers[before.output[0]]) != 1:
            continue
        kernel = numpy_helper.to_array(weights[matmul.input[1]]).T[:, :, None, None]  # (C_out, C_in, 1, 1)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(kernel), f"{matmul.input[1]}_1x1"))
        conv = helper.make_node(
            "Conv", [before.input[0], f"{matmul.input[1]}_1x1"], list(after[0].output), kernel_shape=[1, 1]
        )
        conv.name = matmul.name
        conv.metadata_props.extend(matmul.metadata_props)
        convolutions[before.name] = conv
        replaced.update((matmul.name, after[0].name))
    nodes = [convolutions.get(node.name, node) for node in graph.node if node.name not in replaced]
    del graph.node[:]
    graph.node.extend(nodes)


def _is_transpose(node, perm: list[int]) -> bool:
    if node is None or node.op_type != "Transpose":
        return False
    return any(a.name == "perm" and list(a.ints) == perm for a in node.attribute)


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


def check_int8_parts(parts: Sequence[str]) -> None:
    """UserError unless every entry of `parts` names one of QUANTIZABLE_PARTS."""
    unknown = [part for part in parts if part not in QUANTIZABLE_PARTS]
    if unknown:
        raise UserError(f"unknown int8 part {unknown[0]!r}: choose from {', '.join(QUANTIZABLE_PARTS)}")


def quantize_int8(model_bytes: bytes, parts: Sequence[str] = DEFAULT_INT8_PARTS, per_channel: bool = True) -> bytes:
    """ONNX Runtime dynamic int8 (U8S8) of the products in `parts` (of QUANTIZABLE_PARTS); the rest stays fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    check_int8_parts(parts)
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
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
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
    """The fp32 graph in `precision` (one of PRECISIONS)."""
    if precision == "fp32":
        return model_bytes
    if precision == "int8":
        return quantize_int8(model_bytes, int8_parts)
    if precision == "fp16":
        return convert_fp16(model_bytes)
    raise UserError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")


# ONNX Runtime fusions that made these graphs slower on CPU: its SkipLayerNormalization (residual add +
# layer norm in one kernel) took 15 % of the int8 graph's time at 10 s, its plain Add and
# LayerNormalization a fraction (docs/deployment.md).
SLOWER_FUSIONS = ["SkipLayerNormFusion"]


def onnx_session(model_bytes: bytes | str | Path, threads: int | None = None, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session that does not spin: its idle threads sleep, and so do not take CPU
    from PyTorch (or another session) running in the same process or on the same cores.

    `profile_prefix`: record ONNX Runtime's own operator profile (`session.end_profiling()` writes it).
    """
    try:
        import onnxruntime  # optional: pip install onnxruntime
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.log_severity_level = 3  # the optional mask is an initializer that is also an input: ORT warns
    source = str(model_bytes) if isinstance(model_bytes, Path) else model_bytes
    return onnxruntime.InferenceSession(
        source, options, providers=["CPUExecutionProvider"], disabled_optimizers=SLOWER_FUSIONS
    )


def run_onnx(session, audio, attention_mask=None) -> dict[str, np.ndarray]:
    """Outputs of the graph for (B, N) float32 `audio` (and a (B, N) mask, 1 = real sample), by name."""
    feed = {INPUT_NAME: np.ascontiguousarray(np.asarray(audio, dtype=np.float32))}
    if attention_mask is not None:
        feed[MASK_NAME] = np.ascontiguousarray(np.asarray(attention_mask, dtype=np.int64))
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def run_torch(model: PreTrainedModel, audio: torch.Tensor, attention_mask=None) -> dict[str, np.ndarray]:
    """The same outputs as `run_onnx`, from PyTorch (float32 numpy arrays, any model dtype)."""
    wrapper = StackedOutputs(model).eval()
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        values = wrapper(audio.to(dtype), attention_mask)
    return {name: value.float().numpy() for name, value in zip(wrapper.output_names, values)}


@dataclass
class LayerFidelity:
    """How close one layer's output is to the reference: cosine per frame (mean and worst) and
    relative error ||x - ref|| / ||ref|| over the whole layer."""

    name: str
    mean_cosine: float
    min_cosine: float
    relative_error: float

    def passes(self, min_cosine: float, max_relative_error: float) -> bool:
        return self.mean_cosine >= min_cosine and self.relative_error <= max_relative_error


def layer_fidelity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> list[LayerFidelity]:
    """Per-layer fidelity of `candidate` to `reference` (outputs by name, as `run_onnx` returns).

    Layers: hidden_states[0..L] ("hidden 0" is the encoder input), projected_hidden_states[0..L-1]
    ("projected 1".."projected L") and last_hidden_state ("last"). Raises AssertionError on a shape
    mismatch (a broken graph, not a precision matter).
    """
    layers = []
    for name, want in reference.items():
        got = candidate[name]
        if got.shape != want.shape:
            raise AssertionError(f"{name}: shape {got.shape}, reference {want.shape}")
        if name == "last_hidden_state":
            layers.append(_fidelity("last", want, got))
            continue
        first = 0 if name == "hidden_states" else 1
        label = "hidden" if name == "hidden_states" else "projected"
        layers.extend(_fidelity(f"{label} {first + i}", want[i], got[i]) for i in range(len(want)))
    return layers


def _fidelity(name: str, want: np.ndarray, got: np.ndarray) -> LayerFidelity:
    """Frame vectors: (..., D) flattened to (frames, D); float64 sums."""
    want = want.reshape(-1, want.shape[-1]).astype(np.float64)
    got = got.reshape(-1, got.shape[-1]).astype(np.float64)
    norms = np.linalg.norm(want, axis=-1) * np.linalg.norm(got, axis=-1)
    cosine = (want * got).sum(-1) / np.maximum(norms, 1e-30)
    relative = np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30)
    return LayerFidelity(name, float(cosine.mean()), float(cosine.min()), float(relative))


def max_abs_differences(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest |candidate - reference| per output (the fp32 parity measure)."""
    differences = {}
    for name, want in reference.items():
        if candidate[name].shape != want.shape:
            raise AssertionError(f"{name}: shape {candidate[name].shape}, reference {want.shape}")
        differences[name] = float(np.abs(candidate[name] - want).max())
    return differences


def concatenate_frames(outputs: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Outputs of several utterances (each as `run_onnx` returns) joined along the frame axis."""
    return {name: np.concatenate([output[name] for output in outputs], axis=-2) for name in outputs[0]}


def bfloat16_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A bf16-weight copy of `model`: what `from_pretrained(..., dtype=torch.bfloat16)` loads."""
    return copy.deepcopy(model).to(torch.bfloat16).eval()


def run_autocast(model: PreTrainedModel, audio: torch.Tensor) -> dict[str, np.ndarray]:
    """`run_torch` of the fp32 model under CPU bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return run_torch(model, audio)


def fidelity_report(
    model: PreTrainedModel,
    audios: Sequence[np.ndarray],
    int8_graphs: dict[str, bytes],
    threads: int | None = None,
) -> dict[str, list[LayerFidelity]]:
    """Per-layer fidelity to PyTorch fp32 on `audios` (1-D 16 kHz arrays, one utterance per call) of
    each int8 graph (label -> bytes), PyTorch bf16 weights and PyTorch fp32 under bf16 autocast."""
    sessions = {label: onnx_session(graph, threads) for label, graph in int8_graphs.items()}
    half = bfloat16_copy(model)
    runs = {
        **{label: (lambda audio, s=session: run_onnx(s, audio.numpy())) for label, session in sessions.items()},
        "bf16 weights": lambda audio: run_torch(half, audio),
        "bf16 autocast": lambda audio: run_autocast(model, audio),
    }
    reference, results = [], {label: [] for label in runs}
    for samples in audios:
        audio = torch.from_numpy(np.asarray(samples, dtype=np.float32))[None]
        reference.append(run_torch(model, audio))
        for label, run in runs.items():
            results[label].append(run(audio))
    expected = concatenate_frames(reference)
    return {label: layer_fidelity(expected, concatenate_frames(outputs)) for label, outputs in results.items()}


# Float32 products that `OneDNNProducts` takes: the functions and the Tensor methods (`a @ b` arrives
# as Tensor.matmul).
_LINEAR = (torch.nn.functional.linear,)
_MATMUL = (torch.matmul, torch.mm, torch.bmm, torch.Tensor.matmul, torch.Tensor.mm, torch.Tensor.bmm)


def onednn_available() -> bool:
    """Whether this torch has oneDNN (x86 and Arm builds do) with its linear kernel."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class OneDNNProducts(TorchFunctionMode):
    """Inference-time float32 CPU matrix products through oneDNN instead of the BLAS.

        with torch.inference_mode(), OneDNNProducts():
            output = model(input_values)

    Why: eager PyTorch runs float32 `addmm` / `mm` / `bmm` on MKL's sgemm, which on CPUs that are
    not Intel's takes its generic code path (MKL_VERBOSE names "Intel(R) Architecture processors" on
    an AVX-512 AMD EPYC) at about 43 GMAC/s per core; oneDNN picks its kernels by the CPU's features
    and does about 90 on the same shapes, as ONNX Runtime's MLAS does (84): that, not the graph, is
    why the same model ran 1.6x slower in PyTorch than in ONNX Runtime (docs/deployment.md).

    What: while autograd is off (`torch.inference_mode()` / `torch.no_grad()`), `F.linear` (any
    leading dims) and `torch.matmul` / `mm` / `bmm` / `@` of float32 CPU tensors of two or more
    dims with equal batch dims run as `torch.ops.mkldnn._linear_pointwise`. A weight that is an
    `nn.Parameter` is re-laid out for oneDNN once (`_reorder_linear_weight`), and again only when it
    changes (its version counter). Anything else (autograd on, other dtypes or devices,
    broadcasting, 1-D operands) runs as PyTorch would run it; without oneDNN the mode does nothing.
    Same numbers to float32 rounding (another summation order).
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = onednn_available()
        self._packed: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.enabled and not torch.is_grad_enabled():
            if func in _LINEAR and _float32_cpu(args[0], args[1]):
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                return _onednn_linear(args[0], self._weight(args[1]), bias)
            if func in _MATMUL and not kwargs and len(args) == 2 and _batched_pair(*args):
                return _onednn_matmul(*args)
        return func(*args, **kwargs)

    def _weight(self, weight: torch.Tensor) -> torch.Tensor:
        """An nn.Parameter (N, K) in oneDNN's blocked layout (cached); any other tensor as it is."""
        if not isinstance(weight, torch.nn.Parameter):
            return weight
        hit = self._packed.get(id(weight))
        if hit is not None and hit[0]() is weight and hit[1] == weight._version:
            return hit[2]
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        self._packed[id(weight)] = (weakref.ref(weight), weight._version, packed)
        return packed


def _float32_cpu(*tensors) -> bool:
    return all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def _batched_pair(a, b) -> bool:
    """(..., M, K) and (..., K, N) float32 CPU tensors with the same batch dims."""
    return _float32_cpu(a, b) and a.dim() >= 2 and a.dim() == b.dim() and a.shape[:-2] == b.shape[:-2]


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., K) @ weight (N, K)^T + bias (N,) -> (..., N)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _onednn_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (..., M, K) @ b (..., K, N) -> (..., M, N): one oneDNN product per batch entry (b read transposed)."""
    if a.dim() == 2:
        return _onednn_linear(a, b.mT, None)
    left, right = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]).mT
    products = [_onednn_linear(left[i], right[i], None) for i in range(left.shape[0])]
    return torch.stack(products).view(*a.shape[:-1], b.shape[-1])


class CPUInferenceModel(torch.nn.Module):
    """`model` called under `OneDNNProducts` (what `optimize_for_cpu` returns); the model is unchanged."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model.eval()
        self.products = OneDNNProducts()

    @property
    def config(self):
        return self.model.config

    def forward(self, *args, **kwargs):
        with self.products:
            return self.model(*args, **kwargs)


def optimize_for_cpu(model: PreTrainedModel) -> CPUInferenceModel:
    """`model` for float32 CPU inference with oneDNN products (`OneDNNProducts`): eager, no compile.

        fast = optimize_for_cpu(model)
        with torch.inference_mode():
            output = fast(input_values, output_hidden_states=True)

    Same outputs as `model` to float32 rounding, any input shape, shares the model's weights (a
    change to them is picked up). Calls with autograd on run as `model` does. Measured in
    docs/deployment.md: about ONNX Runtime's speed.
    """
    return CPUInferenceModel(model)
