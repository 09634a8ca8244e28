"""The model that encodes and the features it keeps (`load_encoder`, `LayerSelection`), batches through
it (decoded one ahead, encoded padded, or one long recording streamed in windows), and the units'
codebook fitted on a sample of the corpus (`fit_units`) or given (`check_codebook`).

The model that encodes, and which of its features are kept.

- `load_encoder`: a model folder / Hub id (converted, distilled, fine-tuned) or a random-weight preset,
  with the preprocessing its folder asks for, and a fine-tuned folder's SUPERB weighted layer sum;
- `select_layers`: the options `--layers`, `--representation`, `--units_layer` as a `LayerSelection`:
  feature names `layer_N` (N as the `audio-feature-extraction` pipeline numbers the layers of a
  representation) or `weighted`; `selected_features` picks them from a model output;
- `probe_widths`: each selected feature's width, from one forward pass on silence.

Batches through the model: decoded one ahead, encoded padded, or one long recording streamed in windows.

- `decode_ahead`: the audio of each batch of corpus rows, the next batch decoded in a thread while
  this one is encoded; a recording longer than the chunking window is not decoded but `Streamed`;
- `encode_batch`: one padded batch through the model (padding masks: frames past an utterance's end
  are dropped), or a single decoded utterance longer than the chunking threshold through
  `pipeline_armhubert.encode_chunked`; per-utterance features (T, D) and units;
- `encode_streamed`: a `Streamed` recording window by window from its file (`pipeline_armhubert.encode_windows`
  reading through `armhubert.speech.chunking.file_window_reader`): the kept frames of each window as they come,
  so memory is bounded by the window, not the recording; concatenated, they are `encode_batch`'s
  features of it.

The run's units codebook: fitted on a seeded sample of the corpus (`--units K`), or given (`--codebook`)
and checked against the layer selection. The k-means, saving and assignment are `armhubert.features.units`.
"""

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Wav2Vec2FeatureExtractor

from configuration_armhubert import SAMPLING_RATE, ARMHubertConfig
from modeling_armhubert import (
    ARMHubertForCTC,
    ARMHubertForSequenceClassification,
    ARMHubertModel,
    superb_layer_outputs,
)
from pipeline_armhubert import encode_chunked, encode_windows, release_feature_extractor

from ..cli import UserError, refuse_broken
from ..files.untrusted import brief
from ..files.weights import check_finite_weights
from ..folders.model_folders import ModelFolder, load_folder_part, open_model_folder, refuse_missing
from ..speech.audio import DataError
from ..speech.chunking import file_window_reader
from ..threads import available_cores
from .plan import ExtractionArguments, plan_batches
from .sources import Corpus
from .units import Codebook, assign_units, deduplicate_runs, fit_codebook

# ----------------------------------------------------------------------------------------------------
# The model that encodes, and which of its features are kept

NAN_ADVICE = "its features would be NaN; encode with a model that trained well"
TASK_CLASSES = {cls.__name__: cls for cls in (ARMHubertForCTC, ARMHubertForSequenceClassification)}


@dataclass
class Encoder:
    """The model, the preprocessing its folder asks for, the weighted layer sum of a fine-tuned folder."""

    model: ARMHubertModel
    extractor: Wav2Vec2FeatureExtractor
    layer_sum: torch.nn.Module | None
    name: str
    missing_heads: tuple[int, ...] = ()  # projection heads the folder lacks (0-based): not to be used


def _weighted_task_model(folder: ModelFolder) -> tuple[torch.nn.Module, list[str]]:
    """The fine-tuned task model of `folder`, which must have learned layer weights, and the weights it lacks."""
    architecture = folder.architecture
    if architecture not in TASK_CLASSES or not folder.config.use_weighted_layer_sum:
        raise UserError(
            f"--layers weighted needs a folder fine-tuned with use_weighted_layer_sum=True; {folder.where} is a "
            f"{brief(architecture or 'bare encoder')} without learned layer weights: give layer numbers instead"
        )
    task_model, missing = folder.load_with_missing(TASK_CLASSES[architecture].from_pretrained)
    return task_model, [key.removeprefix("armhubert.") for key in missing]


def _folder_extractor(model: str) -> Wav2Vec2FeatureExtractor:
    """The preprocessing a folder / Hub id asks for; the releases' where it has no preprocessor_config.json."""
    if Path(model).is_dir() and not Path(model, "preprocessor_config.json").is_file():
        return release_feature_extractor()
    try:
        return Wav2Vec2FeatureExtractor.from_pretrained(model)
    except OSError:  # a Hub id without the file
        return release_feature_extractor()


