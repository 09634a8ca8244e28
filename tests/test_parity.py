"""Numerical parity with the original implementation, on the two original-format fixtures.

`post-ln`: the release's own format and outputs (`armhubert-tiny`, outputs of the original code).
`pre-ln` (`layer_norm_first`): the release has no such model, so its reference outputs come from
`tests/fixtures/original_reference.py`, the original's forward written from its published formulas, which is
first shown here to reproduce the original's own outputs on the post-LN fixture.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from fixtures.original_reference import PRE_LN_CKPT, PRE_LN_IO, reference_forward, student_state
from helpers import TINY_CKPT, TINY_IO, TINY_YAML

from armhubert.convert.original import convert
from configuration_armhubert import ARMHubertConfig
from modeling_armhubert import ARMHubertModel

ATOL, RTOL = 1e-5, 1e-5
LAYERS = 4


@dataclass(frozen=True)
class OriginalFixture:
    checkpoint: Path
    io: Path
    cases: tuple[str, ...]
    time_major: bool  # the original code stores layer results (T, B, D); the reference stores (B, T, D)


ORIGINALS = {
    "post-ln": OriginalFixture(TINY_CKPT, TINY_IO, ("single", "single2", "single3"), time_major=True),
    "pre-ln": OriginalFixture(PRE_LN_CKPT, PRE_LN_IO, ("single", "single2"), time_major=False),
}


@functools.cache
def converted(name):
    """(the converted model, the fixture's inputs and reference outputs) of ORIGINALS[name]."""
    return convert(ORIGINALS[name].checkpoint), torch.load(ORIGINALS[name].io, weights_only=True)


def expected_layer(name, io, case, layer):
    expected = io[f"{case}.layer_results.{layer}"]
    return expected.transpose(0, 1) if ORIGINALS[name].time_major else expected


@pytest.mark.parametrize("name,case", [(name, case) for name, fixture in ORIGINALS.items() for case in fixture.cases])
def test_every_output_matches_the_original(name, case):
    model, io = converted(name)
    assert model.config.do_stable_layer_norm == (name == "pre-ln")
    with torch.no_grad():
        output = model(io[f"input.{case}.source"], output_hidden_states=True)
    torch.testing.assert_close(output.extract_features, io[f"{case}.features"], atol=ATOL, rtol=RTOL)
    for layer in range(LAYERS):
        torch.testing.assert_close(
            output.hidden_states[layer + 1], expected_layer(name, io, case, layer), atol=ATOL, rtol=RTOL
        )
        torch.testing.assert_close(
            output.projected_hidden_states[layer], io[f"{case}.projections.{layer}"], atol=ATOL, rtol=RTOL
        )
    torch.testing.assert_close(output.last_hidden_state, io[f"{case}.x"], atol=ATOL, rtol=RTOL)


def test_padded_batch_frame_mask_and_features_match_the_original(converted_tiny, reference_io):
    source = reference_io["input.batch_pad.source"]
    attention_mask = (~reference_io["input.batch_pad.padding_mask"]).long()
    output = converted_tiny(source, attention_mask=attention_mask)
    expected_real_frames = (~reference_io["batch_pad.padding_mask"]).long()
    assert torch.equal(output.frame_attention_mask, expected_real_frames)
    helper_mask = converted_tiny._get_feature_vector_attention_mask(64, attention_mask)
    assert torch.equal(helper_mask, expected_real_frames)
    # Features (before any batch-mixing layer in the original) agree, and padded frames are zero.
    torch.testing.assert_close(output.extract_features, reference_io["batch_pad.features"], atol=ATOL, rtol=RTOL)
    assert output.extract_features[1, 47:].abs().max() == 0


def test_release_second_softmax_is_what_the_weights_need(converted_tiny, reference_io):
    """Reusing the probabilities directly is a real option that does not reproduce the release."""
    config = converted_tiny.config.to_dict()
    config["reuse_softmax"] = "probabilities"
    direct = ARMHubertModel(type(converted_tiny.config).from_dict(config)).eval()
    direct.load_state_dict(converted_tiny.state_dict())
    source = reference_io["input.single.source"]
    first_layer = direct(source, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(
        first_layer, reference_io["single.layer_results.0"].transpose(0, 1), atol=ATOL, rtol=RTOL
    )
    difference = (direct(source).last_hidden_state - reference_io["single.x"]).abs().max()
    assert difference > 0.1


# --------------------------------------------------------------------------------------------------
# The pre-LN reference: right on the release's own outputs, and what made the pre-LN fixture


@pytest.mark.parametrize("case", ORIGINALS["post-ln"].cases)
def test_reference_reproduces_the_original_on_the_released_format_fixture(reference_io, case):
    distiller = yaml.safe_load(TINY_YAML.read_text())["distiller"]
    state = student_state(torch.load(TINY_CKPT, weights_only=True))
    with torch.no_grad():
        output = reference_forward(state, distiller, reference_io[f"input.{case}.source"])
    torch.testing.assert_close(output["features"], reference_io[f"{case}.features"], atol=ATOL, rtol=RTOL)
    for layer in range(LAYERS):
        torch.testing.assert_close(
            output[f"layer_results.{layer}"], expected_layer("post-ln", reference_io, case, layer), atol=ATOL, rtol=RTOL
        )
        torch.testing.assert_close(
            output[f"projections.{layer}"], reference_io[f"{case}.projections.{layer}"], atol=ATOL, rtol=RTOL
        )
    torch.testing.assert_close(output["x"], reference_io[f"{case}.x"], atol=ATOL, rtol=RTOL)


def test_pre_ln_fixture_is_what_the_reference_computes():
    _, pre_ln_io = converted("pre-ln")
    checkpoint = torch.load(PRE_LN_CKPT, weights_only=True)
    distiller = checkpoint["hyper_parameters"]["cfg"]["distiller"]
    assert distiller["layer_norm_first"] is True
    with torch.no_grad():
        output = reference_forward(student_state(checkpoint), distiller, pre_ln_io["input.single.source"])
    # Recorded on another CPU: the same code sums in another order on AVX2 than on AVX-512 (2.5e-6 apart on
    # a Zen 3), so to float32 rounding, not bit for bit.
    for key, value in output.items():
        torch.testing.assert_close(value, pre_ln_io[f"single.{key}"], atol=ATOL, rtol=RTOL)
    # The encoder's final LayerNorm changes the last layer a lot: a port that applies it is far off.
    assert (pre_ln_io["single.layer_norm_x"] - pre_ln_io["single.layer_results.3"]).abs().max() > 1.0


def test_head_less_pre_ln_model_outputs_the_final_layer_norm_of_the_raw_last_layer():
    converted_pre_ln, pre_ln_io = converted("pre-ln")
    fields = {**converted_pre_ln.config.to_dict(), "projection_head_size": None, "layer_grad_scale": False}
    head_less = ARMHubertModel(ARMHubertConfig.from_dict(fields)).eval()
    state = {k: v for k, v in converted_pre_ln.state_dict().items() if not k.startswith("projection_heads.")}
    head_less.load_state_dict(state)
    with torch.no_grad():
        output = head_less(pre_ln_io["input.single.source"], output_hidden_states=True)
    torch.testing.assert_close(output.last_hidden_state, pre_ln_io["single.layer_norm_x"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(output.hidden_states[-1], pre_ln_io["single.layer_results.3"], atol=ATOL, rtol=RTOL)
