"""The GPU check's profile: the top operators of one recipe step by self time."""

from typing import Any

from instruments.distill_timing import optimiser_step
from torch.profiler import ProfilerActivity
from torch.profiler import profile as profiler

from armhubert.deploy.timing import synchronize

from .rows import row


def profile(kept: dict[str, Any], steps: int, top: int = 12) -> list[dict[str, Any]]:
    """The top operators of a recipe step by self time (device time on a GPU), as shares of the total.

    `kept`: {"trainer", "inputs"} of a distillation row (`distillation`), or {} when none ran.
    """
    if not kept:
        return [row("profile", "no distillation step to profile", passed=False)]
    trainer, inputs = kept["trainer"], kept["inputs"]
    cuda = trainer.args.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profiler(activities=activities) as prof:
        for _ in range(steps):
            optimiser_step(trainer, inputs)
        synchronize(trainer.args.device)
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    attribute = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, attribute) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attribute), reverse=True)
    return [
        row(
            "profile",
            e.key[:60],
            ms_per_step=getattr(e, attribute) / 1000 / steps,
            share=getattr(e, attribute) / total,
            calls_per_step=e.count / steps,
        )
        for e in events[:top]
    ]
