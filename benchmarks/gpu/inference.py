"""The GPU check's inference rows: latency, audio seconds per second and peak memory per model, batch,
precision and attention (and torch.compile), and the ARMHuBERT / HuBERT Base throughput ratio."""

import statistics
from typing import Any

import torch
from instruments.profiling import measure_peak_memory, time_forward
from transformers import HubertConfig, HubertModel

from configuration_armhubert import SAMPLING_RATE
from modeling_armhubert import ARMHubertModel

from .rows import DTYPES, free_memory, guarded
from .scales import TINY_TEACHER, Scale, student_config

# (model, batch, precision, attention, compiled)
Case = tuple[str, int, str, str, bool]


def build_inference_model(name: str, tiny: bool, attention: str = "sdpa") -> torch.nn.Module:
    """A random model by name: a preset or "hubert-base" (transformers' HubertConfig defaults)."""
    torch.manual_seed(0)
    if name == "hubert-base":
        return HubertModel(HubertConfig(**(TINY_TEACHER if tiny else {}))).eval()
    return ARMHubertModel(student_config(name, tiny, attn_implementation=attention)).eval()


def inference_cases(scale: Scale) -> list[Case]:
    """(model, batch, precision, attention, compiled): every model x batch x precision on SDPA, plus
    FlexAttention for the map-reusing model and torch.compile, both in bf16 at the largest batch."""
    cases = [
        (name, batch, precision, "sdpa", False)
        for name in scale.inference_models
        for batch in scale.inference_batches
        for precision in scale.dtypes
    ]
    half = "bf16" if "bf16" in scale.dtypes else scale.dtypes[-1]
    largest = max(scale.inference_batches)
    if "armhubert-960h" in scale.inference_models:
        cases.append(("armhubert-960h", largest, half, "flex_attention", False))
    if scale.compile_backend:
        cases += [(name, largest, half, "sdpa", True) for name in scale.compile_models]
    return cases


def inference_row(scale: Scale, device: torch.device, case: Case) -> dict[str, Any]:
    """One case's median latency over `scale.repeats` forward passes (after a warm-up), throughput, memory."""
    name, batch, precision, attention, compiled = case
    label = f"{name} {batch}x{scale.inference_seconds:g}s {precision} {attention}{' compiled' if compiled else ''}"

    def measure():
        model = build_inference_model(name, scale.tiny, attention).to(device=device, dtype=DTYPES[precision])
        inputs = torch.randn(batch, int(scale.inference_seconds * SAMPLING_RATE), device=device, dtype=model.dtype)
        runner = torch.compile(model, backend=scale.compile_backend) if compiled else model
        time_forward(runner, inputs, True)  # warm-up: compiles, tunes kernels, fills caches
        seconds = statistics.median(time_forward(runner, inputs, True) for _ in range(scale.repeats))
        memory = measure_peak_memory(runner, inputs, True) if device.type == "cuda" or not compiled else None
        del runner, model
        free_memory()
        return dict(
            latency_ms=1000 * seconds,
            audio_seconds_per_second=batch * scale.inference_seconds / seconds,
            peak_memory_mib=None if memory is None else memory / 2**20,
            passed=True,
        )

    result = guarded("inference", label, measure)
    result.update(model=name, batch=batch, precision=precision, attention=attention, compiled=compiled)
    return result


def inference(scale: Scale, device: torch.device) -> list[dict[str, Any]]:
    """Every inference row at `scale` on `device`."""
    return [inference_row(scale, device, case) for case in inference_cases(scale)]


def throughput_ratio(rows: list[dict[str, Any]], precision: str = "bf16", compiled: bool = False) -> float | None:
    """ARMHuBERT-960h / HuBERT Base throughput at the largest batch, SDPA (None when either is missing)."""

    def throughput(name):
        matching = [
            r
            for r in rows
            if r.get("model") == name
            and r["precision"] == precision
            and r["attention"] == "sdpa"
            and r["compiled"] == compiled
            and r.get("audio_seconds_per_second")
        ]
        return max(matching, key=lambda r: r["batch"])["audio_seconds_per_second"] if matching else None

    arm, base = throughput("armhubert-960h"), throughput("hubert-base")
    return arm / base if arm and base else None
