"""Features of a whole corpus on disk: sources, length-grouped batches, shards with an index, resume, units.

What `scripts/extract_features.py` runs (`extract_features`), in steps that can be used alone:

- `open_corpus`: a folder of audio files (any format soundfile reads, sub-folders too), a
  LibriSpeech-layout split (`armhubert.librispeech`), or a `datasets` dataset (a `save_to_disk`
  folder or a Hub id, with an audio column) -> a `Corpus` of (id, undecoded audio, length) rows;
  files whose header cannot be read are skipped and listed;
- `load_encoder` + `LayerSelection`: the model and the features it yields (layer numbers of a
  representation, as the feature pipeline numbers them, or a fine-tuned folder's SUPERB weighted sum);
- `plan_shards`: utterances sorted by length (longest first) into batches of at most
  `max_batch_seconds` of padded audio, batches into shards of about `shard_mb`; the plan depends
  on the corpus and the settings only, so a resumed run, or another process, finds the same shards;
- `encode_batch`: one padded batch through the model (inference mode, padding masks), or one long
  utterance through `armhubert.chunking.encode_chunked`; per-utterance features (T, D) and units;
- `write_shard`: each shard one safetensors file (per feature one (sum of frames, D) tensor, `units`
  (sum of units,) int16), written to a temporary name and renamed: a killed run loses at most the
  shard it was writing and never leaves a broken one; `index.json` (utterance id -> shard, offset,
  frames) comes last and marks a complete output; `FeatureIndex` reads it back;
- `write_arrow_dataset`: the same as a `datasets` dataset (`save_to_disk`), for `--format arrow`.

Processes started by `accelerate launch` (or torchrun) take every N-th shard; the first writes the
index when all are done. A shard is skipped on `--resume` when its file exists with the same
fingerprint (settings, model weights, codebook and the shard's utterances).
"""

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import soundfile
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, Wav2Vec2FeatureExtractor

from configuration_armhubert import PRESETS, SAMPLING_RATE, ARMHubertConfig
from modeling_armhubert import (
    ARMHubertForCTC,
    ARMHubertForSequenceClassification,
    ARMHubertModel,
    release_feature_extractor,
    superb_layer_outputs,
)

from .audio import DataError, read_audio
from .chunking import CHUNK_LENGTH_S, STRIDE_LENGTH_S, encode_chunked, num_frames
from .cli import UserError
from .convert.cards import file_sha256
from .librispeech import LIBRISPEECH_LAYOUT, _audio_num_samples, load_librispeech
from .model_folders import check_model_folder
from .outputs import atomic_output_file, atomic_write_text, check_output_location, staged_folder
from .units import Codebook, assign_units, check_num_units, deduplicate_runs, fit_codebook, load_codebook, save_codebook

logger = logging.getLogger(__name__)

FEATURES_FORMAT = "armhubert-features/1"
INDEX_FILE, RUN_FILE, CODEBOOK_FILE, DATASET_FOLDER = "index.json", "run.json", "codebook.safetensors", "dataset"
AUDIO_SUFFIXES = tuple(sorted("." + name.lower() for name in soundfile.available_formats()))
INPUT_TYPES = ("auto", "folder", "librispeech", "dataset")
REPRESENTATIONS = ("superb", "hidden", "projected")
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
OUTPUT_FORMATS = ("safetensors", "arrow")
SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")
ARROW_CACHE_PREFIX = ".arrow-cache-"


# --------------------------------------------------------------------------------------------------
# Settings


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
    for name in ("max_batch_seconds", "shard_mb", "units_sample_hours"):
        if not getattr(args, name) > 0:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.chunk_length_s < 0:
        raise UserError(f"--chunk_length_s must be positive (or 0: never chunk), got {args.chunk_length_s}")
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


# --------------------------------------------------------------------------------------------------
# Sources


@dataclass
class Corpus:
    """Utterances to encode: `rows` has columns `id` (str), `audio` ({"path", "bytes"}) and `num_samples`
    (length at 16 kHz, from the header); `skipped` lists (name, reason) of files that could not be read."""

    rows: datasets.Dataset
    skipped: list[tuple[str, str]]
    description: str
    ids: list[str] = field(init=False)
    lengths: list[int] = field(init=False)

    def __post_init__(self):
        self.ids, self.lengths = self.rows["id"], self.rows["num_samples"]  # read once: columns are costly


ROW_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
    }
)


def _check_unique(ids: Sequence[str], what: str) -> None:
    seen: dict[str, int] = {}
    for position, utterance_id in enumerate(ids):
        if utterance_id in seen:
            raise DataError(
                f"{what} has the utterance id {utterance_id!r} twice (rows {seen[utterance_id]} and {position}); "
                "ids must be unique: rename one, or pick another --id_column"
            )
        seen[utterance_id] = position


def _with_lengths(rows: datasets.Dataset, what: str) -> Corpus:
    """Add `num_samples` from the headers; files whose header is unreadable are skipped and listed."""
    rows = rows.map(
        lambda batch: {"num_samples": [_audio_num_samples(audio) for audio in batch["audio"]]},
        batched=True,
        desc="reading audio headers",
    )
    lengths = rows["num_samples"]
    bad = [position for position, length in enumerate(lengths) if length < 0]
    skipped = [(rows[position]["id"], "soundfile cannot read its header") for position in bad]
    if len(bad) == len(rows):
        raise DataError(
            f"none of the {len(rows)} audio files of {what} is readable (soundfile cannot read them), e.g. "
            f"{skipped[0][0]}; expected audio such as FLAC or WAV"
        )
    if bad:
        names = ", ".join(name for name, _ in skipped[:3])
        logger.warning(
            "Skipping %d unreadable audio file(s) of %s (soundfile cannot read them): %s", len(bad), what, names
        )
        rows = rows.select(sorted(set(range(len(rows))) - set(bad)))
    return Corpus(rows, skipped, what)


