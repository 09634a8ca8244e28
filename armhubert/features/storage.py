"""What a run writes: shard files (the features of a shard's utterances concatenated along time, one
safetensors file each), `index.json` (which shard holds each utterance; `FeatureIndex` reads it back)
and, for `--format arrow`, the same as one `datasets` dataset.

Shard files: the features of a shard's utterances concatenated along time, one safetensors file each.

A shard holds per feature one (sum of frames, D) tensor and `units` (sum of units,) int16, and in its
metadata (one JSON entry `armhubert`) the format, its fingerprint (see `armhubert.features.resume`),
each utterance's record [id, offset, frames, unit offset, units], the files it skipped and the sha256
of its tensor bytes. `read_shard` is the door for a shard file: a checked `Shard` (`--resume` keeps one
only when its bytes are those written, `Shard.is_intact`).

`ShardWriter` writes a shard as its frames come: each feature's rows go straight to an unnamed
temporary file beside the output (in the storage dtype), a long recording window by window, so memory
is bounded by a batch (or a window), not by the shard or the recording. `close` then writes the
safetensors file (header, then the staged bytes; the bytes `safetensors.torch.save_file` writes) to a
temporary name and renames it: a killed run loses at most the shard it was writing and never leaves a
broken one (the staging files have no name, so nothing of them is left either).

`index.json`: which shard holds each utterance, built from the finished shards; `FeatureIndex` reads it back.

The index is written last: its presence marks a complete output. Besides the header (model,
representation, feature names and widths, dtype, frame rate, units settings) it maps each
utterance id to its `shard`, `offset` and `frames` (and `units_offset`, `units`), and lists the
`skipped` files with the reason.

`--format arrow`: the finished shards as one `datasets` dataset (`save_to_disk`), `datasets.load_from_disk`-able.
"""

import hashlib
import itertools
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import datasets
import torch
from safetensors import safe_open

from ..cli import UserError
from ..files.atomic import atomic_output_file, staged_folder
from ..files.untrusted import brief, load_json_file, open_safetensors, parse_json
from .plan import ShardPlan

# ----------------------------------------------------------------------------------------------------
# Shard files: the features of a shard's utterances concatenated along time, one safetensors file each

FEATURES_FORMAT = "armhubert-features/1"
# In the order safetensors lays tensors out (its Dtype enum, descending), then by name.
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int16: "I16"}
COPY_BYTES = 1 << 22
MAX_METADATA_VALUES = 2_000_000  # six values an utterance: 330,000 utterances a shard


