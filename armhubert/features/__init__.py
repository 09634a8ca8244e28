"""Features of a whole corpus on disk: sources, length-grouped batches, shards with an index, resume, units.

What `scripts/extract_features.py` runs (`run.extract_features`), in steps that can be used alone:

- `arguments`: `ExtractionArguments` (the command's options) and `check_arguments`;
- `sources`: `open_corpus`: a folder of audio files (any format soundfile reads, sub-folders too), a
  LibriSpeech-layout split (`armhubert.speech.librispeech`), or a `datasets` dataset (a `save_to_disk`
  folder or a Hub id, with an audio column) -> a `Corpus` of (id, undecoded audio, length) rows;
  files whose header cannot be read are skipped and listed;
- `encoder`: `load_encoder` + `select_layers`: the model and the features it yields (`LayerSelection`:
  layer numbers of a representation, as the feature pipeline numbers them, or a fine-tuned folder's
  SUPERB weighted sum);
- `plan`: `plan_batches` / `plan_shards`: utterances sorted by length (longest first) into batches of
  at most `max_batch_seconds` of padded audio, batches into shards of about `shard_mb`; the plan
  depends on the corpus and the settings only, so a resumed run, or another process, finds the same shards;
- `batches`: `encode_batch`: one padded batch through the model (inference mode, padding masks), or one
  decoded long utterance through `pipeline_armhubert.encode_chunked`; `encode_streamed`: a recording
  longer than the window read from its file window by window; per-utterance features (T, D) and units;
  `decode_ahead` decodes the next batch while one is encoded (in turn when torch takes every core);
- `shards`: `ShardWriter`: each shard one safetensors file (per feature one (sum of frames, D) tensor,
  `units` (sum of units,) int16), its frames written as they come, then written to a temporary name and
  renamed: a killed run loses at most the shard it was writing and never leaves a broken one;
- `index`: `build_index`: `index.json` (utterance id -> shard, offset, frames) comes last and marks a
  complete output; `FeatureIndex` reads it back;
- `arrow`: `write_arrow_dataset`: the same as a `datasets` dataset (`save_to_disk`), for `--format arrow`;
- `codebook`: the units' k-means codebook fitted on a sample of the corpus (`fit_units`), or a given one
  checked against the layer selection (`check_codebook`); the k-means itself is `units` (codebook, assignment, deduplicated runs);
- `processes`: processes started by `accelerate launch` (or torchrun) take every N-th shard (`Processes`);
- `resume`: what an output depends on (`run_settings`, `shard_fingerprint`) and the output folder's
  checks: a shard is skipped on `--resume` when its file exists with the same fingerprint (settings,
  model weights, codebook and the shard's utterances) and its bytes the sha256 it carries (`run.json`
  read bounded);
- `run`: the whole run; the first process writes the index when all are done; a run refused after it
  began writing into a new folder takes back what it wrote;

Imports flow one way: `arguments`, `sources`, `plan` and `shards` import no sibling; `encoder` <- `arguments`;
`batches` <- `encoder`, `sources`; `index`, `arrow` <- `shards`; `codebook` <- `batches`, `plan`;
`processes` <- `plan`; `resume` <- `encoder`, `index`, `sources`; `run` uses them all.

    from armhubert.features.index import FeatureIndex
    FeatureIndex("feats")["1001-201-0000"]["layer_12"]   # (T, D) tensor
"""
