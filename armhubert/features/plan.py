"""What a run will do: its options and their checks (`ExtractionArguments`), utterances sorted by length
into padded batches and batches into shards (`plan_batches`, `plan_shards`), and which shards each process
takes (`Processes`).

The options of `scripts/extract_features.py` (`ExtractionArguments`) and the checks run before anything is read.

The plan of a run: utterances sorted by length into padded batches, batches into shards.

The plan depends on the corpus and the settings only (lengths from the headers, ties broken by id),
so a resumed run, or another process, finds the same shards.

Several processes on one corpus: those `accelerate launch` (or torchrun) started each take every N-th shard.

Every process plans the same shards (`armhubert.features.plan`) and encodes its share on its own
device; they meet at barriers before the output folder is written and before the index is built.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from configuration_armhubert import PRESETS, SAMPLING_RATE
from pipeline_armhubert import CHUNK_LENGTH_S, STRIDE_LENGTH_S

from ..cli import UserError, above, between, check_cuda, check_fields, refuse_broken, require_extra
from ..speech.audio import MAX_AUDIO_SECONDS
from .units import MAX_UNITS

# ----------------------------------------------------------------------------------------------------
# The options of `scripts/extract_features.py` (`ExtractionArguments`) and the checks run before anything is read

INPUT_TYPES = ("auto", "folder", "librispeech", "dataset")
REPRESENTATIONS = ("superb", "hidden", "projected")
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
OUTPUT_FORMATS = ("safetensors", "arrow")


@dataclass
class ExtractionArguments:
    """What to encode, with which model, into which files (the options of scripts/extract_features.py)."""

    input: str = field(
        metadata={
            "help": "A folder of audio files, a LibriSpeech root (with --split), a datasets folder (save_to_disk) "
            "or a Hub dataset id."
        }
    )
    output_dir: str = field(metadata={"help": "Folder for the shards, index.json and run.json (new or empty)."})
    model: str | None = field(
        default=None, metadata={"help": "Model folder or Hub id (converted, distilled, fine-tuned)."}
    )
    preset: str | None = field(default=None, metadata={"help": f"Random-weight preset instead: {', '.join(PRESETS)}."})
    seed: int = field(default=0, metadata={"help": "Seed of a preset's weights and of the units sample and fit."})
    split: str | None = field(default=None, metadata={"help": "LibriSpeech split (dev-clean, ...) or dataset split."})
    input_type: Literal[INPUT_TYPES] = field(default="auto", metadata={"help": f"One of {', '.join(INPUT_TYPES)}."})
    audio_column: str = field(default="audio", metadata={"help": "Audio column of a datasets dataset."})
    id_column: str | None = field(
        default=None, metadata={"help": "Utterance id column of a dataset (default: 'id', else the row number)."}
    )
    layers: str = field(
        default="last",
        metadata={
            "help": "Comma-separated layer numbers (e.g. 4,8,12), 'last', 'all', or 'weighted' (the SUPERB weighted "
            "sum of a folder fine-tuned with use_weighted_layer_sum)."
        },
    )
    representation: Literal[REPRESENTATIONS] = field(
        default="superb",
        metadata={
            "help": "superb: projected outputs 1..L of models with heads, layer outputs 1..L otherwise; hidden: layer "
            "outputs 0..L (0 = encoder input); projected: projection heads 1..L."
        },
    )
    dtype: Literal[tuple(STORAGE_DTYPES)] = field(
        default="float32", metadata={"help": "Storage dtype of the features: float32 or float16."}
    )
    format: Literal[OUTPUT_FORMATS] = field(
        default="safetensors", metadata={"help": "safetensors (shards + index.json) or arrow."}
    )
    # The float options' bounds (inf and nan never pass): a batch or window longer than the longest file read (an
    # hour) buys nothing; a terabyte shard or 100,000 hours of k-means sample is a typo.
    max_batch_seconds: float = field(
        default=100.0,
        metadata={"help": "Padded audio per batch, in seconds.", "bounds": above(0, 100 * MAX_AUDIO_SECONDS)},
    )
    shard_mb: float = field(
        default=256.0, metadata={"help": "Approximate size of one shard file, in MB.", "bounds": above(0, 1e6)}
    )
    chunk_length_s: float = field(
        default=CHUNK_LENGTH_S,
        metadata={
            "help": "Longer utterances run in windows of this length; 0: never.",
            "bounds": between(0, MAX_AUDIO_SECONDS),
        },
    )
    stride_length_s: float = field(
        default=STRIDE_LENGTH_S,
        metadata={"help": "Context dropped on each window side.", "bounds": between(0, MAX_AUDIO_SECONDS)},
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda, cuda:1, ..."})
    resume: bool = field(default=False, metadata={"help": "Continue an interrupted run: finished shards are kept."})
    units: int | None = field(
        default=None,
        metadata={
            "help": f"Fit a k-means codebook of K units (2..{MAX_UNITS}: units are int16; HuBERT-style units use "
            "K = 50 to 1000) and write units.",
            "bounds": between(2, MAX_UNITS),
        },
    )
    units_layer: int | None = field(
        default=None, metadata={"help": "Layer the units are computed on (default: the one layer of --layers)."}
    )
    units_sample_hours: float = field(
        default=1.0, metadata={"help": "Hours of audio the k-means fit sees.", "bounds": above(0, 1e5)}
    )
    codebook: str | None = field(default=None, metadata={"help": "Apply this codebook.safetensors instead of fitting."})
    deduplicate_units: bool = field(default=False, metadata={"help": "Collapse runs of equal units (1 1 5 -> 1 5)."})
    save_features: bool = field(default=True, metadata={"help": "Write features (false: units only)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (audio seconds per second)."})

    # Fields that do not change what is written: left out of the fingerprint.
    RUNTIME_FIELDS = ("output_dir", "device", "resume", "progress")
    # Options that do not go together, checked by `check_fields` after each field's own choices and bounds.
    RULES = (
        (
            lambda args: args.preset is not None and args.preset.lower() not in PRESETS,  # case-insensitive
            f"--preset {{args.preset!r}} is unknown; use one of {', '.join(PRESETS)}",
        ),
        (
            lambda args: not str(args.input).strip(),
            "--input is empty; give a path (the current folder is never taken for an empty one)",
        ),
        (
            lambda args: not str(args.output_dir).strip(),
            "--output_dir is empty; give a path (the current folder is never taken for an empty one)",
        ),
        (
            lambda args: args.chunk_length_s > 0 and not args.stride_length_s < args.chunk_length_s / 2,
            "--stride_length_s {args.stride_length_s} must be less than half of --chunk_length_s "
            "{args.chunk_length_s} (or --chunk_length_s 0 to never chunk)",
        ),
        (
            lambda args: args.units is not None and args.codebook is not None,
            "give --units K to fit a codebook or --codebook FILE to apply one, not both",
        ),
        (
            lambda args: not args.save_features and args.units is None and args.codebook is None,
            "--save_features false leaves nothing to write; add --units K or --codebook FILE",
        ),
        (
            lambda args: args.layers == "weighted" and args.units_layer is not None,
            "with --layers weighted the units are computed on the weighted sum; drop --units_layer",
        ),
    )


# Options whose meaning depends on whether `extract_features` was given a loaded model (`encoder_given`: then
# --model / --preset only name it), checked by `check_arguments` with `refuse_broken` after RULES.
MODEL_RULES = (
    (
        lambda args, encoder_given: (args.model is None) == (args.preset is None) and not encoder_given,
        "give a model: --model FOLDER_OR_HUB_ID (or --preset NAME for random weights), not both",
    ),
    (
        lambda args, encoder_given: args.layers == "weighted" and args.preset is not None and not encoder_given,
        "--layers weighted needs a fine-tuned --model folder, not a random preset",
    ),
)


def check_arguments(args: ExtractionArguments, encoder_given: bool = False) -> None:
    """Refuse settings that cannot work, before anything is read or written (`encoder_given`: a loaded model
    is passed in, so --model / --preset only name it): the fields' choices and bounds and the RULES between
    them (`check_fields`: the command line's parser checked them already, Python callers have not), then
    MODEL_RULES; a missing `units` extra for --units."""
    check_fields(args)
    refuse_broken(MODEL_RULES, args=args, encoder_given=encoder_given)
    if args.units is not None:
        require_extra("units", "fitting units (--units K)")


# ----------------------------------------------------------------------------------------------------
# The plan of a run: utterances sorted by length into padded batches, batches into shards


@dataclass(frozen=True)
class ShardPlan:
    """One shard: its number and its batches (corpus row numbers, longest utterance first)."""

    index: int
    batches: tuple[tuple[int, ...], ...]

    @property
    def file_name(self) -> str:
        return f"shard-{self.index:05d}.safetensors"

    @property
    def rows(self) -> list[int]:
        return [row for batch in self.batches for row in batch]


def plan_batches(
    lengths: Sequence[int], ids: Sequence[str], max_batch_seconds: float, chunk_samples: int | None
) -> list[tuple[int, ...]]:
    """Rows sorted by length (longest first, ties by id) into batches of at most `max_batch_seconds` of padded
    audio (batch size x longest); an utterance longer than `chunk_samples` is a batch of its own (chunked)."""
    order = sorted(range(len(lengths)), key=lambda row: (-lengths[row], ids[row]))
    budget = max_batch_seconds * SAMPLING_RATE
    batches, current = [], []
    for row in order:
        if chunk_samples is not None and lengths[row] > chunk_samples:
            batches.append((row,))
            continue
        if current and (len(current) + 1) * lengths[current[0]] > budget:
            batches.append(tuple(current))
            current = []
        current.append(row)
    if current:
        batches.append(tuple(current))
    return batches


def plan_shards(
    batches: Sequence[tuple[int, ...]], batch_bytes: Callable[[tuple[int, ...]], int], shard_bytes: int
) -> list[ShardPlan]:
    """Consecutive batches into shards of about `shard_bytes` (a shard holds at least one batch)."""
    shards, current, size = [], [], 0
    for batch in batches:
        added = batch_bytes(batch)
        if current and size + added > shard_bytes:
            shards.append(ShardPlan(len(shards), tuple(current)))
            current, size = [], 0
        current.append(batch)
        size += added
    if current:
        shards.append(ShardPlan(len(shards), tuple(current)))
    return shards


# ----------------------------------------------------------------------------------------------------
# Several processes on one corpus: those `accelerate launch` (or torchrun) started each take every N-th shard


@dataclass
class Processes:
    """This process's place among those `accelerate launch` / torchrun started (one: index 0 of 1)."""

    index: int = 0
    count: int = 1
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def take(self, shards: Sequence[ShardPlan]) -> list[ShardPlan]:
        """This process's share: every `count`-th shard, from the `index`-th."""
        return [shard for shard in shards if shard.index % self.count == self.index]


def current_processes(device: str) -> tuple[Processes, torch.device]:
    """The accelerate process state and the device to run on (`auto`: this process's accelerator, else CPU)."""
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    if device == "auto":
        chosen = state.device
    else:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise UserError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        check_cuda(device)
    return Processes(state.process_index, state.num_processes, state.wait_for_everyone), chosen