class ShardWriter:
    """One shard, written utterance by utterance (`add`), or piece by piece (`begin`, `append`, `end` /
    `discard` for an utterance that turns out unreadable half-way), then `close`d.

    Args:
        path: the shard file.
        widths: {feature name: width} of the features stored (in this order of names), in `dtype`.
        dtype: storage dtype of the features (computation is float32).
        with_units: whether the shard holds `units` (int16).
    """

    def __init__(self, path: Path, widths: Mapping[str, int], dtype: torch.dtype, with_units: bool):
        self.path = Path(path)
        self.shapes = {name: (width,) for name, width in widths.items()}
        self.dtypes = {name: dtype for name in widths}
        if with_units:
            self.shapes["units"], self.dtypes["units"] = (), torch.int16
        self.rows = dict.fromkeys(self.shapes, 0)
        self.staging: dict[str, BinaryIO] = {
            name: tempfile.TemporaryFile(dir=self.path.parent, prefix=".staging-") for name in self.shapes
        }
        self.records: list[list] = []
        self.skipped: list[list[str]] = []
        self.frames = 0  # frames of the utterances written
        self._open: tuple[str, dict[str, int]] | None = None  # (id, rows when it began) of the utterance being added
        self._frames = 0  # frames of the utterance being added

    def add(self, utterance_id: str, features: Mapping[str, torch.Tensor]) -> None:
        """Write one utterance: {name: (T, D) for every stored feature, `units` (U,) int16 with units}; other
        entries (a units layer that is not stored) only give its frame count."""
        self.begin(utterance_id)
        self.append(features)
        self.end()

    def begin(self, utterance_id: str) -> None:
        """Start an utterance written piece by piece."""
        if self._open is not None:
            raise RuntimeError(f"utterance {self._open[0]} is still being written")
        self._open, self._frames = (utterance_id, dict(self.rows)), 0

    def append(self, features: Mapping[str, torch.Tensor]) -> None:
        """The next frames of the utterance begun (e.g. one window's kept frames), as in `add`."""
        self._frames += next(value.shape[0] for name, value in features.items() if name != "units")
        for name, handle in self.staging.items():
            value = features[name].to(self.dtypes[name]).contiguous().cpu()
            handle.write(value.numpy().data)
            self.rows[name] += value.shape[0]

    def end(self) -> None:
        """Finish the utterance begun: its record [id, offset, frames, unit offset, units]."""
        utterance_id, started = self._open
        first_unit = started.get("units", 0)
        self.records.append(
            [utterance_id, self.frames, self._frames, first_unit, self.rows.get("units", 0) - first_unit]
        )
        self.frames += self._frames
        self._open = None

    def discard(self, utterance_id: str, reason: str) -> None:
        """Drop what was written of the utterance begun, and list it as skipped."""
        _, started = self._open
        for name, handle in self.staging.items():
            handle.truncate(self._bytes(name, started[name]))
            handle.seek(0, 2)
            self.rows[name] = started[name]
        self._open = None
        self.skip(utterance_id, reason)

    def skip(self, utterance_id: str, reason: str) -> None:
        self.skipped.append([utterance_id, reason])

    def _bytes(self, name: str, rows: int) -> int:
        width = self.shapes[name][0] if self.shapes[name] else 1
        return rows * width * self.dtypes[name].itemsize

    def close(self, fingerprint: str) -> None:
        """Write the safetensors file (temporary name, then renamed) and drop the staging files."""
        metadata = {
            "format": FEATURES_FORMAT,
            "fingerprint": fingerprint,
            "utterances": self.records,
            "skipped": self.skipped,
        }
        # save_file's layout: one metadata entry (several would come in a random order, and a resumed run must
        # write the same bytes), tensors by dtype then name, the header padded with spaces to 8 bytes.
        rank = list(SAFETENSORS_DTYPES)
        order = sorted(self.shapes, key=lambda name: (rank.index(self.dtypes[name]), name))
        metadata["sha256"] = self._sha256(order)
        header, start = {"__metadata__": {"armhubert": json.dumps(metadata)}}, 0
        for name in order:
            end = start + self._bytes(name, self.rows[name])
            shape = [self.rows[name], *self.shapes[name]]
            header[name] = {
                "dtype": SAFETENSORS_DTYPES[self.dtypes[name]],
                "shape": shape,
                "data_offsets": [start, end],
            }
            start = end
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        try:
            with atomic_output_file(self.path) as staging, open(staging, "wb") as output:
                output.write(struct.pack("<Q", len(text)) + text)
                for name in order:
                    self.staging[name].seek(0)
                    shutil.copyfileobj(self.staging[name], output, COPY_BYTES)
        finally:
            self.release()

    def _sha256(self, order: list[str]) -> str:
        """sha256 of the tensor bytes the shard will hold (the staged files in `order`), for `--resume` to verify."""
        digest = hashlib.sha256()
        for name in order:
            self.staging[name].seek(0)
            while piece := self.staging[name].read(COPY_BYTES):
                digest.update(piece)
        return digest.hexdigest()

    def release(self) -> None:
        """Drop the staging files (a shard abandoned, or written)."""
        for handle in self.staging.values():
            handle.close()


@dataclass(frozen=True)
class Shard:
    """A shard file of this tool, checked by `read_shard`: its metadata is what `ShardWriter` writes and its
    records [id, offset, frames, unit offset, units] lay out its tensors exactly."""

    path: Path
    fingerprint: str
    records: list[list]
    skipped: list[list[str]]
    sha256: str | None  # of its tensor bytes (None in a shard written before shards carried one)

    def is_intact(self) -> bool:
        """Whether its tensor bytes have the sha256 its metadata carries (read in full: for `--resume`)."""
        if self.sha256 is None:
            return False
        digest = hashlib.sha256()
        try:
            with open(self.path, "rb") as handle:
                (header_bytes,) = struct.unpack("<Q", handle.read(8))
                handle.seek(8 + header_bytes)
                while piece := handle.read(COPY_BYTES):
                    digest.update(piece)
        except (OSError, struct.error):
            return False
        return digest.hexdigest() == self.sha256


