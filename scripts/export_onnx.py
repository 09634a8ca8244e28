"""Export a converted model to ONNX, check it against PyTorch with onnxruntime, and time both on CPU.

    python scripts/export_onnx.py converted/armhubert-960h --output armhubert-960h.onnx
    python scripts/export_onnx.py REPO_DIR --subfolder STaRHuBERT --output starhubert.onnx --latency-seconds 10

MODEL is any folder written by `convert_checkpoint.py` (ARMHuBERT format or `--format hubert`), or a
Hub id. The ONNX graph takes `input_values` (batch, samples) float32 raw 16 kHz audio, with dynamic
batch and time axes, and returns `last_hidden_state` (batch, frames, D_out), `hidden_states`
(L+1, batch, frames, D) and, for models with projection heads, `projected_hidden_states`
(L, batch, frames, P): the fields of the PyTorch output, stacked. Rows of a batch must have equal
length (there is no attention-mask input: run padded utterances one per batch, or crop the outputs).

After the export, onnxruntime runs the file on a batch whose size and length differ from the export
example, every output is compared with PyTorch's (max abs difference, must stay under --atol), and
both are timed on one utterance of --latency-seconds. The file is kept in memory and written to
--output (atomically) only once the check passes. Exit status: 0 ok, 1 parity check failed,
2 bad input.
"""

import argparse
import logging
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, PreTrainedModel

import modeling_armhubert  # noqa: F401  (registers the armhubert model type: no remote code needed)
from armhubert.cli import UserError, run_main
from armhubert.model_folders import check_model_folder
from armhubert.outputs import atomic_write_bytes
from armhubert.progress import stages
from configuration_armhubert import SAMPLING_RATE, receptive_field

OUTPUT_NAMES = ("last_hidden_state", "hidden_states", "projected_hidden_states")
PROG = "export_onnx.py"


class StackedOutputs(torch.nn.Module):
    """The model with tensor outputs only: last_hidden_state, stacked hidden_states (and projections)."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        self.has_projections = getattr(model.config, "projection_head_size", None) is not None

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(batch, samples) -> (batch, frames, D_out), (L+1, batch, frames, D)[, (L, batch, frames, P)]."""
        output = self.model(input_values, output_hidden_states=True)
        outputs = (output.last_hidden_state, torch.stack(output.hidden_states))
        if self.has_projections:
            outputs += (torch.stack(output.projected_hidden_states),)
        return outputs

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUT_NAMES[: 3 if self.has_projections else 2])


def min_samples(config) -> int:
    """Fewest samples the graph accepts: two frames (torch.export specialises a length-1 time axis)."""
    return receptive_field(config.conv_kernel, config.conv_stride) + math.prod(config.conv_stride)


def load_model(model: str, subfolder: str | None = None) -> PreTrainedModel:
    """A converted model (ARMHuBERT or HuBERT format) in eval mode; UserError when it cannot be loaded."""
    check_model_folder(model, subfolder)
    try:
        return AutoModel.from_pretrained(model, subfolder=subfolder or "").eval()
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise UserError(
            f"cannot load a model from {model}{f' (subfolder {subfolder})' if subfolder else ''}: {reason}"
        ) from None


def export_onnx(model: PreTrainedModel, opset: int | None = None) -> bytes:
    """`model` as one self-contained ONNX file (its bytes), with dynamic batch and time axes.

    The file stays in memory until it has passed the parity check (the models are far below
    protobuf's 2 GB limit).
    """
    wrapper = StackedOutputs(model).eval()
    example = torch.zeros(2, SAMPLING_RATE)
    samples = torch.export.Dim("samples", min=min_samples(model.config))
    with quiet_exporter():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=["input_values"],
            output_names=wrapper.output_names,
            dynamic_shapes=({0: torch.export.Dim("batch"), 1: samples},),
            opset_version=opset,
            verbose=False,
        )
    return program.model_proto.SerializeToString()


@contextmanager
def quiet_exporter():
    """Silence the exporter's notes that concern other models, not this export.

    torch.onnx warns once per torchvision operator it cannot register when torchvision is not
    installed (these models use none), and torch.export's tree handling raises a FutureWarning about
    its own internals.
    """
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        registration.setLevel(level)


