"""Masking / STaR distillation of ARMHuBERT-family students from HuBERT-class teachers.

- `masks`: the release's span-mask sampler (`sample_span_mask`, `SpanMasker`, a recipe's `recipe_masker`);
- `losses`: masking distillation, regression and STaR losses;
- `recipe`: `DistillArguments`, Trainer defaults, recipe YAML loading and validation;
- `models`: the frozen teacher, the random student, layer pairing, frame-rate check (`teacher_and_student`);
- `trainer`: `DistillTrainer`, checkpoint rotation and resuming;
- `run`: one whole run (`distill`), as `distill_trainer.py` starts it;
- `timing`: a data-less trainer driven by hand on synthetic batches (the step benchmark, the GPU check).

The data side (LibriSpeech, batching, sampling) is `armhubert.speech.librispeech`.
"""
