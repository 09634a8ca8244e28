"""Time the students in PyTorch fp32 / bf16 and ONNX Runtime fp32 / int8 against HuBERT Base, on CPU.

    HF_HUB_OFFLINE=1 python benchmarks/benchmark_runtimes.py --threads 2
    HF_HUB_OFFLINE=1 python benchmarks/benchmark_runtimes.py --threads 2 --models armhubert-960h --cases 1x10 8x10
    HF_HUB_OFFLINE=1 python benchmarks/benchmark_runtimes.py --threads 2 --models armhubert-960h --cases 1x10 \\
        --runtimes pytorch-fp32 pytorch-onednn onnx-fp32 --profile

Random weights (speed does not depend on them), eval mode, no autograd, every layer's output
(`output_hidden_states`, the ONNX graph's outputs). The baseline is `transformers`' HuBERT Base in
PyTorch fp32. Runtimes: `pytorch-fp32` (eager); `pytorch-onednn`
(`armhubert.deploy.optimize_for_cpu`: float32 products through oneDNN instead of MKL);
`pytorch-bf16` (bf16 weights, what `from_pretrained(..., dtype=torch.bfloat16)` loads) and
`pytorch-bf16-onednn` (the same through `optimize_for_cpu`: the map reuse's float32 products);
`onnx-fp32` and `onnx-int8` (`armhubert.deploy` graphs, as `export_onnx.py` writes them). A case is
BATCHxSECONDS. Every (model, runtime) takes its turn in each of --repeats rounds after --warmup
calls, so background load hits all alike; ONNX Runtime sessions do not spin (their idle threads
sleep), so they never compete with PyTorch's threads. PyTorch's OpenMP threads spin while they wait,
as they do by default: on a quiet machine that is its fast setting (2 threads, ARMHuBERT-960h 1 x 10 s:
206 ms spinning vs 255 ms with `OMP_WAIT_POLICY=PASSIVE`), on a machine with other work spinning
threads collapse (4x slower at 2 threads under load 2.5): there, run it with `OMP_WAIT_POLICY=PASSIVE`
in the environment (the header prints the policy). Prints milliseconds (median), the ratio to
HuBERT Base and to the same model's PyTorch fp32, the real-time factor (compute seconds per audio
second), and file sizes (safetensors-equivalent weight bytes, ONNX files). `--profile` adds the
operator profile of one call (torch.profiler, ONNX Runtime's own profiler) of each model and runtime
for the first case. For the cases 1x10 and 8x10 it then checks the deployment targets (`TARGETS`) (ratios of the
same run, pass / FAIL). Writes `benchmark_runtimes.json` to --output_dir. Exit status 2: bad arguments.
"""

import gc
import json
import os
import platform
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from instruments.profiling import count_parameters
from transformers import HubertConfig, HubertModel

from armhubert.cli import CommandParser, at_least, require_extra, run_main
from armhubert.deploy import (
    bfloat16_copy,
    cpu_has_bf16,
    cpu_has_vnni,
    export_onnx,
    onnx_session,
    optimize_for_cpu,
    quantize_int8,
    run_onnx,
)
from armhubert.deploy.timing import medians_taking_turns
from armhubert.files.atomic import atomic_write_text
from configuration_armhubert import PRESETS, SAMPLING_RATE, ARMHubertConfig
from modeling_armhubert import ARMHubertModel

PROG = "benchmark_runtimes.py"
BASELINE = ("hubert-base", "pytorch-fp32")
RUNTIMES = ("pytorch-fp32", "pytorch-onednn", "pytorch-bf16", "pytorch-bf16-onednn", "onnx-fp32", "onnx-int8")
DEFAULT_RUNTIMES = RUNTIMES


@dataclass(frozen=True)
class Target:
    """The deployment target's bound on `runtime`'s time over `reference`'s, (model, runtime) (model None: the same
    model), in the `cases` the issue sets it for."""

    runtime: str
    reference: tuple[str | None, str]
    bound: float
    cases: tuple[str, ...] = ("1x10",)


