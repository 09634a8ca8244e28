"""Masking / STaR distillation of ARMHuBERT-family students from HuBERT-class teachers.

- `masks`: the release's span-mask sampler (`sample_span_mask`, `SpanMasker`, a recipe's `recipe_masker`);
- `losses`: masking distillation, regression and STaR losses;
- `recipe`: `DistillTrainingArguments` (every option of a run, `TrainingArguments` included, with the release's
  defaults), read by one `HfArgumentParser` from a recipe YAML and the command line (`parse_command_line`);
- `models`: the frozen teacher, the random student, layer pairing, frame-rate check (`teacher_and_student`);
- `trainer`: `DistillTrainer` and its callbacks (checkpoint rotation: `armhubert.training.checkpoints`);
- `resume`: the checkpoint `--resume` names, checked against the run before the Trainer reads it;
- `run`: one whole run (`distill_command_line`, as `distill_trainer.py` starts it, or `distill`).

The data side (LibriSpeech, batching, sampling) is `armhubert.speech.librispeech`.
"""
