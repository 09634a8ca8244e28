"""Distillation losses against hand-computed values; STaR invariances (padding, student width)."""

import pytest
import torch

from armhubert.distill.losses import layer_weights, masking_distillation_loss, regression_loss, star_loss, temporal_gram


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)[None]  # (1, T, D)


# One utterance, 4 frames (the last is padding), 2 channels, 2 layers (hint, last); frame 0 masked.
VALID = torch.tensor([[True, True, True, False]])
MASK = torch.tensor([[True, False, False, False]])
STUDENT = [t([[1, 1], [0, 0], [2, 0], [5, 5]]), t([[0, 0], [0, 0], [0, 0], [0, 0]])]
CLEAN = [t([[0, 0], [0, 0], [0, 0], [0, 0]]), t([[2, 2], [0, 0], [0, 0], [0, 0]])]
MASKED = [t([[9, 9], [1, 1], [2, 2], [0, 0]]), t([[0, 0], [3, 3], [0, 0], [1, 1]])]


def test_layer_weights_are_the_release_weights():
    assert layer_weights(12) == [0.1] * 11 + [1.0]
    assert layer_weights(3, 0.5, 2.0) == [0.5, 0.5, 2.0]


def test_masking_loss_crossed_targets_valid_normalisation():
    # Layer 1: masked frame 0 vs clean: (1+1)/2 = 1; unmasked frames 1, 2 vs masked teacher: 1 and 2.
    # Layer 2: masked 4; unmasked 9 and 0. Padded frame 3 excluded, divided by 3 real frames.
    loss, parts = masking_distillation_loss(STUDENT, CLEAN, MASKED, MASK, VALID, [0.1, 1.0])
    assert loss.item() == pytest.approx(0.1 * (1 / 3 + 3 / 3) + (4 / 3 + 9 / 3))
    assert parts["hint_masked"].item() == pytest.approx(1 / 3)
    assert parts["hint_unmasked"].item() == pytest.approx(1.0)
    assert parts["rec_masked"].item() == pytest.approx(4 / 3)
    assert parts["rec_unmasked"].item() == pytest.approx(3.0)


def test_masking_loss_original_normalisation_counts_padding():
    # The release: the padded frame joins the unmasked set (errors 25 and 1) and sums are divided by B*T = 4.
    loss, parts = masking_distillation_loss(STUDENT, CLEAN, MASKED, MASK, VALID, [0.1, 1.0], normalization="original")
    assert loss.item() == pytest.approx(0.1 * (1 / 4 + 28 / 4) + (4 / 4 + 10 / 4))
    assert parts["hint_unmasked"].item() == pytest.approx(7.0)


def test_masking_loss_l1():
    loss, _ = masking_distillation_loss(STUDENT, CLEAN, MASKED, MASK, VALID, [0.1, 1.0], loss_type="l1")
    assert loss.item() == pytest.approx(0.1 * (1 / 3 + 2 / 3) + (2 / 3 + 3 / 3))


def test_masking_loss_gradient_reaches_only_real_frames():
    student = [s.clone().requires_grad_(True) for s in STUDENT]
    loss, _ = masking_distillation_loss(student, CLEAN, MASKED, MASK, VALID, [0.1, 1.0])
    loss.backward()
    assert all(s.grad[0, 3].abs().sum() == 0 for s in student)
    assert student[0].grad[0, 0].abs().sum() > 0


def test_regression_loss():
    loss, parts = regression_loss(STUDENT, CLEAN, VALID, [0.1, 1.0])
    assert loss.item() == pytest.approx(0.1 * (1 + 0 + 2) / 3 + (4 + 0 + 0) / 3)
    assert parts["hint"].item() == pytest.approx(1.0) and parts["rec"].item() == pytest.approx(4 / 3)


def test_star_loss_hand_computed():
    # Raw Grams, T = 2, d = 1. Layer-wise: G_T = [[1,0],[0,0]], G_S = [[1,1],[1,1]] -> 3 / 4 entries.
    # Intra: F0 F1^T: teacher [[1,0],[2,0]], student [[0,0],[1,1]] -> 3 / 4 entries.
    teacher = [t([[1], [2]]), t([[1], [0]])]
    student = [t([[0], [1]]), t([[1], [1]])]
    valid = torch.tensor([[True, True]])
    loss, parts = star_loss(student, teacher, valid, normalization="none")
    assert loss.item() == pytest.approx(1.5)
    assert parts["star_layerwise"].item() == pytest.approx(0.75) and parts["star_intra"].item() == pytest.approx(0.75)
    weighted, _ = star_loss(student, teacher, valid, normalization="none", layer_weight=2.0, intra_weight=0.5)
    assert weighted.item() == pytest.approx(2.0 * 0.75 + 0.5 * 0.75)
    summed, _ = star_loss(student, teacher, valid, normalization="none", reduction="sum")
    assert summed.item() == pytest.approx(6.0)
    # Second frame padded: only the (0, 0) entry counts: layer-wise 0, intra (1 - 0)^2 = 1.
    padded, _ = star_loss(student, teacher, torch.tensor([[True, False]]), normalization="none")
    assert padded.item() == pytest.approx(1.0)


