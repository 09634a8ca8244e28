"""How big one run of the GPU check is (`Scale`: `FULL`, `QUICK`, `DRY_RUN`) and the dry run's toy shapes."""

import dataclasses
from typing import Any

from configuration_armhubert import PRESETS, ARMHubertConfig

# The dry run's toy shapes (as conf/quickstart.yaml): HuBERT Base's layout (transformers' HubertConfig
# defaults) shrunk for the teacher, a narrower student with the same layer count.
_TINY_LAYERS = dict(
    num_hidden_layers=4, num_attention_heads=4, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4
)
TINY_TEACHER = dict(_TINY_LAYERS, hidden_size=64, intermediate_size=128, conv_dim=[16] * 7)
TINY_STUDENT = dict(_TINY_LAYERS, hidden_size=48, intermediate_size=96, conv_dim=[16] * 6 + [48] * 3)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one run of the check."""

    name: str
    tiny: bool  # toy student / teacher shapes instead of the released ones
    correctness_seconds: float  # long enough that the fused path runs (on a CPU: above config.explicit_map_elements)
    dtypes: tuple[str, ...]
    inference_models: tuple[str, ...]
    inference_batches: tuple[int, ...]
    inference_seconds: float
    compile_backend: str | None  # None: no torch.compile rows
    compile_models: tuple[str, ...]
    flex_half_weights: bool  # FlexAttention correctness rows with half weights too (eager flex is slow on a CPU)
    repeats: int
    recipes: tuple[str, ...]
    distill_precisions: tuple[str, ...]
    distill_batch: int | None  # None: each recipe's per-GPU batch
    distill_seconds: float  # mean utterance length of a length-grouped batch (LibriSpeech: 12.3 s)
    distill_steps: int
    probe_seconds: float  # utterance length of the largest-batch search
    probe_limit: int  # the search stops there (reported as ">=")
    profile_steps: int
    feature_splits: str  # bundled corpus splits that the features rows encode


INFERENCE_MODELS = ("armhubert-960h", "maskhubert-960h", "starhubert", "hubert-base")
RECIPES = ("armhubert-960h", "maskhubert-960h", "starhubert-960h")
FULL = Scale(
    name="full",
    tiny=False,
    correctness_seconds=10.0,
    dtypes=("fp32", "bf16", "fp16"),
    inference_models=INFERENCE_MODELS,
    inference_batches=(1, 32),
    inference_seconds=10.0,
    compile_backend="inductor",
    compile_models=("armhubert-960h", "hubert-base"),
    flex_half_weights=True,
    repeats=5,
    recipes=RECIPES,
    distill_precisions=("bf16", "fp16"),
    distill_batch=None,
    distill_seconds=12.3,
    distill_steps=8,
    probe_seconds=15.0,
    probe_limit=256,
    profile_steps=3,
    feature_splits="train-clean-100,dev-clean",
)
QUICK = dataclasses.replace(
    FULL,
    name="quick",
    dtypes=("fp32", "bf16"),
    inference_models=("armhubert-960h", "hubert-base"),
    inference_batches=(32,),
    compile_backend=None,
    repeats=3,
    recipes=("armhubert-960h",),
    distill_precisions=("bf16",),
    distill_steps=5,
    probe_limit=96,
    profile_steps=2,
)
# fp16 stays off the CPU: TrainingArguments refuse fp16 there, and half-precision CPU kernels tell nothing.
DRY_RUN = Scale(
    name="dry-run",
    tiny=True,
    correctness_seconds=4.0,
    dtypes=("fp32", "bf16"),
    inference_models=INFERENCE_MODELS,
    inference_batches=(2,),
    inference_seconds=1.0,
    compile_backend="eager",  # dynamo traces the model; no C++ compiler needed
    compile_models=("armhubert-960h",),
    flex_half_weights=False,
    repeats=1,
    recipes=RECIPES,
    distill_precisions=("bf16",),
    distill_batch=2,
    distill_seconds=1.0,
    distill_steps=1,
    probe_seconds=1.0,
    probe_limit=4,
    profile_steps=1,
    feature_splits="dev-clean",
)


def tiny_student_fields(preset: str) -> dict[str, Any]:
    """The dry run's toy student shape for `preset`, its reuse pattern kept (cut to the toy's layers)."""
    pattern = PRESETS[preset]["layer_reuses_attention_map"][: TINY_STUDENT["num_hidden_layers"]]
    return {**TINY_STUDENT, "layer_reuses_attention_map": pattern}


def student_config(preset: str, tiny: bool, **overrides: Any) -> ARMHubertConfig:
    """A preset's config; `tiny` keeps its layout (reuse pattern, heads) at the dry run's toy shape."""
    if tiny:
        heads = TINY_TEACHER["hidden_size"] if PRESETS[preset]["projection_head_size"] else None  # teacher-wide
        overrides = {**tiny_student_fields(preset), "projection_head_size": heads, **overrides}
    return ARMHubertConfig.from_preset(preset, **overrides)
