"""`index.json`: which shard holds each utterance, built from the finished shards; `FeatureIndex` reads it back.

The index is written last: its presence marks a complete output. Besides the header (model,
representation, feature names and widths, dtype, frame rate, units settings) it maps each
utterance id to its `shard`, `offset` and `frames` (and `units_offset`, `units`), and lists the
`skipped` files with the reason.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from ..cli import UserError
from ..files.untrusted import load_json_file
from .plan import ShardPlan
from .shards import FEATURES_FORMAT, shard_metadata

INDEX_FILE = "index.json"
MAX_INDEX_VALUES = 10_000_000  # five values an utterance: two million utterances (LibriSpeech 960 h has 281,241)
MAX_INDEX_BYTES = 1 << 30


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
        self.index = load_json_file(
            path, str(path), "an index has ~100 bytes an utterance", MAX_INDEX_BYTES, MAX_INDEX_VALUES
        )
        if not isinstance(self.index, dict) or self.index.get("format") != FEATURES_FORMAT:
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
