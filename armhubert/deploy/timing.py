"""Taking turns: callables timed in interleaved rounds, so that background load hits all alike.

The one interleaving helper: `scripts/export_onnx.py`'s speed line, the real-teacher experiment's encoder times
and the benchmarks (outside the package, in `benchmarks/`) use it. One run on a shared machine is a single-shot
figure; callers say so where they print one.
"""

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: torch.device | None) -> None:
    """Wait for `device`'s queued work (a no-op on a CPU or None), so that a clock reading covers it."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def times_taking_turns(
    runs: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, device: torch.device | None = None
) -> dict[str, list[float]]:
    """Wall-clock seconds of each callable in each of `repeats` rounds, after `warmup` untimed calls of each.

    The callables take turns within a round, round r starting at the r-th (so that background load and
    warm caches hit all alike); on an accelerator `device` each time ends with the device's work.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    names = list(runs)
    times = {name: [] for name in names}
    for round_number in range(repeats):
        first = round_number % len(names)
        for name in names[first:] + names[:first]:
            synchronize(device)
            start = time.perf_counter()
            runs[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def medians_taking_turns(
    runs: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, device: torch.device | None = None
) -> dict[str, float]:
    """The median of each callable's `times_taking_turns`."""
    return {
        name: statistics.median(values) for name, values in times_taking_turns(runs, repeats, warmup, device).items()
    }
