"""Shard files: the features of a shard's utterances concatenated along time, one safetensors file each.

A shard holds per feature one (sum of frames, D) tensor and `units` (sum of units,) int16, and in its
metadata (one JSON entry `armhubert`) the format, its fingerprint (see `armhubert.features.resume`),
each utterance's record [id, offset, frames, unit offset, units] and the files it skipped. It is
written to a temporary name and renamed: a killed run loses at most the shard it was writing and
never leaves a broken one.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..outputs import atomic_output_file

FEATURES_FORMAT = "armhubert-features/1"


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
    metadata = {
        "format": FEATURES_FORMAT,
        "fingerprint": fingerprint,
        "utterances": contents.records,
        "skipped": contents.skipped,
    }
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