def audio_folder(folder: str | os.PathLike) -> Corpus:
    """Every audio file below `folder` (sub-folders too; suffixes soundfile knows), id = path without suffix."""
    folder = Path(folder)
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file())
    if not files:
        raise DataError(
            f"no audio files in {folder} (looked for {', '.join(AUDIO_SUFFIXES[:6])}, ... in sub-folders too); "
            "give a folder of audio, a LibriSpeech root with --split, or a datasets dataset"
        )
    ids = [path.relative_to(folder).with_suffix("").as_posix() for path in files]
    _check_unique(ids, f"the folder {folder} (ids are paths without their suffix)")
    rows = datasets.Dataset.from_dict(
        {"id": ids, "audio": [{"bytes": None, "path": str(path)} for path in files]}, features=ROW_FEATURES
    )
    return _with_lengths(rows, str(folder))


def librispeech_split(root: str | os.PathLike, split: str) -> Corpus:
    """A LibriSpeech-layout split, or several (`dev-clean,test-clean`), through
    `armhubert.librispeech.load_librispeech` (which warns about unreadable files)."""
    splits = [name.strip() for name in split.split(",") if name.strip()]
    rows = load_librispeech(root, splits).select_columns(["id", "audio", "num_samples"])
    return Corpus(rows, [], f"{root} {split}")


def _dataset_split(loaded: datasets.Dataset | datasets.DatasetDict, split: str | None, name: str) -> datasets.Dataset:
    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if split is None and len(loaded) == 1:
        return next(iter(loaded.values()))
    if split not in loaded:
        raise DataError(f"{name} has the splits {', '.join(loaded)}; choose one with --split")
    return loaded[split]


def dataset_source(name: str, split: str | None, audio_column: str, id_column: str | None) -> Corpus:
    """A `datasets` dataset: a `save_to_disk` folder, or a Hub id / loadable folder through `load_dataset`."""
    path = Path(name)
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS):
            loaded = _dataset_split(datasets.load_from_disk(str(path)), split, name)
        else:
            loaded = _dataset_split(datasets.load_dataset(name, split=split), split, name)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - network, missing dataset, broken files: all the user's to fix
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"cannot load the dataset {name}: {reason}; give a local folder, or a Hub id with the network on "
            "(HF_HUB_OFFLINE unset)"
        ) from None
    columns = loaded.column_names
    if audio_column not in columns:
        raise DataError(f"{name} has no column {audio_column!r} (columns: {', '.join(columns)}); pass --audio_column")
    if id_column is not None and id_column not in columns:
        raise DataError(f"{name} has no column {id_column!r} (columns: {', '.join(columns)}); pass --id_column")
    id_column = id_column or ("id" if "id" in columns else None)
    ids = [str(value) for value in loaded[id_column]] if id_column else [str(row) for row in range(len(loaded))]
    _check_unique(ids, name)
    # Undecoded: audio is read by armhubert.audio (soundfile), not through datasets' torchcodec decoder.
    audio = loaded.cast_column(audio_column, datasets.Audio(decode=False)).select_columns([audio_column])
    if audio_column != "audio":
        audio = audio.rename_column(audio_column, "audio")
    rows = audio.add_column("id", ids).select_columns(["id", "audio"]).cast(ROW_FEATURES)
    return _with_lengths(rows, name)


def _is_librispeech_root(folder: Path, split: str | None) -> bool:
    first = (split or "").split(",")[0].strip()
    return bool(first) and any((candidate / first).is_dir() for candidate in (folder / "LibriSpeech", folder))


def open_corpus(
    source: str, split: str | None = None, input_type: str = "auto", audio_column: str = "audio", id_column=None
) -> Corpus:
    """The utterances of `source`: `input_type` says what it is, or `auto` tells a saved dataset, a
    LibriSpeech root (with `split`), a folder of audio and a Hub dataset id apart."""
    path = Path(source)
    if input_type == "auto":
        if path.is_dir():
            saved = any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS)
            input_type = "dataset" if saved else "librispeech" if _is_librispeech_root(path, split) else "folder"
        elif path.exists():
            raise DataError(f"{source} is a file; give a folder of audio, a LibriSpeech root or a dataset")
        else:
            input_type = "dataset"  # a Hub id (or a mistyped path: the loader says it was not found)
    if input_type == "folder":
        if not path.is_dir():
            raise DataError(f"{source} is not a folder; expected a folder of audio files")
        return audio_folder(path)
    if input_type == "librispeech":
        if split is None:
            raise DataError(f"a LibriSpeech root needs --split (e.g. dev-clean); layout: {LIBRISPEECH_LAYOUT}")
        return librispeech_split(path, split)
    return dataset_source(source, split, audio_column, id_column)


# --------------------------------------------------------------------------------------------------
# Model and layers


