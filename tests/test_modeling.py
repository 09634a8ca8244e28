"""ARMHubertModel behaviour beyond the fixture: batching, presets, attention paths, training."""

import pytest
import torch
import torch.nn.functional as F
from helpers import VARIANTS, random_model, tiny_config, waveform

from configuration_armhubert import PRESETS, RUNTIME_FIELDS, ARMHubertConfig
from modeling_armhubert import ARMHubertModel
from ops_armhubert import check_attention_mask

ATOL = 1e-5


def assert_outputs_close(actual, expected, rows=slice(None), frames=slice(None)):
    torch.testing.assert_close(actual.last_hidden_state[rows, frames], expected.last_hidden_state, atol=ATOL, rtol=1e-5)
    for got, want in zip(actual.hidden_states, expected.hidden_states):
        torch.testing.assert_close(got[rows, frames], want, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("armhubert-960h", 26_448_448),
        ("armhubert-s-100h", 22_394_080),
        ("armhubert-s-960h", 22_394_080),
        ("armwavlm-s-100h", 22_394_080),
        ("armwavlm-s-960h", 22_394_080),
        ("maskhubert-960h", 26_635_840),
        ("starhubert", 22_308_592),
        ("starhubert-l", 26_626_672),
    ],
)
def test_preset_parameter_counts_are_exact(preset, expected):
    model = ARMHubertModel(ARMHubertConfig.from_preset(preset))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_every_release_name_has_a_preset_and_unknown_names_fail():
    assert len(PRESETS) == 8
    assert ARMHubertConfig.from_preset("ARMHuBERT-S-960h").hidden_size == 432
    with pytest.raises(ValueError, match="Available presets"):
        ARMHubertConfig.from_preset("armhubert-xl")


def test_preset_overrides_refuse_unknown_fields_with_a_suggestion():
    with pytest.raises(ValueError, match=r"ARMHubertConfig.hidden_sise: no such field. Did you mean 'hidden_size'\?"):
        ARMHubertConfig.from_preset("armhubert-960h", hidden_sise=64)
    with pytest.raises(ValueError, match="ARMHubertConfig.zzz: no such field. See the ARMHubertConfig docstring"):
        ARMHubertConfig.from_preset("starhubert", zzz=1)
    # Fields of the config, of PreTrainedConfig, and what PreTrainedConfig takes besides are all accepted.
    config = ARMHubertConfig.from_preset(
        "armhubert-960h",
        hidden_size=432,
        problem_type="single_label_classification",
        num_labels=3,
        attn_implementation="eager",
    )
    assert (config.hidden_size, config.num_labels, config._attn_implementation) == (432, 3, "eager")


def test_kernel_thresholds_are_config_attributes_saved_only_when_set(tmp_path):
    """`explicit_map_elements` and the like choose between kernels of equal numbers: defaults on the class,
    so a config that does not set them saves as before and an old config.json loads with them."""
    default = ARMHubertConfig()
    assert not set(RUNTIME_FIELDS) & set(default.to_diff_dict())
    assert (default.explicit_map_elements, default.reuse_block_elements, default.reuse_block_rows) == (
        2**18,
        2**19,
        256,
    )
    assert default.fused_cpu_attention and not default.last_head_only
    config = ARMHubertConfig.from_preset("armhubert-960h", explicit_map_elements=0, reuse_block_rows=16)
    config.save_pretrained(tmp_path)
    reloaded = ARMHubertConfig.from_pretrained(tmp_path)
    assert (reloaded.explicit_map_elements, reloaded.reuse_block_rows) == (0, 16)
    assert reloaded.reuse_block_elements == 2**19 and ARMHubertConfig().explicit_map_elements == 2**18


def test_release_cnn_geometry():
    config = ARMHubertConfig.from_preset("armhubert-960h")
    assert config.inputs_to_logits_ratio == 320
    assert config.receptive_field == 400


def test_equal_length_batch_rows_equal_single_runs(variant_config):
    model = random_model(variant_config)
    first, second = waveform(8000, seed=1), waveform(8000, seed=2)
    with torch.no_grad():
        batched = model(torch.cat([first, second]), output_hidden_states=True)
        for row, single in enumerate([first, second]):
            assert_outputs_close(batched, model(single, output_hidden_states=True), rows=slice(row, row + 1))