def read_shard(path: Path, features: Sequence[str] = ()) -> Shard | None:
    """The door for a shard file: its metadata (bounded before it is built) and its tensors' rows (from the
    header) as a `Shard`; None when there is no file or it is not a shard of this tool (unreadable, other
    metadata, records of other types). A shard of this tool whose records do not lay out its tensors (the
    header was edited: they would point past the tensors or overlap), or that lacks one of `features`, is
    refused."""
    try:
        if not path.is_file():
            return None
        with open_safetensors(path, f"shard {path}") as handle:
            text = (handle.metadata() or {}).get("armhubert", "{}")
            rows = _rows(handle)
        metadata = parse_json(text, str(path), MAX_METADATA_VALUES)
    except UserError:  # not readable, or metadata beyond bounds: not a shard of this tool, encoded again
        return None
    if not isinstance(metadata, dict) or metadata.get("format") != FEATURES_FORMAT:
        return None
    records, skipped = metadata.get("utterances"), metadata.get("skipped")
    if not (
        isinstance(metadata.get("fingerprint"), str)
        and isinstance(records, list)
        and all(_is_record(record) for record in records)
        and isinstance(skipped, list)
        and all(isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item) for item in skipped)
    ):
        return None
    problem = layout_problem(rows, records, features)
    if problem is not None:
        raise UserError(
            f"shard {path}'s metadata does not match its tensors ({problem}); it was altered: delete it, then run "
            "again with --resume"
        )
    sha256 = metadata.get("sha256")
    return Shard(path, metadata["fingerprint"], records, skipped, sha256 if isinstance(sha256, str) else None)


def _is_record(record) -> bool:
    """[id, offset, frames, unit offset, units]: a text id and four counts."""
    return (
        isinstance(record, list)
        and len(record) == 5
        and isinstance(record[0], str)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in record[1:])
    )


def tensor_rows(path: Path) -> dict[str, int]:
    """{tensor name: rows} of a safetensors file, from its header (nothing of the tensors is read); UserError when
    the file is not a readable safetensors file (`open_safetensors`)."""
    with open_safetensors(path, f"shard {path}") as handle:
        return _rows(handle)


def _rows(handle) -> dict[str, int]:
    """{tensor name: rows} of an open safetensors file, from its header."""
    return {name: (handle.get_slice(name).get_shape() or [0])[0] for name in handle.keys()}


def layout_problem(rows: dict[str, int], records: list[list], features: Sequence[str] = ()) -> str | None:
    """What is wrong with a shard's records [id, offset, frames, unit offset, units] given its tensors' `rows`
    (`tensor_rows`), or None: each utterance must start where the previous one ended (no gap, no overlap) and
    together they must fill each feature tensor (`features`: those that must be there, e.g. an index's) and
    `units` exactly, so that no record points past its tensors."""
    missing = [name for name in features if name not in rows]
    if missing:
        return f"it holds no tensor {missing[0]}"
    frames = units = 0
    for utterance_id, offset, length, unit_offset, unit_count in records:
        if offset != frames or unit_offset != units:
            return (
                f"utterance {brief(utterance_id)} starts at frame {offset} / unit {unit_offset}, not where the one "
                f"before it ends ({frames} / {units})"
            )
        frames, units = frames + length, units + unit_count
    for name, count in rows.items():
        expected = units if name == "units" else frames
        if count != expected:
            return f"its {len(records)} utterances take {expected:,} rows of {name}, which has {count:,}"
    return None


# ----------------------------------------------------------------------------------------------------
# `index.json`: which shard holds each utterance, built from the finished shards; `FeatureIndex` reads it back

INDEX_FILE = "index.json"
SHARD_NAME = re.compile(r"shard-[0-9]{1,9}\.safetensors")  # a file of the folder: no path leads out of it
MAX_INDEX_VALUES = 10_000_000  # five values an utterance: two million utterances (LibriSpeech 960 h has 281,241)
MAX_INDEX_BYTES = 1 << 30


def build_index(output_dir: Path, shards: Sequence[ShardPlan], header: dict, skipped: list[list[str]]) -> dict:
    """index.json's contents from the finished shards (`read_shard`; every planned shard must exist and hold
    the header's features, which the index and the Arrow dataset read)."""
    utterances, all_skipped = {}, list(skipped)
    for plan in shards:
        shard = read_shard(output_dir / plan.file_name, header["features"])
        if shard is None:
            raise UserError(f"shard {plan.file_name} is missing from {output_dir}; run again with --resume")
        for utterance_id, offset, frames, unit_offset, units in shard.records:
            entry = {"shard": plan.file_name, "offset": offset, "frames": frames}
            if header.get("units"):
                entry.update(units_offset=unit_offset, units=units)
            utterances[utterance_id] = entry
        all_skipped.extend(shard.skipped)
    return {**header, "shards": [plan.file_name for plan in shards], "utterances": utterances, "skipped": all_skipped}


