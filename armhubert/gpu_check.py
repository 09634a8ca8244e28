"""The prepared GPU check behind `scripts/gpu_check.py`: correctness, inference, distillation, profile.

GPU time is scarce, so one run has to tell everything. Each section is a function that returns rows
(flat dicts of JSON values) at a `Scale`: `FULL` (the released shapes on one GPU, <= 8 minutes on an
H200), `QUICK` (the headline cases only) or `DRY_RUN` (toy shapes on a CPU, so that the check runs in
the tests and cannot rot). The model is driven only through public entry points: presets and config
fields (`attn_implementation`, `reuse_softmax`, `reuse_recompute_backward`), `activation_checkpointing_enable`,
the distillation recipes in conf/ through `armhubert.distill` and a random HuBERT Base teacher.
"""

import dataclasses
import datetime
import gc
import math
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import HubertConfig, HubertModel

from configuration_armhubert import PRESETS, SAMPLING_RATE, ARMHubertConfig
from modeling_armhubert import ARMHubertModel, release_feature_extractor

from .profiling import count_macs, measure_peak_memory, time_forward

BUNDLED_RECIPES = Path(__file__).resolve().parent.parent / "conf"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Relative L2 error allowed against the float64 explicit reference, by compute precision.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
# Dense bf16 / fp16 tensor-core peak of one GPU in TFLOP/s, by a part of its name (for MFU).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "V100": 125.0}
NO_DROPOUT = dict(
    hidden_dropout=0.0,
    activation_dropout=0.0,
    attention_dropout=0.0,
    reuse_attention_dropout=0.0,
    feat_proj_dropout=0.0,
    layerdrop=0.0,
)
# HuBERT Base's shape (transformers' HubertConfig defaults) shrunk for the dry run (as conf/quickstart.yaml).
TINY_TEACHER = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    conv_dim=[16] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)
TINY_STUDENT = dict(
    hidden_size=48,
    intermediate_size=96,
    num_attention_heads=4,
    num_hidden_layers=4,
    conv_dim=[16] * 6 + [48] * 3,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one run of the check."""

    name: str
    tiny: bool  # toy student / teacher shapes instead of the released ones
    correctness_seconds: float  # long enough that the fused path runs (on a CPU: above EXPLICIT_MAP_ELEMENTS)
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
)


# ---------------------------------------------------------------------------------------------- helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def median_seconds(function: Callable[[], Any], steps: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall-clock seconds of `function()` over `steps` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64 (inf when value is not finite)."""
    value, reference = value.double().cpu(), reference.double().cpu()
    if not torch.isfinite(value).all():
        return math.inf
    return float((value - reference).norm() / reference.norm().clamp(min=1e-30))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The GPU's dense half-precision peak (TFLOP/s) for MFU; None on a CPU or an unknown GPU."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for part, tflops in PEAK_TFLOPS.items() if part in name), None)


def student_config(preset: str, tiny: bool, **overrides: Any) -> ARMHubertConfig:
    """A preset's config; `tiny` keeps its layout (reuse pattern, heads) at the dry run's toy shape."""
    if tiny:
        pattern = PRESETS[preset]["layer_reuses_attention_map"][: TINY_STUDENT["num_hidden_layers"]]
        heads = 64 if PRESETS[preset]["projection_head_size"] else None
        overrides = {**TINY_STUDENT, "layer_reuses_attention_map": pattern, "projection_head_size": heads, **overrides}
    return ARMHubertConfig.from_preset(preset, **overrides)


def build_inference_model(name: str, tiny: bool, attention: str = "sdpa") -> torch.nn.Module:
    """A random model by name: a preset or "hubert-base" (transformers' HubertConfig defaults)."""
    torch.manual_seed(0)
    if name == "hubert-base":
        return HubertModel(HubertConfig(**(TINY_TEACHER if tiny else {}))).eval()
    return ARMHubertModel(student_config(name, tiny, attn_implementation=attention)).eval()


def padded_batch(batch: int, seconds: float, device: torch.device, seed: int = 0, spread: float = 0.2):
    """(B, N) noise waveforms whose lengths fall evenly over [1 - spread, 1] x seconds, and their (B, N) mask."""
    generator = torch.Generator().manual_seed(seed)
    longest = int(seconds * SAMPLING_RATE)
    lengths = [int(longest * (1 - spread * i / max(batch - 1, 1))) for i in range(batch)]
    inputs = 0.1 * torch.randn(batch, longest, generator=generator)
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    return (inputs * mask).to(device), mask.long().to(device)


def row(section: str, case: str, **figures: Any) -> dict[str, Any]:
    return {"section": section, "case": case, **figures}


def guarded(section: str, case: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`measure()`'s figures as a row; an exception becomes a failed row with its first line (the run goes on)."""
    start = time.perf_counter()
    try:
        figures = measure()
    except Exception as error:  # noqa: BLE001 - one broken case must not hide the others' figures
        free_memory()
        first = (str(error).strip().splitlines() or [""])[0][:200]
        figures = dict(passed=False, failure=f"{type(error).__name__}: {first}")
    return row(section, case, **figures, seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------------------ correctness


def layer_states(model: torch.nn.Module, inputs, mask, precision: str | None, autocast: bool) -> torch.Tensor:
    """Every layer output (L+1, B, T, D) of one forward pass, under autocast to `precision` if asked."""
    device = inputs.device
    context = torch.autocast(device.type, dtype=DTYPES[precision]) if autocast else nullcontext()
    with torch.no_grad(), context:
        output = model(inputs, attention_mask=mask, output_hidden_states=True)
    return torch.stack([state.float() for state in output.hidden_states])


def real_frames(model: ARMHubertModel, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The (L+1, B, T, D) states with padded frames zeroed (they carry no meaning)."""
    valid = model._get_feature_vector_attention_mask(states.shape[2], mask).bool()
    return states * valid[None, :, :, None]


def forward_rows(scale: Scale, device: torch.device) -> list[dict[str, Any]]:
    """Fused (sdpa), FlexAttention and explicit (eager) paths against a float64 explicit reference.

    Precisions: fp32; half weights ("bf16 weights"); fp32 weights under autocast ("bf16 autocast").
    One more fp32 row per path with crop / required multiples; every row also checks finiteness.
    """
    inputs, mask = padded_batch(2, scale.correctness_seconds, device)
    rows = []
    for multiples in ({}, dict(crop_seq_to_multiple=2, required_seq_len_multiple=8)):
        torch.manual_seed(0)
        reference_model = ARMHubertModel(
            student_config("armhubert-960h", scale.tiny, attn_implementation="eager", **multiples, **NO_DROPOUT)
        )
        reference_model = reference_model.double().to(device).eval()
        reference = real_frames(
            reference_model, layer_states(reference_model, inputs.double(), mask, None, False), mask
        )
        state = reference_model.state_dict()
        settings = (
            [("fp32", False)]
            if multiples
            else [("fp32", False)]
            + [(precision, autocast) for precision in scale.dtypes if precision != "fp32" for autocast in (False, True)]
        )
        for attention in ("sdpa", "flex_attention", "eager"):
            config = student_config(
                "armhubert-960h", scale.tiny, attn_implementation=attention, **multiples, **NO_DROPOUT
            )
            model = ARMHubertModel(config).eval()
            model.load_state_dict(state)
            for precision, autocast in settings:
                if (
                    attention == "flex_attention"
                    and precision != "fp32"
                    and not autocast
                    and not scale.flex_half_weights
                ):
                    continue
                weights = torch.float32 if autocast else DTYPES[precision]
                model.to(device=device, dtype=weights)
                label = f"{attention} {precision} {'autocast' if autocast else 'weights'}"
                label += " multiples 2/8" if multiples else " padded"

                def measure(model=model, precision=precision, autocast=autocast, weights=weights, reference=reference):
                    states = layer_states(model, inputs.to(weights), mask, precision, autocast)
                    error = relative_error(real_frames(model, states, mask), reference)
                    return dict(error=error, tolerance=TOLERANCE[precision], passed=error <= TOLERANCE[precision])

                rows.append(guarded("correctness", label, measure))
        del reference_model
        free_memory()
    return rows


def probe_loss(model: ARMHubertModel, output, mask) -> torch.Tensor:
    """A fixed linear functional of every layer output over real frames: gradients of order one.

    (A sum of squares of post-LN states is nearly constant, so its gradients would be rounding noise.)
    """
    states = real_frames(model, torch.stack([state.float() for state in output.hidden_states]), mask)
    time, width = states.shape[-2:]
    probe = torch.sin(
        0.37 * torch.arange(time, device=states.device)[:, None] + 1.3 * torch.arange(width, device=states.device)
    )
    return (states * probe).mean()


def parameter_gradients(model: ARMHubertModel, inputs, mask, precision: str | None) -> dict[str, torch.Tensor]:
    """{name: gradient} of `probe_loss` after a training-mode forward (under autocast if `precision`)."""
    model.train()
    model.zero_grad(set_to_none=True)
    context = torch.autocast(inputs.device.type, dtype=DTYPES[precision]) if precision else nullcontext()
    with context:
        loss = probe_loss(model, model(inputs, attention_mask=mask, output_hidden_states=True), mask)
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def gradient_error(gradients: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """Largest error over parameters, each relative to its reference gradient's norm, floored at 1e-3 of the
    largest one (gradients that are zero in exact arithmetic, such as k_proj's bias, are rounding noise).
    A parameter missing its gradient counts as inf."""
    if set(reference) - set(gradients):
        return math.inf
    norms = {name: float(value.double().norm()) for name, value in reference.items()}
    floor = 1e-3 * max(norms.values())
    errors = [float((gradients[n].double() - reference[n].double()).norm()) / max(norms[n], floor) for n in reference]
    return max(errors) if all(math.isfinite(e) for e in errors) else math.inf


def reuse_model(path: str, scale: Scale, device: torch.device) -> ARMHubertModel:
    """ARMHuBERT-960h (seeded, no dropout) whose reuse runs on `path`: explicit, fused or probabilities."""
    fields = {
        "explicit": dict(reuse_recompute_backward=False),
        "fused": dict(reuse_recompute_backward=True),
        "probabilities": dict(reuse_softmax="probabilities"),
    }[path]
    torch.manual_seed(0)
    return ARMHubertModel(student_config("armhubert-960h", scale.tiny, **fields, **NO_DROPOUT)).to(device)


def gradient_rows(scale: Scale, device: torch.device) -> list[dict[str, Any]]:
    """Fused (`ResoftmaxReuse`) gradients against the explicit path's, in fp32 and under autocast."""
    inputs, mask = padded_batch(2, scale.correctness_seconds, device)
    explicit, fused = reuse_model("explicit", scale, device), reuse_model("fused", scale, device)
    rows = []
    for precision in scale.dtypes:

        def measure(precision=precision):
            autocast = None if precision == "fp32" else precision
            reference = parameter_gradients(explicit, inputs, mask, autocast)
            error = gradient_error(parameter_gradients(fused, inputs, mask, autocast), reference)
            return dict(error=error, tolerance=TOLERANCE[precision], passed=error <= TOLERANCE[precision])

        label = f"gradients fused vs explicit {precision}{'' if precision == 'fp32' else ' autocast'}"
        rows.append(guarded("correctness", label, measure))
    return rows


def checkpoint_rows(scale: Scale, device: torch.device) -> list[dict[str, Any]]:
    """Gradients with activation checkpointing (reentrant and not) against the plain ones, per reuse path.

    A model that refuses reentrant checkpointing with an error naming use_reentrant=False passes too.
    """
    inputs, mask = padded_batch(2, scale.correctness_seconds, device)
    rows = []
    for path in ("explicit", "fused", "probabilities"):
        model = reuse_model(path, scale, device)
        plain = parameter_gradients(model, inputs, mask, None)
        for reentrant in (False, True):
            label = f"checkpointing {'reentrant' if reentrant else 'non-reentrant'} {path}"

            def measure(model=model, plain=plain, reentrant=reentrant):
                try:
                    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
                except ValueError as error:
                    refused = "use_reentrant=False" in str(error)
                    return dict(passed=refused, refused=str(error).splitlines()[0][:200])
                try:
                    error = gradient_error(parameter_gradients(model, inputs, mask, None), plain)
                finally:
                    model.activation_checkpointing_disable()
                return dict(error=error, tolerance=TOLERANCE["fp32"], passed=error <= TOLERANCE["fp32"])

            rows.append(guarded("correctness", label, measure))
    return rows


def device_row(scale: Scale, device: torch.device) -> dict[str, Any]:
    """The same seeded model and input in fp32 on the CPU and on `device` (a CPU in the dry run)."""

    def measure():
        inputs, mask = padded_batch(2, scale.correctness_seconds, torch.device("cpu"))
        model = reuse_model("fused", scale, torch.device("cpu")).eval()
        on_cpu = layer_states(model, inputs, mask, None, False)
        on_device = layer_states(model.to(device), inputs.to(device), mask.to(device), None, False)
        error = relative_error(on_device, on_cpu)
        return dict(error=error, tolerance=TOLERANCE["fp32"], passed=error <= TOLERANCE["fp32"])

    return guarded("correctness", f"cpu vs {device.type} fp32", measure)


def correctness(scale: Scale, device: torch.device) -> list[dict[str, Any]]:
    return (
        forward_rows(scale, device)
        + gradient_rows(scale, device)
        + checkpoint_rows(scale, device)
        + [device_row(scale, device)]
    )


# -------------------------------------------------------------------------------------------- inference


def inference_cases(scale: Scale) -> list[tuple[str, int, str, str, bool]]:
    """(model, batch, precision, attention, compiled): every model x batch x precision on SDPA, plus
    FlexAttention for the map-reusing model and torch.compile, both in bf16 at the largest batch."""
    cases = [
        (name, batch, precision, "sdpa", False)
        for name in scale.inference_models
        for batch in scale.inference_batches
        for precision in scale.dtypes
    ]
    half = "bf16" if "bf16" in scale.dtypes else scale.dtypes[-1]
    largest = max(scale.inference_batches)
    if "armhubert-960h" in scale.inference_models:
        cases.append(("armhubert-960h", largest, half, "flex_attention", False))
    if scale.compile_backend:
        cases += [(name, largest, half, "sdpa", True) for name in scale.compile_models]
    return cases


def inference_row(scale: Scale, device: torch.device, case: tuple[str, int, str, str, bool]) -> dict[str, Any]:
    name, batch, precision, attention, compiled = case
    label = f"{name} {batch}x{scale.inference_seconds:g}s {precision} {attention}{' compiled' if compiled else ''}"

    def measure():
        model = build_inference_model(name, scale.tiny, attention).to(device=device, dtype=DTYPES[precision])
        inputs = torch.randn(batch, int(scale.inference_seconds * SAMPLING_RATE), device=device, dtype=model.dtype)
        runner = torch.compile(model, backend=scale.compile_backend) if compiled else model
        time_forward(runner, inputs, True)  # warm-up: compiles, tunes kernels, fills caches
        seconds = statistics.median(time_forward(runner, inputs, True) for _ in range(scale.repeats))
        memory = measure_peak_memory(runner, inputs, True) if device.type == "cuda" or not compiled else None
        del runner, model
        free_memory()
        return dict(
            latency_ms=1000 * seconds,
            audio_seconds_per_second=batch * scale.inference_seconds / seconds,
            peak_memory_mib=None if memory is None else memory / 2**20,
            passed=True,
        )

    result = guarded("inference", label, measure)
    result.update(model=name, batch=batch, precision=precision, attention=attention, compiled=compiled)
    return result


def inference(scale: Scale, device: torch.device) -> list[dict[str, Any]]:
    return [inference_row(scale, device, case) for case in inference_cases(scale)]


def throughput_ratio(rows: list[dict[str, Any]], precision: str = "bf16", compiled: bool = False) -> float | None:
    """ARMHuBERT-960h / HuBERT Base throughput at the largest batch, SDPA (None when either is missing)."""

    def throughput(name):
        matching = [
            r
            for r in rows
            if r.get("model") == name
            and r["precision"] == precision
            and r["attention"] == "sdpa"
            and r["compiled"] == compiled
            and r.get("audio_seconds_per_second")
        ]
        return max(matching, key=lambda r: r["batch"])["audio_seconds_per_second"] if matching else None

    arm, base = throughput("armhubert-960h"), throughput("hubert-base")
    return arm / base if arm and base else None


# ----------------------------------------------------------------------------------------- distillation


def recipe_trainer(recipe: str, precision: str, scale: Scale, device: torch.device, output_dir: str):
    """A `DistillTrainer` for conf/<recipe>.yaml with a random teacher of the recipe teacher's shape.

    Built as `armhubert.distill.run.distill` builds it (recipe -> arguments -> teacher, student, pairs),
    without data: the check feeds synthetic batches. Returns (trainer, masker or None).
    """
    from .distill.models import build_student, check_frame_rates, layer_pairs, load_teacher
    from .distill.recipe import build_arguments, load_recipe
    from .distill.run import _masker
    from .distill.trainer import DistillTrainer

    overrides = [
        f"output_dir={output_dir}",
        f"bf16={str(precision == 'bf16').lower()}",
        f"fp16={str(precision == 'fp16').lower()}",
        f"use_cpu={str(device.type != 'cuda').lower()}",
        "report_to=none",
        "eval_strategy=no",
        "dataloader_num_workers=0",
    ]
    if scale.distill_batch:
        overrides.append(f"per_device_train_batch_size={scale.distill_batch}")
    settings = load_recipe(BUNDLED_RECIPES / f"{recipe}.yaml", overrides)
    settings["teacher"] = "random-hubert"  # HubertConfig's defaults are HuBERT Base; timings do not need weights
    settings["teacher_config"] = dict(TINY_TEACHER) if scale.tiny else None
    if scale.tiny:
        settings["student_config"] = {**(settings.get("student_config") or {}), **student_config_overrides(settings)}
    distill_args, training_args = build_arguments(settings)
    teacher = load_teacher(distill_args, training_args.seed)
    student = build_student(distill_args, teacher.config, training_args.seed)
    check_frame_rates(teacher, student)
    pairs = layer_pairs(distill_args, student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    trainer = DistillTrainer(
        model=student, args=training_args, teacher=teacher, distill_args=distill_args, teacher_layers=pairs
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # Trainer.train() sets it per step
    return trainer, _masker(distill_args, training_args, student)


def student_config_overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """The dry run's toy shape for the recipe's student preset (its reuse pattern kept)."""
    pattern = PRESETS[settings["student"]]["layer_reuses_attention_map"][: TINY_STUDENT["num_hidden_layers"]]
    return {**TINY_STUDENT, "layer_reuses_attention_map": pattern}


def distill_batch(trainer, masker, batch: int, seconds: float, spread: float, seed: int = 0):
    """A padded batch as `AudioCollator` makes it (lengths within `spread` of `seconds`), on the trainer's device.

    Returns (inputs dict, seconds of real audio in it).
    """
    rng = np.random.default_rng(seed)
    lengths = (rng.uniform(1 - spread, 1 + spread, size=batch) * seconds * SAMPLING_RATE).astype(int)
    waveforms = [0.1 * rng.standard_normal(n).astype(np.float32) for n in lengths]
    padded = release_feature_extractor()(
        waveforms, sampling_rate=SAMPLING_RATE, padding=True, return_attention_mask=True, return_tensors="pt"
    )
    inputs = {"input_values": padded["input_values"], "attention_mask": padded["attention_mask"]}
    if masker is not None:
        ids = [str(i) for i in range(batch)]
        inputs["mask_time_indices"] = masker(list(lengths), padded["input_values"].shape[1], ids, 0)
    return {k: v.to(trainer.args.device) for k, v in inputs.items()}, float(lengths.sum()) / SAMPLING_RATE


def optimiser_step(trainer, inputs: dict[str, torch.Tensor]) -> None:
    """One training step as the Trainer runs it: training_step (forward, loss, backward) and the optimiser."""
    trainer.training_step(trainer.model, dict(inputs))
    scaler = getattr(trainer.accelerator, "scaler", None)
    if scaler is not None:  # fp16: the step is skipped on overflow and the scale adjusted, as in Trainer
        scaler.step(trainer.optimizer)
        scaler.update()
    else:
        trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def step_flops(trainer, num_samples: int) -> float:
    """FLOPs of one utterance's step: student forward + backward (3x its forward) and the teacher pass(es)."""
    student = trainer.accelerator.unwrap_model(trainer.model)
    teacher_passes = 2 if trainer.distill_args.distill_mode == "masking" else 1
    macs = 3 * count_macs(student, num_samples) + teacher_passes * count_macs(trainer.teacher, num_samples)
    return 2.0 * macs


def bounded_search(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """Largest n <= limit with fits(n), for a monotone `fits`: doubling from `start`, then bisection to ~6 %.

    0 when even min(start, limit) does not fit; `limit` when it fits (the caller reports ">=").
    """
    good, bad = 0, None
    size = max(1, min(start, limit))
    while bad is None and good < limit:
        if fits(size):
            good, size = size, min(2 * size, limit)
        else:
            bad = size
    while bad is not None and bad - good > max(1, good // 16):
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


def largest_batch(trainer, masker, start: int, seconds: float, limit: int) -> dict[str, Any]:
    """Largest batch of `seconds`-long utterances whose step fits in memory: doubling, then bisection.

    Bounded: at most `limit` utterances (then reported with `bounded`). The trainer's fallback to two
    teacher passes when the doubled batch does not fit is reset after each probe and reported.
    """
    single_pass = trainer._teacher_single_pass
    fallback = False

    def fits(batch):
        nonlocal fallback
        inputs, _ = distill_batch(trainer, masker, batch, seconds, spread=0.0)
        try:
            optimiser_step(trainer, inputs)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            fallback |= trainer._teacher_single_pass != single_pass
            trainer._teacher_single_pass = single_pass
            trainer.optimizer.zero_grad(set_to_none=True)
            del inputs
            free_memory()

    good = bounded_search(fits, start, limit)
    return dict(largest_batch=good, largest_batch_bounded=good >= limit, teacher_two_pass_fallback=fallback)


def distillation_row(scale, device, recipe, precision, tflops, probe, keep):
    """Steps/s, audio-hours per GPU-hour, peak memory, MFU and teacher share of one recipe step."""
    label = f"{recipe} {precision}"
    state = {}

    def measure():
        output_dir = tempfile.mkdtemp(prefix="gpu_check_")
        trainer, masker = recipe_trainer(recipe, precision, scale, device, output_dir)
        trainer.model.train()
        batch = trainer.args.per_device_train_batch_size
        inputs, audio_seconds = distill_batch(trainer, masker, batch, scale.distill_seconds, spread=0.05)
        mask = inputs.get("mask_time_indices")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step = median_seconds(lambda: optimiser_step(trainer, inputs), scale.distill_steps, device)
        memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        teacher = median_seconds(
            lambda: trainer.teacher_hidden_states(inputs["input_values"], inputs["attention_mask"], mask),
            scale.distill_steps,
            device,
        )
        flops = step_flops(trainer, int(inputs["attention_mask"].sum(1).float().mean())) * batch
        figures = dict(
            batch=batch,
            audio_seconds=audio_seconds,
            step_ms=1000 * step,
            steps_per_second=1 / step,
            audio_hours_per_gpu_hour=audio_seconds / step,
            peak_memory_mib=memory,
            tflops=flops / step / 1e12,
            mfu=None if tflops is None else flops / step / (tflops * 1e12),
            teacher_share=teacher / step,
            passed=True,
        )
        if probe:
            figures.update(largest_batch(trainer, masker, batch, scale.probe_seconds, scale.probe_limit))
        if keep:
            state.update(trainer=trainer, inputs=inputs)
        return figures

    result = guarded("distillation", label, measure)
    result.update(recipe=recipe, precision=precision)
    return result, state


def distillation(scale: Scale, device: torch.device, tflops: float | None):
    """Rows for every recipe x precision; also returns the first recipe's first trainer and batch (for the profile)."""
    rows, kept = [], {}
    for recipe in scale.recipes:
        for index, precision in enumerate(scale.distill_precisions):
            keep = not kept and index == 0
            result, state = distillation_row(scale, device, recipe, precision, tflops, probe=index == 0, keep=keep)
            rows.append(result)
            kept = kept or state
            free_memory()
    return rows, kept


# ---------------------------------------------------------------------------------------------- DDP smoke


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, backend: str, port: int, tiny: bool, results) -> None:
    """One process of the DDP smoke step: forward, backward, optimiser step; weights must agree across ranks."""
    import torch.distributed as dist

    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        figures = _ddp_step(rank, device, tiny)
        if rank == 0:
            results.put(figures)
    finally:
        # The DDP wrapper (its Reducer holds the process group) is gone with _ddp_step's frame: destroying the
        # group while a Reducer still refers to it can leave gloo's destructor joining a thread for ever.
        dist.destroy_process_group()


def _ddp_step(rank: int, device: torch.device, tiny: bool) -> dict[str, float]:
    """Forward, backward and optimiser step of a DDP-wrapped student; the largest weight difference across ranks."""
    import torch.distributed as dist

    torch.manual_seed(0)
    model = ARMHubertModel(student_config("armhubert-960h", tiny)).to(device).train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
    optimiser = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    inputs, mask = padded_batch(2, 2.0, device, seed=rank)  # each rank its own data
    output = ddp(inputs, attention_mask=mask, output_hidden_states=True)
    loss = sum(state.float().square().mean() for state in output.projected_hidden_states)
    loss.backward()
    optimiser.step()
    flat = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    spread = flat.clone()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    difference = (spread - flat).abs().max()
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    return dict(loss=float(loss.detach()), max_weight_difference=float(difference))


def ddp_smoke(scale: Scale, device: torch.device) -> dict[str, Any]:
    """One DDP step: NCCL with 2 processes on 2+ GPUs, 1-process NCCL on one; 1-process gloo on a CPU.

    One process runs here (no start-up of new interpreters); two are spawned.
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    world_size = min(2, torch.cuda.device_count()) if device.type == "cuda" else 1
    label = f"ddp {backend} x{world_size}"

    def measure():
        import queue

        import torch.multiprocessing as mp

        if world_size == 1:
            results = queue.SimpleQueue()
            _ddp_worker(0, 1, backend, _free_port(), scale.tiny, results)
        else:
            results = mp.get_context("spawn").SimpleQueue()
            arguments = (world_size, backend, _free_port(), scale.tiny, results)
            mp.start_processes(_ddp_worker, args=arguments, nprocs=world_size, start_method="spawn")
        figures = results.get()
        figures["passed"] = figures["max_weight_difference"] == 0.0
        return figures

    return guarded("distillation", label, measure)


# ------------------------------------------------------------------------------------------------ profile


def profile(kept: dict[str, Any], steps: int, top: int = 12) -> list[dict[str, Any]]:
    """The top operators of a recipe step by self time (device time on a GPU), as shares of the total."""
    if not kept:
        return [row("profile", "no distillation step to profile", passed=False)]
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    trainer, inputs = kept["trainer"], kept["inputs"]
    cuda = trainer.args.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profiler(activities=activities) as prof:
        for _ in range(steps):
            optimiser_step(trainer, inputs)
        synchronize(trainer.args.device)
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    attribute = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, attribute) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attribute), reverse=True)
    return [
        row(
            "profile",
            e.key[:60],
            ms_per_step=getattr(e, attribute) / 1000 / steps,
            share=getattr(e, attribute) / total,
            calls_per_step=e.count / steps,
        )
        for e in events[:top]
    ]


# ---------------------------------------------------------------------------------------------- the check


def environment(device: torch.device, scale: Scale) -> dict[str, Any]:
    import transformers

    return dict(
        device=device_name(device),
        gpus=torch.cuda.device_count(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        cuda=torch.version.cuda,
        scale=scale.name,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        host_cpus=os.cpu_count(),
    )


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets: every correctness row passes, ARMHuBERT-960h recipe throughput, inference ratio."""
    arm = [r for r in report["distillation"] if r.get("recipe") == "armhubert-960h" and r.get("precision") == "bf16"]
    return dict(
        correctness_passed=all(r.get("passed") for r in report["correctness"]),
        correctness_failed=[r["case"] for r in report["correctness"] if not r.get("passed")],
        armhubert_960h_bf16_audio_hours_per_gpu_hour=arm[0].get("audio_hours_per_gpu_hour") if arm else None,
        armhubert_over_hubert_base_throughput_bf16=throughput_ratio(report["inference"]),
        armhubert_over_hubert_base_throughput_bf16_compiled=throughput_ratio(report["inference"], compiled=True),
        targets=dict(audio_hours_per_gpu_hour=3000, inference_ratio=3.0),
    )


def run_check(scale: Scale, device: torch.device, tflops: float | None = None, log=print) -> dict[str, Any]:
    """All four sections at `scale` on `device`; the report (environment, rows per section, summary, timings)."""
    report: dict[str, Any] = {"environment": environment(device, scale), "seconds": {}}
    start = time.perf_counter()

    def timed(name, function):
        began = time.perf_counter()
        log(f"[{time.perf_counter() - start:6.1f} s] {name} ...")
        result = function()
        report["seconds"][name] = time.perf_counter() - began
        return result

    report["correctness"] = timed("correctness", lambda: correctness(scale, device))
    report["inference"] = timed("inference", lambda: inference(scale, device))
    rows, kept = timed("distillation", lambda: distillation(scale, device, peak_tflops(device, tflops)))
    rows.append(timed("ddp", lambda: ddp_smoke(scale, device)))
    report["distillation"] = rows
    report["profile"] = timed("profile", lambda: profile(kept, scale.profile_steps))
    kept.clear()
    report["summary"] = summary(report)
    report["seconds"]["total"] = time.perf_counter() - start
    return report


FIGURES = (
    ("passed", "ok", "{}"),
    ("error", "err", "{:.2e}"),
    ("tolerance", "tol", "{:.0e}"),
    ("latency_ms", "ms", "{:.1f}"),
    ("audio_seconds_per_second", "audio s/s", "{:.0f}"),
    ("step_ms", "step ms", "{:.1f}"),
    ("audio_hours_per_gpu_hour", "audio h/GPU-h", "{:.0f}"),
    ("mfu", "MFU", "{:.1%}"),
    ("teacher_share", "teacher", "{:.0%}"),
    ("largest_batch", "max batch", "{}"),
    ("peak_memory_mib", "MiB", "{:.0f}"),
    ("max_weight_difference", "rank diff", "{:.1e}"),
    ("ms_per_step", "ms/step", "{:.2f}"),
    ("share", "share", "{:.1%}"),
)


def _figures(result: dict[str, Any]) -> str:
    parts = []
    for key, label, form in FIGURES:
        value = result.get(key)
        if value is None or (key == "passed" and result["section"] == "profile"):
            continue
        text = form.format(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
        if key == "largest_batch" and result.get("largest_batch_bounded"):
            text = f">={text}"
        parts.append(f"{label} {text}")
    if result.get("failure"):
        parts.append(result["failure"])
    if result.get("refused"):
        parts.append(f"refused: {result['refused']}")
    return "  ".join(parts)


def format_table(report: dict[str, Any]) -> str:
    """One table: section | case | figures, headed by the machine and closed by the summary."""
    env = report["environment"]
    lines = [f"GPU check ({env['scale']}): {env['device']}, torch {env['torch']}, {env['date']}"]
    results = report["correctness"] + report["inference"] + report["distillation"] + report["profile"]
    width = max(len(r["case"]) for r in results)
    lines.append(f"{'section':<13} {'case':<{width}}  figures")
    lines += [f"{r['section']:<13} {r['case']:<{width}}  {_figures(r)}" for r in results]
    s = report["summary"]
    lines.append(
        f"summary: correctness {'all pass' if s['correctness_passed'] else 'FAILED: ' + ', '.join(s['correctness_failed'])}; "
        f"ARMHuBERT-960h bf16 step {_number(s['armhubert_960h_bf16_audio_hours_per_gpu_hour'])} audio-h/GPU-h "
        f"(target 3000); inference ARMHuBERT / HuBERT Base {_number(s['armhubert_over_hubert_base_throughput_bf16'], '.2f')}x "
        f"(target 3x); {report['seconds']['total']:.0f} s in all"
    )
    return "\n".join(lines)


def _number(value, form=".0f"):
    return "n/a" if value is None else format(value, form)
