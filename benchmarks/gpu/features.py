"""The GPU check's corpus-features rows: the bundled corpus through `extract_features` on the
device, against a naive loop (one file at a time, `model(x)`, features kept on the host), both taking
turns; audio seconds per second and the ratio tool / naive (target >= 2: batching by length must pay
where a CPU could not show it, see docs/features.md)."""

import itertools
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from instruments.feature_baselines import corpus_files, naive_loop, run_tool

from armhubert.deploy.timing import times_taking_turns
from armhubert.features.encoding import Encoder
from armhubert.features.plan import ExtractionArguments
from armhubert.resources import BUNDLED_CORPUS
from armhubert.speech.audio import read_audio
from configuration_armhubert import SAMPLING_RATE
from pipeline_armhubert import release_feature_extractor

from .inference import build_inference_model
from .rows import free_memory, guarded, row
from .scales import Scale

MODEL = "armhubert-960h"
TARGET = 2.0  # tool / naive loop, audio seconds per second
BATCH_SECONDS = ExtractionArguments.max_batch_seconds  # the tool's default budget


def features(scale: Scale, device: torch.device) -> list[dict[str, Any]]:
    """Rows "tool", "naive loop" (audio seconds per second, median of `scale.repeats` rounds taking turns)
    and "tool / naive loop" (the ratio of the medians, passed when >= TARGET)."""
    data_dir, splits = BUNDLED_CORPUS.parent, scale.feature_splits
    files = corpus_files(data_dir, splits)
    seconds = sum(len(read_audio(path)) for path in files) / SAMPLING_RATE
    times: dict[str, list[float]] = {}

    def measure_all() -> dict[str, Any]:
        model = build_inference_model(MODEL, scale.tiny).to(device)
        encoder = Encoder(model, release_feature_extractor(), None, MODEL)
        with tempfile.TemporaryDirectory() as scratch:
            folders = (Path(scratch) / f"run-{number}" for number in itertools.count())
            runs = {
                "tool": lambda: run_tool(encoder, data_dir, splits, next(folders), device, BATCH_SECONDS),
                "naive loop": lambda: naive_loop(encoder, files, device),
            }
            times.update(times_taking_turns(runs, scale.repeats, warmup=1, device=device))
        return dict(passed=True)

    checked = guarded("features", f"{MODEL} bundled corpus", measure_all)
    free_memory()
    if not checked["passed"]:
        return [checked]
    rounds = {name: [seconds / value for value in values] for name, values in times.items()}
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    rows = [
        row("features", f"{MODEL} {name} ({len(files)} files, {seconds:.0f} s)", audio_seconds_per_second=rate,
            passed=True, rounds=rounds[name])
        for name, rate in medians.items()
    ]  # fmt: skip
    ratio = medians["tool"] / medians["naive loop"]
    rows.append(row("features", f"{MODEL} tool / naive loop", ratio=ratio, target=TARGET, passed=ratio >= TARGET))
    return rows