def test_padded_batch_rows_equal_their_own_runs(variant_config):
    model = random_model(variant_config)
    long, short = waveform(8000, seed=3), waveform(5300, seed=4)
    padded_short = F.pad(short, (0, 8000 - 5300))
    attention_mask = torch.ones(2, 8000, dtype=torch.long)
    attention_mask[1, 5300:] = 0
    with torch.no_grad():
        batched = model(torch.cat([long, padded_short]), attention_mask=attention_mask, output_hidden_states=True)
        assert_outputs_close(batched, model(long, output_hidden_states=True), rows=slice(0, 1))
        alone = model(padded_short, attention_mask=attention_mask[1:], output_hidden_states=True)
        assert_outputs_close(batched, alone, rows=slice(1, 2))
    valid_frames = int(model._get_feat_extract_output_lengths(torch.tensor(5300)))
    valid_frames -= 0 if variant_config.crop_seq_to_multiple == 1 else 0
    assert int(batched.frame_attention_mask[1].sum()) == min(valid_frames, batched.frame_attention_mask.shape[1])


@pytest.mark.parametrize("model_class", ["ARMHubertModel", "ARMHubertForCTC", "ARMHubertForSequenceClassification"])
def test_output_fields_depend_on_the_arguments_never_on_the_data(model_class):
    """With an attention_mask the outputs hold the same fields (and tuples the same length) whether a row is padded
    or not: `frame_attention_mask` is all ones then, not missing (as it was on a CPU only). Without padding, the
    numbers equal those without a mask, bit for bit."""
    import modeling_armhubert

    model = getattr(modeling_armhubert, model_class)(tiny_config(vocab_size=8, num_labels=3)).eval()
    audio = torch.cat([waveform(8000, seed=5), waveform(8000, seed=6)])
    padded, unpadded = torch.ones(2, 8000, dtype=torch.long), torch.ones(2, 8000, dtype=torch.long)
    padded[1, 5000:] = 0
    kinds = {}
    with torch.no_grad():
        for name, mask in (("padded", padded), ("unpadded", unpadded), ("none", None)):
            output = model(audio, attention_mask=mask, output_hidden_states=True)
            tuple_output = model(audio, attention_mask=mask, output_hidden_states=True, return_dict=False)
            kinds[name] = output
            assert len(tuple_output) == len(output.to_tuple())
    assert list(kinds["padded"].keys()) == list(kinds["unpadded"].keys())
    first = next(iter(kinds["none"].values()))
    torch.testing.assert_close(next(iter(kinds["unpadded"].values())), first, rtol=0, atol=0)
    if model_class == "ARMHubertModel":
        assert kinds["unpadded"].frame_attention_mask.tolist() == [[1] * 24, [1] * 24]
        assert kinds["padded"].frame_attention_mask.sum(-1).tolist() == [24, 15]
        assert "frame_attention_mask" not in kinds["none"]


def test_padding_never_leaks_into_real_frames():
    """Whatever sits in the padded samples, real frames of the encoder are unchanged (no GroupNorm)."""
    model = random_model(tiny_config(feat_extract_norm="layer"))
    short = waveform(5300, seed=5)
    attention_mask = torch.ones(1, 8000, dtype=torch.long)
    attention_mask[0, 5300:] = 0
    with torch.no_grad():
        zeros = model(F.pad(short, (0, 2700)), attention_mask=attention_mask).last_hidden_state
        noise = model(
            torch.cat([short, waveform(2700, seed=6)], dim=1), attention_mask=attention_mask
        ).last_hidden_state
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(5300))) - 2  # last frames see padded samples
    torch.testing.assert_close(zeros[:, :frames], noise[:, :frames], atol=ATOL, rtol=1e-5)


