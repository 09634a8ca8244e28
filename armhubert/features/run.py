"""One whole extraction, as `scripts/extract_features.py` starts it (`extract_features`).

Checks everything before anything is written (options, corpus, model, codebook, output folder),
writes `run.json`, fits the units codebook when asked, encodes this process's unfinished shards
(decoding the next batch and writing the last shard while one is encoded), and, in the first
process once all are done, writes the index (or the Arrow dataset) and prints a summary.
"""

import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from configuration_armhubert import SAMPLING_RATE, ARMHubertConfig
from pipeline_armhubert import num_frames

from ..cli import UserError
from ..files.atomic import atomic_write_text
from ..speech.audio import DataError
from ..speech.chunking import check_unchunked_lengths, check_window
from .encoding import (
    CODEBOOK_FILE,
    Chunking,
    Decoded,
    Encoder,
    LayerSelection,
    Streamed,
    check_codebook,
    check_heads,
    chunking_for,
    decode_ahead,
    encode_batch,
    encode_streamed,
    fit_units,
    load_encoder,
    probe_widths,
    selection_for,
    spare_core_for_decoding,
)
from .plan import (
    STORAGE_DTYPES,
    ExtractionArguments,
    Processes,
    ShardPlan,
    check_arguments,
    current_processes,
    plan_batches,
    plan_shards,
)
from .resume import (
    RUN_FILE,
    check_output,
    remove_stale_temporaries,
    run_settings,
    settings_sha256,
    shard_fingerprint,
)
from .sources import Corpus, open_corpus
from .storage import (
    DATASET_FOLDER,
    FEATURES_FORMAT,
    INDEX_FILE,
    ShardWriter,
    build_index,
    read_shard,
    write_arrow_dataset,
)
from .units import Codebook, CodebookFile, load_codebook, open_codebook, save_codebook

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything the encoding loop needs, fixed before it starts (`codebook`: once fitted, with --units)."""

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


def plan_run(
    args: ExtractionArguments,
    corpus: Corpus,
    config: ARMHubertConfig,
    selection: LayerSelection,
    widths: dict[str, int],
    chunking: Chunking | None,
) -> list[ShardPlan]:
    """The whole corpus's shards (every process plans the same), sized by the bytes their frames will take."""
    lengths = corpus.lengths
    batches = plan_batches(
        lengths, corpus.ids, args.max_batch_seconds, chunking.threshold_samples if chunking else None
    )
    frame_bytes = sum(widths[name] for name in selection.saved) * STORAGE_DTYPES[args.dtype].itemsize
    frame_bytes += 2 if selection.units_name else 0  # int16 units
    return plan_shards(
        batches,
        lambda batch: sum(num_frames(config, lengths[row]) for row in batch) * frame_bytes,
        int(args.shard_mb * 1e6),
    )


def _pending_shards(run: Run, shards: Sequence[ShardPlan]) -> list[tuple[ShardPlan, str]]:
    """This process's shards that are not finished yet, with their fingerprints."""
    pending = []
    for plan in run.processes.take(shards):
        fingerprint = shard_fingerprint(run.settings_sha256, run.codebook, run.corpus, plan)
        shard = read_shard(run.output_dir / plan.file_name)
        if shard is None or shard.fingerprint != fingerprint or not shard.is_intact():
            pending.append((plan, fingerprint))
            continue
        # This run's fingerprint and intact tensor bytes, yet other utterances than planned (the header was edited).
        planned = sorted(run.corpus.ids[row] for row in plan.rows)
        listed = sorted([record[0] for record in shard.records] + [item[0] for item in shard.skipped])
        if listed != planned:
            raise UserError(
                f"--resume: shard {shard.path} carries this run's fingerprint but its metadata does not match its "
                f"tensors (it lists {len(listed)} utterances, not the {len(planned)} this run planned for it); it was "
                "altered: delete it, then run again with --resume"
            )
    return pending


def _encode_into(run: Run, writer: ShardWriter, decoded: Decoded) -> tuple[int, float]:
    """Encode one decoded batch into the shard being written; returns (utterances written, audio seconds)."""
    in_memory = [(utterance_id, audio) for utterance_id, audio, _ in decoded if isinstance(audio, np.ndarray)]
    for utterance_id, _, reason in decoded:
        if reason is not None:
            logger.warning("Skipping %s: %s", utterance_id, reason)
            writer.skip(utterance_id, reason)
    waveforms = [samples for _, samples in in_memory]
    outputs = encode_batch(
        run.encoder, run.selection, waveforms, run.chunking, run.codebook, run.args.deduplicate_units
    )
    for (utterance_id, _), features in zip(in_memory, outputs):
        writer.add(utterance_id, features)
    count, samples = len(in_memory), sum(len(waveform) for waveform in waveforms)
    for utterance_id, audio, _ in decoded:
        if isinstance(audio, Streamed) and _encode_streamed_into(run, writer, utterance_id, audio):
            count, samples = count + 1, samples + audio.num_samples
    return count, samples / SAMPLING_RATE


