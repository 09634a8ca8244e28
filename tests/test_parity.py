"""Numerical parity with the original implementation on the bundled fixture."""

import pytest
import torch

SINGLE_CASES = ["single", "single2", "single3"]
ATOL, RTOL = 1e-5, 1e-5


@pytest.mark.parametrize("case", SINGLE_CASES)
def test_every_output_matches_the_original(converted_tiny, reference_io, case):
    output = converted_tiny(reference_io[f"input.{case}.source"], output_hidden_states=True)
    torch.testing.assert_close(output.extract_features, reference_io[f"{case}.features"], atol=ATOL, rtol=RTOL)
    for layer in range(4):
        expected_layer = reference_io[f"{case}.layer_results.{layer}"].transpose(0, 1)  # stored time-major
        torch.testing.assert_close(output.hidden_states[layer + 1], expected_layer, atol=ATOL, rtol=RTOL)
        expected_projection = reference_io[f"{case}.projections.{layer}"]
        torch.testing.assert_close(output.projected_hidden_states[layer], expected_projection, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(output.last_hidden_state, reference_io[f"{case}.x"], atol=ATOL, rtol=RTOL)


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
    from modeling_armhubert import ARMHubertModel

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
