"""The three pipelines (audio feature extraction, ASR, audio classification) and the 16 kHz helper."""

import json

import numpy as np
import pytest
import soundfile
import soxr
import torch
from helpers import ROOT, random_model, tiny_config
from transformers import Wav2Vec2CTCTokenizer, pipeline

from armhubert.speech.audio import load_16k
from modeling_armhubert import ARMHubertForCTC, ARMHubertForSequenceClassification
from pipeline_armhubert import encode_chunked, release_feature_extractor

FLAC = ROOT / "data" / "LibriSpeech" / "dev-clean" / "1001" / "201" / "1001-201-0000.flac"
STAR = dict(layer_reuses_attention_map=[False] * 4, projection_head_size=None, use_mask_embedding=False)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = {"[PAD]": 0, "[UNK]": 1, "|": 2, **{char: i + 3 for i, char in enumerate("ABCDEFGHIJ")}}
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    path.write_text(json.dumps(vocab))
    return Wav2Vec2CTCTokenizer(
        str(path), unk_token="[UNK]", pad_token="[PAD]", word_delimiter_token="|", bos_token=None, eos_token=None
    )


def speech(seconds, seed=0):
    return (0.1 * np.random.RandomState(seed).randn(int(16000 * seconds))).astype(np.float32)


@pytest.mark.parametrize("family", ["arm", "star"])
def test_feature_pipeline_returns_per_layer_features_equal_to_a_direct_call(family):
    model = random_model(tiny_config(**(STAR if family == "star" else {})))
    extractor = pipeline("audio-feature-extraction", model=model, feature_extractor=release_feature_extractor())
    audio = speech(1.5)
    with torch.no_grad():
        direct = model(torch.from_numpy(audio)[None], output_hidden_states=True)
    superb = direct.projected_hidden_states if family == "arm" else direct.hidden_states[1:]

    out = extractor(audio)
    assert out["layers"] == [1, 2, 3, 4]
    assert out["features"].shape == (4, 74, 64 if family == "arm" else 48) and out["features"].dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(out["features"]), torch.stack(superb)[:, 0])

    hidden = extractor(
        {"array": audio, "sampling_rate": 16000}, representation="hidden", layers=[0, 4], return_tensors=True
    )
    assert hidden["layers"] == [0, 4]
    torch.testing.assert_close(
        hidden["features"], torch.stack([direct.hidden_states[0], direct.hidden_states[4]])[:, 0]
    )

    from_file = extractor(str(FLAC), layers=2)
    samples, _ = soundfile.read(FLAC, dtype="float32")
    with torch.no_grad():
        file_direct = model(torch.from_numpy(samples)[None], output_hidden_states=True)
    file_layer = (file_direct.projected_hidden_states if family == "arm" else file_direct.hidden_states[1:])[1]
    assert from_file["layers"] == [2]
    torch.testing.assert_close(torch.from_numpy(from_file["features"][0]), file_layer[0])


def test_feature_pipeline_batches_keep_each_utterance_length():
    model = random_model(tiny_config())
    extractor = pipeline("audio-feature-extraction", model=model)  # default feature extractor: raw 16 kHz
    outputs = extractor([speech(1.0, seed=1), speech(0.5, seed=2)], batch_size=2)
    assert [out["features"].shape[1] for out in outputs] == [49, 24]
    with torch.no_grad():
        alone = model(torch.from_numpy(speech(1.0, seed=1))[None], output_hidden_states=True)
    # The longest row is unpadded, so it equals its own run.
    torch.testing.assert_close(
        torch.from_numpy(outputs[0]["features"]), torch.stack(alone.projected_hidden_states)[:, 0]
    )


def bundled_recording(seconds):
    """Bundled utterances concatenated until the recording is at least `seconds` long."""
    pieces = []
    for path in sorted((ROOT / "data" / "LibriSpeech").rglob("*.flac")):
        pieces.append(soundfile.read(path, dtype="float32")[0])
        if sum(map(len, pieces)) >= 16000 * seconds:
            return np.concatenate(pieces)
    raise AssertionError(f"the bundled corpus holds less than {seconds} s")


