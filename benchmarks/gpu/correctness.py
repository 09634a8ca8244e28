"""The GPU check's correctness rows: every reuse path against a float64 reference, fused against explicit
gradients, activation checkpointing against plain gradients, the CPU against the device."""

import math
from contextlib import nullcontext
from typing import Any

import torch

from modeling_armhubert import ARMHubertModel

from .rows import DTYPES, free_memory, guarded, padded_batch, relative_error
from .scales import Scale, student_config

# Relative L2 error allowed against the float64 explicit reference, by compute precision.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
NO_DROPOUT = dict.fromkeys(
    (
        "hidden_dropout",
        "activation_dropout",
        "attention_dropout",
        "reuse_attention_dropout",
        "feat_proj_dropout",
        "layerdrop",
    ),
    0.0,
)
ATTENTIONS = ("sdpa", "flex_attention", "eager")  # fused, FlexAttention and explicit reuse
MULTIPLES = dict(crop_seq_to_multiple=2, required_seq_len_multiple=8)


def _within(error: float, precision: str) -> dict[str, Any]:
    return dict(error=error, tolerance=TOLERANCE[precision], passed=error <= TOLERANCE[precision])


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


def forward_config(scale: Scale, attention: str, multiples: dict[str, int]):
    """ARMHuBERT-960h without dropout on `attention`, with `multiples` (crop / required sequence multiples)."""
    return student_config("armhubert-960h", scale.tiny, attn_implementation=attention, **multiples, **NO_DROPOUT)


def forward_settings(scale: Scale, attention: str, multiples: dict[str, int]) -> list[tuple[str, bool]]:
    """(precision, autocast) of one path's rows: fp32; with plain padding also every half precision as
    weights and under autocast (FlexAttention's half-weight rows only with `scale.flex_half_weights`)."""
    settings = [("fp32", False)]
    if multiples:
        return settings
    for precision in [precision for precision in scale.dtypes if precision != "fp32"]:
        if attention != "flex_attention" or scale.flex_half_weights:
            settings.append((precision, False))
        settings.append((precision, True))
    return settings


def forward_row(label: str, model: ARMHubertModel, weights, reference, inputs, mask, precision, autocast: bool):
    """One forward row: `model` loaded afresh with the reference's `weights` (so no row sees another's
    rounding), in `precision` as weights or, with `autocast`, fp32 weights under autocast."""
    dtype = torch.float32 if autocast else DTYPES[precision]

    def measure():
        model.to(device=inputs.device, dtype=dtype).load_state_dict(weights)
        states = layer_states(model, inputs.to(dtype), mask, precision, autocast)
        return _within(relative_error(real_frames(model, states, mask), reference), precision)

    return guarded("correctness", label, measure)


def forward_rows(scale: Scale, device: torch.device) -> list[dict[str, Any]]:
    """Fused (sdpa), FlexAttention and explicit (eager) paths against a float64 explicit reference.

    Precisions: fp32; half weights ("bf16 weights"); fp32 weights under autocast ("bf16 autocast").
    One more fp32 row per path with crop / required multiples; every row also checks finiteness.
    """
    inputs, mask = padded_batch(2, scale.correctness_seconds, device)
    rows = []
    for multiples in ({}, MULTIPLES):
        torch.manual_seed(0)
        reference_model = ARMHubertModel(forward_config(scale, "eager", multiples)).double().to(device).eval()
        states = layer_states(reference_model, inputs.double(), mask, None, False)
        reference = real_frames(reference_model, states, mask)
        weights = reference_model.state_dict()
        padding = "multiples 2/8" if multiples else "padded"
        for attention in ATTENTIONS:
            model = ARMHubertModel(forward_config(scale, attention, multiples)).eval()
            for precision, autocast in forward_settings(scale, attention, multiples):
                label = f"{attention} {precision} {'autocast' if autocast else 'weights'} {padding}"
                rows.append(forward_row(label, model, weights, reference, inputs, mask, precision, autocast))
        del reference_model, weights
        free_memory()
    return rows


def probe_loss(model: ARMHubertModel, output, mask) -> torch.Tensor:
    """A fixed linear functional of every layer output over real frames: gradients of order one.

    (A sum of squares of post-LN states is nearly constant, so its gradients would be rounding noise.)
    """
    states = real_frames(model, torch.stack([state.float() for state in output.hidden_states]), mask)
    frames, width = states.shape[-2:]
    probe = torch.sin(
        0.37 * torch.arange(frames, device=states.device)[:, None] + 1.3 * torch.arange(width, device=states.device)
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
            return _within(gradient_error(parameter_gradients(fused, inputs, mask, autocast), reference), precision)

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
                    return _within(gradient_error(parameter_gradients(model, inputs, mask, None), plain), "fp32")
                finally:
                    model.activation_checkpointing_disable()

            rows.append(guarded("correctness", label, measure))
    return rows


def device_row(scale: Scale, device: torch.device) -> dict[str, Any]:
    """The same seeded model and input in fp32 on the CPU and on `device` (a CPU in the dry run)."""

    def measure():
        inputs, mask = padded_batch(2, scale.correctness_seconds, torch.device("cpu"))
        model = reuse_model("fused", scale, torch.device("cpu")).eval()
        on_cpu = layer_states(model, inputs, mask, None, False)
        on_device = layer_states(model.to(device), inputs.to(device), mask.to(device), None, False)
        return _within(relative_error(on_device, on_cpu), "fp32")

    return guarded("correctness", f"cpu vs {device.type} fp32", measure)


def correctness(scale: Scale, device: torch.device) -> list[dict[str, Any]]:
    """Every correctness row at `scale` on `device`."""
    return (
        forward_rows(scale, device)
        + gradient_rows(scale, device)
        + checkpoint_rows(scale, device)
        + [device_row(scale, device)]
    )