TARGETS = (
    Target("pytorch-onednn", (None, "onnx-fp32"), 1.15),
    Target("onnx-int8", (None, "pytorch-fp32"), 0.35, ("1x10", "8x10")),
    Target("onnx-int8", BASELINE, 0.11, ("1x10", "8x10")),
    Target("pytorch-bf16-onednn", (None, "pytorch-fp32"), 0.45),
)


@dataclass
class RuntimeArguments:
    models: list[str] = field(
        default_factory=lambda: ["armhubert-960h", "maskhubert-960h", "starhubert"],
        metadata={"help": "Presets of configuration_armhubert.PRESETS; HuBERT Base PyTorch fp32 is the baseline."},
    )
    runtimes: list[Literal[RUNTIMES]] = field(
        default_factory=lambda: list(DEFAULT_RUNTIMES), metadata={"help": f"Of {', '.join(RUNTIMES)}."}
    )
    cases: list[str] = field(
        default_factory=lambda: ["1x2", "1x10", "1x30", "8x10"], metadata={"help": "BATCHxSECONDS inputs."}
    )
    threads: int = field(default=2, metadata={"help": "CPU threads for every runtime.", "bounds": at_least(1)})
    repeats: int = field(default=7, metadata={"help": "Timed rounds (median reported).", "bounds": at_least(1)})
    warmup: int = field(
        default=2, metadata={"help": "Untimed calls per (model, runtime, case) first.", "bounds": at_least(0)}
    )
    profile: bool = field(default=False, metadata={"help": "Print operator profiles of one call (first case)."})
    output_dir: str = field(default="runs/benchmark_runtimes", metadata={"help": "Where the JSON goes."})

    # What the fields' own types do not say, checked by `check_fields` in this order.
    RULES = (
        (
            lambda args: args.unknown_models,
            f"unknown model {{args.unknown_models[0]!r}}: choose presets of {', '.join(PRESETS)}",
        ),
        (
            lambda args: args.malformed_cases,
            "--cases {args.malformed_cases[0]!r}: expected BATCHxSECONDS, e.g. 1x10 or 8x10",
        ),
        (
            lambda args: args.oversized_cases,
            "--cases {args.oversized_cases[0]!r}: batch >= 1, 0.1-600 s, at most an hour of audio per call",
        ),
    )

    @property
    def unknown_models(self) -> list[str]:
        return [name for name in self.models if name.lower() not in PRESETS]

    @property
    def malformed_cases(self) -> list[str]:
        return [case for case in self.cases if parse_case(case) is None]

    @property
    def oversized_cases(self) -> list[str]:
        """Well-formed cases outside batch >= 1, 0.1-600 s, an hour of audio per call."""
        return [case for case in self.cases if (parsed := parse_case(case)) and not fits(*parsed)]


def parse_case(case: str) -> tuple[int, float] | None:
    """BATCHxSECONDS as (batch, seconds); None when it is not of that form."""
    batch, _, seconds = case.partition("x")
    try:
        return int(batch), float(seconds)
    except ValueError:
        return None


def fits(batch: int, seconds: float) -> bool:
    return batch >= 1 and 0.1 <= seconds <= 600 and batch * seconds <= 3600


def check_arguments(args: RuntimeArguments) -> list[tuple[int, float]]:
    """The checked --cases as (batch, seconds), once the onnx extra is there for ONNX runtimes (the fields and
    RULES are `CommandParser`'s to check)."""
    onnx_runtimes = [name for name in args.runtimes if name.startswith("onnx")]
    if onnx_runtimes:
        require_extra("onnx", f"--runtimes {' '.join(onnx_runtimes)}")
    return [parse_case(case) for case in args.cases]


def hubert_base() -> HubertModel:
    torch.manual_seed(0)
    return HubertModel(HubertConfig()).eval()


def pytorch_runner(model) -> Callable[[torch.Tensor], object]:
    def run(audio):
        with torch.inference_mode():
            return model(audio.to(next(model.parameters()).dtype), output_hidden_states=True)

    return run


@dataclass
class Subject:
    """One (model, runtime) under test: how to call it and its file size."""

    model: str
    runtime: str
    run: Callable[[torch.Tensor], object]
    file_bytes: int
    profile: Callable[[torch.Tensor], list[tuple[str, float]]] | None = None


