"""Benchmark the compressed students against HuBERT Base and WavLM Base: size, MACs, latency, memory.

    HF_HUB_OFFLINE=1 python benchmarks/benchmark.py --threads 2
    HF_HUB_OFFLINE=1 python benchmarks/benchmark.py --threads 2 --outputs last --batch_sizes 1 \\
        --models armhubert-960h armhubert-960h:probabilities maskhubert-960h
    python benchmarks/benchmark.py --device cuda --dtype bfloat16 --models armhubert-960h armhubert-960h:flex \\
        maskhubert-960h

Random weights (speed does not depend on them), eval mode, no autograd. Per model: parameters; MACs
per utterance (matrix products and convolutions, `FlopCounterMode` FLOPs / 2, attention counted as
explicit matmuls; norms, activations and softmax not counted, as in the papers); latency (median of
--repeats runs after --warmup, models taking turns so that background load hits all alike; cases
above --max_audio_per_pass seconds per pass are left out); peak memory (live tensor bytes, weights and
input included: `torch.cuda.max_memory_allocated`, or the same count operator by operator on CPU); and
the fixed cost per call (time of operators whose inputs all derive from the weights alone, in a warm
run). Ratios are to HuBERT Base from the same run, and for map-reusing models to MaskHuBERT (same
width, no reuse) when measured. Workload: every layer output and projection (`output_hidden_states`,
what the papers count); `--outputs last` times `model(x)`. A model is a name of MODELS or a preset,
optionally `:probabilities` (`reuse_softmax`), `:flex` (`attn_implementation="flex_attention"`, for
GPUs) or `:eager`. Writes `benchmark.json` and `benchmark.png` to --output_dir (default
`runs/benchmark`, untracked; the README's figures come from a deliberate run into `scripts/results`).
Exit status 2: bad arguments.
"""

import gc
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from instruments.profiling import (
    count_macs,
    count_parameters,
    measure_fixed_cost,
    measure_peak_memory,
    time_forward,
)
from transformers import HubertConfig, HubertModel, WavLMConfig, WavLMModel

from armhubert.cli import CommandParser, at_least, check_cuda, check_fields, run_main
from armhubert.files.atomic import atomic_output_file, atomic_write_text
from configuration_armhubert import PRESETS, SAMPLING_RATE, ARMHubertConfig
from modeling_armhubert import ARMHubertModel

BASELINE = "hubert-base"
REUSE_REFERENCE = "maskhubert-960h"  # ARMHuBERT-960h's shape without map reuse
# Name -> display label. Any other preset name of `configuration_armhubert.PRESETS` works too.
MODELS = {
    "hubert-base": "HuBERT Base",
    "wavlm-base": "WavLM Base",
    "armhubert-960h": "ARMHuBERT-960h",
    "armhubert-s-960h": "ARMHuBERT-S",
    "maskhubert-960h": "MaskHuBERT",
    "starhubert": "STaRHuBERT",
    "starhubert-l": "STaRHuBERT-L",
}
# Model variants, `name:variant`: config overrides of the preset.
VARIANTS = {
    "probabilities": {"reuse_softmax": "probabilities"},
    "flex": {"attn_implementation": "flex_attention"},
    "eager": {"attn_implementation": "eager"},
}
# Published MACs (G) for about 225 s of audio in ~10 s utterances (Recycle-and-Distill and STaR tables).
PAPER_MACS_G = {"hubert-base": 1669.0, "armhubert-s-960h": 449.4, "starhubert": 463.5, "starhubert-l": 511.9}
PAPER_UTTERANCE_SECONDS = 10.0
PAPER_UTTERANCES = 22.5
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def split_name(spec):
    """'armhubert-960h:probabilities' -> ('armhubert-960h', 'probabilities'); no variant -> (name, None)."""
    name, _, variant = spec.lower().partition(":")
    return name, variant or None