@dataclass
class Encoder:
    """The model, the preprocessing its folder asks for, the weighted layer sum of a fine-tuned folder."""

    model: ARMHubertModel
    extractor: Wav2Vec2FeatureExtractor
    layer_sum: torch.nn.Module | None
    name: str


TASK_CLASSES = {cls.__name__: cls for cls in (ARMHubertForCTC, ARMHubertForSequenceClassification)}


def _load_error(name: str, error: BaseException) -> UserError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(f"cannot load the model {name}: {reason}")


def load_encoder(model: str | None, preset: str | None, weighted: bool, device: torch.device, seed: int = 0) -> Encoder:
    """The encoder in eval mode on `device`: a saved folder / Hub id, or a preset with random weights.

    `weighted`: load the fine-tuned task model of the folder for its learned layer weights.
    """
    if preset is not None:
        if weighted:
            raise UserError("--layers weighted needs a fine-tuned --model folder, not a random preset")
        torch.manual_seed(seed)
        encoder = ARMHubertModel(ARMHubertConfig.from_preset(preset))
        return Encoder(encoder.to(device).eval(), release_feature_extractor(), None, preset)
    check_model_folder(model, subfolder_option=None)
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise _load_error(model, error) from None
    if not isinstance(config, ARMHubertConfig):
        raise UserError(f"{model} is a {type(config).__name__} model; this tool encodes ARMHuBERT-family models")
    layer_sum = None
    try:
        if weighted:
            architecture = (config.architectures or [""])[0]
            if architecture not in TASK_CLASSES or not config.use_weighted_layer_sum:
                raise UserError(
                    f"--layers weighted needs a folder fine-tuned with use_weighted_layer_sum=True; {model} is a "
                    f"{architecture or 'bare encoder'} without learned layer weights: give layer numbers instead"
                )
            task_model = TASK_CLASSES[architecture].from_pretrained(model)
            encoder, layer_sum = task_model.armhubert, task_model.layer_sum.to(device).eval()
        else:
            encoder = ARMHubertModel.from_pretrained(model)
    except (OSError, ValueError, RuntimeError) as error:
        raise _load_error(model, error) from None
    try:
        extractor = Wav2Vec2FeatureExtractor.from_pretrained(model)
    except OSError:  # no preprocessor_config.json: the releases' preprocessing
        extractor = release_feature_extractor()
    return Encoder(encoder.to(device).eval(), extractor, layer_sum, model)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names, shapes, bytes): a resumed run must use the same weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class LayerSelection:
    """Which features one forward pass yields: names `layer_N` (N as the feature pipeline numbers layers in
    `representation`) or `weighted`; `units_name` is the one the units are computed on (maybe not saved)."""

    representation: str  # resolved: "hidden", "layers" (1..L of hidden) or "projected", or "weighted"
    numbers: tuple[int, ...]
    saved: tuple[str, ...]
    units_name: str | None
    last_only: bool  # the one feature is `last_hidden_state`: no hidden states needed

    @property
    def names(self) -> tuple[str, ...]:
        extra = (self.units_name,) if self.units_name and self.units_name not in self.saved else ()
        return self.saved + extra

    def forward_kwargs(self) -> dict[str, bool]:
        return {"output_hidden_states": not self.last_only}


def available_layers(config: ARMHubertConfig, representation: str) -> tuple[str, list[int]]:
    """(resolved representation, its layer numbers): `superb` is `projected` 1..L with heads, else `layers` 1..L."""
    count = config.num_hidden_layers
    if representation == "superb":
        representation = "projected" if config.has_projection_heads else "layers"
    if representation == "projected" and not config.has_projection_heads:
        raise UserError("--representation projected needs a model with projection heads; this one (STaR) has none")
    start = 0 if representation == "hidden" else 1
    return representation, list(range(start, count + 1))


def _parse_numbers(text: str, what: str, available: list[int]) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(
            f"{what} {text!r} is not a list of layer numbers such as 4,8,12 (or last, all, weighted)"
        ) from None
    unknown = [number for number in numbers if number not in available]
    if unknown or not numbers:
        raise UserError(f"{what} {text!r}: choose layers from {available[0]}..{available[-1]} of this representation")
    return list(dict.fromkeys(numbers))


def select_layers(
    config: ARMHubertConfig, layers: str, representation: str, units_layer: int | None, units: bool
) -> LayerSelection:
    """The `LayerSelection` of the options `--layers`, `--representation`, `--units_layer`."""
    if layers == "weighted":
        if units_layer is not None:
            raise UserError("with --layers weighted the units are computed on the weighted sum; drop --units_layer")
        return LayerSelection("weighted", (), ("weighted",), "weighted" if units else None, False)
    resolved, available = available_layers(config, representation)
    numbers = (
        [available[-1]]
        if layers == "last"
        else available
        if layers == "all"
        else _parse_numbers(layers, "--layers", available)
    )
    units_name = None
    if units:
        if units_layer is None and len(numbers) > 1:
            raise UserError(
                f"--layers {layers} gives {len(numbers)} layers; say which one the units use: --units_layer N"
            )
        units_number = (
            numbers[0] if units_layer is None else _parse_numbers(str(units_layer), "--units_layer", available)[0]
        )
        units_name = f"layer_{units_number}"
    saved = tuple(f"layer_{number}" for number in numbers)
    wanted = set(numbers) | ({int(units_name.split("_")[1])} if units_name else set())
    # `last_hidden_state` is the last head's output with heads, the last layer's in post-LN models without.
    if config.has_projection_heads:
        is_last_hidden_state = resolved == "projected"
    else:
        is_last_hidden_state = not config.do_stable_layer_norm
    last_only = wanted == {available[-1]} and is_last_hidden_state
    return LayerSelection(resolved, tuple(numbers), saved, units_name, last_only)