def torch_profile(run: Callable[[torch.Tensor], object]) -> Callable[[torch.Tensor], list[tuple[str, float]]]:
    """Top operators of one call by self CPU time (ms): torch.profiler."""

    def profile(audio):
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profiler

        with torch_profiler(activities=[ProfilerActivity.CPU]) as profiler:
            run(audio)
        events = profiler.key_averages()
        return sorted(((e.key, e.self_cpu_time_total / 1000) for e in events), key=lambda kv: -kv[1])

    return profile


def onnx_profile(graph: bytes, threads: int) -> Callable[[torch.Tensor], list[tuple[str, float]]]:
    """Operator types of one call by summed kernel time (ms): ONNX Runtime's own profiler."""

    def profile(audio):
        with tempfile.TemporaryDirectory() as folder:
            session = onnx_session(graph, threads, profile_prefix=os.path.join(folder, "ort"))
            run_onnx(session, audio.numpy())  # first run: allocations
            run_onnx(session, audio.numpy())
            with open(session.end_profiling()) as file:
                events = json.load(file)
        kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        runs = max(1, sum(1 for e in events if e.get("name") == "model_run"))
        totals = Counter()
        for event in kernels:
            totals[event["args"]["op_name"]] += event["dur"] / 1000 / runs
        return totals.most_common()

    return profile


def pytorch_model(model: ARMHubertModel, runtime: str) -> torch.nn.Module:
    """What a pytorch-* runtime runs: the model or its bf16-weight copy, with oneDNN products or not."""
    weights = bfloat16_copy(model) if "bf16" in runtime else model
    return optimize_for_cpu(weights) if "onednn" in runtime else weights


def subjects_of(name: str, runtimes: list[str], threads: int) -> list[Subject]:
    """The (model, runtime) pairs of one preset, built from the same random weights."""
    torch.manual_seed(0)
    model = ARMHubertModel(ARMHubertConfig.from_preset(name)).eval()
    weight_bytes = 4 * count_parameters(model)
    subjects = []
    graph = export_onnx(model) if any(r.startswith("onnx") for r in runtimes) else None
    for runtime in runtimes:
        if runtime.startswith("pytorch"):
            run = pytorch_runner(pytorch_model(model, runtime))
            size = weight_bytes // 2 if "bf16" in runtime else weight_bytes
            subjects.append(Subject(name, runtime, run, size, torch_profile(run)))
        else:
            file = graph if runtime == "onnx-fp32" else quantize_int8(graph)
            session = onnx_session(file, threads)
            subjects.append(
                Subject(
                    name, runtime, lambda a, s=session: run_onnx(s, a.numpy()), len(file), onnx_profile(file, threads)
                )
            )
    return subjects


def measure(subjects: list[Subject], cases, args: RuntimeArguments) -> dict:
    """Median seconds per (case, subject), subjects taking turns within each round."""
    results = {}
    for batch, seconds in cases:
        audio = 0.1 * torch.randn(batch, int(seconds * SAMPLING_RATE), generator=torch.Generator().manual_seed(0))
        runs = {index: (lambda s=subject, a=audio: s.run(a)) for index, subject in enumerate(subjects)}
        results[f"{batch}x{seconds:g}"] = list(medians_taking_turns(runs, args.repeats, args.warmup).values())
        gc.collect()
    return results


def print_table(subjects: list[Subject], results: dict) -> None:
    baseline = next(i for i, s in enumerate(subjects) if (s.model, s.runtime) == BASELINE)
    fp32 = {s.model: i for i, s in enumerate(subjects) if s.runtime == "pytorch-fp32"}
    for case, medians in results.items():
        batch, seconds = parse_case(case)
        print(f"\n{case} s ({batch} x {seconds:g} s of audio)")
        print(f"  {'model':<16} {'runtime':<20} {'ms':>9} {'/ HuBERT Base':>14} {'/ own fp32':>11} {'RTF':>7}")
        for subject, value in zip(subjects, medians):
            own = medians[fp32[subject.model]] if subject.model in fp32 else float("nan")
            print(
                f"  {subject.model:<16} {subject.runtime:<20} {1000 * value:9.1f} {value / medians[baseline]:14.3f} "
                f"{value / own:11.3f} {value / (batch * seconds):7.4f}"
            )
    print("\nfile sizes (MiB)")
    for subject in subjects:
        print(f"  {subject.model:<16} {subject.runtime:<20} {subject.file_bytes / 2**20:8.1f}")


