"""Loaded weights and the models they make: checked before they are trusted.

- `check_weight_tensor` (WEIGHT_RULES): a weight from an untrusted file is a dense CPU floating-point tensor
  backed by its bytes;
- `check_state_fits`: weights have exactly the names and shapes of their model (one line naming the misfits);
- `check_finite_weights`: no NaN or infinity in a model that would be saved or used to encode;
- `check_model_size`: a config's model, built on the meta device, has at most PARAMETERS parameters, before any
  weight is allocated.
"""

from collections.abc import Callable, Mapping, Sequence

import torch

from ..cli import Rule, UserError, refuse_broken
from .untrusted import Limit, brief


class _Storage:
    """A tensor's shape, the bytes its elements need and those its storage holds, read when a rule asks (a nested
    or sparse tensor has neither: earlier rules refuse it first)."""

    def __init__(self, value: torch.Tensor):
        self.value = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def needed(self) -> int:
        return self.value.numel() * self.value.element_size()

    @property
    def stored(self) -> int:
        return self.value.untyped_storage().nbytes()

    @property
    def after_offset(self) -> int:
        return self.stored - self.value.storage_offset() * self.value.element_size()


# What a loaded weight `value` (named `what`; `size`: its `_Storage`) must be, as `Rule`s: a dense CPU floating-point
# tensor whose storage holds its elements. Sparse, meta or quantized tensors cannot be weights; an expanded view
# (stride 0) of a few stored bytes would take far more memory once copied than the file holds.
WEIGHT_RULES: tuple[Rule, ...] = (
    (lambda value, **_: value.is_nested, "{what} is a nested tensor; weights are dense CPU tensors"),
    (
        lambda value, **_: value.layout != torch.strided or value.device.type != "cpu" or value.is_quantized,
        "{what} is a {value.layout} tensor on {value.device.type}; weights are dense CPU tensors",
    ),
    (lambda value, **_: not value.is_floating_point(), "{what} has dtype {value.dtype}; weights are floating-point"),
    (
        lambda size, **_: size.needed > size.after_offset,
        "{what} of shape {size.shape} needs {size.needed:,} bytes but its storage holds {size.stored:,}; it is not a "
        "saved weight",
    ),
)


def check_weight_tensor(value: torch.Tensor, what: str) -> None:
    """Refuse a loaded weight that breaks one of WEIGHT_RULES."""
    refuse_broken(WEIGHT_RULES, value=value, what=what, size=_Storage(value))


SAVING_ADVICE = (
    "nothing was saved. Lower the learning rate, check the data for broken audio, or use bf16 instead of fp16"
)


def check_finite_weights(model: torch.nn.Module, what: str, advice: str = SAVING_ADVICE) -> None:
    """Refuse `model` when any parameter or buffer holds NaN or infinity (names the first few): it is never
    saved (the default `advice`), nor used to encode (its outputs would be NaN)."""
    broken = [
        name
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if broken:
        more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
        raise UserError(f"{what} has NaN or infinite weights ({', '.join(broken[:3])}{more}); {advice}")


def _describe(keys: set[str], limit: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_fits(
    shapes: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]], what: str, model: str, advice: str
) -> None:
    """Refuse weights (`shapes`: name -> shape) unless they are exactly the names of `expected`, each of its shape:
    one line "`what` does not fit `model`: missing ...; unexpected ...; shape mismatch for ...; `advice`"."""
    missing, unexpected = set(expected) - set(shapes), set(shapes) - set(expected)
    parts = [f"missing {_describe(missing)}"] if missing else []
    parts += [f"unexpected {_describe(unexpected)}"] if unexpected else []
    wrong = sorted(key for key in set(shapes) & set(expected) if tuple(shapes[key]) != tuple(expected[key]))
    parts += [
        f"shape mismatch for {key}: {tuple(shapes[key])}, {model} has {tuple(expected[key])}" for key in wrong[:1]
    ]
    if parts:
        raise UserError(f"{what} does not fit {model}: {'; '.join(parts)}; {advice}")


# 16 GB of float32 weights: ten HuBERT Large; a config beyond is a typo or hostile.
PARAMETERS = Limit(
    4_000_000_000,
    "{what} describes a model of {count:,} parameters, more than the {most:,} this tool builds; check its sizes "
    "(hidden_size, intermediate_size, num_hidden_layers)",
)


def check_model_size(build: Callable[[], torch.nn.Module], what: str) -> None:
    """Build the model `build()` makes on the meta device (no memory) and refuse more than PARAMETERS.

    A config is small but says how much memory its model takes (`hidden_size=8000000` asks for
    terabytes): this bounds it before any real tensor is allocated. A config `build` cannot turn into
    a model at all is refused with the reason.
    """
    try:
        with torch.device("meta"):
            model = build()
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, OverflowError, AssertionError, KeyError) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        if isinstance(error, KeyError) and error.args:  # a name the library's tables lack (hidden_act: nope)
            reason = f"unknown name {brief(error.args[0])}"
        raise UserError(f"{what} does not describe a model that can be built: {reason}") from None
    PARAMETERS.check(sum(parameter.numel() for parameter in model.parameters()), what)
