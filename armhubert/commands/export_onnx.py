"""Export a converted model to ONNX (fp32, int8 or fp16), check it against PyTorch, and time both on CPU.

    python scripts/export_onnx.py converted/armhubert-960h --output armhubert-960h.onnx
    python scripts/export_onnx.py converted/armhubert-960h --precision int8 --output armhubert-960h.int8.onnx
    python scripts/export_onnx.py REPO_DIR --subfolder STaRHuBERT --output starhubert.onnx --latency_seconds 10

MODEL is any folder written by `convert_checkpoint.py` (ARMHuBERT format or `--format hubert`), or a
Hub id. The graph takes `input_values` (batch, samples) float32 raw 16 kHz audio and optionally
`attention_mask` (batch, samples) int64, 1 = real sample (left out: nothing padded), with dynamic
batch and time axes, and returns `last_hidden_state`, `hidden_states` (L+1 stacked) and, for models
with projection heads, `projected_hidden_states` (L stacked): see `armhubert.deploy`.

--precision int8 quantises the transformer's weight products (ONNX Runtime dynamic U8S8, per
channel; `--int8_parts` chooses others), fp16 stores weights and activations in float16 (inputs and
outputs stay float32). After the export, ONNX Runtime runs the file on batches whose size and
length differ from the export example, one of them padded (with a mask), and compares with PyTorch
fp32: fp32 by the largest |difference| (--atol), int8 / fp16 by each layer's mean cosine to fp32
(--min_cosine) and relative error (--max_relative_error). Both runtimes are then timed, taking turns,
on one utterance of --latency_seconds. The file is written to --output (atomically) only once the
check passes. Exit status: 0 ok, 1 parity check failed, 2 bad input.
"""

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedModel

from armhubert.cli import CommandParser, above, at_least, between, require_extra, run_main
from armhubert.deploy import (
    DEFAULT_INT8_PARTS,
    OUTPUT_NAMES,
    PRECISIONS,
    QUANTIZABLE_PARTS,
    Int8Part,
    convert_precision,
    export_onnx,
    layer_fidelity,
    load_model,
    max_abs_differences,
    min_samples,
    onnx_session,
    run_onnx,
    run_torch,
)
from armhubert.deploy.timing import medians_taking_turns
from armhubert.files.atomic import atomic_write_bytes
from armhubert.files.placement import check_output_file
from armhubert.files.weights import check_finite_weights
from armhubert.progress import stages
from armhubert.threads import use_machine_threads
from configuration_armhubert import SAMPLING_RATE

PROG = "export_onnx.py"
__all__ = ["OUTPUT_NAMES", "export_onnx", "load_model", "main", "min_samples"]


@dataclass
class ExportArguments:
    """Where the graph goes, its number format, the parity bounds and the timing (MODEL is the positional argument)."""

    output: str = field(metadata={"help": "the .onnx file to write"})
    subfolder: str | None = field(default=None, metadata={"help": "variant subfolder of a multi-model repository"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --output"})
    precision: Literal[PRECISIONS] = field(default="fp32", metadata={"help": "number format of the graph"})
    int8_parts: list[Int8Part] = field(
        default_factory=lambda: list(DEFAULT_INT8_PARTS),
        metadata={
            "help": "model parts whose products int8 quantises (the rest stays fp32): "
            + "; ".join(f"{name}: {what}" for name, what in QUANTIZABLE_PARTS.items())
        },
    )
    opset: int | None = field(  # what onnx and the exporter know
        default=None, metadata={"help": "ONNX opset (default: the exporter's)", "bounds": between(7, 30)}
    )
    atol: float = field(
        default=1e-4, metadata={"help": "fp32: largest allowed |onnxruntime - PyTorch|", "bounds": above(0, 1)}
    )
    min_cosine: float = field(
        default=0.999,
        metadata={"help": "int8 / fp16: smallest allowed mean cosine of a layer to fp32", "bounds": above(-1, 1)},
    )
    max_relative_error: float = field(
        default=0.05,
        metadata={"help": "int8 / fp16: largest allowed ||x - fp32|| / ||fp32|| of a layer", "bounds": above(0, 10)},
    )
    latency_seconds: float = field(
        default=10.0, metadata={"help": "utterance length for the timing", "bounds": above(0, 600)}
    )
    latency_runs: int = field(
        default=10, metadata={"help": "timed runs per runtime (median reported)", "bounds": between(1, 10_000)}
    )
    threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads for both runtimes (default: the cores the load leaves free)",
            "bounds": at_least(1),
        },
    )

    # Checked by `check_fields` after the fields: never e.g. the model's own model.safetensors or config.json.
    RULES = (
        (lambda args: Path(args.output).suffix.lower() != ".onnx", "--output {args.output} must name a .onnx file"),
    )


