"""Measuring instruments for the benchmarks and the GPU check: MACs, live-tensor peak memory, fixed cost
per call, latency, the device's name, the CPUs available.

The model instruments are model-agnostic: each takes anything called as
`model(inputs, output_hidden_states=...)`.
"""

import time
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from armhubert.deploy.timing import medians_taking_turns, synchronize


def count_parameters(model: torch.nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def forward(model, inputs, all_outputs):
    return model(inputs, output_hidden_states=all_outputs)


@contextmanager
def explicit_attention(model):
    """Run attention as explicit matmuls (FlopCounterMode does not see SDPA's products on CPU), and
    convolutions directly, not through FFTs (ARMHubert's positional convolution: its `fft` switch)."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    by_fft = [module for module in model.modules() if getattr(module, "fft", None) is True]
    for module in by_fft:
        module.fft = False
    try:
        yield
    finally:
        model.config._attn_implementation = previous
        for module in by_fft:
            module.fft = True


def count_macs(model, num_samples, all_outputs=True):
    """Multiply-accumulates of one forward pass on one utterance of `num_samples` samples.

    MACs depend on shapes only: a model on the meta device (`meta_model`) counts without computing.
    """
    parameters = list(model.parameters())
    # On meta if any weight is (HF's HuBERT keeps its masked_spec_embed on CPU even then).
    device = "meta" if any(param.is_meta for param in parameters) else parameters[0].device
    inputs = torch.zeros(1, num_samples, device=device, dtype=parameters[0].dtype)
    # no_grad, not inference_mode: FlopCounterMode's module tracking fails on weight-normed convs there.
    with explicit_attention(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward(model, inputs, all_outputs)
    return counter.get_total_flops() // 2


def storages(tree):
    """The storages of the tensors in a nested structure of operator arguments or results."""
    return [leaf.untyped_storage() for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


class _FusedHigherOrderOperators(TorchDispatchMode):
    """A mode that sees FlexAttention (a higher-order operator that eager PyTorch runs through
    `torch.compile`) as one call: Dynamo compiles it with the mode set aside, and the compiled call
    reaches `__torch_dispatch__` as one operator whose tensor inputs and results are those of the call."""

    supports_higher_order_operators = True

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True


class LiveTensorBytes(_FusedHigherOrderOperators):
    """Peak bytes of live tensor storages while active: CPU's answer to `torch.cuda.max_memory_allocated`.

    Starts from the storages of `resident` (weights, inputs), then adds every storage an operator
    creates until it is freed. Allocator caching and kernel-internal scratch space are not seen; a
    higher-order operator (FlexAttention) counts as one fused kernel: its results, not its insides.
    """

    def __init__(self, resident=()):
        super().__init__()
        self.live = {}
        self.current = self.peak = 0
        for tensor in resident:
            self._add(tensor.untyped_storage(), finalize=False)

    def _add(self, storage, finalize=True):
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.live:  # views and in-place results share a tracked storage
            return
        self.live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        if finalize:
            weakref.finalize(storage, self._release, key)

    def _release(self, key):
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for storage in storages(output):
            self._add(storage)
        return output


class WeightDerivedTime(_FusedHigherOrderOperators):
    """Seconds spent in operators whose tensor inputs all are weights or derived from weights alone.

    Such work (weight norm, kernel re-layouts, ...) is the same on every call whatever the input: a
    fixed cost per call. A storage counts as weight-derived from the start (`weights`) or when an
    operator made it from weight-derived storages only, until it is freed. A higher-order operator
    (FlexAttention) is one call, judged by its tensor inputs.
    """

    def __init__(self, weights):
        super().__init__()
        self.derived = {tensor.untyped_storage().data_ptr() for tensor in weights}
        self.seconds = 0.0
        self.operators = []  # those that made a new weight-derived tensor (views excluded)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = storages((args, kwargs))
        fixed = bool(inputs) and all(storage.data_ptr() in self.derived for storage in inputs)
        start = time.perf_counter()
        output = func(*args, **(kwargs or {}))
        if fixed:
            self.seconds += time.perf_counter() - start
            for storage in storages(output):
                if storage.data_ptr() not in self.derived:
                    self.derived.add(storage.data_ptr())
                    self.operators.append(str(func))
                    weakref.finalize(storage, self.derived.discard, storage.data_ptr())
        return output


def state_tensors(model):
    return list(model.parameters()) + list(model.buffers())


def measure_peak_memory(model, inputs, all_outputs):
    """One forward pass; its peak bytes of live tensors, this model's weights and the input included."""
    own = sum(t.untyped_storage().nbytes() for t in state_tensors(model) + [inputs])
    if inputs.device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()  # every resident model and input
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            forward(model, inputs, all_outputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before + own
    with torch.inference_mode(), LiveTensorBytes(state_tensors(model) + [inputs]) as tracker:
        forward(model, inputs, all_outputs)
    return tracker.peak


def measure_fixed_cost(model, inputs, all_outputs):
    """Milliseconds of weight-derived work in one forward pass (after a warm-up run)."""
    with torch.inference_mode():
        forward(model, inputs, all_outputs)
        with WeightDerivedTime(state_tensors(model)) as tracker:
            forward(model, inputs, all_outputs)
    return 1000 * tracker.seconds


def device_name(device: torch.device) -> str:
    """The GPU's name, or "CPU (N threads)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def median_seconds(function: Callable[[], Any], steps: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall-clock seconds of `function()` over `steps` runs after `warmup` untimed ones."""
    return medians_taking_turns({"function": function}, steps, warmup, device)["function"]


def time_forward(model, inputs, all_outputs, clock=time.perf_counter):
    synchronize(inputs.device)
    start = clock()
    with torch.inference_mode():
        forward(model, inputs, all_outputs)
    synchronize(inputs.device)
    return clock() - start
