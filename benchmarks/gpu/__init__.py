"""The prepared GPU check behind `benchmarks/gpu_check.py`: correctness, inference, distillation, profile, features.

GPU time is scarce, so one run has to tell everything. Each section is a function that returns rows
(flat dicts of JSON values) at a `Scale`: `FULL` (the released shapes on one GPU, <= 8 minutes on an
H200), `QUICK` (the headline cases only) or `DRY_RUN` (toy shapes on a CPU, so that the check runs in
the tests and cannot rot). The model is driven only through public entry points: presets and config
fields (`attn_implementation`, `reuse_softmax`, `reuse_recompute_backward`), `activation_checkpointing_enable`,
the distillation recipes in conf/ through `armhubert.distill` and a random HuBERT Base teacher.

- `scales`: `Scale`, `FULL` / `QUICK` / `DRY_RUN`, the dry run's toy shapes, `student_config`;
- `rows`: what the sections share (`row`, `guarded`: a failure is a row, `padded_batch`, `relative_error`);
- `correctness`: reuse paths against a float64 reference, gradients, activation checkpointing, CPU vs device;
- `inference`: latency, throughput and memory per model / batch / precision / attention, `throughput_ratio`;
- `distillation`: one step of each recipe (throughput, MFU, teacher share, largest batch), `bounded_search`;
- `ddp`: the DDP smoke step (`ddp_smoke`);
- `profile`: a recipe step's top operators;
- `features`: the bundled corpus through `extract_features` against a naive one-file loop;
- `report`: `run_check` (every section into one report with its summary) and `format_table`.
"""
