"""Batches through the model: decoded one ahead, encoded padded (or one long utterance chunked), cut per utterance.

- `decode_ahead`: the audio of each batch of corpus rows, the next batch decoded in a thread while
  this one is encoded;
- `encode_batch`: one padded batch through the model (padding masks: frames past an utterance's end
  are dropped), or a single utterance longer than the chunking threshold through
  `pipeline_armhubert.encode_chunked`; per-utterance features (T, D) and units.
"""

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from configuration_armhubert import SAMPLING_RATE
from pipeline_armhubert import encode_chunked

from ..units import Codebook, assign_units, deduplicate_runs
from .arguments import ExtractionArguments
from .encoder import Encoder, LayerSelection, selected_features
from .sources import Corpus

Decoded = list[tuple[str, np.ndarray | None, str | None]]  # per row: (id, samples or None, why it was skipped)


@dataclass
class Chunking:
    """Utterances longer than `chunk_length_s` run in windows (`pipeline_armhubert.encode_windows`); None: never."""

    chunk_length_s: float
    stride_length_s: float
    windows_per_batch: int

    @property
    def threshold_samples(self) -> int:
        return int(self.chunk_length_s * SAMPLING_RATE)


def chunking_for(args: ExtractionArguments) -> Chunking | None:
    """The chunking of the options: as many windows a batch as `--max_batch_seconds` holds; None when
    `--chunk_length_s 0`."""
    if args.chunk_length_s <= 0:
        return None
    windows = max(1, int(args.max_batch_seconds // args.chunk_length_s))
    return Chunking(args.chunk_length_s, args.stride_length_s, windows)


def decode_ahead(corpus: Corpus, batches: Sequence[Sequence[int]], min_samples: int) -> Iterator[Decoded]:
    """[(id, samples or None, reason)] for each batch of corpus rows, the next batch decoded while this one
    is used; rows shorter than `min_samples` (the receptive field) are skipped like unreadable ones."""

    def read(batch):
        return [corpus.read(row, min_samples) for row in batch]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        ahead: Future | None = pool.submit(read, batches[0]) if batches else None
        for position in range(len(batches)):
            current = ahead.result()
            ahead = pool.submit(read, batches[position + 1]) if position + 1 < len(batches) else None
            yield current


def encode_batch(
    encoder: Encoder,
    selection: LayerSelection,
    waveforms: Sequence[np.ndarray],
    chunking: Chunking | None = None,
    codebook: Codebook | None = None,
    deduplicate: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Features of each waveform: [{name: (T_i, D) float32 on the CPU for every name of the selection, and
    `units` (U_i,) int16 with a codebook}]; [] for no waveforms.

    One padded batch (attention mask: frames past an utterance's end are dropped), or, for a single
    utterance longer than the chunking threshold, its chunked encoding. Call under `torch.inference_mode()`.
    """
    if not waveforms:
        return []
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
        model_output = model(input_values, attention_mask=attention_mask, **selection.forward_kwargs())
        output = selected_features(encoder, selection, model_output)
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
