"""`layer_grad_scale`: the release's gradient split between layers and projection heads, by autograd.

The original encoder loop (layer i counted from 0 of L) scales the gradient of layer i's output into
the rest of the network by m_i = (L-i)/(L-i+1) and takes the head branch from that scaled tensor,
scaled again by 1-m_i. So the gradient that head i sends to a parameter of layer k <= i (or to the
encoder input, k = 0) is the unscaled one times (1-m_i) * m_i * prod_{j=k}^{i-1} m_j. That holds
exactly when no layer reuses an attention map; a reused map is handed on unscaled (in the original
too), which `original_layer_grad_scale` (the original loop, by hooks) covers.
"""

import pytest
import torch
from fixtures.original_reference import original_layer_grad_scale
from helpers import random_model, tiny_config, waveform

from configuration_armhubert import ARMHubertConfig

LAYERS = 12
QUIET = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)


def release_factor(head, layer, num_layers):
    """Scale of head `head`'s gradient reaching layer `layer` (0 = also the encoder input), release formula."""
    m = [(num_layers - j) / (num_layers - j + 1) for j in range(num_layers)]
    factor = (1 - m[head]) * m[head]
    for j in range(layer, head):
        factor *= m[j]
    return factor


def uniform_factor(head, layer, num_layers):
    """The same for "uniform": keep_j = (L-j-1)/(L-j) on the way, 1-keep_i = 1/(L-i) into head i."""
    factor = 1 / (num_layers - head)
    for j in range(layer, head):
        factor *= (num_layers - j - 1) / (num_layers - j)
    return factor


def twelve_layer_config(mode):
    return tiny_config(
        num_hidden_layers=LAYERS, layer_reuses_attention_map=[False] * LAYERS, layer_grad_scale=mode, **QUIET
    )


def head_gradients(mode):
    """{head i: (gradient at the encoder input, [gradient of layer k's fc2 weight for k = 0..L-1])}."""
    model = random_model(twelve_layer_config(mode)).train()
    leaf = {}

    def make_leaf(module, args):
        leaf["input"] = args[0].detach().requires_grad_()
        return (leaf["input"],) + args[1:]

    model.encoder.register_forward_pre_hook(make_leaf)
    output = model(torch.cat([waveform(6480, seed=21), waveform(6480, seed=22)]), output_hidden_states=True)
    weights = [layer.feed_forward.output_dense.weight for layer in model.encoder.layers]
    direction = torch.randn(output.projected_hidden_states[0].shape, generator=torch.Generator().manual_seed(3))
    gradients = {}
    for head, projected in enumerate(output.projected_hidden_states):
        grads = torch.autograd.grad(
            (projected * direction).sum(), [leaf["input"]] + weights, retain_graph=True, allow_unused=True
        )
        gradients[head] = (grads[0], list(grads[1:]))
    assert torch.equal(output.last_hidden_state, output.projected_hidden_states[-1])
    return gradients


@pytest.fixture(scope="module")
def plain_gradients():
    return head_gradients(False)


@pytest.mark.parametrize("mode, factor", [("release", release_factor), ("uniform", uniform_factor)])
def test_each_heads_gradient_share_follows_the_formula(plain_gradients, mode, factor):
    scaled = head_gradients(mode)
    for head in range(LAYERS):
        plain_input, plain_layers = plain_gradients[head]
        scaled_input, scaled_layers = scaled[head]
        expected = factor(head, 0, LAYERS)
        tolerance = dict(rtol=1e-4, atol=1e-6 * plain_input.abs().max().item())
        torch.testing.assert_close(scaled_input, plain_input * expected, **tolerance)
        for layer in range(LAYERS):
            if layer > head:  # a head sends nothing to the layers above it
                assert scaled_layers[layer] is None and plain_layers[layer] is None
                continue
            tolerance = dict(rtol=1e-4, atol=1e-6 * plain_layers[layer].abs().max().item())
            torch.testing.assert_close(
                scaled_layers[layer], plain_layers[layer] * factor(head, layer, LAYERS), **tolerance
            )


