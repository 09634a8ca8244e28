"""What int8 (ONNX Runtime) and bf16 (PyTorch) cost a model in fidelity, layer by layer, on your audio.

    python scripts/quantization_report.py converted/armhubert-960h
    python scripts/quantization_report.py converted/armhubert-960h --audio my/*.flac --each_part

Real checkpoints have weight and activation outliers that random weights lack: check the int8 file
of a trained model on audio like yours before deploying it. For each layer (the encoder input
`hidden 0`, the L layer outputs, the projections and the last state) it prints the mean and worst
cosine per frame to PyTorch fp32 and the relative error ||x - fp32|| / ||fp32||, for the int8 graph
that `export_onnx.py --precision int8 --int8_parts ...` writes, for bf16 weights
(`from_pretrained(..., dtype=torch.bfloat16)`) and for fp32 weights under bf16 autocast. It also says
which parts int8 quantises and which it keeps in float (node counts by op type). `--each_part`
adds int8 with each part quantised alone: where the fidelity goes. Audio: --audio files (any rate,
mono-mixed, at most --max_seconds each), by default the bundled corpus's dev-clean utterances, one
per call. Exit status: 0, or 2 for bad input.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from armhubert.cli import CommandParser, UserError, above, at_least, require_extra, run_main
from armhubert.deploy import (
    DEFAULT_INT8_PARTS,
    QUANTIZABLE_PARTS,
    Int8Part,
    LayerFidelity,
    cpu_has_bf16,
    cpu_has_vnni,
    export_onnx,
    fidelity_report,
    load_model,
    min_samples,
    node_parts,
    quantize_int8,
)
from armhubert.files.untrusted import Limit
from armhubert.files.weights import check_finite_weights
from armhubert.resources import BUNDLED_CORPUS
from armhubert.speech.audio import read_audio
from armhubert.threads import use_machine_threads
from configuration_armhubert import SAMPLING_RATE

PROG = "quantization_report.py"
AUDIO_FILES = Limit(1000, "{what} names {count} files; at most {most} (a sample of your audio is enough)")


@dataclass
class ReportArguments:
    """Which parts int8 quantises, on which audio (MODEL is the positional argument)."""

    subfolder: str | None = field(default=None, metadata={"help": "variant subfolder of a multi-model repository"})
    audio: list[Path] | None = field(default=None, metadata={"help": "audio files (default: the bundled dev-clean)"})
    max_seconds: float = field(
        default=20.0, metadata={"help": "longest audio per file (the rest is cut)", "bounds": above(0, 3600)}
    )
    int8_parts: list[Int8Part] = field(
        default_factory=lambda: list(DEFAULT_INT8_PARTS),
        metadata={"help": "parts the int8 graph quantises (as export_onnx.py)"},
    )
    each_part: bool = field(default=False, metadata={"help": "also int8 with each part quantised alone"})
    threads: int | None = field(
        default=None, metadata={"help": "CPU threads (default: the cores the load leaves free)", "bounds": at_least(1)}
    )

    # Checked by `check_fields` after the fields, before any model is read.
    RULES = ((lambda args: args.missing_audio, "--audio {args.missing_audio[0]} is not a file"),)

    @property
    def missing_audio(self) -> list[Path]:
        """The --audio paths that are not regular files: missing, a folder, a FIFO, a device."""
        return [path for path in self.audio or () if not path.is_file()]


def parse_args(argv: Sequence[str] | None = None) -> tuple[str, ReportArguments]:
    """(MODEL, the checked options)."""
    parser = CommandParser([ReportArguments], prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="converted model folder (or Hub id)")
    args, rest = parser.parse_into_dataclasses(argv)
    return rest.model, args


def audio_files(paths: Sequence[Path] | None) -> list[Path]:
    """The --audio files (each a file: ReportArguments.RULES), at most AUDIO_FILES of them; by default the bundled
    dev-clean utterances."""
    if not paths:
        files = sorted((BUNDLED_CORPUS / "dev-clean").rglob("*.flac"))
        if not files:
            raise UserError(f"no bundled audio under {BUNDLED_CORPUS / 'dev-clean'}; pass --audio FILES")
        return files
    AUDIO_FILES.check(len(paths), "--audio")
    return list(paths)


def load_audio(files: Sequence[Path], max_seconds: float, shortest: int) -> list[np.ndarray]:
    """16 kHz mono arrays, each cut to max_seconds; a file shorter than the receptive field is refused."""
    audios = []
    for path in files:
        samples = read_audio(path, max_samples=int(max_seconds * SAMPLING_RATE))  # decodes only what is kept
        if len(samples) < shortest:
            raise UserError(f"{path} has {len(samples)} samples at 16 kHz, fewer than the model's {shortest}")
        audios.append(samples)
    return audios


def print_parts(graph: bytes, parts: Sequence[str]) -> None:
    counts = Counter()
    import onnx  # the onnx extra, checked before the work starts

    proto = onnx.load_from_string(graph)
    types = {node.name: node.op_type for node in proto.graph.node}
    for name, part in node_parts(proto).items():
        counts[part, types[name]] += 1
    for part, what in QUANTIZABLE_PARTS.items():
        nodes = ", ".join(f"{count} {op}" for (p, op), count in sorted(counts.items()) if p == part) or "none"
        state = "int8" if part in parts else "float"
        print(f"  {state:<5} {part:<16} {nodes:<22} {what}")


def print_table(results: dict[str, list[LayerFidelity]]) -> None:
    """One row per layer, per variant its mean cosine per frame and relative error; then the worst frame."""
    labels = list(results)
    width = max(17, *(len(label) for label in labels))
    print(f"{'':<13}" + "".join(f"  {label:<{width}}" for label in labels))
    print(f"{'layer':<13}" + "".join(f"  {'mean cos  rel err':<{width}}" for _ in labels))
    for index, layer in enumerate(results[labels[0]]):
        cells = (results[label][index] for label in labels)
        print(
            f"{layer.name:<13}" + "".join(f"  {f'{c.mean_cosine:.6f}  {c.relative_error:.1e}':<{width}}" for c in cells)
        )
    worst = (f"{min(c.mean_cosine for c in results[label]):.6f}" for label in labels)
    print(f"{'worst layer':<13}" + "".join(f"  {value:<{width}}" for value in worst))
    frames = (f"{min(c.min_cosine for c in results[label]):.6f}" for label in labels)
    print(f"{'worst frame':<13}" + "".join(f"  {value:<{width}}" for value in frames))


def report(argv: Sequence[str] | None = None) -> int:
    source, args = parse_args(argv)
    require_extra("onnx", "the quantisation report")
    files = audio_files(args.audio)
    model = load_model(source, args.subfolder)
    check_finite_weights(model, f"the model {source}", "its outputs would be NaN; measure a model that trained well")
    threads = args.threads or use_machine_threads(PROG)
    torch.set_num_threads(threads)
    audios = load_audio(files, args.max_seconds, min_samples(model.config))
    graph = export_onnx(model)
    graphs = {"int8 " + "+".join(args.int8_parts): quantize_int8(graph, args.int8_parts)}
    if args.each_part:
        for part in QUANTIZABLE_PARTS:
            if [part] != list(args.int8_parts):
                graphs[f"int8 {part} only"] = quantize_int8(graph, [part])
    seconds = sum(len(audio) for audio in audios) / SAMPLING_RATE
    print(f"{source}: {len(audios)} utterances, {seconds:.1f} s, one per call; fidelity to PyTorch fp32")
    print(f"int8 parts ({'+'.join(args.int8_parts)}), 7-bit weights (the same numbers on CPUs with and without VNNI):")
    print_parts(graph, args.int8_parts)
    print_table(fidelity_report(model, audios, graphs, threads))
    if cpu_has_vnni() is False:
        print(
            "this CPU has no VNNI (AVX-512 VNNI / AVX-VNNI): int8 runs here at about fp32's speed (docs/deployment.md)"
        )
    if cpu_has_bf16() is False:
        print("this CPU has no native bf16 (AVX-512 BF16 / AMX): bf16 runs here slower than fp32 (docs/deployment.md)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, report, argv)