@dataclass
class BenchmarkArguments:
    models: list[str] = field(
        default_factory=lambda: list(MODELS),
        metadata={"help": f"Models ({', '.join(MODELS)} or a preset, [:{'|'.join(VARIANTS)}]); HuBERT Base is added."},
    )
    seconds: list[float] = field(  # 400 samples: the receptive field
        default_factory=lambda: [2.0, 10.0, 30.0], metadata={"help": "Audio lengths (s).", "bounds": at_least(0.05)}
    )
    batch_sizes: list[int] = field(
        default_factory=lambda: [1, 8], metadata={"help": "Batch sizes.", "bounds": at_least(1)}
    )
    device: Literal["cpu", "cuda"] = field(default="cpu", metadata={"help": "cpu or cuda."})
    dtype: Literal[tuple(DTYPES)] = field(
        default="float32", metadata={"help": "float32, or float16 / bfloat16 (float16 on cuda only)."}
    )
    threads: int | None = field(
        default=None, metadata={"help": "CPU threads (set_num_threads); default: torch's.", "bounds": at_least(1)}
    )
    warmup: int = field(default=1, metadata={"help": "Untimed runs per case before timing.", "bounds": at_least(1)})
    repeats: int = field(
        default=3, metadata={"help": "Timed runs per case; latency is their median.", "bounds": at_least(1)}
    )
    max_audio_per_pass: float = field(
        default=80.0,
        metadata={"help": "Skip cases above this many seconds of audio per pass; 240 adds batch 8 x 30 s (slow)."},
    )
    outputs: Literal["all", "last"] = field(
        default="all", metadata={"help": "all: every layer output and projection; last: model(x)."}
    )
    clock: Literal[tuple(CLOCKS)] = field(
        default="wall", metadata={"help": "wall: elapsed time; process: CPU time (steadier on a shared CPU, 1 thread)."}
    )
    output_dir: str = field(default="runs/benchmark", metadata={"help": "Where the JSON and PNG go."})
    machine: str | None = field(default=None, metadata={"help": "Label of the machine for the plot and the JSON."})
    seed: int = 0

    # What the fields' own choices and bounds do not say, checked by `check_fields` in this order.
    RULES = (
        (
            lambda args: args.unknown_models,
            "unknown model(s) {args.unknown_models}; choose from "
            + f"{', '.join(MODELS)} or a preset ({', '.join(PRESETS)})",
        ),
        (
            lambda args: args.unknown_variants,
            f"unknown variant in {{args.unknown_variants}}; presets take :{', :'.join(VARIANTS)}",
        ),
        (
            lambda args: args.dtype == "float16" and args.device == "cpu",
            "--dtype float16 needs --device cuda (CPU float16 kernels are slow); use bfloat16 or float32",
        ),
        (
            lambda args: args.clock == "process" and args.device == "cuda",
            "--clock process measures CPU time, not the GPU's; use --clock wall with --device cuda",
        ),
        (
            lambda args: not benchmark_cases(args),
            "no case fits --max_audio_per_pass {args.max_audio_per_pass:g} s; raise it",
        ),
    )

    @property
    def unknown_models(self) -> str:
        """The --models whose name is neither of MODELS nor a preset, comma-separated ("" when none)."""
        return ", ".join(spec for spec in self.models if split_name(spec)[0] not in (*MODELS, *PRESETS))

    @property
    def unknown_variants(self) -> str:
        """The --models with a `:variant` that is not of VARIANTS or follows no preset, comma-separated."""
        return ", ".join(
            spec
            for spec, (name, variant) in zip(self.models, map(split_name, self.models))
            if variant is not None and (variant not in VARIANTS or name not in PRESETS)
        )


def check_arguments(args):
    """The fields' choices, bounds and RULES (`check_fields`, here for Python callers too), and a GPU for cuda."""
    check_fields(args)
    check_cuda(args.device)


def benchmark_cases(args):
    """(batch size, seconds) pairs to time, in order; those above --max_audio_per_pass are left out."""
    return [
        (batch_size, seconds)
        for batch_size in args.batch_sizes
        for seconds in args.seconds
        if batch_size * seconds <= args.max_audio_per_pass
    ]