def selected_features(encoder: Encoder, selection: LayerSelection, output: Any) -> dict[str, Any]:
    """{name: (B, T, D)} of the selection from a model output, plus its `frame_attention_mask`."""
    config = encoder.model.config
    if selection.representation == "weighted":
        features = {"weighted": encoder.layer_sum(superb_layer_outputs(config, output))}
    elif selection.last_only:
        features = {name: output.last_hidden_state for name in selection.names}
    else:
        table = output.projected_hidden_states if selection.representation == "projected" else output.hidden_states
        offset = 1 if selection.representation == "projected" else 0
        features = {name: table[int(name.split("_")[1]) - offset] for name in selection.names}
    return {**features, "frame_attention_mask": output.frame_attention_mask}


# --------------------------------------------------------------------------------------------------
# Plan: batches and shards


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


def plan_shards(batches: Sequence[tuple[int, ...]], batch_bytes: Callable[[tuple[int, ...]], int], shard_bytes: int):
    """Consecutive batches into shards of about `shard_bytes` (a shard holds at least one batch)."""
    shards, current, size = [], [], 0
    for batch in batches:
        if current and size + batch_bytes(batch) > shard_bytes:
            shards.append(ShardPlan(len(shards), tuple(current)))
            current, size = [], 0
        current.append(batch)
        size += batch_bytes(batch)
    if current:
        shards.append(ShardPlan(len(shards), tuple(current)))
    return shards


# --------------------------------------------------------------------------------------------------
# Encoding


@dataclass
class Chunking:
    """Utterances longer than `chunk_length_s` run in windows (`armhubert.chunking`); None: never."""

    chunk_length_s: float
    stride_length_s: float
    windows_per_batch: int

    @property
    def threshold_samples(self) -> int:
        return int(self.chunk_length_s * SAMPLING_RATE)


