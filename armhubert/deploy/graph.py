"""ONNX export of a model (dynamic batch and time, optional padding mask) and the graph rewrites that
make ONNX Runtime run it fast; ONNX Runtime sessions and the two runtimes' outputs side by side.
"""

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

OUTPUT_NAMES = ("last_hidden_state", "hidden_states", "projected_hidden_states")
INPUT_NAME, MASK_NAME = "input_values", "attention_mask"


class StackedOutputs(torch.nn.Module):
    """The model with tensor outputs only: last_hidden_state, stacked hidden_states (and projections)."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        self.has_projections = getattr(model.config, "has_projection_heads", False)  # HuBERT configs have none

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

    from ..folders.model_folders import open_model_folder

    return open_model_folder(model, subfolder).load(AutoModel.from_pretrained, dtype=torch.float32).eval()


def min_samples(config) -> int:
    """Fewest samples the graph accepts: two frames (torch.export specialises a length-1 time axis)."""
    from configuration_armhubert import receptive_field

    return receptive_field(config.conv_kernel, config.conv_stride) + math.prod(config.conv_stride)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's noise that is no user's business.

    torch.onnx logs "torchvision is not installed. Skipping torchvision::nms" (and three more) on
    every export, and torch.export warns about its own deprecated pytree API and about axis names
    it merges; torch.fx's symbolic shapes log "Unable to find user code corresponding to {u0}" with the whole
    traced graph (some 80 lines), and torch.export prints that graph again: none of them says anything about the
    model.
    """
    loggers = [
        logging.getLogger(name)
        for name in ("torch.onnx._internal.exporter._registration", "torch.fx.experimental.symbolic_shapes")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        # torch.export prints the partial graph of a strategy that failed (the exporter then tries the next one)
        # straight to stderr: kept out of the user's stderr, whose errors come as exceptions.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
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


# ONNX Runtime fusions that made these graphs slower on CPU: its SkipLayerNormalization (residual add +
# layer norm in one kernel) took 15 % of the int8 graph's time at 10 s, its plain Add and
# LayerNormalization a fraction (docs/deployment.md).
SLOWER_FUSIONS = ["SkipLayerNormFusion"]


def onnx_session(model_bytes: bytes | str | Path, threads: int | None = None, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session that does not spin: its idle threads sleep, and so do not take CPU
    from PyTorch (or another session) running in the same process or on the same cores.

    `profile_prefix`: record ONNX Runtime's own operator profile (`session.end_profiling()` writes it).
    onnxruntime is the `onnx` extra: the commands ask for it first (`armhubert.cli.require_extra`).
    """
    import onnxruntime

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
