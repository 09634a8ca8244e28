"""The plan of a run: utterances sorted by length into padded batches, batches into shards.

The plan depends on the corpus and the settings only (lengths from the headers, ties broken by id),
so a resumed run, or another process, finds the same shards.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from configuration_armhubert import SAMPLING_RATE


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