def _encode_streamed_into(run: Run, writer: ShardWriter, utterance_id: str, streamed: Streamed) -> bool:
    """Write a long recording window by window; False (skipped, listed) when a window cannot be read."""
    writer.begin(utterance_id)
    try:
        for features in encode_streamed(
            run.encoder, run.selection, streamed, run.chunking, run.codebook, run.args.deduplicate_units
        ):
            writer.append(features)
    except DataError as error:
        logger.warning("Skipping %s: %s", utterance_id, error)
        writer.discard(utterance_id, str(error))
        return False
    writer.end()
    return True


def encode_shards(run: Run, shards: Sequence[ShardPlan]) -> tuple[int, float]:
    """Encode and write this process's unfinished shards; returns (utterances encoded, audio seconds)."""
    from tqdm.auto import tqdm

    pending = _pending_shards(run, shards)
    work = [(shard, fingerprint, batch) for shard, fingerprint in pending for batch in shard.batches]
    dtype = STORAGE_DTYPES[run.args.dtype]
    total_seconds = sum(run.corpus.seconds(shard.rows) for shard, _ in pending)
    progress = tqdm(
        total=round(total_seconds, 1), unit="audio-s", disable=not run.args.progress or None, desc="encoding"
    )
    field_size = run.encoder.model.config.receptive_field
    widths = {name: run.widths[name] for name in run.selection.saved}
    # Long recordings stream from their files unless the folder's preprocessing normalises a whole utterance.
    stream_samples = run.chunking.threshold_samples if run.chunking else None
    if getattr(run.encoder.extractor, "do_normalize", False):
        stream_samples = None
    writer, count, seconds = None, 0, 0.0
    with torch.inference_mode():
        in_a_thread = spare_core_for_decoding(next(run.encoder.model.parameters()).device)
        batches = decode_ahead(run.corpus, [batch for _, _, batch in work], field_size, stream_samples, in_a_thread)
        for (shard, fingerprint, batch), decoded in zip(work, batches):
            if writer is None:
                writer = ShardWriter(run.output_dir / shard.file_name, widths, dtype, run.codebook is not None)
            batch_count, batch_seconds = _encode_into(run, writer, decoded)
            count, seconds = count + batch_count, seconds + batch_seconds
            progress.update(round(batch_seconds, 1))
            if batch is shard.batches[-1]:
                writer.close(fingerprint)
                writer = None
    progress.close()
    return count, seconds


def _fitted_codebook(run: Run) -> Codebook:
    """The codebook of `--units K`: fitted by the first process (kept on --resume), read by every process."""
    codebook_path = run.output_dir / CODEBOOK_FILE
    if run.processes.is_main and not (run.args.resume and codebook_path.is_file()):
        save_codebook(fit_units(run.args, run.corpus, run.encoder, run.selection, run.chunking), codebook_path)
    run.processes.barrier()
    return load_codebook(codebook_path)


def _index_header(run: Run) -> dict:
    """What index.json says besides the utterances: model, features, dtype, frame rate, units settings."""
    args, selection, config = run.args, run.selection, run.encoder.model.config
    units = None
    if run.codebook is not None:
        units = {
            "layer": selection.units_name,
            "num_units": run.codebook.num_units,
            "deduplicated": args.deduplicate_units,
            "codebook": CODEBOOK_FILE if args.units is not None else str(args.codebook),
        }
    return {
        "format": FEATURES_FORMAT,
        "model": run.encoder.name,
        "representation": selection.representation,
        "features": list(selection.saved),
        "widths": {name: run.widths[name] for name in selection.saved},
        "dtype": args.dtype,
        "samples_per_frame": config.inputs_to_logits_ratio,
        "frame_rate_hz": SAMPLING_RATE / config.inputs_to_logits_ratio,
        "units": units,
    }


def _write_index(run: Run, shards: Sequence[ShardPlan]) -> dict:
    """index.json (or, with --format arrow, the dataset the shards become) from the finished shards."""
    corpus, output_dir = run.corpus, run.output_dir
    index = build_index(output_dir, shards, _index_header(run), [list(item) for item in corpus.skipped])
    if not index["utterances"]:
        raise DataError(f"none of the {len(corpus.rows)} files of {corpus.description} could be read; check the corpus")
    if run.args.format == "arrow":
        write_arrow_dataset(output_dir, index)
        for shard in shards:
            (output_dir / shard.file_name).unlink(missing_ok=True)
    else:
        atomic_write_text(output_dir / INDEX_FILE, json.dumps(index, indent=1))
    return index