def test_feature_pipeline_chunks_long_inputs_exactly_as_the_model_level_helper():
    model = random_model(tiny_config())
    extractor = pipeline("audio-feature-extraction", model=model, feature_extractor=release_feature_extractor())
    audio = bundled_recording(36)  # longer than the default 30 s window
    batch = torch.from_numpy(audio)[None]
    with torch.inference_mode():
        helper = encode_chunked(model, batch, output_hidden_states=True)  # the defaults: 30 s windows, 5 s strides
        narrow = encode_chunked(model, batch, None, 8.0, (1.0, 2.0), output_hidden_states=True)
        whole = model(batch, output_hidden_states=True)

    def layers(output):
        return torch.stack([output.projected_hidden_states[1][0], output.projected_hidden_states[3][0]])

    chunked = extractor(audio, layers=[2, 4], return_tensors=True)["features"]
    unchunked = extractor(audio, layers=[2, 4], return_tensors=True, chunk_length_s=0)["features"]
    windows = extractor(audio, layers=[2, 4], return_tensors=True, chunk_length_s=8, stride_length_s=(1, 2))
    assert chunked.shape == unchunked.shape == layers(whole).shape  # the unchunked frame grid
    assert torch.equal(chunked, layers(helper)) and torch.equal(windows["features"], layers(narrow))
    assert torch.equal(unchunked, layers(whole))
    assert not torch.equal(chunked, unchunked)  # the default did chunk: frames past 25 s saw other context
    short = extractor(audio[: 16000 * 5], layers=4, return_tensors=True, chunk_length_s=8)["features"]
    with torch.inference_mode():
        alone = model(batch[:, : 16000 * 5]).last_hidden_state
    assert torch.equal(short[0], alone[0])  # no longer than a window: one plain forward pass
    with pytest.raises(ValueError, match="chunk_length_s=-1 must be positive, or 0"):
        extractor(audio, chunk_length_s=-1)


