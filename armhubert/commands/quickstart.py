"""Build a model from a preset, encode bundled utterances, print shapes, size and speed.

    HF_HUB_OFFLINE=1 python scripts/quickstart.py [--preset armhubert-960h] [--split dev-clean] [--repeats 5]

Runs offline on the synthetic corpus in `data/LibriSpeech` (random weights unless `--model` names a
converted or trained model folder). The time is the median of `--repeats` warm calls on the batch.
"""

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import AutoModel

from armhubert.cli import CommandParser, UserError, at_least, run_main
from armhubert.folders.model_folders import open_model_folder
from armhubert.resources import BUNDLED_CORPUS
from armhubert.speech.audio import read_audio
from armhubert.threads import use_machine_threads
from configuration_armhubert import PRESETS, SAMPLING_RATE, ARMHubertConfig
from modeling_armhubert import ARMHubertModel
from pipeline_armhubert import release_feature_extractor

PROG = "quickstart.py"


def read_utterances(split_dir: Path, limit: int) -> tuple[list[Path], list[np.ndarray]]:
    """The first `limit` .flac files below `split_dir` (sorted) and their 16 kHz mono samples."""
    files = sorted(Path(split_dir).rglob("*.flac"))[:limit]
    if not files:
        raise UserError(f"no .flac files under {split_dir}; expected LibriSpeech/<split>/<spk>/<chap>/*.flac")
    return files, [read_audio(path, target_rate=SAMPLING_RATE) for path in files]


def warm_latency(model: torch.nn.Module, batch, repeats: int) -> float:
    """Median seconds of `repeats` calls on `batch`, after the first (cold) call has run.

    A first call pays one-off work (allocations, derived weights, thread start-up), so one timed
    call varies tens of times from run to run; the median of warm calls is what a user's loop sees.
    """
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch.input_values, attention_mask=batch.attention_mask, output_hidden_states=True)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class QuickstartArguments:
    """Which model encodes which bundled utterances, and how often it is timed."""

    preset: Literal[tuple(sorted(PRESETS))] = field(default="armhubert-960h", metadata={"help": "random-weight preset"})
    model: str | None = field(
        default=None, metadata={"help": "a saved model folder to load instead of a random preset"}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "let a --model folder of another model type run its own Python code (ARMHuBERT folders never "
            "need it)"
        },
    )
    data_dir: str = field(default=str(BUNDLED_CORPUS), metadata={"help": "folder holding LibriSpeech splits"})
    split: str = field(default="dev-clean", metadata={"help": "the split whose utterances are encoded"})
    num_utterances: int = field(default=8, metadata={"help": "utterances in the batch", "bounds": at_least(1)})
    repeats: int = field(
        default=5, metadata={"help": "timed warm calls; the time is their median", "bounds": at_least(1)}
    )


def parse_args(argv: Sequence[str] | None = None) -> QuickstartArguments:
    parser = CommandParser([QuickstartArguments], prog=PROG, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_into_dataclasses(argv)
    return args


def quickstart(argv: Sequence[str] | None = None) -> None:
    """Encode the utterances with the model and print what came out and how fast."""
    args = parse_args(argv)
    threads = use_machine_threads(PROG)
    torch.manual_seed(0)
    if args.model:
        folder = open_model_folder(args.model, trust_remote_code=args.trust_remote_code, subfolder_option=None)
        model = folder.load(AutoModel.from_pretrained)
    else:
        model = ARMHubertModel(ARMHubertConfig.from_preset(args.preset))
    model.eval()
    files, audio = read_utterances(Path(args.data_dir) / args.split, args.num_utterances)
    batch = release_feature_extractor()(audio, sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt")

    with torch.inference_mode():
        output = model(batch.input_values, attention_mask=batch.attention_mask, output_hidden_states=True)
    elapsed = warm_latency(model, batch, args.repeats)

    seconds = sum(len(a) for a in audio) / SAMPLING_RATE
    name = args.model or args.preset
    print(f"model: {name}, {sum(p.numel() for p in model.parameters()):,} parameters")
    print(
        f"input: {len(files)} utterances from {args.split}, {seconds:.1f} s of audio, batch {tuple(batch.input_values.shape)}"
    )
    print(f"last_hidden_state: {tuple(output.last_hidden_state.shape)}")
    print(f"hidden_states: {len(output.hidden_states)} x {tuple(output.hidden_states[-1].shape)}")
    if output.projected_hidden_states is not None:
        print(
            f"projected_hidden_states: {len(output.projected_hidden_states)} x {tuple(output.projected_hidden_states[0].shape)}"
        )
    print(
        f"time: {elapsed:.3f} s per batch, median of {args.repeats} warm calls ({seconds / elapsed:.0f} s of audio "
        f"per second, {threads} thread{'s' if threads > 1 else ''}, load {os.getloadavg()[0]:.2f}: one measurement)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, quickstart, argv)