def build_model(spec):
    """A random-weight model in eval mode: HF's HuBERT / WavLM Base (default attention) or a preset[:variant]."""
    name, variant = split_name(spec)
    if name == "hubert-base":
        model = HubertModel(HubertConfig())
    elif name == "wavlm-base":
        model = WavLMModel(WavLMConfig())
    else:
        model = ARMHubertModel(ARMHubertConfig.from_preset(name, **VARIANTS.get(variant, {})))
    return model.eval()


def model_label(spec):
    name, variant = split_name(spec)
    label = MODELS.get(name, name)
    return f"{label} ({variant})" if variant else label


def meta_model(spec):
    """The model with shapes but no data, for counting MACs instantly."""
    with torch.device("meta"):
        return build_model(spec)


def make_inputs(batch_size, seconds, args, device, dtype):
    generator = torch.Generator().manual_seed(args.seed)
    return torch.randn(batch_size, round(seconds * SAMPLING_RATE), generator=generator).to(device, dtype)


def benchmark_case(models, batch_size, seconds, args, device, dtype):
    """Memory (first warm-up run) and latencies of every model on one (batch size, length) case."""
    inputs = make_inputs(batch_size, seconds, args, device, dtype)
    all_outputs = args.outputs == "all"
    memory, times = {}, {name: [] for name in models}
    for name, model in models.items():
        memory[name] = measure_peak_memory(model, inputs, all_outputs)
        for _ in range(args.warmup - 1):
            time_forward(model, inputs, all_outputs)
    for _ in range(args.repeats):  # models take turns, so that background load hits them alike
        for name, model in models.items():
            times[name].append(time_forward(model, inputs, all_outputs, CLOCKS[args.clock]))
    return {
        name: {
            "batch_size": batch_size,
            "seconds": seconds,
            "latency_ms": 1000 * statistics.median(times[name]),
            "latency_ms_runs": [round(1000 * t, 3) for t in times[name]],
            "peak_memory_mb": memory[name] / 2**20,
        }
        for name in models
    }


def paper_check(name, macs_10s):
    """MACs for 225 s of audio in 10 s utterances against the published figure (or None)."""
    measured = PAPER_UTTERANCES * macs_10s / 1e9
    if name not in PAPER_MACS_G:
        return {"measured_g": measured, "paper_g": None, "error_percent": None}
    paper = PAPER_MACS_G[name]
    return {"measured_g": measured, "paper_g": paper, "error_percent": 100 * (measured - paper) / paper}


def add_ratios(results, baseline=BASELINE, reference=REUSE_REFERENCE):
    """Add ratios to every model's results, in place: `<figure>_ratio` = figure / baseline's figure (same
    case), and for attention-reusing models of the reference's width `latency_vs_reference` /
    `peak_memory_vs_reference` against `reference` (MaskHuBERT) when it was measured.

    The results are `measure_models`'s: the baseline always among them, every model timed on the same cases."""
    base = results[baseline]
    for entry in results.values():
        entry["parameters_ratio"] = entry["parameters"] / base["parameters"]
        entry["macs_ratio"] = {length: macs / base["macs"][length] for length, macs in entry["macs"].items()}
        for case, base_case in zip(entry["cases"], base["cases"], strict=True):
            case["latency_ratio"] = case["latency_ms"] / base_case["latency_ms"]
            case["peak_memory_ratio"] = case["peak_memory_mb"] / base_case["peak_memory_mb"]
        if reference in results and entry.get("reuses_maps") and entry["width"] == results[reference]["width"]:
            for case, ref_case in zip(entry["cases"], results[reference]["cases"], strict=True):
                case["latency_vs_reference"] = case["latency_ms"] / ref_case["latency_ms"]
                case["peak_memory_vs_reference"] = case["peak_memory_mb"] / ref_case["peak_memory_mb"]
    return results