def extract_features(args: ExtractionArguments, encoder: Encoder | None = None) -> dict:
    """Encode a corpus into `args.output_dir` (see `armhubert.features`); returns the index (main process).

    `encoder`: a model already loaded (e.g. `Encoder(model, release_feature_extractor(), None, "my-model")`),
    used instead of loading `args.model` / `args.preset`. A run refused after it began writing into a new
    (or empty) folder takes back what it wrote: the folder is left as it was.
    """
    check_arguments(args, encoder_given=encoder is not None)
    processes, device = current_processes(args.device)
    started = time.perf_counter()
    corpus = open_corpus(args.input, args.split, args.input_type, args.audio_column, args.id_column)
    # The codebook's header first: its centroids are read, from the same open file, once they fit the model.
    with open_codebook(args.codebook) if args.codebook else contextlib.nullcontext() as codebook_file:
        encoder, selection, widths, given_codebook = _model_and_units(args, corpus, encoder, device, codebook_file)
    settings = run_settings(args, corpus, encoder)
    output_dir = check_output(args, settings)
    if args.format == "arrow" and (output_dir / DATASET_FOLDER / "state.json").is_file():
        print(f"{output_dir / DATASET_FOLDER} is complete (same settings): nothing to do")
        return {}
    existed = output_dir.is_dir()
    fresh = not existed or not any(output_dir.iterdir())
    try:
        return _write_run(
            Run(args, corpus, encoder, selection, None, given_codebook, widths, output_dir, "", processes),
            settings,
            started,
        )
    except (UserError, OSError):  # OSError: a full disk, a file-size limit
        if fresh and processes.is_main:
            take_back_run(output_dir, remove_folder=not existed)
        raise


def _model_and_units(
    args: ExtractionArguments,
    corpus: Corpus,
    encoder: Encoder | None,
    device: torch.device,
    codebook_file: CodebookFile | None,
) -> tuple[Encoder, LayerSelection, dict[str, int], Codebook | None]:
    """The model (loaded unless given), the features it keeps and their widths, and the given codebook, read
    once its header fits them."""
    if encoder is None:
        encoder = load_encoder(args.model, args.preset, args.layers == "weighted", device, args.seed)
    check_chunking(args, encoder.model.config)
    if args.chunk_length_s == 0:
        check_unchunked_lengths(
            corpus.lengths, corpus.ids.__getitem__, "give --chunk_length_s (e.g. 30) to encode them in windows"
        )
    header = codebook_file.header if codebook_file is not None else None
    selection = selection_for(args, encoder.model.config, header)
    check_heads(encoder, selection)
    widths = probe_widths(encoder, selection)
    if codebook_file is None:
        return encoder, selection, widths, None
    check_codebook(header, selection, widths, args.codebook)
    return encoder, selection, widths, codebook_file.read()


def check_chunking(args: ExtractionArguments, config: ARMHubertConfig) -> None:
    """Refuse a --chunk_length_s window shorter than the model's receptive field (it would hold no frame); 0 never
    chunks."""
    if args.chunk_length_s > 0:
        what = f"--chunk_length_s {args.chunk_length_s}"
        check_window(args.chunk_length_s, config.receptive_field, what, "give a longer window, or 0 to never chunk")


# What a run writes into its output folder (besides the temporaries `remove_stale_temporaries` knows).
RUN_OUTPUT_NAMES = (RUN_FILE, INDEX_FILE, CODEBOOK_FILE)
RUN_OUTPUT_PATTERN = "shard-*.safetensors"


def take_back_run(output_dir: Path, remove_folder: bool) -> None:
    """Remove what a refused run wrote into `output_dir` (only this tool's file names), and the folder itself
    when the run created it and nothing else is in it."""
    if not output_dir.is_dir():
        return
    remove_stale_temporaries(output_dir)
    for path in [*(output_dir / name for name in RUN_OUTPUT_NAMES), *output_dir.glob(RUN_OUTPUT_PATTERN)]:
        if path.is_file() and not path.is_symlink():
            path.unlink()
    if remove_folder and not any(output_dir.iterdir()):
        output_dir.rmdir()


def _write_run(run: Run, settings: dict, started: float) -> dict:
    """Everything after the checks: run.json, the codebook, the shards, the index."""
    args, processes, output_dir = run.args, run.processes, run.output_dir
    processes.barrier()  # every process has checked the output folder before the first writes to it
    if processes.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output_dir)
        atomic_write_text(output_dir / RUN_FILE, json.dumps(settings, indent=1))
    processes.barrier()

    run.chunking = chunking_for(args)
    run.settings_sha256 = settings_sha256(settings)
    shards = plan_run(args, run.corpus, run.encoder.model.config, run.selection, run.widths, run.chunking)
    if args.units is not None:
        run.codebook = _fitted_codebook(run)
    count, seconds = encode_shards(run, shards)
    processes.barrier()
    if not processes.is_main:
        return {}
    index = _write_index(run, shards)
    report_summary(index, count, seconds, time.perf_counter() - started, output_dir)
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
