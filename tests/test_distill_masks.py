"""The span-mask sampler of masking distillation (as the original release draws them)."""

import numpy as np
import pytest

from armhubert.distill.masks import SpanMasker, _place_spans, _span_lengths, release_real_frames, sample_span_mask


def _runs(row):
    """(start, length) of the runs of True in a boolean row."""
    padded = np.concatenate([[False], row, [False]]).astype(int)
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1)
    return list(zip(starts, ends - starts))


@pytest.mark.parametrize("min_space", [1, 3])
def test_spans_never_overlap_or_touch_and_stay_inside(min_space):
    rng = np.random.default_rng(0)
    for _ in range(300):
        valid = int(rng.integers(20, 800))
        spans = sorted(_place_spans(valid, _span_lengths(valid, 0.8, 10, 2, rng), min_space, rng))
        assert spans, "at least one span fits in 20+ frames"
        for (start, length), (next_start, _) in zip(spans, spans[1:]):
            assert next_start >= start + length + min_space
        last_start, last_length = spans[-1]
        assert spans[0][0] >= 0 and last_start + last_length + min_space <= valid


def test_padding_never_masked_and_last_valid_frame_free():
    rng = np.random.default_rng(1)
    lengths = [50, 120, 300, 299, 400]
    for _ in range(50):
        mask = sample_span_mask(lengths, 400, 0.8, rng=rng, same_count=False)
        for row, valid in zip(mask, lengths):
            assert not row[valid - 1 :].any()
            # Every run of the row is one placed span (spans never touch), so lengths are 1..20.
            assert all(1 <= length <= 20 for _, length in _runs(row))


def test_span_counts_and_lengths_follow_the_spec():
    rng = np.random.default_rng(2)
    assert all(len(_span_lengths(25, 0.1, 10, 2, rng)) == 2 for _ in range(100))  # at least 2 spans
    # int(p * L / 10 + U[0,1)): 0.8 * 505 / 10 = 40.4 -> 40 or 41 spans, 41 with probability 0.4.
    counts = [len(_span_lengths(505, 0.8, 10, 2, rng)) for _ in range(4000)]
    assert set(counts) == {40, 41} and abs(np.mean(counts) - 40.4) < 0.03
    lengths = np.concatenate([_span_lengths(1000, 0.8, 10, 2, rng) for _ in range(200)])
    assert lengths.min() == 0 and lengths.max() == 20
    assert abs(lengths.mean() - 10) < 0.15
    assert np.histogram(lengths, bins=21, range=(-0.5, 20.5))[0].min() > 0.8 * len(lengths) / 21


@pytest.mark.parametrize("mask_prob, low, high", [(0.8, 0.75, 0.81), (0.4, 0.37, 0.43)])
def test_masked_fraction_matches_the_release(mask_prob, low, high):
    # 4-20 s utterances at 50 frames/s: about 75-80 % masked at p = 0.8, about 40 % at p = 0.4.
    rng = np.random.default_rng(3)
    masked = total = 0
    for _ in range(40):
        lengths = rng.integers(200, 1001, size=16)
        mask = sample_span_mask(lengths, 1000, mask_prob, rng=rng, same_count=False)
        masked += mask.sum()
        total += lengths.sum()
    assert low < masked / total < high


def test_rows_are_thinned_to_the_batch_minimum():
    rng = np.random.default_rng(4)
    lengths = [60, 250, 500, 800]
    unthinned = sample_span_mask(lengths, 800, 0.8, rng=np.random.default_rng(5), same_count=False)
    mask = sample_span_mask(lengths, 800, 0.8, rng=np.random.default_rng(5))
    counts = mask.sum(1)
    assert len(set(counts)) == 1 and counts[0] == unthinned.sum(1).min() > 0
    assert not (mask & ~unthinned).any(), "thinning only removes masked frames"
    for _ in range(20):
        assert len(set(sample_span_mask(lengths, 800, 0.4, rng=rng).sum(1))) == 1


