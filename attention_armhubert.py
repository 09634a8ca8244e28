"""Attention kernels of the ARMHuBERT models: attention-map reuse without (B, H, T, T) maps, the attention
paths and their choice (`choose_attention`), and the refusal of reentrant checkpointing where maps are reused.

Remote code beside `modeling_armhubert.py`, which imports it as `kernels` (so `save_pretrained` ships it);
the model file holds the layers and reads top to bottom as transformers' `modeling_wavlm.py`; the other
operations its layers call are `ops_armhubert.py`. Every size threshold and switch that chooses between these
kernels is an `ARMHubertConfig` attribute (`explicit_map_elements`, `reuse_block_elements`, `reuse_block_rows`,
`fused_cpu_attention`), passed in by the calling layer: no module global changes what a kernel does. How and
why: docs/speed.md and docs/numerics.md.
"""

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

try:  # FlexAttention and its log-sum-exp request (torch >= 2.9)
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention
except ImportError:
    AuxRequest = flex_attention = None

try:  # loaded as remote code from a model folder
    from .configuration_armhubert import ARMHubertConfig
except ImportError:  # installed as a top-level module
    from configuration_armhubert import ARMHubertConfig


# --------------------------------------------------------------------------------------------------
# Attention-map reuse without (B, H, T, T) maps
#
# A reusing layer applies the computing layer's P = softmax(Q K^T * scale) (padded keys masked) to its
# own values, after a second masked softmax in the release's "resoftmax" mode. The computing layer
# hands over a `Handover`; `choose_attention` picks which kind once per forward, and `ATTENTION_PATHS`
# maps it to a compute and a reuse function. How and why: docs/speed.md.

# A private CPU kernel that returns SDPA's output and its log-sum-exp in one call. Where a torch lacks
# it (or `config.fused_cpu_attention` is off), the public SDPA runs and `logsumexp_blocks` adds the
# log-sum-exp (one extra Q K^T pass).
CPU_FLASH_ATTENTION = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


class BlockSize(NamedTuple):
    """How the reuse kernels tile the (B*H, T, T) scores (`score_blocks`): about `elements` scores per block
    on a CPU, at most `rows` query rows; `ARMHubertConfig.reuse_block_elements` / `reuse_block_rows`."""

    elements: int
    rows: int

    @classmethod
    def of(cls, config: ARMHubertConfig) -> "BlockSize":
        return cls(config.reuse_block_elements, config.reuse_block_rows)


DEFAULT_BLOCK_SIZE = BlockSize.of(ARMHubertConfig)  # the class-level defaults

Mask = Tensor | None  # key_padding_mask (B, T) bool, True = padding; None when nothing is padded


@dataclass
class Handover:
    """What a computing layer hands to the reusing layers after it.

    "map": `map` (B, H, T, T), the explicit probabilities. "logsumexp": `query` and `key` (B, H, T, d)
    and `logsumexp` (B, H, T), float32, of the scaled, masked scores. "probabilities": `query` and `key`.
    """

    map: torch.Tensor | None = None
    query: torch.Tensor | None = None
    key: torch.Tensor | None = None
    logsumexp: torch.Tensor | None = None