def test_feature_pipeline_refuses_bad_audio_with_clear_messages(tmp_path):
    model = random_model(tiny_config())
    extractor = pipeline("audio-feature-extraction", model=model)
    audio = speech(1.0)
    cases = [
        ({"raw": audio, "sampling_rate": 8000}, r"sampled at 8000 Hz.*soxr.resample"),
        (np.stack([audio, audio]), r"expected mono audio of shape \(samples,\), got shape \(2, 16000\)"),
        (np.zeros(0, dtype=np.float32), r"empty audio \(0 samples\)"),
        (np.zeros(100, dtype=np.float32), "at least 400 samples"),
        ((audio * 32767).astype(np.int16), "integer samples"),
        (str(tmp_path / "missing.flac"), "does not exist"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            extractor(bad)
    with pytest.raises(ValueError, match="not in the 'superb' representation; choose from 1..4"):
        extractor(audio, layers=[0])
    with pytest.raises(ValueError, match="needs a model with projection heads"):
        pipeline("audio-feature-extraction", model=random_model(tiny_config(**STAR)))(audio, representation="projected")


def frame_local_ctc_model(vocab_size):
    """A CTC model whose frame t depends only on samples [320 t, 320 t + 400): no attention or FFN
    output, no positional conv, per-frame LayerNorm in the CNN. Chunked and whole-input ASR then
    agree exactly if, and only if, the pipeline aligns chunks to `inputs_to_logits_ratio`."""
    torch.manual_seed(0)
    model = ARMHubertForCTC(tiny_config(vocab_size=vocab_size, feat_extract_norm="layer", conv_bias=True)).eval()
    with torch.no_grad():
        for layer in model.armhubert.encoder.layers:
            for linear in (layer.attention.out_proj, layer.feed_forward.output_dense):
                linear.weight.zero_()
                linear.bias.zero_()
        positional = model.armhubert.encoder.pos_conv_embed.conv
        positional.parametrizations.weight.original0.zero_()
        positional.bias.zero_()
        model.lm_head.weight.mul_(50)  # confident, varied tokens
    return model


def test_asr_pipeline_transcribes_arrays_and_files_by_greedy_ctc(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = ARMHubertForCTC(tiny_config(vocab_size=len(tokenizer))).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    asr = pipeline(
        "automatic-speech-recognition", model=model, tokenizer=tokenizer, feature_extractor=release_feature_extractor()
    )
    samples, _ = soundfile.read(FLAC, dtype="float32")
    with torch.no_grad():
        greedy = tokenizer.decode(model(torch.from_numpy(samples)[None]).logits.argmax(-1)[0])
    assert len(greedy) > 5
    assert asr(samples)["text"] == greedy
    assert asr(load_16k(FLAC))["text"] == greedy  # a file path, decoded before the pipeline

    # The same speech stored as 44.1 kHz stereo comes back through load_16k.
    stereo = np.stack([samples, samples], axis=1)
    soundfile.write(tmp_path / "stereo.wav", soxr.resample(stereo, 16000, 44100), 44100, subtype="FLOAT")
    resampled = load_16k(tmp_path / "stereo.wav")
    assert abs(len(resampled) - len(samples)) <= 1
    assert isinstance(asr(resampled)["text"], str)


def test_chunked_asr_on_a_long_input_equals_the_whole_input(tokenizer):
    model = frame_local_ctc_model(len(tokenizer))
    asr = pipeline(
        "automatic-speech-recognition", model=model, tokenizer=tokenizer, feature_extractor=release_feature_extractor()
    )
    audio = speech(12.0, seed=3)
    whole = asr(audio)["text"]
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    chunked = asr(audio, chunk_length_s=2.0, stride_length_s=0.5)["text"]
    assert len(calls) >= 6  # it really ran in chunks
    assert len(whole) > 100 and chunked == whole


def test_audio_classification_pipeline_returns_labels_with_scores():
    labels = ["1001", "1002", "1003"]
    torch.manual_seed(0)
    config = tiny_config(
        num_labels=3, id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}
    )
    model = ARMHubertForSequenceClassification(config).eval()
    classify = pipeline("audio-classification", model=model, feature_extractor=release_feature_extractor())
    samples = load_16k(FLAC)
    result = classify(samples, top_k=3)
    assert sorted(entry["label"] for entry in result) == labels
    assert all(0 < entry["score"] < 1 for entry in result)
    assert abs(sum(entry["score"] for entry in result) - 1) < 1e-5
    with torch.no_grad():
        best = model(torch.from_numpy(samples)[None]).logits.argmax(-1).item()
    assert result[0]["label"] == labels[best]


def test_load_16k_resamples_averages_channels_and_refuses_bad_audio(tmp_path):
    tone = np.sin(2 * np.pi * 440 * np.arange(44100) / 44100).astype(np.float32)
    stereo = np.stack([tone, 0.5 * tone], axis=1)  # (samples, channels), as soundfile returns
    expected = soxr.resample(0.75 * tone, 44100, 16000)
    np.testing.assert_allclose(load_16k(stereo, sampling_rate=44100), expected, atol=1e-5)
    np.testing.assert_allclose(load_16k(torch.from_numpy(stereo.T), sampling_rate=44100), expected, atol=1e-5)
    assert len(load_16k({"array": tone[:16000], "sampling_rate": 16000})) == 16000

    (tmp_path / "broken.flac").write_bytes(b"not audio at all")
    cases = [
        (lambda: load_16k(tone), "needs its sampling_rate"),
        (lambda: load_16k(np.zeros(0, dtype=np.float32), sampling_rate=16000), "empty"),
        (lambda: load_16k(np.zeros((4, 4), dtype=np.float32), sampling_rate=16000), "cannot tell the channel axis"),
        (lambda: load_16k(np.array([0.1, np.nan], dtype=np.float32), sampling_rate=16000), "NaN"),
        (lambda: load_16k(np.zeros(10, dtype=np.int16), sampling_rate=16000), "int16 samples"),
        (lambda: load_16k(tmp_path / "broken.flac"), "cannot read audio file .*broken.flac"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
