"""The options of `scripts/extract_features.py` (`ExtractionArguments`) and the checks run before anything is read."""

from dataclasses import dataclass, field

import torch

from configuration_armhubert import PRESETS
from pipeline_armhubert import CHUNK_LENGTH_S, STRIDE_LENGTH_S

from ..cli import UserError
from ..files.untrusted import check_number
from ..speech.audio import MAX_AUDIO_SECONDS
from .units import check_num_units

INPUT_TYPES = ("auto", "folder", "librispeech", "dataset")
REPRESENTATIONS = ("superb", "hidden", "projected")
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
OUTPUT_FORMATS = ("safetensors", "arrow")
# (exclusive minimum, maximum) of the float options; inf and nan never pass. A batch or window longer than
# the longest file read (an hour) buys nothing; a terabyte shard or 100,000 hours of k-means sample is a typo.
FLOAT_RANGES = {
    "max_batch_seconds": (0, 100 * MAX_AUDIO_SECONDS),
    "shard_mb": (0, 1e6),
    "units_sample_hours": (0, 1e5),
    "chunk_length_s": (0, MAX_AUDIO_SECONDS),
    "stride_length_s": (0, MAX_AUDIO_SECONDS),
}
ZERO_ALLOWED = ("chunk_length_s", "stride_length_s")  # 0: never chunk; no context


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
    input_type: str = field(default="auto", metadata={"help": f"One of {', '.join(INPUT_TYPES)}."})
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
    representation: str = field(
        default="superb",
        metadata={
            "help": "superb: projected outputs 1..L of models with heads, layer outputs 1..L otherwise; hidden: layer "
            "outputs 0..L (0 = encoder input); projected: projection heads 1..L."
        },
    )
    dtype: str = field(default="float32", metadata={"help": "Storage dtype of the features: float32 or float16."})
    format: str = field(default="safetensors", metadata={"help": "safetensors (shards + index.json) or arrow."})
    max_batch_seconds: float = field(default=100.0, metadata={"help": "Padded audio per batch, in seconds."})
    shard_mb: float = field(default=256.0, metadata={"help": "Approximate size of one shard file, in MB."})
    chunk_length_s: float = field(
        default=CHUNK_LENGTH_S, metadata={"help": "Longer utterances run in windows of this length; 0: never."}
    )
    stride_length_s: float = field(default=STRIDE_LENGTH_S, metadata={"help": "Context dropped on each window side."})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda, cuda:1, ..."})
    resume: bool = field(default=False, metadata={"help": "Continue an interrupted run: finished shards are kept."})
    units: int | None = field(default=None, metadata={"help": "Fit a k-means codebook of K units and write units."})
    units_layer: int | None = field(
        default=None, metadata={"help": "Layer the units are computed on (default: the one layer of --layers)."}
    )
    units_sample_hours: float = field(default=1.0, metadata={"help": "Hours of audio the k-means fit sees."})
    codebook: str | None = field(default=None, metadata={"help": "Apply this codebook.safetensors instead of fitting."})
    deduplicate_units: bool = field(default=False, metadata={"help": "Collapse runs of equal units (1 1 5 -> 1 5)."})
    save_features: bool = field(default=True, metadata={"help": "Write features (false: units only)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (audio seconds per second)."})

    # Fields that do not change what is written: left out of the fingerprint.
    RUNTIME_FIELDS = ("output_dir", "device", "resume", "progress")


def check_arguments(args: ExtractionArguments, encoder_given: bool = False) -> None:
    """Refuse settings that cannot work, before anything is read or written (`encoder_given`: a loaded model
    is passed in, so --model / --preset only name it)."""
    choices = {
        "input_type": INPUT_TYPES,
        "representation": REPRESENTATIONS,
        "dtype": tuple(STORAGE_DTYPES),
        "format": OUTPUT_FORMATS,
    }
    for name, allowed in choices.items():
        if getattr(args, name) not in allowed:
            raise UserError(f"--{name} {getattr(args, name)!r} is unknown; use one of {', '.join(allowed)}")
    if (args.model is None) == (args.preset is None) and not encoder_given:
        raise UserError("give a model: --model FOLDER_OR_HUB_ID (or --preset NAME for random weights), not both")
    if args.preset is not None and args.preset.lower() not in PRESETS:
        raise UserError(f"--preset {args.preset!r} is unknown; use one of {', '.join(PRESETS)}")
    for name in ("input", "output_dir"):
        if not str(getattr(args, name)).strip():
            raise UserError(f"--{name} is empty; give a path (the current folder is never taken for an empty one)")
    for name, (low, high) in FLOAT_RANGES.items():
        check_number(getattr(args, name), f"--{name}", low, high, low_inclusive=name in ZERO_ALLOWED)
    if args.chunk_length_s > 0 and not 0 <= args.stride_length_s < args.chunk_length_s / 2:
        raise UserError(
            f"--stride_length_s {args.stride_length_s} must be at least 0 and less than half of --chunk_length_s "
            f"{args.chunk_length_s} (or --chunk_length_s 0 to never chunk)"
        )
    if args.units is not None and args.codebook is not None:
        raise UserError("give --units K to fit a codebook or --codebook FILE to apply one, not both")
    if args.units is not None:
        check_num_units(args.units)
    if not args.save_features and args.units is None and args.codebook is None:
        raise UserError("--save_features false leaves nothing to write; add --units K or --codebook FILE")
