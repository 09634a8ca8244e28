"""Attention-map reuse without (B, H, T, T) maps: kernels, model paths, training, derived weights."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import load_script, random_model, waveform
from helpers import tiny_config as release_tiny_config
from instruments import profiling

import attention_armhubert
from attention_armhubert import (
    CPU_FLASH_ATTENTION,
    BlockSize,
    ResoftmaxReuse,
    attention_with_logsumexp,
    choose_attention,
    compiled_flex_attention,
    flex_attention_with_logsumexp,
    flex_resoftmax,
    logsumexp_blocks,
    resoftmax_blocks,
    score_blocks,
)
from configuration_armhubert import PRESETS, ARMHubertConfig
from modeling_armhubert import ARMHubertModel

ATOL = 1e-5
QUIET = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)


def random_attention_inputs(dtype=torch.float32, batch=2, heads=3, time=37, dim=8, seed=0):
    """Q, K, V of a computing layer, V of the reusing layer (B, H, T, d), and a padding mask (row 1 padded)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(batch, heads, time, dim, generator=generator, dtype=dtype) for _ in range(4)]
    padding = torch.zeros(batch, time, dtype=torch.bool)
    padding[1, 25:] = True
    return (*tensors, padding)


def explicit_pair(query, key, value, reuse_value, padding, scale):
    """The explicit path: the computing layer's map, its output, and the release's second softmax."""
    mask = padding[:, None, None, :] if padding is not None else None
    scores = (query * scale) @ key.transpose(-1, -2)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    probabilities = torch.softmax(scores, dim=-1)
    reused = probabilities if mask is None else probabilities.masked_fill(mask, float("-inf"))
    return probabilities @ value, torch.softmax(reused, dim=-1) @ reuse_value


# These tests use short inputs, which would otherwise hand over explicit maps (`explicit_map_elements`).
FUSED = dict(explicit_map_elements=0)
# Blocks of one head and at most 16 query rows: kernels then work over many blocks, some shorter.
SMALL_BLOCKS = dict(reuse_block_elements=1, reuse_block_rows=16)
SMALL = BlockSize(1, 16)


def tiny_config(**overrides):
    """`helpers.tiny_config` with the fused handover at every length."""
    return release_tiny_config(**{**FUSED, **overrides})


def test_score_blocks_tile_the_scores_evenly():
    blocks = score_blocks(24, 1499, torch.device("cpu"))  # batch 2 x 12 heads, 30 s
    assert {(group.stop - group.start, rows.stop - rows.start) for group, rows in blocks} == {(1, 250), (1, 249)}
    assert len(blocks) == 24 * 6 and sum((g.stop - g.start) * (r.stop - r.start) for g, r in blocks) == 24 * 1499
    assert score_blocks(12, 99, torch.device("cpu")) == [(slice(0, 12), slice(0, 99))]
    halves = score_blocks(12, 499, torch.device("cpu"))  # 10 s: 4 heads x 250 rows at most
    assert [(g.start, g.stop, r.start, r.stop) for g, r in halves[:2]] == [(0, 4, 0, 250), (0, 4, 250, 499)]
    assert len(halves) == 6
    assert len(score_blocks(2, 37, torch.device("cpu"), SMALL)) == 2 * 3  # one head, rows 16 + 16 + 5


