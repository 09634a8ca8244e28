"""`index.json`: which shard holds each utterance, built from the finished shards; `FeatureIndex` reads it back.

The index is written last: its presence marks a complete output. Besides the header (model,
representation, feature names and widths, dtype, frame rate, units settings) it maps each
utterance id to its `shard`, `offset` and `frames` (and `units_offset`, `units`), and lists the
`skipped` files with the reason.
"""

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from ..cli import UserError
from ..files.untrusted import brief, load_json_file
from .plan import ShardPlan
from .shards import FEATURES_FORMAT, layout_problem, shard_metadata, tensor_rows

INDEX_FILE = "index.json"
SHARD_NAME = re.compile(r"shard-[0-9]{1,9}\.safetensors")  # a file of the folder: no path leads out of it
MAX_INDEX_VALUES = 10_000_000  # five values an utterance: two million utterances (LibriSpeech 960 h has 281,241)
MAX_INDEX_BYTES = 1 << 30


def build_index(output_dir: Path, shards: Sequence[ShardPlan], header: dict, skipped: list[list[str]]) -> dict:
    """index.json's contents from the finished shards' metadata (every planned shard must exist)."""
    utterances, all_skipped = {}, list(skipped)
    for shard in shards:
        metadata = shard_metadata(output_dir / shard.file_name)
        if metadata is None:
            raise UserError(f"shard {shard.file_name} is missing from {output_dir}; run again with --resume")
        problem = layout_problem(tensor_rows(output_dir / shard.file_name), metadata["utterances"], header["features"])
        if problem is not None:
            raise UserError(f"shard {output_dir / shard.file_name} does not match its metadata ({problem}); delete it")
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
        self.index = load_json_file(
            path, str(path), "an index has ~100 bytes an utterance", MAX_INDEX_BYTES, MAX_INDEX_VALUES
        )
        if not isinstance(self.index, dict) or self.index.get("format") != FEATURES_FORMAT:
            raise UserError(f"{path} is not an index of this tool (format {FEATURES_FORMAT})")
        self._check_entries(path)

    def _check_entries(self, path: Path) -> None:
        """Every utterance's entry names one of the index's shards, and the entries of each shard lay out its
        tensors as the shard's own records do (`layout_problem`): none points past them or overlaps another,
        so reading an utterance never reads out of bounds. Only the shards' headers are read."""
        index, shards = self.index, self.index.get("shards")
        features, utterances = index.get("features"), index.get("utterances")
        with_units = bool(index.get("units"))
        if not (
            isinstance(shards, list)
            and all(isinstance(name, str) and SHARD_NAME.fullmatch(name) for name in shards)
            and isinstance(features, list)
            and all(isinstance(name, str) for name in features)
            and isinstance(utterances, dict)
        ):
            raise UserError(f"{path} is not an index of this tool (its shards, features or utterances)")
        fields = ("offset", "frames", *(("units_offset", "units") if with_units else ()))
        records = {name: [] for name in shards}
        for utterance_id, entry in utterances.items():
            if not (
                isinstance(entry, dict)
                and entry.get("shard") in records
                and all(isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool) for k in fields)
            ):
                raise UserError(f"{path}: the entry of utterance {brief(utterance_id)} is not one this tool writes")
            records[entry["shard"]].append([utterance_id, *(entry[k] for k in fields), *(() if with_units else (0, 0))])
        for name, shard_records in records.items():
            rows = tensor_rows(self.folder / name)
            if not with_units:
                rows.pop("units", None)
            shard_records.sort(key=lambda record: (record[1], record[3]))
            problem = layout_problem(rows, shard_records, features)
            if problem is not None:
                raise UserError(f"{path} does not match shard {name} ({problem}); extract the features again")

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