def parity_inputs(config, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Batches unlike the export example's (2 x 1.0 s): 3 x 1.7 s, and 3 rows of 0.6 / 1.1 / 1.7 s padded."""
    generator = torch.Generator().manual_seed(seed)
    samples = int(1.7 * SAMPLING_RATE)
    audio = 0.1 * torch.randn(3, samples, generator=generator)
    lengths = [max(int(0.6 * SAMPLING_RATE), min_samples(config)), int(1.1 * SAMPLING_RATE), samples]
    mask = (torch.arange(samples)[None, :] < torch.tensor(lengths)[:, None]).long()
    return [(audio, None), (audio * mask, mask)]


def check_parity(model: PreTrainedModel, session, precision: str, args: ExportArguments) -> bool:
    """Print the parity table of the graph against PyTorch fp32; whether it passes the precision's bound."""
    passed = True
    for audio, mask in parity_inputs(model.config):
        expected = run_torch(model, audio, mask)
        got = run_onnx(session, audio.numpy(), None if mask is None else mask.numpy())
        case = "batch 3 x 1.7 s" + (", padded rows 0.6 / 1.1 / 1.7 s" if mask is not None else "")
        if precision == "fp32":
            frames = None  # real frames only: the frame mask drops a padded row's frames past its end
            if mask is not None:
                count = got["last_hidden_state"].shape[-2]
                frames = model._get_feature_vector_attention_mask(count, mask).bool().numpy()
            differences = max_abs_differences(expected, got, frames)
            print(f"parity ({case}; export example was 2 x 1.0 s), max |onnxruntime - PyTorch| over real frames:")
            for name, difference in differences.items():
                print(f"  {name:<24} {difference:.2e}")
            passed &= max(differences.values()) <= args.atol
            continue
        print(f"{precision} fidelity to PyTorch fp32 ({case}): mean / min cosine per frame, relative error")
        for layer in layer_fidelity(expected, got):
            ok = layer.passes(args.min_cosine, args.max_relative_error)
            passed &= ok
            flag = "" if ok else "  <- below the bound"
            print(f"  {layer.name:<14} {layer.mean_cosine:.6f} {layer.min_cosine:.6f} {layer.relative_error:.2e}{flag}")
    return passed


def measure_latency(model: PreTrainedModel, session, seconds: float = 10.0, runs: int = 10) -> dict[str, float]:
    """Median CPU latency (ms) of one utterance of `seconds`: PyTorch fp32 (inference mode) and onnxruntime."""
    audio = 0.1 * torch.randn(1, int(seconds * SAMPLING_RATE), generator=torch.Generator().manual_seed(1))
    samples = audio.numpy()
    runners = {"PyTorch": lambda: run_torch(model, audio), "onnxruntime": lambda: run_onnx(session, samples)}
    return {name: 1000 * seconds for name, seconds in medians_taking_turns(runners, runs, warmup=2).items()}


def parse_args(argv: Sequence[str] | None = None) -> tuple[str, ExportArguments]:
    """(MODEL, the checked options)."""
    parser = CommandParser([ExportArguments], prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="converted model folder (or Hub id)")
    args, rest = parser.parse_into_dataclasses(argv)
    return rest.model, args


def check_output(model: str, args: ExportArguments) -> None:
    """Before the (slow) export: the output (a .onnx file: ExportArguments.RULES) apart from the model folder."""
    check_output_file(args.output, args.overwrite, [model], what="--output")


def export(argv: Sequence[str] | None = None) -> int:
    """Export, convert, check parity, time, and write --output; 1 (nothing written) when the check fails."""
    source, args = parse_args(argv)
    require_extra("onnx", "exporting to ONNX")
    output = Path(args.output)
    check_output(source, args)
    model = load_model(source, args.subfolder)
    # NaN weights give NaN outputs, which every parity comparison lets through: refused before the export.
    check_finite_weights(model, f"the model {source}", "its outputs would be NaN; export a model that trained well")
    threads = args.threads or use_machine_threads(PROG)
    torch.set_num_threads(threads)
    # Progress bars (a terminal only) name the long silent stages; the parity table prints between them.
    with stages(["export", f"{args.precision} graph"], "ONNX") as begin:
        begin("export")
        exported = export_onnx(model, args.opset)
        begin(f"{args.precision} graph")
        model_bytes = convert_precision(exported, args.precision, args.int8_parts)
    session = onnx_session(model_bytes, threads)
    if not check_parity(model, session, args.precision, args):
        bound = f"--atol {args.atol}" if args.precision == "fp32" else "--min_cosine / --max_relative_error"
        print(f"{PROG}: error: parity check failed ({bound}); {output} was not written", file=sys.stderr)
        return 1
    with stages(["timing"], "ONNX") as begin:
        begin("timing")
        latency = measure_latency(model, session, args.latency_seconds, args.latency_runs)
    # The previous file stays until the rename; a full disk is one line naming the file (`WriteFailure`).
    atomic_write_bytes(output, model_bytes, replace=args.overwrite)
    speedup = latency["PyTorch"] / latency["onnxruntime"]
    print(
        f"CPU latency, 1 x {args.latency_seconds:g} s, {threads} threads, median of {args.latency_runs}, taking turns: "
        f"PyTorch fp32 {latency['PyTorch']:.1f} ms, onnxruntime {args.precision} {latency['onnxruntime']:.1f} ms; "
        f"one measurement at load {os.getloadavg()[0]:.2f} on this machine: onnxruntime ran at {speedup:.2f}x "
        "PyTorch's speed (it varies with the load; benchmarks/benchmark_runtimes.py measures it properly)"
    )
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, export, argv)