def print_targets(subjects: list[Subject], results: dict) -> list[dict]:
    """Each of TARGETS for each model and its cases measured: the ratio, its bound, pass / FAIL."""
    checks = []
    for case in results:
        times = {(s.model, s.runtime): value for s, value in zip(subjects, results[case])}
        for model in dict.fromkeys(s.model for s in subjects if s.model != BASELINE[0]):
            for target in TARGETS:
                reference = (target.reference[0] or model, target.reference[1])
                if case in target.cases and (model, target.runtime) in times and reference in times:
                    ratio = times[model, target.runtime] / times[reference]
                    checks.append(
                        dict(case=case, model=model, **asdict(target), ratio=ratio, passed=ratio <= target.bound)
                    )
    if checks:
        print("\ndeployment targets (time / reference time, same run)")
    for check in checks:
        reference = " ".join(filter(None, check["reference"]))  # the runtime alone: the same model's
        print(
            f"  {check['case']:<5} {check['model']:<16} {check['runtime']:<20} / {reference:<25} "
            f"{check['ratio']:6.3f} <= {check['bound']:.2f}  {'pass' if check['passed'] else 'FAIL'}"
        )
    return checks


def print_profiles(subjects: list[Subject], case: str, top: int = 12) -> None:
    batch, seconds = parse_case(case)
    audio = 0.1 * torch.randn(batch, int(seconds * SAMPLING_RATE), generator=torch.Generator().manual_seed(0))
    for subject in subjects:
        if subject.profile is None:
            continue
        subject.run(audio)
        rows = subject.profile(audio)
        total = sum(ms for _, ms in rows)
        print(f"\nprofile {subject.model} {subject.runtime}, {case} s: {total:.1f} ms of operator time, top {top}")
        for name, ms in rows[:top]:
            print(f"  {ms:9.1f} ms {100 * ms / max(total, 1e-9):5.1f} %  {name}")


def yes_no(flag: bool | None) -> str:
    return "unknown" if flag is None else ("yes" if flag else "no")


def benchmark(argv=None) -> dict:
    (args,) = CommandParser([RuntimeArguments], prog="benchmark_runtimes.py").parse_into_dataclasses(argv)
    cases = check_arguments(args)
    torch.set_num_threads(args.threads)
    base = hubert_base()
    run = pytorch_runner(base)
    subjects = [Subject(*BASELINE, run, 4 * count_parameters(base), torch_profile(run))]
    for name in args.models:
        subjects += subjects_of(name.lower(), args.runtimes, args.threads)
    load = os.getloadavg()
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads, load {load[0]:.2f} at start, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, VNNI (native int8) {yes_no(cpu_has_vnni())}, "
        f"native bf16 {yes_no(cpu_has_bf16())}"
    )
    results = measure(subjects, cases, args)
    print_table(subjects, results)
    checks = print_targets(subjects, results)
    if args.profile:
        print_profiles(subjects, args.cases[0])
    end_load = os.getloadavg()[0]
    print(f"\nload average {load[0]:.2f} at start, {end_load:.2f} at the end")
    report = {
        "arguments": asdict(args),
        "load_average": [load[0], end_load],
        "subjects": [{"model": s.model, "runtime": s.runtime, "file_bytes": s.file_bytes} for s in subjects],
        "median_seconds": results,
        "targets": checks,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    atomic_write_text(os.path.join(args.output_dir, "benchmark_runtimes.json"), json.dumps(report, indent=1))
    return report


def main(argv=None) -> int:
    return run_main(PROG, benchmark, argv)


if __name__ == "__main__":
    raise SystemExit(main())