def test_sdpa_path_equals_explicit_path(variant_config):
    model = random_model(variant_config)
    audio = torch.cat([waveform(6480, seed=7), waveform(6480, seed=8)])
    attention_mask = torch.ones_like(audio, dtype=torch.long)
    attention_mask[1, 4000:] = 0
    with torch.no_grad():
        fast = model(audio, attention_mask=attention_mask, output_hidden_states=True)
        explicit = model(audio, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
        model.config._attn_implementation = "eager"
        eager = model(audio, attention_mask=attention_mask, output_hidden_states=True)
    assert_outputs_close(fast, explicit)
    assert_outputs_close(fast, eager)
    assert len(explicit.attentions) == variant_config.num_hidden_layers
    for weights in explicit.attentions:
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
        assert weights[1, :, :, 13:].abs().max() == 0  # padded keys get no weight


def test_reusing_layers_have_no_query_key_and_reuse_the_computed_map():
    model = random_model(tiny_config(reuse_softmax="probabilities"))
    layers = model.encoder.layers
    assert not hasattr(layers[1].attention, "q_proj") and not hasattr(layers[1].attention, "k_proj")
    assert hasattr(layers[2].attention, "q_proj")
    with torch.no_grad():
        attentions = model(waveform(6480, seed=9), output_attentions=True).attentions
    assert torch.equal(attentions[1], attentions[0])
    assert torch.equal(attentions[3], attentions[2])
    assert not torch.allclose(attentions[2], attentions[0])


def test_output_fields_and_shapes():
    model = random_model(tiny_config())
    with torch.no_grad():
        output = model(waveform(6480, seed=10), output_hidden_states=True)
    frames = 20
    assert output.last_hidden_state.shape == (1, frames, 64)
    assert output.extract_features.shape == (1, frames, 48)
    assert len(output.hidden_states) == 5 and output.hidden_states[0].shape == (1, frames, 48)
    assert len(output.projected_hidden_states) == 4 and output.projected_hidden_states[0].shape == (1, frames, 64)
    assert output.frame_attention_mask is None
    assert torch.equal(output.last_hidden_state, output.projected_hidden_states[-1])
    plain = random_model(tiny_config(**VARIANTS["star"]))
    with torch.no_grad():
        star = plain(waveform(6480, seed=10), output_hidden_states=True)
    assert star.projected_hidden_states is None
    assert torch.equal(star.last_hidden_state, star.hidden_states[-1])
    as_tuple = model(waveform(6480, seed=10), return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], model(waveform(6480, seed=10)).last_hidden_state)


def test_sequence_multiples_crop_and_pad_without_changing_real_frames():
    # LayerNorm CNN: GroupNorm statistics would see the cropped-away samples.
    plain = random_model(tiny_config(feat_extract_norm="layer"))
    multiples = random_model(
        tiny_config(feat_extract_norm="layer", crop_seq_to_multiple=4, required_seq_len_multiple=7)
    )
    multiples.load_state_dict(plain.state_dict())
    audio = waveform(7120, seed=11)  # 22 frames -> cropped to 20, padded to 21 inside the encoder
    with torch.no_grad():
        reference = plain(audio[:, : 20 * 320 + 80], output_hidden_states=True)
        cropped = multiples(audio, output_hidden_states=True)
    assert cropped.last_hidden_state.shape[1] == 20
    assert_outputs_close(cropped, reference)


def test_mask_time_indices_replace_encoder_input_by_mask_emb():
    model = random_model(tiny_config())
    captured = {}
    model.encoder.register_forward_pre_hook(lambda module, args: captured.setdefault("input", args[0]))
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, 3:9] = True
    with torch.no_grad():
        output = model(waveform(6480, seed=12), mask_time_indices=mask)
    encoder_input = captured["input"][0]
    assert torch.equal(encoder_input[3:9], model.mask_emb.expand(6, -1))
    torch.testing.assert_close(encoder_input[~mask[0]], output.extract_features[0][~mask[0]])
    star = random_model(tiny_config(**VARIANTS["star"]))
    with pytest.raises(ValueError, match="use_mask_embedding"):
        star(waveform(6480, seed=12), mask_time_indices=mask)
    for wrong in (mask[:, :19], mask[0], mask.expand(2, -1)):  # frames, axes, batch: one check, before the CNN runs
        with pytest.raises(ValueError, match=r"mask_time_indices has shape .* expected \(batch, frames\) = \(1, 20\)"):
            model(waveform(6480, seed=12), mask_time_indices=wrong)


