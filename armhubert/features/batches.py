"""Batches through the model: decoded one ahead, encoded padded, or one long recording streamed in windows.

- `decode_ahead`: the audio of each batch of corpus rows, the next batch decoded in a thread while
  this one is encoded; a recording longer than the chunking window is not decoded but `Streamed`;
- `encode_batch`: one padded batch through the model (padding masks: frames past an utterance's end
  are dropped), or a single decoded utterance longer than the chunking threshold through
  `pipeline_armhubert.encode_chunked`; per-utterance features (T, D) and units;
- `encode_streamed`: a `Streamed` recording window by window from its file (`pipeline_armhubert.encode_windows`
  reading through `armhubert.speech.chunking.file_window_reader`): the kept frames of each window as they come,
  so memory is bounded by the window, not the recording; concatenated, they are `encode_batch`'s
  features of it.
"""

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from configuration_armhubert import SAMPLING_RATE
from pipeline_armhubert import encode_chunked, encode_windows

from ..speech.chunking import file_window_reader
from ..threads import available_cores
from .arguments import ExtractionArguments
from .encoder import Encoder, LayerSelection, selected_features
from .sources import Corpus
from .units import Codebook, assign_units, deduplicate_runs


@dataclass(frozen=True)
class Streamed:
    """A recording longer than the chunking window: read from its file window by window as it is encoded."""

    audio: dict  # undecoded: {"path", "bytes"}
    num_samples: int  # at 16 kHz, from its header


Decoded = list[tuple[str, np.ndarray | Streamed | None, str | None]]  # per row: (id, audio or None, why skipped)


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


def spare_core_for_decoding(device: torch.device) -> bool:
    """Whether decoding in a thread beside the model gains time: on a GPU, or when torch leaves a CPU core idle.

    When torch's threads already take every core, a decoding thread only preempts them (and threads
    that wait for each other at every operator lose far more than the decoding takes), so the next
    batch is decoded in turn instead.
    """
    return device.type != "cpu" or torch.get_num_threads() < available_cores()


def decode_ahead(
    corpus: Corpus,
    batches: Sequence[Sequence[int]],
    min_samples: int,
    stream_samples: int | None = None,
    in_a_thread: bool = True,
) -> Iterator[Decoded]:
    """[(id, samples, None) or (id, None, reason)] for each batch of corpus rows; rows shorter than
    `min_samples` (the receptive field) are skipped like unreadable ones, rows longer than `stream_samples`
    are not decoded: (id, `Streamed`, None). `in_a_thread`: the next batch is decoded in a thread while this
    one is used (see `spare_core_for_decoding`); else each batch when it is asked for."""

    def read(batch):
        return [
            (corpus.ids[row], Streamed(corpus.audio(row), corpus.lengths[row]), None)
            if stream_samples is not None and corpus.lengths[row] > stream_samples
            else corpus.read(row, min_samples)
            for row in batch
        ]

    if not in_a_thread:
        yield from map(read, batches)
        return
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
    if len({len(waveform) for waveform in waveforms}) == 1:
        attention_mask = None  # no padding: the model's unmasked path (a mask of ones costs time and changes nothing)
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
    host = {name: output[name].float().cpu() for name in selection.names}  # one transfer per feature, not per row
    results = []
    for row, count in enumerate(frames):
        features = {name: host[name][row, :count] for name in selection.names}
        if codebook is not None:
            features["units"] = units_of(features[selection.units_name], codebook, deduplicate)
        results.append(features)
    return results


def encode_streamed(
    encoder: Encoder,
    selection: LayerSelection,
    streamed: Streamed,
    chunking: Chunking,
    codebook: Codebook | None = None,
    deduplicate: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """A long recording's features window by window, read from its file: {name: (F, D) float32 kept frames,
    `units` (U,) int16 with a codebook}, in frame order (runs of equal units collapsed across windows too).

    Raises `armhubert.speech.audio.DataError` when a window cannot be read. Call under `torch.inference_mode()`.
    """
    parts = encode_windows(
        encoder.model,
        file_window_reader(streamed.audio, next(encoder.model.parameters()).device),
        streamed.num_samples,
        chunking.chunk_length_s,
        chunking.stride_length_s,
        chunking.windows_per_batch,
        transform=lambda window: selected_features(encoder, selection, window),
        **selection.forward_kwargs(),
    )
    last_unit = None
    for _, part in parts:
        features = {name: part[name][0].float().cpu() for name in selection.names}
        if codebook is not None:
            units = units_of(features[selection.units_name], codebook, deduplicate)
            if deduplicate and len(units) and last_unit is not None and units[0] == last_unit:
                units = units[1:]  # the run began in the window before
            last_unit = units[-1] if len(units) else last_unit
            features["units"] = units
        yield features


def units_of(features: torch.Tensor, codebook: Codebook, deduplicate: bool) -> torch.Tensor:
    """(T, D) features -> (T,) int16 units of `codebook` (runs of equal units collapsed with `deduplicate`)."""
    units = assign_units(features, codebook.centroids)
    return deduplicate_runs(units) if deduplicate else units