def onnx_session(model_bytes: bytes, threads: int | None = None):
    """An onnxruntime CPU session over the serialised model."""
    try:
        import onnxruntime  # optional: pip install onnxruntime
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def check_parity(
    model: PreTrainedModel, session, batch: int = 3, seconds: float = 1.7, seed: int = 0
) -> dict[str, float]:
    """Max abs difference between onnxruntime and PyTorch for every output, on a shape unlike the export's."""
    generator = torch.Generator().manual_seed(seed)
    audio = 0.1 * torch.randn(batch, int(seconds * SAMPLING_RATE), generator=generator)
    with torch.inference_mode():
        expected = StackedOutputs(model)(audio)
    names = [output.name for output in session.get_outputs()]
    got = session.run(names, {"input_values": audio.numpy()})
    differences = {}
    for name, onnx_value, torch_value in zip(names, got, expected):
        if tuple(onnx_value.shape) != tuple(torch_value.shape):
            raise AssertionError(f"{name}: onnxruntime shape {onnx_value.shape}, PyTorch {tuple(torch_value.shape)}")
        differences[name] = float(np.abs(onnx_value - torch_value.numpy()).max())
    return differences


def _median_ms(run: Callable[[], object], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@dataclass
class Latency:
    torch_ms: float
    onnx_ms: float

    @property
    def speedup(self) -> float:
        return self.torch_ms / self.onnx_ms


def measure_latency(model: PreTrainedModel, session, seconds: float = 10.0, runs: int = 10) -> Latency:
    """Median CPU latency of one utterance of `seconds`, PyTorch (inference mode) and onnxruntime."""
    audio = 0.1 * torch.randn(1, int(seconds * SAMPLING_RATE), generator=torch.Generator().manual_seed(1))
    wrapper = StackedOutputs(model).eval()
    feed = {"input_values": audio.numpy()}

    def run_torch():
        with torch.inference_mode():
            wrapper(audio)

    return Latency(_median_ms(run_torch, runs), _median_ms(lambda: session.run(None, feed), runs))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="converted model folder (or Hub id)")
    parser.add_argument("--subfolder", help="variant subfolder of a multi-model repository")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed |onnxruntime - PyTorch|")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="utterance length for the timing")
    parser.add_argument("--latency-runs", type=int, default=10, help="timed runs per runtime (median reported)")
    parser.add_argument("--threads", type=int, help="CPU threads for both runtimes (default: PyTorch's)")
    return parser.parse_args(argv)


def export(argv: Sequence[str] | None = None) -> int:
    """Export, check parity, time, and write --output; 1 (nothing written) when the parity check fails."""
    args = parse_args(argv)
    output = Path(args.output)
    if output.suffix.lower() != ".onnx":  # never e.g. the model's own model.safetensors or config.json
        raise UserError(f"--output {output} must name a .onnx file")
    if output.exists() and not args.overwrite:
        raise UserError(f"{output} exists; pass --overwrite to replace it")
    if output.is_dir():
        raise UserError(f"{output} is a folder; --output names the .onnx file to write")
    model = load_model(args.model, args.subfolder)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with stages(["export", "parity check", "timing"], "ONNX") as begin:
        begin("export")
        model_bytes = export_onnx(model, args.opset)
        begin("parity check")
        session = onnx_session(model_bytes, threads)
        differences = check_parity(model, session)
        if max(differences.values()) <= args.atol:
            begin("timing")
            latency = measure_latency(model, session, args.latency_seconds, args.latency_runs)
    print("parity (batch 3 x 1.7 s; export example was 2 x 1.0 s), max |onnxruntime - PyTorch|:")
    for name, difference in differences.items():
        print(f"  {name:<24} {difference:.2e}")
    worst = max(differences.values())
    if worst > args.atol:
        print(
            f"{PROG}: error: parity check failed ({worst:.2e} > --atol {args.atol}); {output} was not written",
            file=sys.stderr,
        )
        return 1
    atomic_write_bytes(output, model_bytes)
    print(
        f"CPU latency, 1 x {args.latency_seconds:g} s, {threads} threads, median of {args.latency_runs}: "
        f"PyTorch {latency.torch_ms:.1f} ms, onnxruntime {latency.onnx_ms:.1f} ms "
        f"(onnxruntime is {latency.speedup:.2f}x PyTorch's speed)"
    )
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, export, argv)


if __name__ == "__main__":
    sys.exit(main())
