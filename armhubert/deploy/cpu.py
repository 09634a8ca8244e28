"""PyTorch inference on CPUs with float32 products on oneDNN instead of MKL (`optimize_for_cpu`), and what the
CPU can run natively (`cpu_flags`: VNNI for int8, bf16), which decides whether int8 or bf16 can pay."""

import weakref
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from transformers import PreTrainedModel

# The product `OneDNNProducts` takes: a linear layer's, whose weight it packs once. Products of two
# activations (Q K^T, P V, the reuse's blocks) stay on PyTorch's path: oneDNN's linear with an unpacked
# operand builds its kernel on every call (70 ms for a 250 x 40 x 499 block product, measured).
_LINEAR = (torch.nn.functional.linear,)


def onednn_available() -> bool:
    """Whether this torch has oneDNN (x86 and Arm builds do) with its linear kernel."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class OneDNNProducts(TorchFunctionMode):
    """Inference-time float32 CPU matrix products through oneDNN instead of the BLAS.

        with torch.inference_mode(), OneDNNProducts():
            output = model(input_values)

    Why: eager PyTorch runs float32 `addmm` / `mm` / `bmm` on MKL's sgemm, which on CPUs that are
    not Intel's takes its generic code path (MKL_VERBOSE names "Intel(R) Architecture processors" on
    an AVX-512 AMD EPYC) at about 43 GMAC/s per core; oneDNN picks its kernels by the CPU's features
    and does about 90 on the same shapes, as ONNX Runtime's MLAS does (84): that, not the graph, is
    why the same model ran 1.6x slower in PyTorch than in ONNX Runtime (docs/deployment.md).

    What: while autograd is off (`torch.inference_mode()` / `torch.no_grad()`), `F.linear` (any
    leading dims) of float32 CPU tensors with an `nn.Parameter` weight runs as
    `torch.ops.mkldnn._linear_pointwise`, the weight re-laid out for oneDNN once
    (`_reorder_linear_weight`) and again only when it changes (its version counter). Anything else
    (autograd on, other dtypes or devices, products of two activations) runs as PyTorch would run it;
    without oneDNN the mode does nothing. Same numbers to float32 rounding (another summation order).
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = onednn_available()
        self._packed: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.enabled and not torch.is_grad_enabled():
            if func in _LINEAR and _float32_cpu(args[0], args[1]) and isinstance(args[1], torch.nn.Parameter):
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                return _onednn_linear(args[0], self._weight(args[1]), bias)
        return func(*args, **kwargs)

    def _weight(self, weight: torch.nn.Parameter) -> torch.Tensor:
        """The weight (N, K) in oneDNN's blocked layout (cached)."""
        hit = self._packed.get(id(weight))
        if hit is not None and hit[0]() is weight and hit[1] == weight._version:
            return hit[2]
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        self._packed[id(weight)] = (weakref.ref(weight), weight._version, packed)
        return packed


def _float32_cpu(*tensors) -> bool:
    return all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., K) @ weight (N, K)^T + bias (N,) -> (..., N)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class CPUInferenceModel(torch.nn.Module):
    """`model` called under `OneDNNProducts` (what `optimize_for_cpu` returns); the model is unchanged."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model.eval()
        self.products = OneDNNProducts()

    @property
    def config(self):
        return self.model.config

    def forward(self, *args, **kwargs):
        with self.products:
            return self.model(*args, **kwargs)


def optimize_for_cpu(model: PreTrainedModel) -> CPUInferenceModel:
    """`model` for float32 CPU inference with oneDNN products (`OneDNNProducts`): eager, no compile.

        fast = optimize_for_cpu(model)
        with torch.inference_mode():
            output = fast(input_values, output_hidden_states=True)

    Same outputs as `model` to float32 rounding, any input shape, shares the model's weights (a
    change to them is picked up). Calls with autograd on run as `model` does. Measured in
    docs/deployment.md: about ONNX Runtime's speed.
    """
    return CPUInferenceModel(model)


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The x86 feature flags of /proc/cpuinfo (or of the `cpuinfo` text given); None where it cannot tell
    (not Linux, not x86)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    return None if line is None else set(line.partition(":")[2].split())


def cpu_has_vnni(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU has VNNI (AVX-512 VNNI or AVX-VNNI), where ONNX Runtime's U8S8 products accumulate
    in int32 (without it int8 runs at about fp32's speed); None where the flags cannot be read."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(flags & {"avx512_vnni", "avx_vnni"})


def cpu_has_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX); without it PyTorch's bf16 products are
    converted to float32 and gain little. None where the flags cannot be read."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(flags & {"avx512_bf16", "amx_bf16"})