def describe_model(spec, model, args, all_outputs):
    """Parameters, MACs per length, the paper check and the fixed cost per call of one model."""
    name, _ = split_name(spec)
    shapes_only = meta_model(spec)
    macs = {length: count_macs(shapes_only, round(length * SAMPLING_RATE), all_outputs) for length in args.seconds}
    macs_10s_all = count_macs(shapes_only, round(PAPER_UTTERANCE_SECONDS * SAMPLING_RATE), all_outputs=True)
    inputs = make_inputs(1, min(args.seconds), args, model.device, model.dtype)
    return {
        "label": model_label(spec),
        "parameters": count_parameters(model),
        "reuses_maps": any(getattr(model.config, "layer_reuses_attention_map", None) or []),
        "width": model.config.hidden_size,
        "macs": {f"{length:g}": value for length, value in macs.items()},
        "paper_macs": paper_check(name, macs_10s_all),
        "fixed_cost_ms": {"seconds": min(args.seconds), "ms": measure_fixed_cost(model, inputs, all_outputs)},
        "cases": [],
    }


def run_benchmark(args):
    """Every figure of every model, with ratios; torch's thread count is restored afterwards."""
    check_arguments(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return measure_models(args)
    finally:
        torch.set_num_threads(threads)


def measure_models(args):
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    specs = list(dict.fromkeys([BASELINE] + [spec.lower() for spec in args.models]))
    torch.manual_seed(args.seed)
    models = {spec: build_model(spec).to(device, dtype) for spec in specs}
    all_outputs = args.outputs == "all"
    results = {}
    for spec, model in models.items():
        results[spec] = describe_model(spec, model, args, all_outputs)
        print(f"counted {results[spec]['label']}: {results[spec]['parameters'] / 1e6:.2f} M parameters", flush=True)

    for batch_size, seconds in benchmark_cases(args):
        case = benchmark_case(models, batch_size, seconds, args, device, dtype)
        for spec in models:
            results[spec]["cases"].append(case[spec])
        print(f"timed batch {batch_size} x {seconds:g} s", flush=True)
        gc.collect()
    return add_ratios(results)


def machine_description(args):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "label": args.machine,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": args.threads or torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "dtype": args.dtype,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def machine_line(machine):
    label = f"{machine['label']}: " if machine["label"] else ""
    where = machine["device"] if machine["device"] != "cpu" else f"{machine['cpu']}, {machine['threads']} threads"
    return f"{label}{where}, {machine['dtype']}, torch {machine['torch']}"


def headline_case(args):
    """The case of the issue's targets (batch 1, 10 s) when measured, else the first one."""
    cases = benchmark_cases(args)
    return (1, 10.0) if (1, 10.0) in cases else cases[0]


def per_case_table(results, args, title, cell):
    """One row per model, one column per case; `cell(entry, case)` formats a cell (None: no row).

    A table without rows (no model has the figure, e.g. no reuse ratio without MaskHuBERT) is left out.
    """
    headers = [f"b{b} {s:g} s" for b, s in benchmark_cases(args)]
    rows = []
    for entry in results.values():
        cells = [cell(entry, case) for case in entry["cases"]]
        if None not in cells:
            rows.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", title, "", "| model | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|", *rows]


def format_tables(results, args):
    batch_size, seconds = headline_case(args)
    index = benchmark_cases(args).index((batch_size, seconds))
    key = f"{seconds:g}"
    lines = [
        f"Batch {batch_size}, {seconds:g} s of audio (ratios: x HuBERT Base, same run; MACs per utterance)",
        "",
        "| model | parameters (M) | MACs (G) | latency (ms) | peak memory (MB) |",
        "|---|---|---|---|---|",
    ]
    for entry in results.values():
        case = entry["cases"][index]
        lines.append(
            f"| {entry['label']} | {entry['parameters'] / 1e6:.2f} ({entry['parameters_ratio']:.2f}x) "
            f"| {entry['macs'][key] / 1e9:.2f} ({entry['macs_ratio'][key]:.2f}x) "
            f"| {case['latency_ms']:.0f} ({case['latency_ratio']:.2f}x) "
            f"| {case['peak_memory_mb']:.0f} ({case['peak_memory_ratio']:.2f}x) |"
        )
    lines += per_case_table(
        results, args, "Latency, ms (x HuBERT Base)", lambda e, c: f"{c['latency_ms']:.0f} ({c['latency_ratio']:.2f}x)"
    )
    lines += per_case_table(
        results,
        args,
        "Peak memory, MB (x HuBERT Base)",
        lambda e, c: f"{c['peak_memory_mb']:.0f} ({c['peak_memory_ratio']:.2f}x)",
    )
    reference = results.get(REUSE_REFERENCE, {}).get("label", REUSE_REFERENCE)
    lines += per_case_table(
        results,
        args,
        f"Attention-map reuse against {reference}: latency ratio / peak memory ratio",
        lambda e, c: (
            f"{c['latency_vs_reference']:.2f} / {c['peak_memory_vs_reference']:.2f}"
            if "latency_vs_reference" in c
            else None
        ),
    )
    lines += ["", f"Fixed cost per call: weight-only work in a warm call, batch 1 x {min(args.seconds):g} s", ""]
    lines += ["| model | ms |", "|---|---|"]
    lines += [f"| {entry['label']} | {entry['fixed_cost_ms']['ms']:.2f} |" for entry in results.values()]
    lines += ["", "MACs for 225 s of audio in 10 s utterances, every output (the papers' count)", ""]
    lines += ["| model | measured (G) | paper (G) | difference |", "|---|---|---|---|"]
    for entry in results.values():
        check = entry["paper_macs"]
        paper = f"{check['paper_g']:.1f}" if check["paper_g"] else "-"
        error = f"{check['error_percent']:+.2f} %" if check["paper_g"] else "-"
        lines.append(f"| {entry['label']} | {check['measured_g']:.1f} | {paper} | {error} |")
    return "\n".join(lines)


def plot_latency(results, args, machine, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch_sizes = list(dict.fromkeys(batch_size for batch_size, _ in benchmark_cases(args)))
    figure, axes = plt.subplots(1, len(batch_sizes), figsize=(5.5 * len(batch_sizes), 4), squeeze=False)
    for axis, batch_size in zip(axes[0], batch_sizes):
        for entry in results.values():
            cases = [case for case in entry["cases"] if case["batch_size"] == batch_size]
            axis.plot([c["seconds"] for c in cases], [c["latency_ms"] for c in cases], marker="o", label=entry["label"])
        axis.set(title=f"batch {batch_size}", xlabel="audio length (s)", ylabel="latency (ms, median)", yscale="log")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(machine_line(machine), fontsize=9)
    figure.tight_layout()
    with atomic_output_file(path) as staging:
        figure.savefig(staging, format="png", dpi=80)
    plt.close(figure)


def run(argv=None):
    """Parse the arguments, measure, print the tables, write the JSON and the plot; returns the report."""
    (args,) = CommandParser([BenchmarkArguments], prog="benchmark.py").parse_into_dataclasses(argv)
    results = run_benchmark(args)
    machine = machine_description(args)
    print()
    workload = "every output" if args.outputs == "all" else "model(x)"
    print(f"Machine: {machine_line(machine)}; workload: {workload}; clock: {args.clock}")
    print(format_tables(results, args))
    report = {"machine": machine, "arguments": asdict(args), "baseline": BASELINE, "models": results}
    output_dir = os.path.abspath(args.output_dir)
    atomic_write_text(os.path.join(output_dir, "benchmark.json"), json.dumps(report, indent=1))
    plot_latency(results, args, machine, os.path.join(output_dir, "benchmark.png"))
    print(f"\nwrote {os.path.join(output_dir, 'benchmark.json')} and {os.path.join(output_dir, 'benchmark.png')}")
    return report


def main(argv=None):
    """Exit status: 0, or 2 with one line on stderr for bad arguments."""

    def command(arguments):
        run(arguments)

    return run_main("benchmark", command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
