"""CPU-side figures for GPU distillation: FLAC decoding rate, padding of length-grouped batches,
host syncs per training step.

    HF_HUB_OFFLINE=1 python benchmarks/measure_input_pipeline.py [--data data] [--repeats 3]

1. decoding: audio seconds decoded per second by one data-loader worker (one process, one thread),
   through the training path (`load_librispeech` rows -> `AudioCollator`, soundfile FLAC decoding,
   padding, masks), on the bundled corpus; the target is >= 200 per worker;
2. padding: the padded share of the samples in the batches `EpochSeededLengthGroupedSampler` makes for
   the armhubert-960h recipe's per-GPU batch (grouped over batch x accumulation, as `DistillTrainer`
   does), against a random order; target < 10 %;
3. host syncs: operations that make a GPU wait for the host (a Python number from a tensor: item /
   bool / float / int; tolist, numpy, cpu; data-dependent shapes: nonzero, masked_select) during one
   optimiser step, and one logging step, of the quickstart recipe, with the line that asks for each.
"""

import collections
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerCallback

from armhubert.cli import CommandParser, run_main
from armhubert.distill.recipe import load_recipe, recipe_arguments
from armhubert.speech.librispeech import AudioCollator, EpochSeededLengthGroupedSampler, load_librispeech
from configuration_armhubert import SAMPLING_RATE
from pipeline_armhubert import release_feature_extractor

ROOT = Path(__file__).resolve().parent.parent
# aten operators whose result the host must wait for (the value or the shape depends on the data).
SYNCING_OPERATORS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "repeat_interleave")
# Tensor methods that hand data to the host (no-ops on CPU tensors, so counted at the Python level).
SYNCING_METHODS = ("cpu", "tolist", "numpy")


def parse_args(argv=None):
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data"), help="folder holding LibriSpeech/<split>/...")
    parser.add_argument("--splits", nargs="+", default=["train-clean-100", "dev-clean", "test-clean"])
    parser.add_argument("--repeats", type=int, default=3, help="decoding passes (median reported)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------- decoding


def decoding_rate(dataset, batch_size: int, repeats: int) -> tuple[float, float]:
    """(audio seconds decoded per second, total audio seconds) of `AudioCollator` over the dataset."""
    collator = AudioCollator(release_feature_extractor())
    rows = [dataset[i] for i in range(len(dataset))]
    audio = sum(row["num_samples"] for row in rows) / SAMPLING_RATE
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for first in range(0, len(rows), batch_size):
            collator(rows[first : first + batch_size])
        times.append(time.perf_counter() - start)
    return audio / statistics.median(times), audio


# -------------------------------------------------------------------------------------------- padding


def padding_fraction(lengths: list[int], order: list[int], batch_size: int) -> float:
    """Padded share of the samples when `order` is cut into batches of `batch_size` padded to their longest."""
    padded = real = 0
    for first in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[first : first + batch_size]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / padded


def recipe_padding(lengths: list[int], recipe: Path, epochs: int = 5) -> dict[str, float]:
    """Mean padding fraction over `epochs` of the recipe's length-grouped and of random batches."""
    training_args = recipe_arguments(load_recipe(recipe, ["output_dir=/tmp/unused", "use_cpu=true"]))
    batch = training_args.per_device_train_batch_size
    sampler = EpochSeededLengthGroupedSampler(batch * training_args.gradient_accumulation_steps, lengths, 0)
    grouped, shuffled = [], []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        grouped.append(padding_fraction(lengths, list(sampler), batch))
        generator = torch.Generator().manual_seed(epoch)
        shuffled.append(padding_fraction(lengths, torch.randperm(len(lengths), generator=generator).tolist(), batch))
    return {"batch": batch, "grouped": statistics.mean(grouped), "random": statistics.mean(shuffled)}


# ---------------------------------------------------------------------------------------------- syncs


def calling_line() -> str:
    """file:line of the innermost frame outside torch (the code that asked for the value)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename and not frame.filename.endswith(__file__.split("/")[-1]):
            parts = Path(frame.filename).parts
            short = "/".join(parts[-3:]) if "site-packages" in parts else "/".join(parts[-2:])
            return f"{short}:{frame.lineno} ({frame.line.strip()[:70]})"
    return "?"


class SyncCounter(TorchDispatchMode):
    """Counts host-syncing operators and tensor methods while active, by the line that asked for them."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self._originals = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING_OPERATORS:
            self.counts[(name, calling_line())] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for method in SYNCING_METHODS:
            original = self._originals[method] = getattr(torch.Tensor, method)

            def counted(tensor, *args, _original=original, _method=method, **kwargs):
                self.counts[(_method, calling_line())] += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, method, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for method, original in self._originals.items():
            setattr(torch.Tensor, method, original)
        return super().__exit__(*exc)


class CountStep(TrainerCallback):
    """Counts the syncs of the given optimiser steps (1-based): from the step's begin to the next step's, so
    that the logging after the optimiser step counts too."""

    def __init__(self, steps):
        self.steps, self.counts, self._counter, self._step = set(steps), {}, None, None

    def _stop(self):
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.counts[self._step] = self._counter.counts
            self._counter = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._stop()
        if state.global_step + 1 in self.steps:
            self._step, self._counter = state.global_step + 1, SyncCounter().__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        self._stop()


def step_syncs(logging_steps: int = 3) -> dict[int, collections.Counter]:
    """Syncs of step 2 (plain) and step `logging_steps` (it logs) of a quickstart distillation run."""
    from armhubert.distill.run import distill

    counter = CountStep([2, logging_steps])
    with tempfile.TemporaryDirectory() as output:
        overrides = [
            f"output_dir={output}/run",
            f"max_steps={logging_steps + 1}",
            f"logging_steps={logging_steps}",
            "eval_strategy=no",
            "save_strategy=no",
            "report_to=none",
        ]
        distill(ROOT / "conf" / "quickstart.yaml", overrides, callbacks=[counter])
    return counter.counts


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)  # one data-loader worker is one process on one core
    dataset = load_librispeech(args.data, args.splits)
    rate, audio = decoding_rate(dataset, 8, args.repeats)
    print(f"decoding: {rate:.0f} audio seconds per second per worker ({audio:.0f} s of FLAC in {len(dataset)} files)")
    for splits in (["train-clean-100"], args.splits):
        lengths = list(load_librispeech(args.data, splits)["num_samples"])
        padding = recipe_padding(lengths, ROOT / "conf" / "armhubert-960h.yaml")
        print(
            f"padding, armhubert-960h batch {padding['batch']}, {'+'.join(splits)} ({len(lengths)} utterances): "
            f"{padding['grouped']:.1%} length-grouped, {padding['random']:.1%} random order"
        )
    for step, counts in step_syncs().items():
        print(f"host syncs in optimiser step {step} of conf/quickstart.yaml: {sum(counts.values())}")
        for (what, line), count in sorted(counts.items(), key=lambda item: -item[1]):
            print(f"  {count:3d} x {what:20s} {line}")


if __name__ == "__main__":
    sys.exit(run_main("measure_input_pipeline.py", main))