def load_encoder(model: str | None, preset: str | None, weighted: bool, device: torch.device, seed: int = 0) -> Encoder:
    """The encoder in eval mode on `device`: a saved folder / Hub id (through the model folders' door,
    `armhubert.folders.model_folders.open_model_folder`), or a preset with random weights; a model with
    non-finite weights is refused.

    `weighted`: load the fine-tuned task model of the folder for its learned layer weights (a preset has none:
    `check_arguments` refuses --layers weighted with --preset).
    """
    if preset is not None:
        torch.manual_seed(seed)
        encoder = ARMHubertModel(ARMHubertConfig.from_preset(preset))
        return Encoder(encoder.to(device).eval(), release_feature_extractor(), None, preset)
    folder = open_model_folder(model, subfolder_option=None)
    if not isinstance(folder.config, ARMHubertConfig):
        raise UserError(f"{model} is a {type(folder.config).__name__} model; this tool encodes ARMHuBERT-family models")
    layer_sum = None
    if weighted:
        task_model, missing = _weighted_task_model(folder)
        encoder, layer_sum = task_model.armhubert, task_model.layer_sum.to(device).eval()
    else:
        encoder, missing = folder.load_with_missing(ARMHubertModel.from_pretrained)
    # A fine-tuned folder keeps only the last projection head: the others are refused if a feature needs them.
    heads = tuple(sorted({int(key.split(".")[1]) for key in missing if key.startswith("projection_heads.")}))
    refuse_missing([key for key in missing if not key.startswith("projection_heads.")], model, "the encoder")
    check_finite_weights(task_model if weighted else encoder, f"the model {model}", NAN_ADVICE)
    extractor = load_folder_part(_folder_extractor, model, "feature extractor")
    return Encoder(encoder.to(device).eval(), extractor, layer_sum, model, heads)


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


def layer_number(name: str) -> int | None:
    """N of a feature name `layer_N`; None for `weighted` (or any other name)."""
    prefix, _, number = name.partition("_")
    return int(number) if prefix == "layer" and number.isdigit() else None


def available_layers(config: ARMHubertConfig, representation: str) -> tuple[str, list[int]]:
    """(resolved representation, its layer numbers): `superb` is `projected` 1..L with heads, else `layers` 1..L."""
    count = config.num_hidden_layers
    if representation == "superb":
        representation = "projected" if config.has_projection_heads else "layers"
    if representation == "projected" and not config.has_projection_heads:
        raise UserError("--representation projected needs a model with projection heads; this one (STaR) has none")
    start = 0 if representation == "hidden" else 1
    return representation, list(range(start, count + 1))


@dataclass(frozen=True)
class LayerOptions:
    """`--layers` as given and its numbers (None: not a list of numbers), `--units_layer`, whether units are
    computed, and the layers of the representation they choose from: the subject of LAYER_RULES."""

    layers: str
    numbers: list[int] | None
    units_layer: int | None
    units: bool
    available: list[int]

    @property
    def choices(self) -> str:
        return f"{self.available[0]}..{self.available[-1]}"

    @property
    def count(self) -> int:
        return len(self.numbers)


# What `select_layers` refuses (`refuse_broken`, in order: a rule may trust those before it), subject `options`.
LAYER_RULES = (
    (
        lambda options: options.numbers is None,
        "--layers {options.layers!r} is not a list of layer numbers such as 4,8,12 (or last, all, weighted)",
    ),
    (
        lambda options: not options.numbers or not set(options.numbers) <= set(options.available),
        "--layers {options.layers!r}: choose layers from {options.choices} of this representation",
    ),
    (
        lambda options: options.units and options.units_layer not in (None, *options.available),
        "--units_layer '{options.units_layer}': choose layers from {options.choices} of this representation",
    ),
    (
        lambda options: options.units and options.units_layer is None and options.count > 1,
        "--layers {options.layers} gives {options.count} layers; say which one the units use: --units_layer N",
    ),
)


def _layer_numbers(layers: str, available: list[int]) -> list[int] | None:
    """The layer numbers `--layers` names (`last`, `all` or a comma-separated list, each once); None when it is
    not a list of numbers."""
    if layers in ("last", "all"):
        return available[-1:] if layers == "last" else available
    try:
        return list(dict.fromkeys(int(part) for part in layers.split(",") if part.strip()))
    except ValueError:
        return None


def select_layers(
    config: ARMHubertConfig, layers: str, representation: str, units_layer: int | None, units: bool
) -> LayerSelection:
    """The `LayerSelection` of the options `--layers`, `--representation`, `--units_layer` (with `weighted` the
    units are the weighted sum's: `check_arguments` refused --units_layer with it); LAYER_RULES refuse the others.
    The units are computed on `--units_layer`, or the one layer of `--layers`."""
    if layers == "weighted":
        return LayerSelection("weighted", (), ("weighted",), "weighted" if units else None, False)
    resolved, available = available_layers(config, representation)
    numbers = _layer_numbers(layers, available)
    refuse_broken(LAYER_RULES, options=LayerOptions(layers, numbers, units_layer, units, available))
    units_number = (numbers[0] if units_layer is None else units_layer) if units else None
    # `last_hidden_state` is the last head's output with heads, the last layer's in post-LN models without.
    if config.has_projection_heads:
        is_last_hidden_state = resolved == "projected"
    else:
        is_last_hidden_state = not config.do_stable_layer_norm
    last_only = {*numbers, units_number} - {None} == {available[-1]} and is_last_hidden_state
    units_name = None if units_number is None else f"layer_{units_number}"
    return LayerSelection(resolved, tuple(numbers), tuple(f"layer_{n}" for n in numbers), units_name, last_only)


