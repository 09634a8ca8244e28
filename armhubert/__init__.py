"""ARMHuBERT toolkit: everything beside the model's four remote-code files.

Imports flow one way: `configuration_armhubert` / `attention_armhubert` / `modeling_armhubert` / `pipeline_armhubert` (the Hub repo's remote code,
self-contained) <- this package <- the root CLIs (`distill_trainer.py`, `convert_checkpoint.py`) and
`scripts/`. One concern per module:

- `armhubert.cli`: the user-error type and the runner that turns it into one line and exit status 2;
- `armhubert.outputs`: atomic file and folder writing, output placement and `--overwrite` rules;
- `armhubert.untrusted`: bounds for untrusted structure, safe names in generated text, finite weights;
- `armhubert.audio`: reading / resampling audio (`read_audio`, `load_16k`) and `DataError`;
- `armhubert.librispeech`: LibriSpeech loading (local tree or Hub), batching, length-grouped sampling;
- `armhubert.chunking`: long recordings read from their file window by window (the windows and their
  stitching are `pipeline_armhubert`'s `encode_windows` / `encode_chunked`);
- `armhubert.features`: features of a whole corpus on disk (`sources`, `encoder`, `plan`, `batches`, `shards`,
  `index`, `arrow`, `codebook`, `processes`, `resume`, `run`: see its docstring);
- `armhubert.units`: k-means codebooks over one layer's features, unit assignment and deduplication;
- `armhubert.guarded_trainer`: what every Trainer-based command shares (value ranges, loss guard, final save);
- `armhubert.distill`: masking / STaR distillation (masks, losses, recipes, models, trainer, timing);
- `armhubert.finetune`: CTC / classification fine-tuning set-up;
- `armhubert.convert`: original-release checkpoints -> Transformers folders, cards, Hub upload;
- `armhubert.cards`: what every model card shares (front matter, escaping of user-supplied text) and the
  cards of trained models (fine-tuned heads, distilled students);
- `armhubert.model_folders`: what a model folder is, and the multi-model root check (names its subfolders);
- `armhubert.resources`: the bundled recipes and corpus (package data in a wheel, the root in a checkout);
- `armhubert.profiling`: the benchmarks' instruments (MACs, peak memory, fixed cost, timing, device name);
- `armhubert.gpu_check`: the prepared GPU check, a module per section (`scales`, `rows`, `correctness`,
  `inference`, `distillation`, `ddp`, `profile`) and `report` (the whole run and its table);
- `armhubert.deploy`: ONNX export (fp32 / int8 / fp16, optional attention mask) and ONNX Runtime
  sessions (`graph`), int8 / fp16 (`quantize`), per-layer fidelity to fp32 and bf16 copies (`fidelity`),
  `optimize_for_cpu` (`cpu`).

Submodules are imported on demand (`import armhubert` itself loads nothing heavy).
"""

__version__ = "0.1.0"
