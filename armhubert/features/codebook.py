"""The run's units codebook: fitted on a seeded sample of the corpus (`--units K`), or given (`--codebook`)
and checked against the layer selection. The k-means, saving and assignment are `armhubert.features.units`."""

import logging

import numpy as np
import torch

from configuration_armhubert import SAMPLING_RATE

from ..cli import UserError
from ..speech.audio import DataError
from .arguments import ExtractionArguments
from .batches import Chunking, decode_ahead, encode_batch
from .encoder import Encoder, LayerSelection
from .plan import plan_batches
from .sources import Corpus
from .units import Codebook, fit_codebook

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


def check_codebook(codebook: Codebook, selection: LayerSelection, widths: dict[str, int], path: str) -> None:
    """Refuse a given codebook of another width, layer or representation than the units would come from."""
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
