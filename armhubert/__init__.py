"""ARMHuBERT toolkit: everything beside the model's five remote-code files.

Imports flow one way: `configuration_armhubert` / `attention_armhubert` / `ops_armhubert` / `modeling_armhubert` /
`pipeline_armhubert` (the Hub repo's remote code, self-contained) <- this package <- the root CLIs
(`distill_trainer.py`, `convert_checkpoint.py`) and `scripts/`. Measurement (benchmarks, the GPU check)
lives outside the package, in the repository's `benchmarks/`.

- `armhubert.cli`: the user-error type, the runner that turns it into one line and exit status 2, the
  argument parser every command uses, optional extras;
- `armhubert.progress`, `armhubert.threads`: progress on a terminal; the thread count chosen for the machine;
- `armhubert.resources`: the bundled recipes and corpus (package data in a wheel, the root in a checkout);
- `armhubert.files`: writing outputs atomically and where they may go (`atomic`), reading untrusted files
  and structure within bounds (`untrusted`);
- `armhubert.speech`: audio files (`audio`), long recordings window by window (`chunking`), LibriSpeech
  (`librispeech`), labelled audio (`labelled_audio`), `datasets` folders (`saved_datasets`), the bundled
  real-speech split (`real_speech`);
- `armhubert.folders`: model folders (`model_folders`: what one is, the checked loader), the remote-code
  entries they carry (`remote_code`) and model cards (`cards`);
- `armhubert.training`: what every Trainer-based command shares (`guarded_trainer`), fine-tuning set-up
  (`finetune`), metrics (`metrics`), loss curves (`curves`);
- `armhubert.distill`: masking / STaR distillation (masks, losses, recipes, models, trainer, resume, run);
- `armhubert.teachers`: any Transformers speech encoder as teacher, Whisper from CTranslate2, mirrored students;
- `armhubert.convert`: original-release checkpoints -> Transformers folders, cards, Hub upload;
- `armhubert.features`: features and units of a whole corpus on disk (see its docstring);
- `armhubert.deploy`: ONNX export and ONNX Runtime sessions (`graph`), int8 / fp16 (`quantize`), per-layer
  fidelity (`fidelity`), `optimize_for_cpu` (`cpu`), callables timed taking turns (`timing`).

Submodules are imported on demand (`import armhubert` itself loads nothing heavy).
"""

__version__ = "0.1.0"