def _is_index(index) -> bool:
    """Whether `index` has the header of an index this tool writes: its format, shard file names of the folder,
    feature names and a mapping of utterances."""
    return (
        isinstance(index, dict)
        and index.get("format") == FEATURES_FORMAT
        and isinstance(index.get("shards"), list)
        and all(isinstance(name, str) and SHARD_NAME.fullmatch(name) for name in index["shards"])
        and isinstance(index.get("features"), list)
        and all(isinstance(name, str) for name in index["features"])
        and isinstance(index.get("utterances"), dict)
    )


class FeatureIndex:
    """Read features written by `extract_features` (safetensors format):

    index = FeatureIndex("feats")
    index.ids                  # utterance ids, in the order they were encoded
    index["1001-101-0000"]     # {"layer_12": (T, D) tensor, ..., "units": (U,) int16 when written}
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        path = self.folder / INDEX_FILE
        self.index = (
            load_json_file(path, str(path), "an index has ~100 bytes an utterance", MAX_INDEX_BYTES, MAX_INDEX_VALUES)
            if path.is_file()
            else None
        )
        problem = self._problem()
        if problem is not None:
            raise UserError(f"{path} {problem}")

    def _problem(self) -> str | None:
        """What makes the folder's index not one this tool wrote for its shards, as the rest of a line
        `.../index.json ...`, or None: it must be there, have an index's header (`_is_index`), and its entries
        must lay out the shards (`_entries_problem`)."""
        if self.index is None:
            return "is missing: not a finished feature folder (run with --resume)"
        if not _is_index(self.index):
            return f"is not an index of this tool (format {FEATURES_FORMAT}, its shards, features and utterances)"
        return self._entries_problem()

    def _entries_problem(self) -> str | None:
        """Every utterance's entry names one of the index's shards, and the entries of each shard lay out its
        tensors as the shard's own records do (`layout_problem`): none points past them or overlaps another,
        so reading an utterance never reads out of bounds. Only the shards' headers are read."""
        index, shards = self.index, self.index["shards"]
        features, utterances = index["features"], index["utterances"]
        with_units = bool(index.get("units"))
        fields = ("offset", "frames", *(("units_offset", "units") if with_units else ()))
        records = {name: [] for name in shards}
        for utterance_id, entry in utterances.items():
            if not (
                isinstance(entry, dict)
                and entry.get("shard") in records
                and all(isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool) for k in fields)
            ):
                return f"holds the entry of utterance {brief(utterance_id)}, which is not one this tool writes"
            records[entry["shard"]].append([utterance_id, *(entry[k] for k in fields), *(() if with_units else (0, 0))])
        for name, shard_records in records.items():
            rows = tensor_rows(self.folder / name)
            if not with_units:
                rows.pop("units", None)
            shard_records.sort(key=lambda record: (record[1], record[3]))
            problem = layout_problem(rows, shard_records, features)
            if problem is not None:
                return f"does not match shard {name} ({problem}); extract the features again"
        return None

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


# ----------------------------------------------------------------------------------------------------
# `--format arrow`: the finished shards as one `datasets` dataset (`save_to_disk`), `datasets.load_from_disk`-able

DATASET_FOLDER = "dataset"
ARROW_CACHE_PREFIX = ".arrow-cache-"


def write_arrow_dataset(output_dir: Path, index: dict) -> Path:
    """The shards as one `datasets` dataset in `output_dir/dataset` (save_to_disk): columns `id`, `frames`,
    one Array2D per feature, `units` (int16 sequences) when written. Returns its folder."""
    dtype = index["dtype"]
    columns = {"id": datasets.Value("string"), "frames": datasets.Value("int32")}
    columns.update({name: datasets.Array2D((None, width), dtype) for name, width in index["widths"].items()})
    if index.get("units"):
        columns["units"] = datasets.Sequence(datasets.Value("int16"))

    def rows():  # the index's entries, shard by shard (as `build_index` made them from the checked shards)
        for shard_name, entries in itertools.groupby(index["utterances"].items(), lambda item: item[1]["shard"]):
            with safe_open(output_dir / shard_name, framework="np") as handle:
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            for utterance_id, entry in entries:
                start, frames = entry["offset"], entry["frames"]
                row = {"id": utterance_id, "frames": frames}
                row.update({name: tensors[name][start : start + frames] for name in index["widths"]})
                if "units" in columns:
                    row["units"] = tensors["units"][entry["units_offset"] : entry["units_offset"] + entry["units"]]
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