def test_temporal_gram_normalisations():
    features = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])
    torch.testing.assert_close(temporal_gram(features, features, "none"), torch.tensor([[[25.0, 3.0], [3.0, 1.0]]]))
    torch.testing.assert_close(temporal_gram(features, features, "dim"), torch.tensor([[[12.5, 1.5], [1.5, 0.5]]]))
    torch.testing.assert_close(temporal_gram(features, features, "l2"), torch.tensor([[[1.0, 0.6], [0.6, 1.0]]]))


def _layers(batch, frames, width, count, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, frames, width, generator=generator) for _ in range(count)]


@pytest.mark.parametrize("normalization", ["l2", "dim", "none"])
def test_star_loss_unaffected_by_padding(normalization):
    lengths = [7, 4]
    teacher = _layers(2, 7, 6, 3, seed=0)
    student = _layers(2, 7, 5, 3, seed=1)
    valid = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    loss, _ = star_loss(student, teacher, valid, normalization=normalization)
    # Garbage in the padded frames changes nothing.
    noisy = [s.clone() for s in student]
    for s in noisy:
        s[1, 4:] = 1e3
    assert star_loss(noisy, teacher, valid, normalization=normalization)[0].item() == pytest.approx(
        loss.item(), rel=1e-6
    )
    # And the batch equals its utterances run alone, unpadded (mean over all real (t, t') pairs).
    sums = [
        star_loss(
            [s[i : i + 1, :n] for s in student],
            [x[i : i + 1, :n] for x in teacher],
            torch.ones(1, n, dtype=torch.bool),
            normalization=normalization,
            reduction="sum",
        )[0].item()
        for i, n in enumerate(lengths)
    ]
    assert loss.item() == pytest.approx(sum(sums) / sum(n * n for n in lengths), rel=1e-5)


def test_star_loss_unaffected_by_student_width():
    teacher = _layers(2, 9, 8, 4, seed=2)
    valid = torch.ones(2, 9, dtype=torch.bool)
    losses = []
    for width in (8, 24, 40):
        # The teacher's features embedded isometrically in a wider space: same cosine Grams.
        basis, _ = torch.linalg.qr(torch.randn(width, 8, generator=torch.Generator().manual_seed(width)))
        student = [f @ basis.T for f in teacher]
        assert star_loss(student, teacher, valid)[0].item() == pytest.approx(0.0, abs=1e-6)
        other = _layers(2, 9, 8, 4, seed=3)
        losses.append(star_loss([f @ basis.T for f in other], teacher, valid)[0].item())
    assert losses[0] > 0.1 and losses == pytest.approx([losses[0]] * 3, rel=1e-5)


def test_star_recompute_gives_the_same_value_and_gradient():
    teacher = _layers(2, 6, 8, 3, seed=4)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    grads = []
    for recompute in (False, True):
        student = [s.requires_grad_(True) for s in _layers(2, 6, 5, 3, seed=5)]
        loss, _ = star_loss(student, teacher, valid, recompute=recompute)
        loss.backward()
        grads.append((loss.item(), [s.grad for s in student]))
    assert grads[0][0] == pytest.approx(grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)
    assert grads[0][1][1][1, 4:].abs().sum() == 0, "no gradient into padded frames"


def test_star_grams_stay_float32_under_mixed_precision():
    # Raw Grams of 768-wide features reach thousands: half-precision Grams (and their squares) would not do.
    teacher = [30 * f for f in _layers(1, 5, 768, 2, seed=6)]
    student = [30 * f for f in _layers(1, 5, 768, 2, seed=7)]
    valid = torch.ones(1, 5, dtype=torch.bool)
    reference, _ = star_loss(student, teacher, valid, normalization="none")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = star_loss([s.bfloat16() for s in student], teacher, valid, normalization="none")
        gram = temporal_gram(student[0], student[0], "none")
    assert mixed.dtype == gram.dtype == torch.float32
    assert mixed.item() == pytest.approx(reference.item(), rel=1e-2)


def test_original_normalisation_counts_a_masked_frame_the_frame_rule_calls_padding():
    # The release's frame rule can mask frame 3, which `valid` (the convolution formula) calls padding:
    # the release puts it in the masked set (error vs clean: 25 and 1), the valid normalisation drops it.
    mask = torch.tensor([[True, False, False, True]])
    loss, parts = masking_distillation_loss(STUDENT, CLEAN, MASKED, mask, VALID, [0.1, 1.0], normalization="original")
    assert parts["hint_masked"].item() == pytest.approx((1 + 25) / 4)
    assert loss.item() == pytest.approx(0.1 * (26 / 4 + 3 / 4) + (4 / 4 + 9 / 4))
    loss, parts = masking_distillation_loss(STUDENT, CLEAN, MASKED, mask, VALID, [0.1, 1.0])
    assert parts["hint_masked"].item() == pytest.approx(1 / 3) and parts["hint_unmasked"].item() == pytest.approx(1.0)