def selection_for(args: ExtractionArguments, config: ARMHubertConfig, codebook: Codebook | None) -> LayerSelection:
    """The layer selection of the options; with --codebook and no --units_layer, the units come from the
    codebook's own layer; with --save_features false, nothing but the units' layer is kept."""
    units_layer = args.units_layer
    if codebook is not None and units_layer is None:
        units_layer = layer_number(codebook.layer)
    with_units = args.units is not None or codebook is not None
    selection = select_layers(config, args.layers, args.representation, units_layer, with_units)
    return selection if args.save_features else dataclasses.replace(selection, saved=())


def check_heads(encoder: Encoder, selection: LayerSelection) -> None:
    """Refuse projected features whose projection head the model folder does not hold (it would be random)."""
    if selection.representation != "projected":
        return
    used = sorted({layer_number(name) for name in selection.names} & {head + 1 for head in encoder.missing_heads})
    if used:
        raise UserError(
            f"{encoder.name} holds no projection head for layer {used[0]} (a fine-tuned folder keeps only the last); "
            "choose --representation hidden, or the last layer"
        )


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
        features = {name: table[layer_number(name) - offset] for name in selection.names}
    return {**features, "frame_attention_mask": output.frame_attention_mask}


def probe_widths(encoder: Encoder, selection: LayerSelection) -> dict[str, int]:
    """Width of every selected feature, from one forward pass on a few frames of silence."""
    config = encoder.model.config
    device = next(encoder.model.parameters()).device
    samples = config.receptive_field + 4 * config.inputs_to_logits_ratio * config.crop_seq_to_multiple
    with torch.inference_mode():
        output = encoder.model(torch.zeros(1, samples, device=device), **selection.forward_kwargs())
        features = selected_features(encoder, selection, output)
    return {name: int(features[name].shape[-1]) for name in selection.names}


# ----------------------------------------------------------------------------------------------------
# Batches through the model: decoded one ahead, encoded padded, or one long recording streamed in windows


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


# ----------------------------------------------------------------------------------------------------
# The run's units codebook: fitted on a seeded sample of the corpus (`--units K`), or given (`--codebook`)

logger = logging.getLogger(__name__)

CODEBOOK_FILE = "codebook.safetensors"


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


def fit_units(
    args: ExtractionArguments, corpus: Corpus, encoder: Encoder, selection: LayerSelection, chunking: Chunking | None
) -> Codebook:
    """Encode the units sample (`--units_sample_hours`) and fit the k-means codebook on its frames."""
    rows = units_sample_rows(corpus, args.units_sample_hours, args.seed)
    lengths, ids = [corpus.lengths[row] for row in rows], [corpus.ids[row] for row in rows]
    batches = [
        [rows[position] for position in batch] for batch in plan_batches(lengths, ids, args.max_batch_seconds, None)
    ]
    frames = []
    with torch.inference_mode():
        for decoded in decode_ahead(corpus, batches, encoder.model.config.receptive_field):
            waveforms = [samples for _, samples, _ in decoded if samples is not None]
            outputs = encode_batch(encoder, selection, waveforms, chunking)
            frames.extend(output[selection.units_name] for output in outputs)
    if not frames:
        raise DataError("none of the files of the units sample is readable; check the corpus")
    features = torch.cat(frames)
    logger.info("Fitting %d units on %d frames of %s", args.units, features.shape[0], selection.units_name)
    centroids = fit_codebook(features, args.units, seed=args.seed)
    return Codebook(centroids, selection.units_name, selection.representation, encoder.name, features.shape[0])


# A given codebook that the units would not come from (`check_codebook`, with `refuse_broken`): its `codebook`
# header against the `selection`, the `width` of the units' feature, its `path`.
CODEBOOK_RULES = (
    (
        lambda codebook, selection, width, path: codebook.dim != width,
        "codebook {path} has {codebook.dim}-wide centroids but {selection.units_name} of this model is {width} "
        "wide; it was fitted on {codebook.layer} of {codebook.model}: use the same model and layer, or fit a new "
        "codebook with --units K",
    ),
    (
        lambda codebook, selection, width, path: (
            codebook.layer != selection.units_name or codebook.representation != selection.representation
        ),
        "codebook {path} was fitted on {codebook.layer} ({codebook.representation}) but the units would come from "
        "{selection.units_name} ({selection.representation}); pass --units_layer / --representation to match it",
    ),
)


def check_codebook(codebook: Codebook, selection: LayerSelection, widths: dict[str, int], path: str) -> None:
    """Refuse a given codebook of another width, layer or representation than the units would come from."""
    width = widths[selection.units_name]
    refuse_broken(CODEBOOK_RULES, codebook=codebook, selection=selection, width=width, path=path)
