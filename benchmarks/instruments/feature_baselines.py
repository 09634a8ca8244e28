"""What throughput is measured on: the tool over a LibriSpeech-layout corpus, and the naive loop it is
compared with (one file at a time, `model(x)`). Shared by `benchmarks/benchmark_features.py` (CPU) and the
GPU check's features rows, so that both time the same two things."""

import contextlib
import io
from pathlib import Path

import torch

from armhubert.features.encoding import Encoder
from armhubert.features.plan import ExtractionArguments
from armhubert.features.run import extract_features
from armhubert.speech.audio import read_audio


def corpus_files(data_dir: str | Path, splits: str) -> list[Path]:
    """The FLAC files of `splits` (comma-separated LibriSpeech split names) under `data_dir`/LibriSpeech."""
    root = Path(data_dir) / "LibriSpeech"
    return [path for split in splits.split(",") for path in sorted((root / split.strip()).rglob("*.flac"))]


def naive_loop(encoder: Encoder, files: list[Path], device: torch.device) -> list[torch.Tensor]:
    """One file at a time: read, `model(x)` on `device`, the last layer's features (T, D) kept on the host."""
    outputs = []
    with torch.inference_mode():
        for path in files:
            audio = torch.from_numpy(read_audio(path))[None].to(device)
            outputs.append(encoder.model(audio).last_hidden_state[0].cpu())
    return outputs


def run_tool(
    encoder: Encoder,
    data_dir: str | Path,
    splits: str,
    output_dir: Path,
    device: torch.device,
    max_batch_seconds: float,
) -> dict:
    """`extract_features` over `splits` of the corpus under `data_dir` into `output_dir`, without its progress
    bar and closing line (timed runs print their own)."""
    arguments = ExtractionArguments(
        input=str(data_dir), split=splits, output_dir=str(output_dir), model=encoder.name,
        max_batch_seconds=max_batch_seconds, progress=False, device=str(device),
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        return extract_features(arguments, encoder=encoder)