def test_release_shares_reaching_the_encoder_input_are_the_published_ones():
    """(L-i)/((L-i+1)(L+1)) in closed form: 0.071 for the first head of 12 down to 0.038 for the last."""
    shares = [release_factor(head, 0, LAYERS) for head in range(LAYERS)]
    closed = [(LAYERS - i) / ((LAYERS - i + 1) * (LAYERS + 1)) for i in range(LAYERS)]
    assert shares == pytest.approx(closed)
    assert round(shares[0], 3) == 0.071 and round(shares[-1], 3) == 0.038
    assert release_factor(LAYERS - 1, LAYERS - 1, LAYERS) == 0.25  # the last layer too: m = 1/2, head x 1/4
    assert [uniform_factor(head, 0, LAYERS) for head in range(LAYERS)] == pytest.approx([1 / LAYERS] * LAYERS)


def _gradients_of_weighted_heads(model):
    output = model(torch.cat([waveform(6480, seed=23), waveform(6480, seed=24)]), output_hidden_states=True)
    generator = torch.Generator().manual_seed(4)
    loss = sum(
        weight * (projected * torch.randn(projected.shape, generator=generator)).sum()
        for weight, projected in zip([0.1, 0.1, 0.1, 1.0], output.projected_hidden_states)
    )
    named = [(name, param) for name, param in model.named_parameters() if name != "mask_emb"]  # no masking here
    return dict(zip([name for name, _ in named], torch.autograd.grad(loss, [param for _, param in named])))


def test_with_attention_reuse_release_scaling_is_the_original_encoder_loop():
    reference_model = random_model(tiny_config(**QUIET)).train()  # layers 1 and 3 reuse the maps of 0 and 2
    with original_layer_grad_scale(reference_model):
        expected = _gradients_of_weighted_heads(reference_model)
    for mode, equal in (("release", True), ("uniform", False)):
        got = _gradients_of_weighted_heads(random_model(tiny_config(layer_grad_scale=mode, **QUIET)).train())
        atol = 1e-6 * max(grad.abs().max().item() for grad in expected.values())
        close = [torch.allclose(got[name], expected[name], rtol=1e-4, atol=atol) for name in expected]
        assert all(close) if equal else not all(close), mode


@pytest.mark.parametrize("mode", ["release", "uniform"])
def test_scaling_is_a_forward_identity(mode):
    audio = waveform(6480, seed=16)
    plain = random_model(tiny_config(**QUIET)).train()(audio, output_hidden_states=True)
    scaled = random_model(tiny_config(layer_grad_scale=mode, **QUIET)).train()(audio, output_hidden_states=True)
    torch.testing.assert_close(scaled.last_hidden_state, plain.last_hidden_state, rtol=0, atol=0)
    for got, want in zip(scaled.projected_hidden_states, plain.projected_hidden_states):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "value, expected",
    [(True, "release"), ("release", "release"), ("Uniform", "uniform"), (False, False), (None, False)],
)
def test_modes_by_name_and_old_boolean_configs(value, expected):
    config = tiny_config(layer_grad_scale=value)
    assert config.layer_grad_scale == expected
    assert ARMHubertConfig.from_dict(config.to_dict()).layer_grad_scale == expected
    # A config saved before the modes existed holds a boolean: True loads as the release's scaling.
    old = {**config.to_dict(), "layer_grad_scale": bool(value)}
    assert ARMHubertConfig.from_dict(old).layer_grad_scale == ("release" if value else False)


def test_released_arm_presets_scale_as_the_release_and_unknown_modes_are_refused():
    assert ARMHubertConfig.from_preset("armhubert-960h").layer_grad_scale == "release"
    assert ARMHubertConfig.from_preset("maskhubert-960h").layer_grad_scale is False
    with pytest.raises(ValueError, match="ARMHubertConfig.layer_grad_scale: got 'twice'"):
        tiny_config(layer_grad_scale="twice")
