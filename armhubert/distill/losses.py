"""Distillation losses: masking distillation (crossed targets), plain regression and STaR.

All losses take lists of (B, T, *) tensors, one per distilled layer, and `valid` (B, T) bool
(True = real frame). They return (loss, parts) where parts are detached, unweighted sums for logging.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint as recompute_in_backward


def _total(values, like):
    """Sum of a list of 0-d tensors (0 on like's device when the list is empty)."""
    return torch.stack(values).sum() if values else torch.zeros((), device=like.device)


def _frame_error(prediction, target, loss_type):
    """Per-frame error (B, T): mean over channels of the squared (mse) or absolute (l1) difference."""
    difference = prediction.float() - target.float()
    if loss_type == "mse":
        return difference.square().mean(-1)
    if loss_type == "l1":
        return difference.abs().mean(-1)
    raise ValueError(f"loss_type must be 'mse' or 'l1', got {loss_type!r}")


def layer_weights(num_layers: int, hint_weight: float = 0.1, last_weight: float = 1.0) -> list[float]:
    """0.1 for the hint layers 1..L-1, 1.0 for the last layer (the release's weights)."""
    return [hint_weight] * (num_layers - 1) + [last_weight]


def masking_distillation_loss(
    student: Sequence[Tensor],
    teacher_unmasked: Sequence[Tensor],
    teacher_masked: Sequence[Tensor],
    mask: Tensor,
    valid: Tensor,
    weights: Sequence[float],
    loss_type: str = "mse",
    normalization: str = "valid",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Masking distillation with crossed targets (the release's algorithm: docs/distillation.md).

    Masked frames regress the teacher's output on clean input, unmasked frames the teacher's output
    on masked input. `normalization="valid"` leaves padded frames out and divides by the number of
    real frames; `"original"` reproduces the release: every frame is in the masked or the unmasked
    set (padded frames count as unmasked, and masked frames that `valid` calls padding, which the
    release's frame rule can mask, as masked) and the sums are divided by B*T.
    """
    if normalization == "valid":
        masked_frames, unmasked_frames, denominator = mask & valid, valid & ~mask, valid.sum().clamp(min=1)
    elif normalization == "original":
        masked_frames, unmasked_frames, denominator = mask, ~mask, mask.numel()
    else:
        raise ValueError(f"loss_normalization must be 'valid' or 'original', got {normalization!r}")
    total = 0.0
    masked_parts, unmasked_parts = [], []
    for prediction, clean, masked, weight in zip(student, teacher_unmasked, teacher_masked, weights):
        loss_masked = (_frame_error(prediction, clean, loss_type) * masked_frames).sum() / denominator
        loss_unmasked = (_frame_error(prediction, masked, loss_type) * unmasked_frames).sum() / denominator
        total = total + weight * (loss_masked + loss_unmasked)
        masked_parts.append(loss_masked.detach())
        unmasked_parts.append(loss_unmasked.detach())
    parts = {
        "hint_masked": _total(masked_parts[:-1], masked_parts[-1]),
        "hint_unmasked": _total(unmasked_parts[:-1], unmasked_parts[-1]),
        "rec_masked": masked_parts[-1],
        "rec_unmasked": unmasked_parts[-1],
    }
    return total, parts


def regression_loss(
    student: Sequence[Tensor],
    teacher: Sequence[Tensor],
    valid: Tensor,
    weights: Sequence[float],
    loss_type: str = "mse",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Plain layer-to-layer regression over real frames (the baseline, and validation of masking runs)."""
    denominator = valid.sum().clamp(min=1)
    total, per_layer = 0.0, []
    for prediction, target, weight in zip(student, teacher, weights):
        loss = (_frame_error(prediction, target, loss_type) * valid).sum() / denominator
        total = total + weight * loss
        per_layer.append(loss.detach())
    return total, {"hint": _total(per_layer[:-1], per_layer[-1]), "rec": per_layer[-1]}


STAR_NORMALIZATIONS = ("l2", "dim", "none")
STAR_REDUCTIONS = ("mean", "sum")
# What F[0] of the first intra-layer Gram is: the encoder input (after the positional convolution and,
# post-LN, its LayerNorm) or the CNN features as the transformer receives them (after the feature
# LayerNorm and projection to the model width, before the positional convolution).
STAR_LAYER0 = ("encoder-input", "cnn")


def temporal_gram(first: Tensor, second: Tensor, normalization: str = "l2") -> Tensor:
    """(B, T, d) x (B, T, d) -> (B, T, T) Gram F1 F2^T over time, in float32.

    "l2": frames scaled to unit norm (cosine similarities: independent of width and scale);
    "dim": divided by the width d; "none": raw inner products.
    """
    first, second = first.float(), second.float()
    if normalization == "l2":
        first, second = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
    with torch.autocast(first.device.type, enabled=False):  # raw Grams overflow fp16; keep float32
        gram = torch.matmul(first, second.transpose(1, 2))
    if normalization == "dim":
        gram = gram / first.shape[-1]
    elif normalization not in STAR_NORMALIZATIONS:
        raise ValueError(f"star_normalization must be one of {STAR_NORMALIZATIONS}, got {normalization!r}")
    return gram


def _gram_distance(teacher_a, teacher_b, student_a, student_b, pair_valid, normalization, reduction):
    """Squared distance between teacher and student Grams over the real (t, t') pairs."""
    difference = temporal_gram(teacher_a, teacher_b, normalization) - temporal_gram(student_a, student_b, normalization)
    squared = (difference.square() * pair_valid).sum()
    if reduction == "mean":
        return squared / pair_valid.sum().clamp(min=1)
    if reduction == "sum":
        return squared / pair_valid.shape[0]
    raise ValueError(f"star_reduction must be one of {STAR_REDUCTIONS}, got {reduction!r}")


def star_loss(
    student: Sequence[Tensor],
    teacher: Sequence[Tensor],
    valid: Tensor,
    normalization: str = "l2",
    reduction: str = "mean",
    layer_weight: float = 1.0,
    intra_weight: float = 1.0,
    recompute: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """STaR: layer-wise and intra-layer temporal Gram matrix losses.

    Args:
        student, teacher: L+1 tensors (B, T, d_s) and (B, T, d_t): layer 0 (the encoder input or the
            CNN output, see `STAR_LAYER0`), then one output per distilled layer (widths may differ: Grams
            are T x T).
        valid: (B, T) bool; padded frames are excluded on both time axes.
        normalization: "l2" (default), "dim" or "none", see `temporal_gram`.
        reduction: "mean" over the real (t, t') entries of the batch (default), or "sum" over them
            per utterance, averaged over the batch.
        layer_weight, intra_weight: weights of the layer-wise sum_l ||G_T[l] - G_S[l]||^2 and the
            intra-layer sum_l ||F_T[l-1] F_T[l]^T - F_S[l-1] F_S[l]^T||^2.
        recompute: recompute each layer's Grams in the backward pass instead of keeping them, so
            memory is O(B T^2) for one layer rather than for all layers.
    """
    pair_valid = (valid[:, :, None] & valid[:, None, :]).float()

    def distance(t_a, t_b, s_a, s_b):
        if recompute and torch.is_grad_enabled() and (s_a.requires_grad or s_b.requires_grad):
            return recompute_in_backward(
                _gram_distance, t_a, t_b, s_a, s_b, pair_valid, normalization, reduction, use_reentrant=False
            )
        return _gram_distance(t_a, t_b, s_a, s_b, pair_valid, normalization, reduction)

    layerwise, intra = 0.0, 0.0
    for layer in range(1, len(student)):
        layerwise = layerwise + distance(teacher[layer], teacher[layer], student[layer], student[layer])
        intra = intra + distance(teacher[layer - 1], teacher[layer], student[layer - 1], student[layer])
    total = layer_weight * layerwise + intra_weight * intra
    return total, {"star_layerwise": layerwise.detach(), "star_intra": intra.detach()}
