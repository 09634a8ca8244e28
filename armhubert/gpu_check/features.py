"""The GPU check's corpus-features rows (issue 19): the bundled corpus through `extract_features` on the
device, against a naive loop (one file at a time, `model(x)`, features kept on the host), both taking
turns; audio seconds per second and the ratio tool / naive (target >= 2: batching by length must pay
where a CPU could not show it, see docs/features.md)."""

import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from configuration_armhubert import SAMPLING_RATE
from pipeline_armhubert import release_feature_extractor

from ..audio import read_audio
from ..features.arguments import ExtractionArguments
from ..features.encoder import Encoder
from ..features.run import extract_features
from ..resources import BUNDLED_CORPUS
from .inference import build_inference_model
from .rows import free_memory, guarded, row
from .scales import Scale

MODEL = "armhubert-960h"
TARGET = 2.0  # tool / naive loop, audio seconds per second


def corpus_files(splits: str) -> list[Path]:
    """The bundled corpus's FLAC files of `splits` (comma-separated LibriSpeech split names)."""
    return [path for split in splits.split(",") for path in sorted((BUNDLED_CORPUS / split).rglob("*.flac"))]


def naive_loop(encoder: Encoder, files: list[Path], device: torch.device) -> None:
    """One file at a time: read, `model(x)` on the device, the last layer's features back on the host."""
    with torch.inference_mode():
        for path in files:
            audio = torch.from_numpy(read_audio(path))[None].to(device)
            encoder.model(audio).last_hidden_state[0].cpu()


def tool_run(splits: str, encoder: Encoder, device: torch.device, output_dir: Path) -> None:
    arguments = ExtractionArguments(
        input=str(BUNDLED_CORPUS.parent), split=splits, output_dir=str(output_dir), model=encoder.name,
        progress=False, device=str(device),
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # its closing summary line: the check prints one table
        extract_features(arguments, encoder=encoder)


def features(scale: Scale, device: torch.device) -> list[dict[str, Any]]:
    """Rows "tool", "naive loop" (audio seconds per second, median of `scale.repeats` rounds taking turns)
    and "tool / naive loop" (the ratio of the medians, passed when >= TARGET)."""
    files = corpus_files(scale.feature_splits)
    seconds = sum(len(read_audio(path)) for path in files) / SAMPLING_RATE
    rates: dict[str, list[float]] = {"tool": [], "naive loop": []}

    def measure_all() -> dict[str, Any]:
        model = build_inference_model(MODEL, scale.tiny).to(device)
        encoder = Encoder(model, release_feature_extractor(), None, MODEL)
        with tempfile.TemporaryDirectory() as scratch:
            naive_loop(encoder, files[:2], device)  # warm-up: kernels, caches
            tool_run(scale.feature_splits, encoder, device, Path(scratch) / "warm-up")
            for round_number in range(scale.repeats):
                order = list(rates) if round_number % 2 == 0 else list(rates)[::-1]
                for name in order:
                    start = time.perf_counter()
                    if name == "tool":
                        tool_run(scale.feature_splits, encoder, device, Path(scratch) / f"round-{round_number}")
                    else:
                        naive_loop(encoder, files, device)
                    rates[name].append(seconds / (time.perf_counter() - start))
        return dict(passed=True)

    checked = guarded("features", f"{MODEL} bundled corpus", measure_all)
    free_memory()
    if not checked["passed"]:
        return [checked]
    medians = {name: statistics.median(values) for name, values in rates.items()}
    rows = [
        row("features", f"{MODEL} {name} ({len(files)} files, {seconds:.0f} s)", audio_seconds_per_second=rate,
            passed=True, rounds=rates[name])
        for name, rate in medians.items()
    ]  # fmt: skip
    ratio = medians["tool"] / medians["naive loop"]
    rows.append(row("features", f"{MODEL} tool / naive loop", ratio=ratio, target=TARGET, passed=ratio >= TARGET))
    return rows
