"""Chunked long-audio encoding: windows cover the frame grid exactly once, and stitched frames keep their indices."""

import random

import pytest
import soundfile
import soxr
import torch
from helpers import random_model, tiny_config, waveform

from armhubert.speech.audio import header_num_samples, read_audio
from armhubert.speech.chunking import file_window_reader
from pipeline_armhubert import chunk_windows, encode_chunked, encode_windows, num_frames, plan_windows, window_samples

# A CNN without normalisation across time: a window's CNN features are the whole input's, frame for frame.
LOCAL_CNN = dict(feat_extract_norm="layer", conv_dim=[32, 32, 32, 32, 32, 32, 40, 40, 40], conv_bias=True)
# Other kernel / stride stacks (total strides 80, 60 and 320), receptive fields 155, 100 and 400.
CNN_SHAPES = [
    dict(conv_dim=[8, 8, 8], conv_kernel=[5, 3, 3], conv_stride=[5, 4, 4]),
    dict(conv_dim=[8, 8, 8, 8], conv_kernel=[10, 4, 2, 3], conv_stride=[5, 3, 2, 2]),
    {},
]


def test_windows_keep_every_frame_once_with_their_context():
    generator = random.Random(0)
    for _ in range(500):
        window = generator.randint(1, 60)
        left, right = generator.randint(0, (window - 1) // 2), generator.randint(0, (window - 1) // 2)
        total = generator.randint(1, 400)
        windows = plan_windows(total, window, left, right)
        kept = [frame for w in windows for frame in range(w.keep_start, w.keep_end)]
        assert kept == list(range(total))
        for position, w in enumerate(windows):
            assert 0 <= w.start and w.start + w.frames <= total and w.frames == min(window, total)
            assert w.start <= w.keep_start < w.keep_end <= w.start + w.frames
            if position > 0:
                assert w.keep_start - w.start >= left
            if position < len(windows) - 1:
                assert w.start + w.frames - w.keep_end == right


def test_frame_count_is_the_models_for_any_cnn_and_length():
    for shape in CNN_SHAPES:
        for multiple in (1, 3):
            config = tiny_config(**shape, crop_seq_to_multiple=multiple)
            model = random_model(config)
            lengths = torch.arange(0, 3000, 7)
            expected = model._get_feat_extract_output_lengths(lengths).clamp_min(0)
            expected = expected - expected % multiple
            assert [num_frames(config, int(n)) for n in lengths] == expected.tolist()


@pytest.mark.parametrize("shape", CNN_SHAPES)
def test_window_samples_yield_exactly_the_whole_inputs_frames(shape):
    config = tiny_config(**{**LOCAL_CNN, **shape})
    cnn = random_model(config).feature_extractor
    audio = waveform(9000, seed=1)
    with torch.inference_mode():
        whole = cnn(audio)
        for windows in (chunk_windows(config, 9000, 0.1, 0.02), chunk_windows(config, 9000, 0.2, (0.01, 0.05))):
            assert len(windows) > 2
            for window in windows:
                start, count = window_samples(config, window)
                part = cnn(audio[:, start : start + count])
                assert part.shape[2] == window.frames
                torch.testing.assert_close(part, whole[:, :, window.start : window.start + window.frames])


@pytest.mark.parametrize("multiple", [1, 3])
def test_stitched_output_is_on_the_unchunked_frame_grid(multiple):
    config = tiny_config(**LOCAL_CNN, crop_seq_to_multiple=multiple)
    model = random_model(config)
    for samples in (16000 * 5 + 123, 16000 * 6):
        audio = waveform(samples, seed=samples)
        with torch.inference_mode():
            whole = model(audio, output_hidden_states=True)
            chunked = encode_chunked(model, audio, chunk_length_s=1.5, stride_length_s=0.3, output_hidden_states=True)
        assert type(chunked) is type(whole) and chunked.frame_attention_mask is None
        assert chunked.last_hidden_state.shape == whole.last_hidden_state.shape
        assert len(chunked.hidden_states) == len(whole.hidden_states)
        assert len(chunked.projected_hidden_states) == len(whole.projected_hidden_states)
        torch.testing.assert_close(chunked.extract_features, whole.extract_features)
        # Transformer frames see less context, but they are the same frames: they stay close.
        cosine = torch.cosine_similarity(chunked.last_hidden_state, whole.last_hidden_state, dim=-1)
        assert cosine.mean() > 0.99


def test_every_kept_frame_is_its_windows_own_output():
    config = tiny_config()  # the releases' GroupNorm CNN
    model = random_model(config)
    audio = waveform(16000 * 4, seed=3)
    with torch.inference_mode():
        chunked = encode_chunked(model, audio, chunk_length_s=1.0, stride_length_s=0.2, windows_per_batch=3)
        for window in chunk_windows(config, audio.shape[1], 1.0, 0.2):
            start, count = window_samples(config, window)
            alone = model(audio[:, start : start + count]).last_hidden_state
            offset = window.keep_start - window.start
            kept = chunked.last_hidden_state[:, window.keep_start : window.keep_end]
            torch.testing.assert_close(kept, alone[:, offset : offset + kept.shape[1]], rtol=0, atol=1e-5)


def test_an_input_no_longer_than_a_window_is_the_plain_forward():
    model = random_model(tiny_config())
    audio = waveform(16000 * 2 + 17, seed=4)
    with torch.inference_mode():
        whole = model(audio, output_hidden_states=True)
        chunked = encode_chunked(model, audio, chunk_length_s=3.0, output_hidden_states=True)
    assert torch.equal(chunked.last_hidden_state, whole.last_hidden_state)
    assert all(torch.equal(a, b) for a, b in zip(chunked.hidden_states, whole.hidden_states))


def test_rows_of_a_padded_batch_are_chunked_by_their_own_length():
    model = random_model(tiny_config())
    long, short = waveform(16000 * 4, seed=5), waveform(16000 * 2 + 500, seed=6)
    batch = torch.zeros(2, long.shape[1])
    batch[0], batch[1, : short.shape[1]] = long[0], short[0]
    mask = torch.zeros_like(batch, dtype=torch.long)
    mask[0], mask[1, : short.shape[1]] = 1, 1
    arguments = dict(chunk_length_s=1.2, stride_length_s=0.2, windows_per_batch=4)
    with torch.inference_mode():
        both = encode_chunked(model, batch, mask, **arguments)
        alone = [encode_chunked(model, row, **arguments).last_hidden_state[0] for row in (long, short)]
    frames = [alone[0].shape[0], alone[1].shape[0]]
    assert both.frame_attention_mask.sum(-1).tolist() == frames
    for row, expected in enumerate(alone):
        torch.testing.assert_close(both.last_hidden_state[row, : frames[row]], expected, rtol=0, atol=1e-5)
    assert not both.last_hidden_state[1, frames[1] :].any()


def test_a_transform_keeps_only_what_it_returns():
    model = random_model(tiny_config())
    audio = waveform(16000 * 3, seed=7)
    with torch.inference_mode():
        out = encode_chunked(
            model,
            audio,
            chunk_length_s=1.0,
            stride_length_s=0.1,
            transform=lambda o: {"layer_2": o.hidden_states[2], "frame_attention_mask": o.frame_attention_mask},
            output_hidden_states=True,
        )
        whole = model(audio)
    assert set(out) == {"layer_2", "frame_attention_mask"} and out["frame_attention_mask"] is None
    assert out["layer_2"].shape[:2] == whole.last_hidden_state.shape[:2]


def test_impossible_settings_are_refused():
    model = random_model(tiny_config())
    audio = waveform(16000 * 3, seed=8)
    with pytest.raises(ValueError, match="less than half"):
        encode_chunked(model, audio, chunk_length_s=1.0, stride_length_s=0.5)
    with pytest.raises(ValueError, match="receptive field"):
        encode_chunked(model, audio, chunk_length_s=0.01)
    with pytest.raises(ValueError, match="attention maps"):
        encode_chunked(model, audio, output_attentions=True)


@pytest.mark.parametrize("rate", [16000, 22050])
def test_windows_read_from_a_file_are_the_in_memory_windows(tmp_path, rate):
    model = random_model(tiny_config())
    audio = waveform(16000 * 5 + 77, seed=9)[0].numpy()
    path = tmp_path / "long.wav"
    soundfile.write(path, audio if rate == 16000 else soxr.resample(audio, 16000, rate), rate, subtype="FLOAT")
    decoded = torch.from_numpy(read_audio(path))[None]
    num_samples = header_num_samples(path)
    with torch.inference_mode():
        whole = encode_chunked(model, decoded[:, :num_samples], chunk_length_s=1.0, stride_length_s=0.2)
        read = file_window_reader(path, torch.device("cpu"))
        parts = list(encode_windows(model, read, num_samples, chunk_length_s=1.0, stride_length_s=0.2))
    assert len(parts) > 4 and parts[-1][0].keep_end == whole.last_hidden_state.shape[1]
    for window, part in parts:
        expected = whole.last_hidden_state[:, window.keep_start : window.keep_end]
        if rate == 16000:  # a seek and an exact read: the same samples
            assert torch.equal(part.last_hidden_state, expected)
        else:  # each window resampled on its own, with context, on the whole decode's sample grid
            torch.testing.assert_close(part.last_hidden_state, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda mask: mask.mul_(2), "holds values [2]"),  # values of 2: read as lengths, they would double a row
        (lambda mask: mask.copy_(mask.flip(-1)), "has padding (0) before real samples"),  # left padding
    ],
)
def test_encode_chunked_reads_attention_mask_as_the_model_does(damage, message):
    model = random_model(tiny_config())
    batch = torch.cat([waveform(16000 * 2, seed=7), waveform(16000 * 2, seed=8)])
    mask = torch.ones_like(batch, dtype=torch.long)
    mask[1, 20000:] = 0
    damage(mask)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        encode_chunked(model, batch, mask, chunk_length_s=1.2, stride_length_s=0.2)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            {"stride_length_s": float("nan")},
            "stride_length_s must be seconds >= 0, or a (left, right) pair of them; got nan",
        ),
        (
            {"stride_length_s": (0.1, 0.2, 0.3)},
            "stride_length_s must be seconds >= 0, or a (left, right) pair of them; got",
        ),
        ({"stride_length_s": "wide"}, "stride_length_s must be seconds >= 0, or a (left, right) pair of them; got"),
        ({"stride_length_s": -0.1}, "stride_length_s must be seconds >= 0, or a (left, right) pair of them; got -0.1"),
        ({"chunk_length_s": float("inf")}, "chunk_length_s must be a finite number of seconds above 0"),
    ],
)
def test_window_options_of_the_wrong_shape_or_value_name_the_parameter(arguments, message):
    model = random_model(tiny_config())
    with pytest.raises(ValueError) as error:
        encode_chunked(model, waveform(16000 * 2, seed=9), **{"chunk_length_s": 1.0, **arguments})
    assert message in str(error.value)