def test_deterministic_under_a_seed():
    lengths = [100, 200, 300]
    first = sample_span_mask(lengths, 300, 0.8, rng=np.random.default_rng(7))
    again = sample_span_mask(lengths, 300, 0.8, rng=np.random.default_rng(7))
    other = sample_span_mask(lengths, 300, 0.8, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()

    masker = SpanMasker([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2], 0.8, seed=0)
    samples = [32000, 48000, 64000]
    batch = masker(samples, 64000, ["a", "b", "c"], epoch=0)
    assert batch.shape == (3, 199) and batch.dtype.is_floating_point is False  # 64000 samples -> 199 frames
    assert (batch == masker(samples, 64000, ["a", "b", "c"], epoch=0)).all()
    assert (batch != masker(samples, 64000, ["a", "b", "c"], epoch=1)).any()
    assert (
        batch != SpanMasker([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2], 0.8, seed=1)(samples, 64000, ["a", "b", "c"])
    ).any()
    assert not batch[0, release_real_frames([32000], 64000, 199)[0] - 1 :].any()


class _ZeroLengths:
    """A generator whose every span length comes out 0."""

    def random(self, size=None):
        return 0.5 if size is None else np.full(size, 0.5)

    def integers(self, low, high, size, endpoint):
        return np.zeros(size, dtype=int)


def test_all_zero_span_lengths_fall_back_to_one_mean_length_span():
    assert sorted(_span_lengths(30, 0.4, 10, 2, _ZeroLengths())) == [0, 10]
    assert sorted(_span_lengths(6, 0.4, 10, 2, _ZeroLengths())) == [0, 5]  # at most valid - 1 frames
    # Short rows at p = 0.4 draw 2 spans, both of length 0 once in 441 rows: never an unmasked row,
    # and so (equal counts per row) never an unmasked batch.
    rng = np.random.default_rng(9)
    rows = sample_span_mask([30] * 5000, 30, 0.4, rng=rng, same_count=False)
    assert rows.any(axis=1).all()
    assert all(sample_span_mask([30, 40, 45] * 5, 45, 0.4, rng=rng).any() for _ in range(300))


def _fairseq_real_frames(num_samples, padded_samples, num_frames):
    """Written from the rule: chunks of padded // frames samples, a frame is padding only if all of its chunk is."""
    padding = np.arange(padded_samples) >= num_samples
    chunk = padded_samples // num_frames
    return int((~padding[: num_frames * chunk].reshape(num_frames, chunk).all(axis=1)).sum())


def test_masks_count_real_frames_as_the_original_teacher():
    masker = SpanMasker([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2], 0.8, seed=0)
    padded = 64000
    frames = masker.frames(padded)  # 199 frames of 321 samples
    lengths = [padded, 32000, 40030, 48010]
    release = release_real_frames(lengths, padded, frames)
    assert release == [_fairseq_real_frames(n, padded, frames) for n in lengths] == [199, 100, 125, 150]
    convolution = [masker.frames(n) for n in lengths]
    assert convolution == [199, 99, 124, 149]  # one frame fewer on every row but the longest
    reached = np.zeros(len(lengths), dtype=bool)
    for epoch in range(200):
        mask = masker(lengths, padded, ["a", "b", "c", "d"], epoch=epoch).numpy()
        for row, real in enumerate(release):
            assert not mask[row, real - 1 :].any()  # the last real frame (by the release's rule) is never masked
            reached[row] |= mask[row, convolution[row] - 1]
    # The frame before it, the last frame the convolution formula leaves real, is masked now and then.
    assert reached[1:].all()


def test_persistent_data_loader_workers_draw_each_epochs_masks():
    """Workers that live for the whole run (dataloader_persistent_workers) hold one copy of the collator: the
    epoch the trainer sets must still reach them, or every epoch replays epoch 0's masks."""
    import torch
    from torch.utils.data import DataLoader

    from armhubert.resources import BUNDLED_CORPUS
    from armhubert.speech.librispeech import AudioCollator, load_librispeech
    from pipeline_armhubert import release_feature_extractor

    dataset = load_librispeech(BUNDLED_CORPUS.parent, "dev-clean").select(range(4))
    masker = SpanMasker([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2], 0.8, seed=0)
    collator = AudioCollator(release_feature_extractor(), max_samples=16000, masker=masker)
    loader = DataLoader(dataset, batch_size=4, collate_fn=collator, num_workers=1, persistent_workers=True)
    masks = []
    for epoch in range(3):
        collator.epoch = epoch  # what the trainer's callback does at each epoch's start
        masks.append(next(iter(loader))["mask_time_indices"])
    in_process = [masker([16000] * 4, 16000, dataset["id"], epoch) for epoch in range(3)]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    for got, expected in zip(masks, in_process):
        assert torch.equal(got, expected)