@pytest.mark.parametrize("blocks", ["small-blocks", "one-block"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_fused_pair_equals_the_explicit_pair(padded, blocks):
    size = SMALL if blocks == "small-blocks" else attention_armhubert.DEFAULT_BLOCK_SIZE
    query, key, value, reuse_value, padding = random_attention_inputs()
    padding = padding if padded else None
    scale = 8**-0.5
    expected_output, expected_reuse = explicit_pair(query, key, value, reuse_value, padding, scale)
    output, logsumexp = attention_with_logsumexp(query, key, value, padding, scale)
    torch.testing.assert_close(output, expected_output, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(logsumexp, logsumexp_blocks(query, key, padding, scale, size), atol=ATOL, rtol=1e-5)
    reuse, _ = resoftmax_blocks(query, key, logsumexp, reuse_value, padding, scale, size)
    torch.testing.assert_close(reuse, expected_reuse, atol=ATOL, rtol=1e-5)
    assert logsumexp.shape == (2, 3, 37) and reuse.shape == (2, 3, 37, 8)


def test_logsumexp_blocks_is_the_masked_row_logsumexp():
    query, key, _, _, padding = random_attention_inputs(dtype=torch.float64)
    scores = (query * 0.3) @ key.transpose(-1, -2)
    expected = torch.logsumexp(scores.masked_fill(padding[:, None, None, :], float("-inf")), dim=-1)
    torch.testing.assert_close(logsumexp_blocks(query, key, padding, 0.3, SMALL), expected.float())


@pytest.mark.parametrize("blocks", ["small-blocks", "one-block"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_recompute_backward_gives_the_explicit_gradients(padded, blocks):
    """Exact: the backward differentiates through the log-sum-exp (float64, differences at rounding level)."""
    size = SMALL if blocks == "small-blocks" else attention_armhubert.DEFAULT_BLOCK_SIZE
    query, key, value, reuse_value, padding = random_attention_inputs(dtype=torch.float64)
    padding = padding if padded else None
    leaves = [t.requires_grad_() for t in (query, key, value, reuse_value)]
    weights = torch.randn(2, 3, 37, 8, dtype=torch.float64)
    expected_output, expected_reuse = explicit_pair(*leaves, padding, 0.35)
    expected = torch.autograd.grad((expected_reuse * weights).sum() + expected_output.pow(2).sum(), leaves)
    output, logsumexp = attention_with_logsumexp(query, key, value, padding, 0.35)
    assert not logsumexp.requires_grad  # the backward accounts for it
    reuse = ResoftmaxReuse.apply(query, key, logsumexp, reuse_value, padding, 0.35, size)
    torch.testing.assert_close(reuse, expected_reuse)
    actual = torch.autograd.grad((reuse * weights).sum() + output.pow(2).sum(), leaves)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_paths_equal_the_explicit_pair():
    """The GPU path's numerics, run by eager FlexAttention on the CPU."""
    query, key, value, reuse_value, padding = random_attention_inputs()
    expected_output, expected_reuse = explicit_pair(query, key, value, reuse_value, padding, 0.35)
    output, logsumexp = flex_attention_with_logsumexp(query, key, value, padding, 0.35)
    torch.testing.assert_close(output, expected_output, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(logsumexp, logsumexp_blocks(query, key, padding, 0.35), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(
        flex_resoftmax(query, key, logsumexp, reuse_value, padding, 0.35), expected_reuse, atol=ATOL, rtol=1e-5
    )


def padded_pair(num_samples=(8000, 5300)):
    long, short = waveform(num_samples[0], seed=21), waveform(num_samples[1], seed=22)
    audio = torch.cat([long, F.pad(short, (0, num_samples[0] - num_samples[1]))])
    attention_mask = torch.ones_like(audio, dtype=torch.long)
    attention_mask[1, num_samples[1] :] = 0
    return audio, attention_mask


def assert_same_outputs(actual, expected):
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=ATOL, rtol=1e-5)
    for got, want in zip(actual.hidden_states, expected.hidden_states):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)


def fused_and_explicit(model, audio, attention_mask=None):
    with torch.inference_mode():
        fused = model(audio, attention_mask=attention_mask, output_hidden_states=True)
        explicit = model(audio, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
    return fused, explicit


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("reuse_softmax", ["resoftmax", "probabilities"])
def test_every_preset_fused_equals_explicit_single_and_padded(preset, reuse_softmax):
    config = ARMHubertConfig.from_preset(preset, reuse_softmax=reuse_softmax, **FUSED)
    model = random_model(config)
    for audio, attention_mask in [(waveform(12000, seed=20), None), padded_pair()]:
        fused, explicit = fused_and_explicit(model, audio, attention_mask)
        assert_same_outputs(fused, explicit)
        assert fused.attentions is None and len(explicit.attentions) == 12


@pytest.mark.parametrize(
    "overrides",
    [dict(crop_seq_to_multiple=3, required_seq_len_multiple=5), dict(required_seq_len_multiple=8)],
    ids=["crop-3-pad-5", "pad-8"],
)
def test_sequence_multiples_fused_equals_explicit(overrides):
    config = tiny_config(layer_reuses_attention_map=[False, True, True, False], **SMALL_BLOCKS, **overrides)
    model = random_model(config)
    audio, attention_mask = padded_pair()
    for mask in (None, attention_mask):
        fused, explicit = fused_and_explicit(model, audio, mask)
        assert_same_outputs(fused, explicit)


@pytest.mark.parametrize("case", ["single", "batch_pad"])
def test_fixture_fused_equals_explicit(converted_tiny, reference_io, case):
    audio = reference_io[f"input.{case}.source"]
    mask = None if case == "single" else (~reference_io["input.batch_pad.padding_mask"]).long()
    model = copy.deepcopy(converted_tiny)
    model.config.explicit_map_elements = 0
    fused, explicit = fused_and_explicit(model, audio, mask)
    assert_same_outputs(fused, explicit)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("layout", [[False, True, True, False], [False] * 4], ids=["reuse", "mask-hubert"])
def test_flex_attention_implementation_equals_the_default(layout):
    """Every computing layer runs FlexAttention in inference, the pairs' and the others (MaskHuBERT / STaR)."""
    config = tiny_config(layer_reuses_attention_map=layout, attn_implementation="flex_attention")
    flex = random_model(config)
    assert flex.config._attn_implementation == "flex_attention"
    assert chosen_paths(config)[1] == "compute_flex_without_handover"
    default = random_model(tiny_config(layer_reuses_attention_map=layout))
    audio, attention_mask = padded_pair()
    with torch.inference_mode():
        assert_same_outputs(
            flex(audio, attention_mask=attention_mask, output_hidden_states=True),
            default(audio, attention_mask=attention_mask, output_hidden_states=True),
        )


def parameter_gradients(config, audio, attention_mask, checkpointing=False):
    model = random_model(config).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    output = model(audio, attention_mask=attention_mask, output_hidden_states=True)
    loss = output.last_hidden_state.pow(2).mean() + sum(p.pow(2).mean() for p in output.projected_hidden_states)
    loss.backward()
    return {name: param.grad for name, param in model.named_parameters() if param.grad is not None}


def assert_same_gradients(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=ATOL, rtol=1e-4, msg=name)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_recompute_backward_training_gradients_equal_the_explicit_path(checkpointing):
    audio, attention_mask = padded_pair()
    layout = dict(layer_reuses_attention_map=[False, True, True, False], layer_grad_scale=True, **SMALL_BLOCKS, **QUIET)
    explicit = parameter_gradients(tiny_config(**layout), audio, attention_mask)
    recompute = tiny_config(reuse_recompute_backward=True, **layout)
    assert_same_gradients(parameter_gradients(recompute, audio, attention_mask, checkpointing), explicit)


def test_probabilities_mode_trains_through_sdpa_with_the_eager_gradients():
    audio, attention_mask = padded_pair()
    config = tiny_config(reuse_softmax="probabilities", **QUIET)
    eager = tiny_config(reuse_softmax="probabilities", attn_implementation="eager", **QUIET)
    expected = parameter_gradients(eager, audio, attention_mask)
    assert_same_gradients(parameter_gradients(config, audio, attention_mask), expected)


def handover(model, audio, grad=False):
    """The `Handover` layer 0 hands to layer 1 (captured by a forward hook)."""
    captured = {}

    def capture(module, args, output):
        captured["map"] = output[1]

    hook = model.encoder.layers[0].register_forward_hook(capture)
    with torch.set_grad_enabled(grad):
        model(audio)
    hook.remove()
    return captured["map"]


def test_what_the_computing_layer_hands_over():
    audio = waveform(6480, seed=23)
    inference = handover(random_model(tiny_config()), audio)
    assert inference.map is None and inference.logsumexp.shape == (1, 4, 20)
    assert inference.query.shape == inference.key.shape == (1, 4, 20, 12)
    assert handover(random_model(tiny_config(reuse_softmax="probabilities")), audio).logsumexp is None
    training = handover(random_model(tiny_config()).train(), audio, grad=True)
    assert training.map.shape == (1, 4, 20, 20)  # saved maps by default
    recompute = handover(random_model(tiny_config(reuse_recompute_backward=True)).train(), audio, grad=True)
    assert recompute.map is None
    dropout = tiny_config(reuse_recompute_backward=True, reuse_attention_dropout=0.1)
    assert handover(random_model(dropout).train(), audio, grad=True).map is not None


def test_short_inputs_hand_over_the_whole_map_with_the_fused_outputs():
    model = random_model(tiny_config())
    short, long = waveform(6480, seed=23), waveform(16000 * 2, seed=25)  # 20 and 99 frames, 4 heads
    with torch.inference_mode():
        fused = [model(audio, output_hidden_states=True) for audio in (short, long)]
    model.config.explicit_map_elements = 4 * 20 * 20
    assert release_tiny_config().explicit_map_elements == 2**18  # the default: about 3 s of a 12-head model
    assert handover(model, short).map.shape == (1, 4, 20, 20)
    assert handover(model, long).map is None  # 4 x 99 x 99 values: over the limit, fused
    with torch.inference_mode():
        for audio, expected in zip((short, long), fused):
            assert_same_outputs(model(audio, output_hidden_states=True), expected)


def test_no_map_sized_memory_in_inference():
    """Peak memory of a reusing model stays that of the same model without reuse (no T^2 term)."""
    benchmark = load_script("benchmark")

    audio = waveform(16000 * 20, seed=24)  # 999 frames: one 4-head map would be 16 MB
    peaks = []
    for reuse in ([False, True] * 2, [False] * 4):
        model = random_model(tiny_config(layer_reuses_attention_map=reuse))
        peaks.append(benchmark.measure_peak_memory(model, audio, all_outputs=False))
    assert peaks[0] <= 1.05 * peaks[1]


# --------------------------------------------------------------------------------------------------
# Derived weights: computed once in inference, refreshed when the weights change


def pos_conv_kernel(model):
    embedding = model.encoder.pos_conv_embed
    return embedding.channels_last_kernel(embedding.conv)


def test_inference_reuses_derived_kernels_and_training_derives_them_afresh():
    model = random_model(tiny_config())
    with torch.inference_mode():
        first = pos_conv_kernel(model)
        assert pos_conv_kernel(model) is first
        cnn = model.feature_extractor.conv_layers[2]
        assert cnn.channels_last_kernel(cnn.conv) is cnn.channels_last_kernel(cnn.conv)
    assert not first.is_inference()  # usable outside inference mode too
    model.train()
    trained = pos_conv_kernel(model)
    assert trained.requires_grad and trained is not pos_conv_kernel(model)


def test_derived_kernels_follow_weight_updates():
    model, reference = random_model(tiny_config()), random_model(tiny_config(), seed=5)
    audio = waveform(6480, seed=25)
    with torch.no_grad():
        model(audio)
        model.load_state_dict(reference.state_dict())  # an in-place copy: the version counters move
        torch.testing.assert_close(model(audio).last_hidden_state, reference(audio).last_hidden_state)
        model.encoder.pos_conv_embed.conv.parametrizations.weight.original0.mul_(2.0)
        reference.encoder.pos_conv_embed.conv.parametrizations.weight.original0.mul_(2.0)
        torch.testing.assert_close(model(audio).last_hidden_state, reference(audio).last_hidden_state)
        model.encoder.pos_conv_embed.conv.parametrizations.weight.original1.data.mul_(3.0)  # no version bump
        model.eval()  # a mode switch drops the caches
        reference.encoder.pos_conv_embed.conv.parametrizations.weight.original1.mul_(3.0)
        torch.testing.assert_close(model(audio).last_hidden_state, reference(audio).last_hidden_state)
        doubled = model.double()
        assert pos_conv_kernel(doubled).dtype == torch.float64


@pytest.mark.parametrize("kernel, frames", [(128, 420), (128, 100), (15, 61), (16, 20)])
def test_positional_convolution_by_fft_equals_the_direct_one(kernel, frames):
    config = tiny_config(hidden_size=64, num_conv_pos_embeddings=kernel, num_attention_heads=4)
    embedding = random_model(config).encoder.pos_conv_embed
    hidden_states = torch.randn(2, frames, 64, generator=torch.Generator().manual_seed(kernel))
    with torch.inference_mode():
        uses_fft = embedding._use_fft(hidden_states)
        by_fft = embedding(hidden_states)
        config._attn_implementation = "eager"  # the attention implementation does not choose the convolution
        assert embedding._use_fft(hidden_states) == uses_fft
        embedding.fft = False
        assert not embedding._use_fft(hidden_states)
        direct = embedding(hidden_states)
    assert uses_fft == (frames + 1 > embedding.fft_size - kernel + 1)  # more than one block of outputs
    assert uses_fft == (frames != 100)
    assert by_fft.shape == direct.shape == (2, frames, 64)
    torch.testing.assert_close(by_fft, direct, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("num_samples", [32000, 64000], ids=["2s-direct-conv", "4s-fft-conv"])
def test_a_warm_call_derives_nothing_from_the_weights(num_samples):
    """The fixed per-call cost is gone: after the first call no operator makes a tensor from weights alone."""
    model = ARMHubertModel(ARMHubertConfig.from_preset("armhubert-960h", **FUSED)).eval()
    audio = waveform(num_samples, seed=26)
    with torch.inference_mode():
        model(audio)
        with profiling.WeightDerivedTime(profiling.state_tensors(model)) as tracker:
            model(audio)
    assert tracker.operators == []
    model.train()
    with torch.enable_grad(), profiling.WeightDerivedTime(profiling.state_tensors(model)) as tracker:
        model(audio)
    assert any("weight_norm" in name for name in tracker.operators)  # training derives them per call


def test_flex_attention_is_compiled_once_off_cpu(monkeypatch):
    """Off the CPU FlexAttention runs compiled; the compiled function is made once and then reused."""
    compiled = []

    class Compiled(Exception):
        pass

    def fake_compile(function):
        compiled.append(function)

        def run(*args, **kwargs):
            raise Compiled

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    compiled_flex_attention.cache_clear()
    query = torch.empty(1, 2, 8, 4, device="meta")  # any non-CPU device takes the compiled path
    try:
        for _ in range(2):
            with pytest.raises(Compiled):
                flex_attention_with_logsumexp(query, query, query, None, 0.5)
    finally:
        compiled_flex_attention.cache_clear()  # forget the fake
    assert compiled == [attention_armhubert.flex_attention]


# --------------------------------------------------------------------------------------------------
# One dispatch: the encoder picks the attention path once per forward


def chosen_paths(config, frames=40, grad=False, training=False, output_attentions=False):
    """Names of the (pair, lone) compute functions the encoder picks for a (1, frames, D) input."""
    config = random_model(config).config  # as a built model holds it (its attention implementation set)
    hidden_states = torch.zeros(1, frames, config.hidden_size)
    paths = choose_attention(config, hidden_states, grad, training, output_attentions)
    return tuple(path.compute.__name__ for path in paths)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize(
    "overrides, grad, output_attentions, expected",
    [
        ({}, False, False, "compute_logsumexp"),
        ({}, False, True, "compute_map"),
        (dict(attn_implementation="eager"), False, False, "compute_map"),
        (dict(reuse_softmax="probabilities"), False, False, "compute_query_key"),
        (dict(reuse_softmax="probabilities"), True, False, "compute_query_key"),
        ({}, True, False, "compute_map"),  # autograd through saved maps by default
        (dict(reuse_recompute_backward=True), True, False, "compute_logsumexp"),
        (dict(reuse_recompute_backward=True, reuse_attention_dropout=0.1), True, False, "compute_map"),
        (dict(attn_implementation="flex_attention"), False, False, "compute_flex_logsumexp"),
        (dict(attn_implementation="flex_attention", reuse_recompute_backward=True), True, False, "compute_logsumexp"),
    ],
)
def test_the_encoder_chooses_the_attention_path_once(overrides, grad, output_attentions, expected):
    """The pair path as `expected`; other computing layers run transformers' registered SDPA (FlexAttention in
    inference when asked) unless every map is explicit."""
    config = tiny_config(**overrides)
    explicit = output_attentions or config._attn_implementation == "eager"
    flex = config._attn_implementation == "flex_attention" and not grad
    lone = "compute_map" if explicit else "compute_flex_without_handover" if flex else "compute_registered"
    assert chosen_paths(config, grad=grad, training=grad, output_attentions=output_attentions) == (expected, lone)


def test_without_reusing_layers_every_layer_runs_sdpa():
    config = tiny_config(layer_reuses_attention_map=[False] * 4)
    assert chosen_paths(config, grad=True, training=True) == ("compute_registered",) * 2


def operator_counts(run):
    """{aten operator name: calls} of `run()` on the CPU, by torch's profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        result = run()
    return result, {event.key: event.count for event in profile.key_averages()}


@pytest.mark.skipif(CPU_FLASH_ATTENTION is None, reason="this torch lacks the private CPU kernel")
def test_without_the_private_cpu_kernel_the_public_sdpa_gives_the_same_numbers():
    """`CPU_FLASH_ATTENTION` is a private op: a torch without it (as `fused_cpu_attention=False`) takes SDPA +
    `logsumexp_blocks`, whose row log-sum-exp the fused call does not need."""
    query, key, value, _, padding = random_attention_inputs()
    fused, counts = operator_counts(lambda: attention_with_logsumexp(query, key, value, padding, 0.35))
    assert "aten::logsumexp" not in counts
    fallback, counts = operator_counts(lambda: attention_with_logsumexp(query, key, value, padding, 0.35, fused=False))
    assert counts["aten::logsumexp"] >= 1
    for got, want in zip(fallback, fused):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)
    model = random_model(tiny_config(layer_reuses_attention_map=[False, True, True, False]))
    audio, attention_mask = padded_pair()
    with torch.inference_mode():
        expected, counts = operator_counts(
            lambda: model(audio, attention_mask=attention_mask, output_hidden_states=True)
        )
        assert "aten::logsumexp" not in counts  # layer 0, the only computing layer that hands over, is fused
        model.config.fused_cpu_attention = False
        fallback, counts = operator_counts(
            lambda: model(audio, attention_mask=attention_mask, output_hidden_states=True)
        )
        assert counts["aten::logsumexp"] >= 1
        assert_same_outputs(fallback, expected)


# Every reuse path, as the encoder picks it in training at any length (`explicit_map_elements` is 0 here).
REUSE_PATHS = {
    "explicit": {},
    "fused": dict(reuse_recompute_backward=True),
    "probabilities": dict(reuse_softmax="probabilities"),
}
REFUSAL = 'activation_checkpointing_kwargs={"use_reentrant": False}'


@pytest.mark.parametrize("path", sorted(REUSE_PATHS))
def test_checkpointing_gives_the_plain_gradients_and_refuses_reentrant(path):
    """Non-reentrant checkpointing (the default) gives the plain gradients on a padded batch; reentrant
    checkpointing, which would drop or double the reused map's gradient, is refused in one line."""
    audio, attention_mask = padded_pair()
    config = tiny_config(layer_reuses_attention_map=[False, True, True, False], **REUSE_PATHS[path], **QUIET)
    plain = parameter_gradients(config, audio, attention_mask)
    assert_same_gradients(parameter_gradients(config, audio, attention_mask, checkpointing=True), plain)
    model = random_model(config).train()
    for kwargs in ({"use_reentrant": True}, {"preserve_rng_state": True}):  # torch's default is reentrant
        with pytest.raises(ValueError) as refused:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        assert (
            "use_reentrant=False" in str(refused.value)
            and REFUSAL in str(refused.value)
            and len(str(refused.value).splitlines()) == 1
        )
    assert not model.encoder.layers[0].gradient_checkpointing


@pytest.mark.parametrize("path", sorted(REUSE_PATHS))
def test_torch_checkpoint_wrapper_reentrant_is_refused_and_non_reentrant_gives_the_plain_gradients(path):
    """Checkpointing applied with torch's `checkpoint_wrapper` instead of transformers' switch: reentrant (which
    would silently drop the reused layers' Q/K gradients) stops at the first reusing layer in one line, before
    any backward; non-reentrant gives the plain gradients."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    audio, attention_mask = padded_pair()
    config = tiny_config(layer_reuses_attention_map=[False, True, True, False], **REUSE_PATHS[path], **QUIET)
    plain = parameter_gradients(config, audio, attention_mask)
    for impl in (CheckpointImpl.REENTRANT, CheckpointImpl.NO_REENTRANT):
        model = random_model(config).train()
        layers = model.encoder.layers
        for index, layer in enumerate(layers):
            layers[index] = checkpoint_wrapper(layer, checkpoint_impl=impl)
        if impl is CheckpointImpl.REENTRANT:
            with pytest.raises(ValueError) as refused:
                model(audio, attention_mask=attention_mask, output_hidden_states=True)
            assert REFUSAL in str(refused.value) and "CheckpointImpl.NO_REENTRANT" in str(refused.value)
            assert len(str(refused.value).splitlines()) == 1
            assert all(param.grad is None for param in model.parameters())
            continue
        output = model(audio, attention_mask=attention_mask, output_hidden_states=True)
        loss = output.last_hidden_state.pow(2).mean() + sum(p.pow(2).mean() for p in output.projected_hidden_states)
        loss.backward()
        grads = {name.replace("._checkpoint_wrapped_module", ""): p.grad for name, p in model.named_parameters()}
        assert_same_gradients({name: grad for name, grad in grads.items() if grad is not None}, plain)


def test_trainer_refuses_reentrant_checkpointing_before_the_first_step(tmp_path):
    """TrainingArguments' gradient_checkpointing_kwargs reach the same refusal, before any step runs."""
    from transformers import Trainer, TrainingArguments

    model = random_model(tiny_config(**QUIET)).train()
    with pytest.warns(FutureWarning, match="gradient_checkpointing_kwargs"):  # the name older recipes use
        args = TrainingArguments(
            output_dir=str(tmp_path),
            activation_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": True},
            report_to=[],
            use_cpu=True,
        )
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_values": waveform(6480, seed=1)[0]}])
    with pytest.raises(ValueError, match="use_reentrant"):
        trainer.train()
    assert not any(tmp_path.iterdir())


def test_reentrant_checkpointing_is_allowed_without_reused_maps():
    audio, attention_mask = padded_pair()
    config = tiny_config(layer_reuses_attention_map=[False] * 4, **QUIET)
    plain = parameter_gradients(config, audio, attention_mask)
    model = random_model(config).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    output = model(audio, attention_mask=attention_mask, output_hidden_states=True)
    loss = output.last_hidden_state.pow(2).mean() + sum(p.pow(2).mean() for p in output.projected_hidden_states)
    loss.backward()
    assert_same_gradients({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, plain)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager on a CPU, by design
def test_every_attention_implementation_is_honoured_or_refused_in_one_line():
    """Each implementation transformers knows, set in the config or on a built model: it runs with SDPA's numbers
    (FlexAttention, eager maps, paged eager) or is refused in one line (the flash kernels, unknown names)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    audio, attention_mask = padded_pair()
    reference = random_model(tiny_config())
    with torch.inference_mode():
        expected = reference(audio, attention_mask=attention_mask, output_hidden_states=True)
    names = {"eager", "no-such-attention", *ALL_ATTENTION_FUNCTIONS.keys()}
    ran = set()
    for name in sorted(names):
        for where in ("config", "set_attn_implementation"):
            try:
                if where == "config":
                    model = ARMHubertModel(tiny_config(attn_implementation=name))
                else:
                    model = ARMHubertModel(tiny_config())
                    model.set_attn_implementation(name)
            except ValueError as refused:
                assert len(str(refused).strip().splitlines()) == 1, (name, where, str(refused))
                continue
            assert model.config._attn_implementation == name
            model.load_state_dict(reference.state_dict())
            with torch.inference_mode():
                assert_same_outputs(
                    model.eval()(audio, attention_mask=attention_mask, output_hidden_states=True), expected
                )
            ran.add(name)
    assert {"sdpa", "eager", "flex_attention"} <= ran and "no-such-attention" not in ran
    assert not any(name.startswith("flash_attention") for name in ran)


def test_a_registered_attention_function_serves_the_layers_whose_map_nobody_reuses():
    """`attn_implementation` naming a function registered with transformers is called by every computing layer
    without a reusing layer after it (all four of MaskHuBERT's layout, the last of [F, T, T, F]); the pairs
    keep their own paths. Outputs are those of SDPA."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def counted_sdpa(module, query, key, value, attention_mask, **kwargs):
        calls.append(query.shape)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("counted_sdpa_for_tests", counted_sdpa)
    audio, attention_mask = padded_pair()
    for layout, lone_layers in (([False] * 4, 4), ([False, True, True, False], 1)):
        config = tiny_config(layer_reuses_attention_map=layout)
        model = random_model(config)
        with torch.inference_mode():
            expected = model(audio, attention_mask=attention_mask, output_hidden_states=True)
            model.set_attn_implementation("counted_sdpa_for_tests")
            calls.clear()
            registered = model(audio, attention_mask=attention_mask, output_hidden_states=True)
        assert len(calls) == lone_layers
        assert_same_outputs(registered, expected)