def test_gradients_reach_every_trainable_parameter(variant_config):
    model = random_model(variant_config).train()
    audio = torch.cat([waveform(6480, seed=13), waveform(6480, seed=14)])
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[:, 4:10] = True
    use_mask = variant_config.use_mask_embedding
    output = model(audio, mask_time_indices=mask if use_mask else None, output_hidden_states=True)
    loss = output.last_hidden_state.pow(2).mean()
    if output.projected_hidden_states is not None:
        loss = loss + sum(p.pow(2).mean() for p in output.projected_hidden_states)
    loss.backward()
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    missing = [name for name, param in trainable if param.grad is None or param.grad.abs().sum() == 0]
    assert missing == []
    # Only a pre-LN model with heads freezes anything: its final LayerNorm, which no output reads (as in the original).
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    pre_ln_with_heads = variant_config.do_stable_layer_norm and variant_config.has_projection_heads
    assert frozen == ({"encoder.layer_norm.weight", "encoder.layer_norm.bias"} if pre_ln_with_heads else set())


def test_feature_grad_mult_scales_and_freezing_stops_cnn_gradients():
    quiet = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
    grads = {}
    for mult in (1.0, 0.1, 0.0):
        model = random_model(tiny_config(feature_grad_mult=mult, **quiet)).train()
        model(waveform(6480, seed=17)).last_hidden_state.sum().backward()
        grads[mult] = model.feature_extractor.conv_layers[0].conv.weight.grad
    torch.testing.assert_close(grads[0.1], grads[1.0] * 0.1, atol=1e-4 * grads[1.0].abs().max().item(), rtol=1e-4)
    assert grads[0.0] is None
    model = random_model(tiny_config()).train()
    model.freeze_feature_encoder()
    model(waveform(6480, seed=17)).last_hidden_state.sum().backward()
    assert all(p.grad is None for p in model.feature_extractor.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    quiet = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
    grads = []
    for checkpointing in (False, True):
        model = random_model(tiny_config(**quiet)).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.encoder.layers[0].gradient_checkpointing
        model(waveform(6480, seed=18)).last_hidden_state.sum().backward()
        grads.append(model.encoder.layers[0].attention.q_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda: torch.zeros(1, 8000, dtype=torch.long), "floating-point"),
        (lambda: torch.zeros(8000), r"shape \(batch, samples\)"),
        (lambda: torch.zeros(1, 2, 8000), r"shape \(batch, samples\)"),
        (lambda: torch.zeros(1, 399), "receptive field"),
    ],
)
def test_bad_input_values_are_refused_with_a_clear_message(make_input, message):
    model = random_model(tiny_config())
    with pytest.raises(ValueError, match=message):
        model(make_input())


def test_empty_batches_are_refused():
    with pytest.raises(ValueError, match="a batch of 0 rows"):
        random_model(tiny_config())(torch.zeros(0, 8000))


def mask_with(edit, dtype=torch.long):
    """A (2, 8000) all-ones mask of `dtype` changed by `edit(mask)`."""
    mask = torch.ones(2, 8000, dtype=dtype)
    edit(mask)
    return mask


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.ones(2, 7999, dtype=torch.long), "attention_mask has shape"),
        (mask_with(lambda mask: mask[1, 300:].zero_()), "receptive field"),
        (mask_with(lambda mask: mask[1, :3000].zero_()), "row 1 has padding .* pad on the right"),  # left padding
        (mask_with(lambda mask: mask[0, 4000:4100].zero_()), "row 0 has padding .* pad on the right"),  # a hole
        (mask_with(lambda mask: mask[0, 6000:].fill_(2)), r"holds values \[2\]; it must hold only 1 .* and 0"),
        (mask_with(lambda mask: mask[1, 7000:].fill_(-1)), r"holds values \[-1\]"),
        (mask_with(lambda mask: mask[1, 7000:].fill_(0.5), torch.float32), r"holds values \[0.5\]"),
        ([[1] * 8000] * 2, "must be a tensor of 0/1"),
    ],
)
def test_bad_attention_masks_are_refused_with_one_line(mask, message):
    """Masks were read as lengths only: left padding or values 2 / -1 silently changed the outputs."""
    with pytest.raises(ValueError, match=message) as refused:
        random_model(tiny_config())(torch.zeros(2, 8000), attention_mask=mask)
    assert "\n" not in str(refused.value)