def score_blocks(
    batch_heads: int, time: int, device: torch.device, size: BlockSize = DEFAULT_BLOCK_SIZE
) -> list[tuple[slice, slice]]:
    """Blocks (slice of B*H, slice of query rows) that tile the (B*H, T, T) scores, about `size.elements`
    values each on a CPU (64x on other devices): up to `size.rows` rows of as many heads as fit, both split
    evenly, so that products stay efficient when the batch or T grows."""
    budget = size.elements if device.type == "cpu" else 64 * size.elements
    rows = -(-time // -(-time // min(time, size.rows)))
    heads = max(1, budget // (rows * time))
    heads = -(-batch_heads // -(-batch_heads // heads))
    return [
        (slice(first_head, min(first_head + heads, batch_heads)), slice(first_row, min(first_row + rows, time)))
        for first_head in range(0, batch_heads, heads)
        for first_row in range(0, time, rows)
    ]


def padding_bias(key_padding_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T) bool, True = padding -> (B, T) additive mask: 0 for real keys, half the dtype's lowest value
    for padded ones (finite, so that products and sums holding it never make a NaN; its exp is 0)."""
    return key_padding_mask.to(dtype) * (torch.finfo(dtype).min / 2)


def reuse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reuse computes and answers in: float32 for half-precision inputs, else their own (after
    the second softmax the map's structure is below bf16's resolution: docs/numerics.md, "Half precision")."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def full_precision(tensor: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on `tensor`'s device, so that the reuse's products run in the dtype given (a no-op on
    devices without autocast, such as the meta device of MAC counting)."""
    if not torch.amp.is_autocast_available(tensor.device.type):
        return contextlib.nullcontext()
    return torch.autocast(tensor.device.type, enabled=False)


def real_mean(value: Tensor, key_padding_mask: Mask) -> Tensor:
    """(B, H, T, d) -> (B, H, 1, d) in `reuse_dtype`: the plain mean of V over real keys (what a uniform map gives)."""
    value = value.to(reuse_dtype(value.dtype))
    if key_padding_mask is None:
        return value.mean(-2, keepdim=True)
    real = (~key_padding_mask).to(value.dtype)[:, None, :, None]
    return (value * real).sum(-2, keepdim=True) / real.sum(-2, keepdim=True)


def sdpa(
    query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Mask, scale: float, dropout: float = 0.0
) -> Tensor:
    """`F.scaled_dot_product_attention` (B, H, T, d) with padded keys masked (key_padding_mask (B, T), True = padding)."""
    mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)


def masked_softmax(scores: Tensor, key_padding_mask: Mask) -> Tensor:
    """Float32 softmax over keys of scores (B, H, T, T), padded keys masked, in the scores' dtype."""
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    # dtype= computes in float32 inside the kernel: no float32 copy of a half-precision map.
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)


def attention_with_logsumexp(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Mask,
    scale: float,
    dropout: float = 0.0,
    fused: bool = True,
    size: BlockSize = DEFAULT_BLOCK_SIZE,
) -> tuple[Tensor, Tensor]:
    """SDPA output (B, H, T, d) and the row log-sum-exp (B, H, T), float32, of its scaled, masked scores.

    One fused call (`CPU_FLASH_ATTENTION`) on a CPU without dropout when `fused`; elsewhere SDPA plus
    `logsumexp_blocks` in blocks of `size`. The log-sum-exp carries no gradient: `ResoftmaxReuse`
    differentiates through it.
    """
    if fused and query.device.type == "cpu" and dropout == 0.0 and CPU_FLASH_ATTENTION is not None:
        mask = None if key_padding_mask is None else padding_bias(key_padding_mask, query.dtype)[:, None, None, :]
        output, logsumexp = CPU_FLASH_ATTENTION(query, key, value, attn_mask=mask, scale=scale)
        return output, logsumexp.detach().to(torch.promote_types(logsumexp.dtype, torch.float32))
    output = sdpa(query, key, value, key_padding_mask, scale, dropout)
    return output, logsumexp_blocks(query, key, key_padding_mask, scale, size)


@torch.no_grad()
def logsumexp_blocks(
    query: Tensor, key: Tensor, key_padding_mask: Mask, scale: float, size: BlockSize = DEFAULT_BLOCK_SIZE
) -> Tensor:
    """Row log-sum-exp (B, H, T), float32, of Q K^T * scale with padded keys masked, block by block of rows."""
    batch, heads, time, _ = query.shape
    queries, keys = (query.float() * scale).flatten(0, 1), key.float().flatten(0, 1).transpose(1, 2)
    bias = None
    if key_padding_mask is not None:
        bias = padding_bias(key_padding_mask, torch.float32).repeat_interleave(heads, dim=0)[:, None, :]
    result = query.new_empty(batch * heads, time, dtype=torch.float32)
    with full_precision(query):
        for group, rows in score_blocks(batch * heads, time, query.device, size):
            scores = torch.bmm(queries[group, rows], keys[group])
            if bias is not None:
                scores += bias[group]
            result[group, rows] = torch.logsumexp(scores, dim=-1)
    return result.view(batch, heads, time)


def resoftmax_blocks(
    query: Tensor,
    key: Tensor,
    logsumexp: Tensor,
    value: Tensor,
    key_padding_mask: Mask,
    scale: float,
    size: BlockSize = DEFAULT_BLOCK_SIZE,
) -> tuple[Tensor, Tensor]:
    """The release's reuse, softmax(P) V with P = exp(Q K^T * scale - lse), block by block of query rows.

    query, key, value: (B, H, T, d); logsumexp: (B, H, T). Returns (output (B, H, T, d), softmax denominators
    (B*H, T)), in `reuse_dtype`, autocast off. Padded keys get no weight in either softmax. Peak extra
    memory: one block of scores (`score_blocks` in blocks of `size`).
    """
    batch, heads, time, dim = query.shape
    dtype = reuse_dtype(query.dtype)
    queries, keys = (query.to(dtype) * scale).flatten(0, 1), key.to(dtype).flatten(0, 1).transpose(1, 2)
    values, lse = value.to(dtype).flatten(0, 1), logsumexp.flatten(0, 1)[..., None]
    padded = None if key_padding_mask is None else key_padding_mask.repeat_interleave(heads, 0)[:, None, :]
    output = values.new_empty(batch * heads, time, dim)
    denominators = values.new_empty(batch * heads, time)
    with full_precision(query):
        for group, rows in score_blocks(batch * heads, time, query.device, size):
            numerators = torch.bmm(queries[group, rows], keys[group]).sub_(lse[group, rows]).exp_().exp_()
            if padded is not None:
                numerators.masked_fill_(padded[group], 0.0)
            sums = numerators.sum(-1, keepdim=True)
            output[group, rows] = torch.bmm(numerators, values[group]).div_(sums)
            denominators[group, rows] = sums[..., 0]
    return output.view(batch, heads, time, dim), denominators


class ResoftmaxReuse(torch.autograd.Function):
    """`resoftmax_blocks` with an exact backward that rebuilds the map block by block. It saves Q, K, V, the
    log-sum-exp, output and denominators (O(B*H*T*d), no maps); the log-sum-exp is a function of Q and K,
    so the backward differentiates through it (the computing layer's full softmax backward)."""

    @staticmethod
    def forward(ctx, query, key, logsumexp, value, key_padding_mask, scale, size=DEFAULT_BLOCK_SIZE):
        output, denominators = resoftmax_blocks(query, key, logsumexp, value, key_padding_mask, scale, size)
        ctx.save_for_backward(query, key, value, logsumexp, key_padding_mask, output, denominators)
        ctx.scale, ctx.size = scale, size
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, logsumexp, key_padding_mask, output, denominators = ctx.saved_tensors
        batch, heads, time, dim = query.shape
        work = reuse_dtype(query.dtype)
        plain_query, plain_key, plain_value = (t.to(work).flatten(0, 1) for t in (query, key, value))
        queries, lse = plain_query * ctx.scale, logsumexp.flatten(0, 1)[..., None]
        padded = None if key_padding_mask is None else key_padding_mask.repeat_interleave(heads, 0)[:, None, :]
        grad_output = grad_output.to(work).flatten(0, 1)
        # Softmax backward of the reusing layer needs rowsum(dW * W) = rowsum(dO * O) (as flash attention).
        grad_dot_output = (grad_output * output.flatten(0, 1)).sum(-1, keepdim=True)
        grad_query = torch.empty_like(plain_query)
        grad_key, grad_value = torch.zeros_like(plain_key), torch.zeros_like(plain_value)
        with full_precision(grad_output):
            for group, rows in score_blocks(batch * heads, time, query.device, ctx.size):
                scores = torch.bmm(queries[group, rows], plain_key[group].transpose(1, 2)).sub_(lse[group, rows])
                probabilities = scores.exp_()  # the computing layer's P
                if padded is not None:
                    probabilities.masked_fill_(padded[group], 0.0)
                weights = probabilities.exp().div_(denominators[group, rows, None])  # the reusing layer's W
                if padded is not None:
                    weights.masked_fill_(padded[group], 0.0)
                grad = grad_output[group, rows]
                grad_value[group].baddbmm_(weights.transpose(1, 2), grad)
                # dP = W * (dW - rowsum(dW * W)), then dS = P * (dP - rowsum(dP * P)), in place.
                grad_map = torch.bmm(grad, plain_value[group].transpose(1, 2)).sub_(grad_dot_output[group, rows])
                grad_map.mul_(weights)
                grad_map.sub_((grad_map * probabilities).sum(-1, keepdim=True)).mul_(probabilities)
                grad_query[group, rows] = torch.bmm(grad_map, plain_key[group])
                grad_key[group].baddbmm_(grad_map.transpose(1, 2), plain_query[group, rows])
        grads = [grad_query * ctx.scale, grad_key * ctx.scale, grad_value]
        grads = [grad.view(batch, heads, time, dim).to(t.dtype) for grad, t in zip(grads, (query, key, value))]
        return grads[0], grads[1], None, grads[2], None, None, None


@functools.cache
def compiled_flex_attention() -> Callable:
    """`torch.compile(flex_attention)`, made on the first call off the CPU and kept for the process
    (`compiled_flex_attention.cache_clear()` forgets it)."""
    return torch.compile(flex_attention)


def flex_attention_with_logsumexp(
    query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Mask, scale: float, score_mod: Callable | None = None
) -> tuple[Tensor, Tensor]:
    """`attention_with_logsumexp` through FlexAttention (inference), in one kernel. `score_mod(score, batch,
    head, query_index)` replaces each scaled score before padded keys are masked. Compiled once per process
    on GPUs (eager FlexAttention materialises the scores), eager on a CPU and inside a `torch.compile` graph."""
    if flex_attention is None:
        raise ValueError('attn_implementation="flex_attention" needs torch >= 2.9 (FlexAttention with AuxRequest).')
    flex = flex_attention
    if query.device.type != "cpu" and not torch.compiler.is_compiling():
        flex = compiled_flex_attention()

    def modified_score(score, batch, head, query_index, key_index):
        if score_mod is not None:
            score = score_mod(score, batch, head, query_index)
        if key_padding_mask is None:
            return score
        return torch.where(key_padding_mask[batch, key_index], float("-inf"), score)

    output, aux = flex(query, key, value, score_mod=modified_score, scale=scale, return_aux=AuxRequest(lse=True))
    return output, aux.lse.float()


def flex_resoftmax(
    query: Tensor, key: Tensor, logsumexp: Tensor, value: Tensor, key_padding_mask: Mask, scale: float
) -> Tensor:
    """`resoftmax_blocks`'s output through FlexAttention, in a form that keeps the map's structure in any dtype:
    softmax(P) V = mean(V) + s / (n + s) * (E V / s - mean(V)), E = expm1(P), s = rowsum(E), over the n real
    keys; FlexAttention with score_mod = log(E) gives E V / s and log(s) (docs/speed.md, "Attention without holding the map")."""

    def log_expm1_probability(score, batch, head, query_index):
        return torch.log(torch.expm1(torch.exp(score - logsumexp[batch, head, query_index])))

    mean = real_mean(value, key_padding_mask)
    output, log_sums = flex_attention_with_logsumexp(query, key, value, key_padding_mask, scale, log_expm1_probability)
    with full_precision(query):
        sums = log_sums.exp()[..., None]  # rowsum(E) (B, H, T, 1)
        real = value.shape[-2] if key_padding_mask is None else (~key_padding_mask).sum(-1)[:, None, None, None]
        return mean + sums / (real + sums) * (output.to(mean.dtype) - mean)


def pad_to_multiple(hidden_states: Tensor, key_padding_mask: Mask, multiple: int) -> tuple[Tensor, Mask, int]:
    """(B, T, D) and its (B, T) mask padded with padding frames to a multiple of `multiple` frames (the
    encoder's `required_seq_len_multiple`): (padded states, padded mask, frames added)."""
    pad = -hidden_states.shape[1] % multiple
    if pad == 0:
        return hidden_states, key_padding_mask, 0
    if key_padding_mask is None:
        key_padding_mask = hidden_states.new_zeros(hidden_states.shape[:2], dtype=torch.bool)
    return F.pad(hidden_states, (0, 0, 0, pad)), F.pad(key_padding_mask, (0, pad), value=True), pad


# --------------------------------------------------------------------------------------------------
# Attention paths: what a computing layer computes and hands over, and how a reusing layer applies it,
# with `attention` the calling `ARMHubertAttention` (its scaling, softmax mode, training flag and config), as in
# transformers' attention interface:
# compute(attention, query, key, value, mask, dropout) -> (output (B, H, T, d), Handover or None);
# reuse(attention, handover, value, mask, dropout) -> (output (B, H, T, d), applied weights or None).

Computed = tuple[Tensor, Handover | None]
Reused = tuple[Tensor, Tensor | None]  # the weights (B, H, T, T) only on the explicit path
# What an attention layer (and its encoder layer) returns: output (B, T, D), the Handover for the next layer, weights.
AttentionOutput = tuple[Tensor, Handover | None, Tensor | None]


class AttentionPath(NamedTuple):
    compute: Callable[..., Computed]
    reuse: Callable[..., Reused] | None


def compute_registered(
    attention: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Mask, dropout: float
) -> Computed:
    """A computing layer whose map no later layer reuses, through transformers' `ALL_ATTENTION_FUNCTIONS` under
    `config._attn_implementation`: its SDPA for "sdpa" (the same call as `sdpa`; also for FlexAttention under
    autograd), or a function registered with `AttentionInterface.register`. Called as transformers' models call
    it: (B, H, T, d) inputs, a boolean (B, 1, 1, T) mask (True = attend), output (B, T, H, d)."""
    name = attention.config._attn_implementation
    function = ALL_ATTENTION_FUNCTIONS["sdpa" if name in (None, "flex_attention") else name]
    keep = None if mask is None else ~mask[:, None, None, :]
    output, _ = function(
        attention, query, key, value, keep, dropout=dropout, scaling=attention.scaling, is_causal=False
    )
    return output.transpose(1, 2), None


def compute_flex_without_handover(
    attention: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Mask, dropout: float
) -> Computed:
    """A computing layer whose map nobody reuses, through FlexAttention (inference without dropout only)."""
    return flex_attention_with_logsumexp(query, key, value, mask, attention.scaling)[0], None


def compute_map(
    attention: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Mask, dropout: float
) -> Computed:
    """The explicit path: the probability map (B, H, T, T), handed over and returned as the layer's weights."""
    probabilities = masked_softmax(torch.matmul(query * attention.scaling, key.transpose(-1, -2)), mask)
    output = torch.matmul(F.dropout(probabilities, dropout, attention.training), value)
    return output, Handover(map=probabilities)


def reuse_map(attention: nn.Module, handover: Handover, value: Tensor, mask: Mask, dropout: float) -> Reused:
    """The computing layer's map, after the release's second softmax in "resoftmax" mode, in `reuse_dtype`."""
    dtype = reuse_dtype(value.dtype)
    with full_precision(value):
        weights = handover.map.to(dtype)
        if attention.reuse_softmax == "resoftmax":
            weights = masked_softmax(weights, mask)
        return torch.matmul(F.dropout(weights, dropout, attention.training), value.to(dtype)), weights


def compute_query_key(
    attention: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Mask, dropout: float
) -> Computed:
    """SDPA, handing over Q and K: the reusing layer's SDPA makes the same probabilities (probabilities mode)."""
    return sdpa(query, key, value, mask, attention.scaling, dropout), Handover(query=query, key=key)


def reuse_query_key(attention: nn.Module, handover: Handover, value: Tensor, mask: Mask, dropout: float) -> Reused:
    return sdpa(handover.query, handover.key, value, mask, attention.scaling, dropout), None


def compute_logsumexp(
    attention: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Mask, dropout: float
) -> Computed:
    """SDPA and its log-sum-exp (`attention_with_logsumexp`), handing over Q, K and the log-sum-exp."""
    config = attention.config
    output, logsumexp = attention_with_logsumexp(
        query, key, value, mask, attention.scaling, dropout, config.fused_cpu_attention, BlockSize.of(config)
    )
    return output, Handover(query=query, key=key, logsumexp=logsumexp)


def reuse_logsumexp(attention: nn.Module, handover: Handover, value: Tensor, mask: Mask, dropout: float) -> Reused:
    """The release's second softmax over the rebuilt map; exact gradients through `ResoftmaxReuse` (no dropout)."""
    size = BlockSize.of(attention.config)
    arguments = (handover.query, handover.key, handover.logsumexp, value, mask, attention.scaling, size)
    if torch.is_grad_enabled() and any(tensor.requires_grad for tensor in (handover.query, handover.key, value)):
        return ResoftmaxReuse.apply(*arguments), None
    return resoftmax_blocks(*arguments)[0], None


def compute_flex_logsumexp(
    attention: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Mask, dropout: float
) -> Computed:
    """`compute_logsumexp` through FlexAttention (inference without dropout only)."""
    output, logsumexp = flex_attention_with_logsumexp(query, key, value, mask, attention.scaling)
    return output, Handover(query=query, key=key, logsumexp=logsumexp)


def reuse_flex_logsumexp(attention: nn.Module, handover: Handover, value: Tensor, mask: Mask, dropout: float) -> Reused:
    return flex_resoftmax(handover.query, handover.key, handover.logsumexp, value, mask, attention.scaling), None


# (handover, implementation) -> path; an implementation without an entry of its own takes the "sdpa" one
# (the encoder turns "eager" into "map" handovers everywhere and FlexAttention with autograd into "sdpa").
# Without a handover, "sdpa" calls transformers' registered function for the implementation.
ATTENTION_PATHS = {
    (None, "sdpa"): AttentionPath(compute_registered, None),
    (None, "flex_attention"): AttentionPath(compute_flex_without_handover, None),
    ("map", "sdpa"): AttentionPath(compute_map, reuse_map),
    ("probabilities", "sdpa"): AttentionPath(compute_query_key, reuse_query_key),
    ("logsumexp", "sdpa"): AttentionPath(compute_logsumexp, reuse_logsumexp),
    ("logsumexp", "flex_attention"): AttentionPath(compute_flex_logsumexp, reuse_flex_logsumexp),
}


def attention_path(handover: str | None, implementation: str) -> AttentionPath:
    """The `ATTENTION_PATHS` entry for a handover ("map", "logsumexp", "probabilities" or None) and implementation."""
    return ATTENTION_PATHS.get((handover, implementation)) or ATTENTION_PATHS[(handover, "sdpa")]


def exporting() -> bool:
    """Whether the model is being traced for export (`torch.export`, the dynamo ONNX exporter, or the TorchScript one)."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def padded_or_none(key_padding_mask: Mask) -> Mask:
    """key_padding_mask (B, T) bool, True = padding, or None where it pads nothing and reading it costs nothing: on a
    CPU, outside compiled and exported graphs (an all-real mask changes no number; None takes the unmasked kernels).
    An accelerator would wait for the device at every step to read it."""
    if key_padding_mask is None or torch.compiler.is_compiling() or key_padding_mask.device.type != "cpu":
        return key_padding_mask
    return key_padding_mask if bool(key_padding_mask.any()) else None


def small_map(config: ARMHubertConfig, batch: int, time: int) -> bool:
    """Whether a (B, H, T, T) map has at most `config.explicit_map_elements` elements (never asked while exporting:
    the answer would fix the batch size of the graph)."""
    return batch * config.num_attention_heads * time**2 <= config.explicit_map_elements


def choose_attention(
    config: ARMHubertConfig, hidden_states: Tensor, grad: bool, training: bool, output_attentions: bool
) -> tuple[AttentionPath, AttentionPath]:
    """The attention of one encoder forward over hidden_states (B, T, D): (pair path, lone path).

    The pair path serves the computing layers whose map the next layer reuses and the reusing layers;
    the lone path the other computing layers (no handover: transformers' registered function for
    `config._attn_implementation`, SDPA by default, or FlexAttention). `grad`: autograd reaches the encoder.
    - Returned or asked-for maps (`output_attentions`, "eager") make both explicit.
    - "resoftmax" under autograd holds the map, unless `reuse_recompute_backward` (without reuse dropout)
      rebuilds it in the backward; on a CPU a map of at most `explicit_map_elements` stays in cache and
      is held too; else the reusing layer rebuilds it from Q, K (and the log-sum-exp in "resoftmax").
    - FlexAttention has no backward: autograd and attention dropout take SDPA.
    - Export (`exporting`) takes the paths that trace to public ops with no shape-dependent branch: explicit maps
      for the pairs, SDPA for the lone layers (the fused CPU kernel and the block loops would fix the batch
      size or mis-export; docs/deployment.md). FlexAttention exports as SDPA.
    """
    if output_attentions or config._attn_implementation == "eager":
        explicit = attention_path("map", "sdpa")
        return explicit, explicit
    implementation = config._attn_implementation
    if grad or (training and config.attention_dropout > 0) or exporting():
        implementation = "sdpa"  # FlexAttention has no backward here
    lone = attention_path(None, implementation)
    if not any(config.layer_reuses_attention_map):
        return lone, lone
    resoftmax = config.reuse_softmax == "resoftmax"
    reuse_dropout = config.reuse_attention_dropout if training else 0.0
    batch, time, _ = hidden_states.shape
    if exporting():
        handover = "map"  # public ops without shape-dependent branches (as exported graphs always had at 1 s)
    elif resoftmax and grad and (not config.reuse_recompute_backward or reuse_dropout > 0):
        handover = "map"  # autograd through the saved map (`ResoftmaxReuse` has no dropout)
    elif hidden_states.device.type == "cpu" and small_map(config, batch, time):
        handover = "map"  # a map this small stays in cache: holding it beats rebuilding it
    else:
        handover = "logsumexp" if resoftmax else "probabilities"
    return attention_path(handover, implementation), lone


# --------------------------------------------------------------------------------------------------
# Reentrant checkpointing: it tracks only a layer's positional tensors, not the `Handover`, so it would drop the
# reused map's gradient or double it. Refused in one line by every route where maps are reused.

REENTRANT_CHECKPOINTING = (
    "Reentrant activation checkpointing loses the gradients of reused attention maps: checkpoint with "
    'use_reentrant=False, i.e. activation_checkpointing_kwargs={"use_reentrant": False} '
    '(TrainingArguments: gradient_checkpointing_kwargs={"use_reentrant": False}; torch\'s checkpoint_wrapper: '
    "checkpoint_impl=CheckpointImpl.NO_REENTRANT)."
)


def check_checkpointing(config: ARMHubertConfig, gradient_checkpointing_func: Callable | None) -> None:
    """Refuse, when checkpointing is enabled through transformers, a reentrant `gradient_checkpointing_func` (a
    partial of torch's `checkpoint`; reentrant unless it says use_reentrant=False) for a model that reuses maps."""
    keywords = getattr(gradient_checkpointing_func, "keywords", {})
    reentrant = keywords.get("use_reentrant") is not False  # torch's default (with a warning)
    if reentrant and any(config.layer_reuses_attention_map):
        raise ValueError(REENTRANT_CHECKPOINTING)


def check_not_reentrant(hidden_states: Tensor) -> None:
    """Refuse a reusing layer's input (B, T, D) that needs a gradient while autograd is off: only reentrant
    checkpointing runs a layer so (torch's `checkpoint_wrapper`, or any route around `check_checkpointing`)."""
    if hidden_states.requires_grad and not torch.is_grad_enabled():
        raise ValueError(REENTRANT_CHECKPOINTING)
