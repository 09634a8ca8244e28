"""Features of a whole corpus on disk: sources, length-grouped batches, shards with an index, resume, units.

What `armhubert-extract-features` (`scripts/extract_features.py`) runs (`run.extract_features`), in steps
that can be used alone:

- `units`: discrete units: a k-means codebook over one layer's features, nearest-centroid assignment,
  deduplicated runs, codebook files;
- `plan`: the command's options (`ExtractionArguments`, `check_arguments`); utterances sorted by length
  (longest first) into batches of at most `max_batch_seconds` of padded audio, batches into shards of about
  `shard_mb` (`plan_batches`, `plan_shards`: the plan depends on the corpus and the settings only, so a
  resumed run, or another process, finds the same shards); processes started by `accelerate launch` (or
  torchrun) take every N-th shard (`Processes`);
- `sources`: `open_corpus`: a folder of audio files (any format soundfile reads, sub-folders too), a
  LibriSpeech-layout split, or a `datasets` dataset (a `save_to_disk` folder or a Hub id, with an audio
  column) -> a `Corpus` of (id, undecoded audio, length) rows; unreadable files are skipped and listed;
- `encoding`: the model and the features it keeps (`load_encoder`, `select_layers` -> `LayerSelection`);
  batches through it (`decode_ahead`, `encode_batch`, `encode_streamed` for a recording longer than the
  window, read from its file window by window); the run's codebook (`fit_units`, `check_codebook`);
- `storage`: `ShardWriter` (each shard one safetensors file, its frames written as they come, renamed into
  place: a killed run never leaves a broken one), `build_index` / `FeatureIndex` (`index.json` comes last
  and marks a complete output), `write_arrow_dataset` (`--format arrow`);
- `resume`: what an output depends on (`run_settings`, `shard_fingerprint`) and the output folder's checks:
  a shard is kept on `--resume` when its fingerprint, its records and the sha256 of its bytes hold;
- `run`: the whole run; the first process writes the index when all are done; a run refused after it
  began writing into a new folder takes back what it wrote.

Imports flow one way: `units` <- `plan` <- `encoding` (also <- `sources`); `storage` <- `plan`;
`resume` <- `encoding`, `storage`, `sources`; `run` uses them all.

    from armhubert.features.storage import FeatureIndex
    FeatureIndex("feats")["1001-201-0000"]["layer_12"]   # (T, D) tensor
"""
