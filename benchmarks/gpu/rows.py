"""What every section of the GPU check shares: rows, failures kept as rows, inputs, errors, precisions."""

import gc
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from configuration_armhubert import SAMPLING_RATE

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def row(section: str, case: str, **figures: Any) -> dict[str, Any]:
    """One row of the report: a flat dict of JSON values."""
    return {"section": section, "case": case, **figures}


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def guarded(section: str, case: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`measure()`'s figures as a row; an exception becomes a failed row with its first line (the run goes on)."""
    start = time.perf_counter()
    try:
        figures = measure()
    except Exception as error:  # noqa: BLE001 - one broken case must not hide the others' figures
        free_memory()
        first = (str(error).strip().splitlines() or [""])[0][:200]
        figures = dict(passed=False, failure=f"{type(error).__name__}: {first}")
    return row(section, case, **figures, seconds=time.perf_counter() - start)


def padded_batch(
    batch: int, seconds: float, device: torch.device, seed: int = 0, spread: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) noise waveforms whose lengths fall evenly over [1 - spread, 1] x seconds, and their (B, N) mask."""
    generator = torch.Generator().manual_seed(seed)
    longest = int(seconds * SAMPLING_RATE)
    lengths = [int(longest * (1 - spread * i / max(batch - 1, 1))) for i in range(batch)]
    inputs = 0.1 * torch.randn(batch, longest, generator=generator)
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    return (inputs * mask).to(device), mask.long().to(device)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64 (inf when value is not finite)."""
    value, reference = value.double().cpu(), reference.double().cpu()
    if not torch.isfinite(value).all():
        return math.inf
    return float((value - reference).norm() / reference.norm().clamp(min=1e-30))
