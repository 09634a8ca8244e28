"""The whole GPU check: every section at a scale into one report (environment, rows, summary, timings),
and the report as one table."""

import datetime
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers
from instruments.profiling import device_name

from .correctness import correctness
from .ddp import ddp_smoke
from .distillation import distillation
from .features import TARGET as FEATURES_TARGET
from .features import features
from .inference import inference, throughput_ratio
from .profile import profile
from .scales import Scale

# Dense bf16 / fp16 tensor-core peak of one GPU in TFLOP/s, by a part of its name (for MFU).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "V100": 125.0}
# The targets: recipe-step throughput and the inference speed-up over HuBERT Base, corpus features by the tool
# against a naive loop.
TARGETS = dict(audio_hours_per_gpu_hour=3000, inference_ratio=3.0, features_tool_over_naive=FEATURES_TARGET)
# (row key, table label, format) of the figures a table row shows, in this order.
FIGURES = (
    ("passed", "ok", "{}"),
    ("error", "err", "{:.2e}"),
    ("tolerance", "tol", "{:.0e}"),
    ("latency_ms", "ms", "{:.1f}"),
    ("audio_seconds_per_second", "audio s/s", "{:.0f}"),
    ("step_ms", "step ms", "{:.1f}"),
    ("audio_hours_per_gpu_hour", "audio h/GPU-h", "{:.0f}"),
    ("mfu", "MFU", "{:.1%}"),
    ("teacher_share", "teacher", "{:.0%}"),
    ("largest_batch", "max batch", "{}"),
    ("peak_memory_mib", "MiB", "{:.0f}"),
    ("max_weight_difference", "rank diff", "{:.1e}"),
    ("ms_per_step", "ms/step", "{:.2f}"),
    ("share", "share", "{:.1%}"),
    ("ratio", "ratio", "{:.2f}x"),
)
SECTIONS = ("correctness", "inference", "distillation", "profile", "features")


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The GPU's dense half-precision peak (TFLOP/s) for MFU; None on a CPU or an unknown GPU."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for part, tflops in PEAK_TFLOPS.items() if part in name), None)


def environment(device: torch.device, scale: Scale) -> dict[str, Any]:
    return dict(
        device=device_name(device),
        gpus=torch.cuda.device_count(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        cuda=torch.version.cuda,
        scale=scale.name,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        host_cpus=os.cpu_count(),
    )


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets: every correctness row passes, ARMHuBERT-960h recipe throughput, inference ratio."""
    arm = [r for r in report["distillation"] if r.get("recipe") == "armhubert-960h" and r.get("precision") == "bf16"]
    return dict(
        correctness_passed=all(r.get("passed") for r in report["correctness"]),
        correctness_failed=[r["case"] for r in report["correctness"] if not r.get("passed")],
        armhubert_960h_bf16_audio_hours_per_gpu_hour=arm[0].get("audio_hours_per_gpu_hour") if arm else None,
        armhubert_over_hubert_base_throughput_bf16=throughput_ratio(report["inference"]),
        armhubert_over_hubert_base_throughput_bf16_compiled=throughput_ratio(report["inference"], compiled=True),
        features_tool_over_naive=next((r.get("ratio") for r in report["features"] if "ratio" in r), None),
        targets=dict(TARGETS),
    )


def run_check(
    scale: Scale, device: torch.device, tflops: float | None = None, log: Callable[[str], Any] = print
) -> dict[str, Any]:
    """All five sections at `scale` on `device`; the report (environment, rows per section, summary, timings).

    `tflops` overrides the GPU's peak for MFU; `log` gets one progress line per section.
    """
    report: dict[str, Any] = {"environment": environment(device, scale), "seconds": {}}
    start = time.perf_counter()

    def timed(name, function):
        began = time.perf_counter()
        log(f"[{began - start:6.1f} s] {name} ...")
        result = function()
        report["seconds"][name] = time.perf_counter() - began
        return result

    report["correctness"] = timed("correctness", lambda: correctness(scale, device))
    report["inference"] = timed("inference", lambda: inference(scale, device))
    rows, kept = timed("distillation", lambda: distillation(scale, device, peak_tflops(device, tflops)))
    rows.append(timed("ddp", lambda: ddp_smoke(scale, device)))
    report["distillation"] = rows
    report["profile"] = timed("profile", lambda: profile(kept, scale.profile_steps))
    kept.clear()
    report["features"] = timed("features", lambda: features(scale, device))
    report["summary"] = summary(report)
    report["seconds"]["total"] = time.perf_counter() - start
    return report


def _figures(result: dict[str, Any]) -> str:
    """A row's figures as `label value` pairs, then its failure or refusal."""
    parts = []
    for key, label, form in FIGURES:
        value = result.get(key)
        if value is None or (key == "passed" and result["section"] == "profile"):
            continue
        text = form.format(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
        if key == "largest_batch" and result.get("largest_batch_bounded"):
            text = f">={text}"
        parts.append(f"{label} {text}")
    if result.get("failure"):
        parts.append(result["failure"])
    if result.get("refused"):
        parts.append(f"refused: {result['refused']}")
    return "  ".join(parts)


def _number(value: float | None, form: str = ".0f") -> str:
    return "n/a" if value is None else format(value, form)


def format_table(report: dict[str, Any]) -> str:
    """One table: section | case | figures, headed by the machine and closed by the summary."""
    env, s = report["environment"], report["summary"]
    results = [r for section in SECTIONS for r in report[section]]
    width = max(len(r["case"]) for r in results)
    lines = [f"GPU check ({env['scale']}): {env['device']}, torch {env['torch']}, {env['date']}"]
    lines.append(f"{'section':<13} {'case':<{width}}  figures")
    lines += [f"{r['section']:<13} {r['case']:<{width}}  {_figures(r)}" for r in results]
    correctness_text = "all pass" if s["correctness_passed"] else "FAILED: " + ", ".join(s["correctness_failed"])
    lines.append(
        f"summary: correctness {correctness_text}; "
        f"ARMHuBERT-960h bf16 step {_number(s['armhubert_960h_bf16_audio_hours_per_gpu_hour'])} audio-h/GPU-h "
        f"(target {TARGETS['audio_hours_per_gpu_hour']}); inference ARMHuBERT / HuBERT Base "
        f"{_number(s['armhubert_over_hubert_base_throughput_bf16'], '.2f')}x (target {TARGETS['inference_ratio']:g}x); "
        f"features tool / naive loop {_number(s['features_tool_over_naive'], '.2f')}x "
        f"(target {TARGETS['features_tool_over_naive']:g}x); "
        f"{report['seconds']['total']:.0f} s in all"
    )
    return "\n".join(lines)