def test_mask_values_are_read_except_in_training_on_an_accelerator():
    """Reading a mask's values waits for the device: training off the CPU skips it (collators build right-padded
    0/1 masks), inference and CPU training check them. A meta-device mask stands in for an accelerator's: its
    values cannot be read, so a check that reads them fails."""
    mask = torch.ones(2, 8000, dtype=torch.long, device="meta")
    check_attention_mask(mask, (2, 8000), 400, training=True)  # no read
    with pytest.raises((NotImplementedError, RuntimeError)):
        check_attention_mask(mask, (2, 8000), 400, training=False)
    with pytest.raises(ValueError, match="padding .0. before real samples"):
        check_attention_mask(torch.tensor([[0, 1] * 4000] * 2), (2, 8000), 400, training=True)  # on the CPU: read
    model = random_model(tiny_config()).train()
    with pytest.raises(ValueError, match="padding .0. before real samples"):  # the model's forward checks too
        model(torch.zeros(2, 8000), attention_mask=torch.tensor([[0, 1] * 4000] * 2))


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.float32])
def test_right_padded_masks_of_any_0_1_dtype_give_the_long_masks_outputs(dtype):
    model = random_model(tiny_config())
    audio = waveform(8000, seed=3).expand(2, -1).clone()
    mask = mask_with(lambda mask: mask[1, 5300:].zero_())
    with torch.no_grad():
        expected = model(audio, attention_mask=mask).last_hidden_state
        actual = model(audio, attention_mask=mask.to(dtype)).last_hidden_state
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(layer_reuses_attention_map=[False, True]), "layer_reuses_attention_map"),
        (dict(layer_reuses_attention_map=[True, False, True, False]), "layer_reuses_attention_map"),
        (dict(hidden_size=50), "hidden_size"),
        (dict(conv_kernel=[10, 3]), "conv_dim/conv_kernel/conv_stride"),
        (dict(reuse_softmax="twice"), "reuse_softmax"),
        (dict(feat_extract_norm="batch"), "feat_extract_norm"),
        (dict(projection_head_size=None, layer_grad_scale=True), "layer_grad_scale"),
        (dict(required_seq_len_multiple=0), "required_seq_len_multiple"),
    ],
)
def test_invalid_configs_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"ARMHubertConfig.{field}"):
        tiny_config(**overrides)


def test_projection_heads_are_initialised_as_the_release_and_other_linears_as_hubert():
    """The release's heads keep PyTorch's default Linear init: U(+-1/sqrt(D)) for weight and bias (std 0.026 at 480)."""
    config = ARMHubertConfig.from_preset(
        "armhubert-960h", num_hidden_layers=2, layer_reuses_attention_map=[False, True]
    )
    torch.manual_seed(0)
    model = ARMHubertModel(config)
    bound = 1 / 480**0.5
    for head in model.projection_heads:
        for values in (head.weight, head.bias):
            assert values.abs().max() <= bound and values.abs().max() > 0.99 * bound
            assert abs(values.std().item() - bound / 3**0.5) < 0.1 * bound / 3**0.5
    assert abs(model.projection_heads[0].weight.std().item() - 0.0263) < 0.0005
    fc1 = model.encoder.layers[0].feed_forward.intermediate_dense
    assert abs(fc1.weight.std().item() - config.initializer_range) < 0.001 and not fc1.bias.any()


def test_attention_implementation_can_be_switched_after_loading(tmp_path, monkeypatch):
    random_model(tiny_config(**VARIANTS["mask-hubert"])).save_pretrained(tmp_path)  # no map reused: SDPA everywhere
    model = ARMHubertModel.from_pretrained(tmp_path).eval()
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda *args, **kwargs: calls.append(1) or sdpa(*args, **kwargs)
    )
    audio = waveform(8000, seed=4)
    outputs = {}
    for implementation in ("sdpa", "eager", "sdpa"):
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        calls.clear()
        with torch.no_grad():
            outputs[implementation] = model(audio).last_hidden_state
        assert bool(calls) == (implementation == "sdpa"), implementation  # eager: explicit maps, no SDPA
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], atol=ATOL, rtol=1e-5)
    with pytest.raises(ValueError, match="Flash Attention"):
        model.set_attn_implementation("flash_attention_2")
    assert model.config._attn_implementation == "sdpa"
