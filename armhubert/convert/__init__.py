"""Original-release checkpoints -> Transformers folders, model cards and Hub repositories.

The command is `convert_checkpoint.py` (`armhubert-convert` once installed); its work is split by concern:

- `original`: the original checkpoint, read safely (weights only; refused unknown pickled classes), its
  training config (parsed without `eval`), key mapping and the converted `ARMHubertModel` (`convert`);
- `releases`: the released models, their published (paper) results, and which release a checkpoint is;
- `hubert_export`: `--format hubert`, a plain `transformers` `HubertModel` of a model without map reuse;
- `cards`: the model cards of each variant and of a multi-variant repository;
- `folders`: writing converted folders and repositories atomically (`convert_checkpoint`, `convert_folder`);
- `publish`: uploading a finished output to the Hub (`push_to_hub`, `PublishError`).

Imports flow one way: `original` <- `releases` <- `cards`, `original` <- `hubert_export`, and
`folders` uses them all; `publish` stands alone. `convert_checkpoint.py` is the command only.
"""