def encode_batch(
    encoder: Encoder,
    selection: LayerSelection,
    waveforms: Sequence[np.ndarray],
    chunking: Chunking | None = None,
    codebook: Codebook | None = None,
    deduplicate: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Features of each waveform: [{name: (T_i, D) float32 on the CPU for every name of the selection, and
    `units` (U_i,) int16 with a codebook}].

    One padded batch (attention mask: frames past an utterance's end are dropped), or, for a single
    utterance longer than the chunking threshold, its chunked encoding. Call under `torch.inference_mode()`.
    """
    model = encoder.model
    device = next(model.parameters()).device
    batch = encoder.extractor(
        list(waveforms), sampling_rate=SAMPLING_RATE, padding=True, return_attention_mask=True, return_tensors="pt"
    )
    input_values, attention_mask = batch["input_values"].to(device), batch["attention_mask"].to(device)
    if chunking is not None and len(waveforms) == 1 and len(waveforms[0]) > chunking.threshold_samples:
        output = encode_chunked(
            model,
            input_values,
            None,
            chunking.chunk_length_s,
            chunking.stride_length_s,
            chunking.windows_per_batch,
            transform=lambda window: selected_features(encoder, selection, window),
            **selection.forward_kwargs(),
        )
    else:
        window_output = model(input_values, attention_mask=attention_mask, **selection.forward_kwargs())
        output = selected_features(encoder, selection, window_output)
    mask = output.pop("frame_attention_mask")
    frames = [output[selection.names[0]].shape[1]] * len(waveforms) if mask is None else mask.sum(-1).tolist()
    results = []
    for row, count in enumerate(frames):
        features = {name: output[name][row, :count].float().cpu() for name in selection.names}
        if codebook is not None:
            units = assign_units(features[selection.units_name], codebook.centroids)
            features["units"] = deduplicate_runs(units) if deduplicate else units
        results.append(features)
    return results


# --------------------------------------------------------------------------------------------------
# Shards and index


@dataclass
class ShardContents:
    """What one shard holds: per-utterance records [id, offset, frames, unit offset, units] and the skipped files."""

    tensors: dict[str, torch.Tensor]
    records: list[list]
    skipped: list[list[str]]


def shard_contents(
    encoded: Sequence[tuple[str, dict[str, torch.Tensor]]],
    skipped: list[list[str]],
    names: Sequence[str],
    widths: dict[str, int],
    dtype: torch.dtype,
    with_units: bool,
) -> ShardContents:
    """Concatenate per-utterance features along time, in `dtype` (units int16), with their offsets."""
    records, offset, unit_offset = [], 0, 0
    for utterance_id, features in encoded:
        frames = next(value.shape[0] for name, value in features.items() if name != "units")
        units = features["units"].shape[0] if with_units else 0
        records.append([utterance_id, offset, frames, unit_offset, units])
        offset, unit_offset = offset + frames, unit_offset + units
    tensors = {
        name: torch.cat([features[name] for _, features in encoded]).to(dtype).contiguous()
        if encoded
        else torch.zeros(0, widths[name], dtype=dtype)
        for name in names
    }
    if with_units:
        units = [features["units"] for _, features in encoded]
        tensors["units"] = torch.cat(units).contiguous() if units else torch.zeros(0, dtype=torch.int16)
    return ShardContents(tensors, records, skipped)


def write_shard(path: Path, contents: ShardContents, fingerprint: str) -> None:
    """One safetensors file, written to a temporary name and renamed (never half-written)."""
    metadata = {"format": FEATURES_FORMAT, "fingerprint": fingerprint, "utterances": contents.records}
    metadata["skipped"] = contents.skipped
    with atomic_output_file(path) as staging:
        # One metadata entry: safetensors writes several in a random order, and a resumed run must write the same bytes.
        save_file(contents.tensors, staging, metadata={"armhubert": json.dumps(metadata)})


def shard_metadata(path: Path) -> dict | None:
    """The metadata of a shard file, or None when there is none or it is not a shard of this tool."""
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get("armhubert", "{}"))
    except (SafetensorError, OSError, ValueError):
        return None
    return metadata if metadata.get("format") == FEATURES_FORMAT else None


def build_index(output_dir: Path, shards: Sequence[ShardPlan], header: dict, skipped: list[list[str]]) -> dict:
    """index.json's contents from the finished shards' metadata (every planned shard must exist)."""
    utterances, all_skipped = {}, list(skipped)
    for shard in shards:
        metadata = shard_metadata(output_dir / shard.file_name)
        if metadata is None:
            raise UserError(f"shard {shard.file_name} is missing from {output_dir}; run again with --resume")
        for utterance_id, offset, frames, unit_offset, units in metadata["utterances"]:
            entry = {"shard": shard.file_name, "offset": offset, "frames": frames}
            if header.get("units"):
                entry.update(units_offset=unit_offset, units=units)
            utterances[utterance_id] = entry
        all_skipped.extend(metadata["skipped"])
    return {**header, "shards": [shard.file_name for shard in shards], "utterances": utterances, "skipped": all_skipped}


class FeatureIndex:
    """Read features written by `extract_features` (safetensors format):

    index = FeatureIndex("feats")
    index.ids                  # utterance ids, in the order they were encoded
    index["1001-101-0000"]     # {"layer_12": (T, D) tensor, ..., "units": (U,) int16 when written}
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        path = self.folder / INDEX_FILE
        if not path.is_file():
            raise UserError(f"{self.folder} has no {INDEX_FILE}: not a finished feature folder (run with --resume)")
        self.index = json.loads(path.read_text(encoding="utf-8"))
        if self.index.get("format") != FEATURES_FORMAT:
            raise UserError(f"{path} is not an index of this tool (format {FEATURES_FORMAT})")

    @property
    def ids(self) -> list[str]:
        return list(self.index["utterances"])

    def __len__(self) -> int:
        return len(self.index["utterances"])

    def __getitem__(self, utterance_id: str) -> dict[str, torch.Tensor]:
        entry = self.index["utterances"][utterance_id]
        with safe_open(self.folder / entry["shard"], framework="pt") as handle:
            result = {
                name: handle.get_slice(name)[entry["offset"] : entry["offset"] + entry["frames"]]
                for name in self.index["features"]
            }
            if "units" in entry:
                result["units"] = handle.get_slice("units")[
                    entry["units_offset"] : entry["units_offset"] + entry["units"]
                ]
        return result


def write_arrow_dataset(output_dir: Path, index: dict) -> Path:
    """The shards as one `datasets` dataset in `output_dir/dataset` (save_to_disk): columns `id`, `frames`,
    one Array2D per feature, `units` (int16 sequences) when written. Returns its folder."""
    dtype = index["dtype"]
    columns = {"id": datasets.Value("string"), "frames": datasets.Value("int32")}
    columns.update({name: datasets.Array2D((None, width), dtype) for name, width in index["widths"].items()})
    if index.get("units"):
        columns["units"] = datasets.Sequence(datasets.Value("int16"))
    shard_names = index["shards"]

    def rows():
        for shard_name in shard_names:
            with safe_open(output_dir / shard_name, framework="np") as handle:
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
                for utterance_id, offset, frames, unit_offset, units in shard_metadata(output_dir / shard_name)[
                    "utterances"
                ]:
                    row = {"id": utterance_id, "frames": frames}
                    row.update({name: tensors[name][offset : offset + frames] for name in index["widths"]})
                    if "units" in columns:
                        row["units"] = tensors["units"][unit_offset : unit_offset + units]
                    yield row

    target = output_dir / DATASET_FOLDER
    for stale in output_dir.glob(f"{ARROW_CACHE_PREFIX}*"):  # left by a run killed while converting
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=ARROW_CACHE_PREFIX, dir=output_dir) as cache:
        fingerprint = hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()  # no hashing of `rows`
        dataset = datasets.Dataset.from_generator(
            rows, features=datasets.Features(columns), cache_dir=cache, fingerprint=fingerprint
        )
        with staged_folder(target, overwrite=False) as staging:
            dataset.save_to_disk(str(staging))
        del dataset
    return target


# --------------------------------------------------------------------------------------------------
# The run


@dataclass
class Processes:
    """This process's place among those `accelerate launch` / torchrun started (one: index 0 of 1)."""

    index: int = 0
    count: int = 1
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.index == 0


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
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return Processes(state.process_index, state.num_processes, state.wait_for_everyone), chosen


def _corpus_fingerprint(corpus: Corpus) -> str:
    digest = hashlib.sha256()
    for utterance_id, length in zip(corpus.ids, corpus.lengths):
        digest.update(f"{utterance_id}\0{length}\n".encode())
    return digest.hexdigest()


def run_settings(args: ExtractionArguments, corpus: Corpus, encoder: Encoder) -> dict:
    """What the output depends on: the options (runtime ones left out), the model's weights, the corpus."""
    options = {key: value for key, value in asdict(args).items() if key not in ExtractionArguments.RUNTIME_FIELDS}
    options["input"] = str(Path(args.input).absolute()) if Path(args.input).exists() else args.input
    if args.codebook:
        options["codebook"] = file_sha256(args.codebook)
    return {
        "format": FEATURES_FORMAT,
        "options": options,
        "model_sha256": model_fingerprint(encoder.model)
        + (model_fingerprint(encoder.layer_sum) if encoder.layer_sum is not None else ""),
        "corpus_sha256": _corpus_fingerprint(corpus),
        "utterances": len(corpus.rows),
    }


def remove_stale_temporaries(output_dir: Path) -> None:
    """Delete the temporary files that a killed run of this tool left in its output folder (never anything else)."""
    for pattern in (".shard-*.safetensors", f".{INDEX_FILE}.*", f".{RUN_FILE}.*", ".codebook.*.safetensors"):
        for path in output_dir.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink()


def check_output(args: ExtractionArguments, settings: dict) -> Path:
    """Refuse an output that overlaps an input, or a non-empty one unless `--resume` continues the same run."""
    inputs = [args.input if Path(args.input).exists() else None, args.model, args.codebook]
    output_dir = check_output_location(args.output_dir, inputs)
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return output_dir
    if not args.resume:
        raise UserError(
            f"output folder {output_dir} is not empty; pass --resume to continue the run that wrote it, or choose a "
            "new folder"
        )
    run_file = output_dir / RUN_FILE
    previous = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
    if previous is None:
        raise UserError(
            f"--resume: {output_dir} holds no {RUN_FILE}, so it is not an output of this tool; use a new folder"
        )
    if previous != settings:
        changed = sorted(
            key
            for key in set(previous.get("options", {})) | set(settings["options"])
            if previous.get("options", {}).get(key) != settings["options"].get(key)
        ) or [key for key in settings if previous.get(key) != settings[key]]
        raise UserError(
            f"--resume: {output_dir} was written with other settings ({', '.join(changed)} differ); run with the "
            "same options and data, or use a new folder"
        )
    return output_dir


def _read_utterance(corpus: Corpus, row: int, field_size: int) -> tuple[str, np.ndarray | None, str | None]:
    """(id, 16 kHz samples or None, why it was skipped)."""
    record = corpus.rows[row]
    try:
        samples = read_audio(record["audio"])
    except DataError as error:
        return record["id"], None, str(error)
    if len(samples) < field_size:
        return record["id"], None, f"{len(samples)} samples, fewer than the model's {field_size}-sample receptive field"
    return record["id"], samples, None


def _decoded(corpus: Corpus, work: Sequence[tuple[ShardPlan, tuple[int, ...]]], field_size: int) -> Iterator:
    """(shard, [(id, samples or None, reason)]) per batch of `work`, the next batch decoded while this one runs."""

    def read(batch):
        return [_read_utterance(corpus, row, field_size) for row in batch]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        ahead: Future | None = pool.submit(read, work[0][1]) if work else None
        for position, (shard, _) in enumerate(work):
            current = ahead.result()
            ahead = pool.submit(read, work[position + 1][1]) if position + 1 < len(work) else None
            yield shard, current


@dataclass
class _Run:
    """Everything the encoding loop needs, fixed before it starts."""

    args: ExtractionArguments
    corpus: Corpus
    encoder: Encoder
    selection: LayerSelection
    chunking: Chunking | None
    codebook: Codebook | None
    widths: dict[str, int]
    output_dir: Path
    settings_sha256: str
    processes: Processes


def shard_fingerprint(run: _Run, shard: ShardPlan) -> str:
    digest = hashlib.sha256(run.settings_sha256.encode())
    if run.codebook is not None:
        digest.update(run.codebook.centroids.numpy().tobytes())
    digest.update(json.dumps([[run.corpus.ids[row] for row in batch] for batch in shard.batches]).encode())
    return digest.hexdigest()


def _pending_shards(run: _Run, shards: Sequence[ShardPlan]) -> list[tuple[ShardPlan, str]]:
    """This process's shards that are not finished yet, with their fingerprints."""
    mine = [shard for shard in shards if shard.index % run.processes.count == run.processes.index]
    pending = []
    for shard in mine:
        fingerprint = shard_fingerprint(run, shard)
        metadata = shard_metadata(run.output_dir / shard.file_name)
        if metadata is None or metadata.get("fingerprint") != fingerprint:
            pending.append((shard, fingerprint))
    return pending


def _seconds(corpus: Corpus, rows: Sequence[int]) -> float:
    return sum(corpus.lengths[row] for row in rows) / SAMPLING_RATE


def encode_shards(run: _Run, shards: Sequence[ShardPlan]) -> tuple[int, float]:
    """Encode and write this process's unfinished shards; returns (utterances encoded, audio seconds)."""
    from tqdm.auto import tqdm

    pending = _pending_shards(run, shards)
    work = [(shard, batch) for shard, _ in pending for batch in shard.batches]
    fingerprints = {shard.index: fingerprint for shard, fingerprint in pending}
    total_seconds = sum(_seconds(run.corpus, shard.rows) for shard, _ in pending)
    names = run.selection.saved if run.args.save_features else ()
    dtype = STORAGE_DTYPES[run.args.dtype]
    field_size = run.encoder.model.config.receptive_field
    progress = tqdm(
        total=round(total_seconds, 1), unit="audio-s", disable=not run.args.progress or None, desc="encoding"
    )
    encoded, skipped, done_batches, count, seconds = [], [], 0, 0, 0.0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write") as writer, torch.inference_mode():
        writing: Future | None = None
        for shard, batch in _decoded(run.corpus, work, field_size):
            readable = [(utterance_id, samples) for utterance_id, samples, _ in batch if samples is not None]
            for utterance_id, _, reason in batch:
                if reason is not None:
                    logger.warning("Skipping %s: %s", utterance_id, reason)
                    skipped.append([utterance_id, reason])
            if readable:
                outputs = encode_batch(
                    run.encoder,
                    run.selection,
                    [samples for _, samples in readable],
                    run.chunking,
                    run.codebook,
                    run.args.deduplicate_units,
                )
                encoded.extend(zip((utterance_id for utterance_id, _ in readable), outputs))
                batch_seconds = sum(len(samples) for _, samples in readable) / SAMPLING_RATE
                count, seconds = count + len(readable), seconds + batch_seconds
                progress.update(round(batch_seconds, 1))
            done_batches += 1
            if done_batches == len(shard.batches):  # the shard is complete: write it while the next one runs
                contents = shard_contents(encoded, skipped, names, run.widths, dtype, run.codebook is not None)
                if writing is not None:
                    writing.result()
                writing = writer.submit(
                    write_shard, run.output_dir / shard.file_name, contents, fingerprints[shard.index]
                )
                encoded, skipped, done_batches = [], [], 0
        if writing is not None:
            writing.result()
    progress.close()
    return count, seconds


def _probe_widths(encoder: Encoder, selection: LayerSelection) -> dict[str, int]:
    """Width of every selected feature, from one forward pass on a few frames of silence."""
    config = encoder.model.config
    device = next(encoder.model.parameters()).device
    samples = config.receptive_field + 4 * config.inputs_to_logits_ratio * config.crop_seq_to_multiple
    with torch.inference_mode():
        output = encoder.model(torch.zeros(1, samples, device=device), **selection.forward_kwargs())
        features = selected_features(encoder, selection, output)
    return {name: int(features[name].shape[-1]) for name in selection.names}


def units_sample_rows(corpus: Corpus, hours: float, seed: int) -> list[int]:
    """A seeded random sample of rows holding at most `hours` of audio (at least one row)."""
    order = np.random.default_rng(seed).permutation(len(corpus.rows)).tolist()
    lengths, budget, chosen, total = corpus.lengths, hours * 3600 * SAMPLING_RATE, [], 0
    for row in order:
        if chosen and total + lengths[row] > budget:
            continue
        chosen.append(row)
        total += lengths[row]
    return sorted(chosen)


def fit_units(run: _Run) -> Codebook:
    """Encode the units sample (`--units_sample_hours`) and fit the k-means codebook on its frames."""
    args, selection = run.args, run.selection
    rows = units_sample_rows(run.corpus, args.units_sample_hours, args.seed)
    lengths, ids = run.corpus.lengths, run.corpus.ids
    batches = plan_batches([lengths[row] for row in rows], [ids[row] for row in rows], args.max_batch_seconds, None)
    frames = []
    field_size = run.encoder.model.config.receptive_field
    with torch.inference_mode():
        for batch in batches:
            decoded = [_read_utterance(run.corpus, rows[position], field_size) for position in batch]
            waveforms = [samples for _, samples, _ in decoded if samples is not None]
            if waveforms:
                outputs = encode_batch(run.encoder, selection, waveforms, run.chunking)
                frames.extend(output[selection.units_name] for output in outputs)
    if not frames:
        raise DataError("none of the files of the units sample is readable; check the corpus")
    features = torch.cat(frames)
    logger.info("Fitting %d units on %d frames of %s", args.units, features.shape[0], selection.units_name)
    centroids = fit_codebook(features, args.units, seed=args.seed)
    return Codebook(centroids, selection.units_name, selection.representation, run.encoder.name, features.shape[0])


def _check_codebook(codebook: Codebook, selection: LayerSelection, widths: dict[str, int], path: str) -> None:
    width = widths[selection.units_name]
    if codebook.dim != width:
        raise UserError(
            f"codebook {path} has {codebook.dim}-wide centroids but {selection.units_name} of this model is {width} "
            f"wide; it was fitted on {codebook.layer} of {codebook.model}: use the same model and layer, or fit a new "
            "codebook with --units K"
        )
    if codebook.layer != selection.units_name or codebook.representation != selection.representation:
        raise UserError(
            f"codebook {path} was fitted on {codebook.layer} ({codebook.representation}) but the units would come from "
            f"{selection.units_name} ({selection.representation}); pass --units_layer / --representation to match it"
        )


def _selection_for(args: ExtractionArguments, config: ARMHubertConfig, codebook: Codebook | None) -> LayerSelection:
    """The layer selection; with --codebook and no --units_layer, the units come from the codebook's own layer."""
    units_layer = args.units_layer
    if codebook is not None and units_layer is None and codebook.layer.startswith("layer_"):
        units_layer = int(codebook.layer.split("_")[1])
    with_units = args.units is not None or codebook is not None
    selection = select_layers(config, args.layers, args.representation, units_layer, with_units)
    if not args.save_features:
        selection = LayerSelection(
            selection.representation, selection.numbers, (), selection.units_name, selection.last_only
        )
    return selection


def extract_features(args: ExtractionArguments, encoder: Encoder | None = None) -> dict:
    """Encode a corpus into `args.output_dir` (see the module docstring); returns the index (main process).

    `encoder`: a model already loaded (e.g. `Encoder(model, release_feature_extractor(), None, "my-model")`),
    used instead of loading `args.model` / `args.preset`.
    """
    check_arguments(args, encoder_given=encoder is not None)
    processes, device = current_processes(args.device)
    started = time.perf_counter()
    corpus = open_corpus(args.input, args.split, args.input_type, args.audio_column, args.id_column)
    given_codebook = load_codebook(args.codebook) if args.codebook else None
    if encoder is None:
        encoder = load_encoder(args.model, args.preset, args.layers == "weighted", device, args.seed)
    config = encoder.model.config
    selection = _selection_for(args, config, given_codebook)
    widths = _probe_widths(encoder, selection)
    if given_codebook is not None:
        _check_codebook(given_codebook, selection, widths, args.codebook)
    settings = run_settings(args, corpus, encoder)
    output_dir = check_output(args, settings)
    if args.format == "arrow" and (output_dir / DATASET_FOLDER / "state.json").is_file():
        print(f"{output_dir / DATASET_FOLDER} is complete (same settings): nothing to do")
        return {}
    processes.barrier()  # every process has checked the output folder before the first writes to it
    if processes.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output_dir)
        atomic_write_text(output_dir / RUN_FILE, json.dumps(settings, indent=1))
    processes.barrier()

    chunking = None
    if args.chunk_length_s > 0:
        windows = max(1, int(args.max_batch_seconds // args.chunk_length_s))
        chunking = Chunking(args.chunk_length_s, args.stride_length_s, windows)
    lengths, ids = corpus.lengths, corpus.ids
    batches = plan_batches(lengths, ids, args.max_batch_seconds, chunking.threshold_samples if chunking else None)
    dtype_bytes = STORAGE_DTYPES[args.dtype].itemsize
    frame_bytes = sum(widths[name] for name in selection.saved) * dtype_bytes if args.save_features else 0
    frame_bytes += 2 if selection.units_name else 0
    shards = plan_shards(
        batches,
        lambda batch: sum(num_frames(config, lengths[row]) for row in batch) * frame_bytes,
        int(args.shard_mb * 1e6),
    )
    settings_sha256 = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    run = _Run(
        args, corpus, encoder, selection, chunking, given_codebook, widths, output_dir, settings_sha256, processes
    )

    if args.units is not None:
        codebook_path = output_dir / CODEBOOK_FILE
        if processes.is_main and not (args.resume and codebook_path.is_file()):
            save_codebook(fit_units(run), codebook_path)
        processes.barrier()
        run.codebook = load_codebook(codebook_path)

    count, seconds = encode_shards(run, shards)
    processes.barrier()
    if not processes.is_main:
        return {}
    header = {
        "format": FEATURES_FORMAT,
        "model": encoder.name,
        "representation": selection.representation,
        "features": list(selection.saved),
        "widths": {name: widths[name] for name in selection.saved},
        "dtype": args.dtype,
        "samples_per_frame": config.inputs_to_logits_ratio,
        "frame_rate_hz": SAMPLING_RATE / config.inputs_to_logits_ratio,
        "units": None
        if run.codebook is None
        else {
            "layer": selection.units_name,
            "num_units": run.codebook.num_units,
            "deduplicated": args.deduplicate_units,
            "codebook": CODEBOOK_FILE if args.units is not None else str(args.codebook),
        },
    }
    index = build_index(output_dir, shards, header, [list(item) for item in corpus.skipped])
    if not index["utterances"]:
        raise DataError(f"none of the {len(corpus.rows)} files of {corpus.description} could be read; check the corpus")
    if args.format == "arrow":
        write_arrow_dataset(output_dir, index)
        for shard in shards:
            (output_dir / shard.file_name).unlink(missing_ok=True)
    else:
        atomic_write_text(output_dir / INDEX_FILE, json.dumps(index, indent=1))
    elapsed = time.perf_counter() - started
    report_summary(index, count, seconds, elapsed, output_dir)
    return index


def report_summary(index: dict, count: int, seconds: float, elapsed: float, output_dir: Path) -> None:
    """Print what was written, how fast, and which files were skipped."""
    rate = seconds / elapsed if elapsed > 0 else math.inf
    print(
        f"encoded {count} utterances ({seconds:.1f} s of audio) in {elapsed:.1f} s, {rate:.1f} audio seconds per "
        f"second; {len(index['utterances'])} utterances in {output_dir}"
    )
    skipped = index["skipped"]
    if skipped:
        shown = "; ".join(f"{name} ({reason})" for name, reason in skipped[:5])
        more = f"; and {len(skipped) - 5} more (index 'skipped')" if len(skipped) > 5 else ""
        print(f"skipped {len(skipped)} unreadable file(s): {shown}{more}")
