"""Pre-LN (`layer_norm_first`) checkpoints convert to models that give the original's outputs.

The release has no pre-LN model, so the reference is `tests/fixtures/original_reference.py`: the
original's forward written from the spec's formulas, first shown here to reproduce the original's
own outputs on the post-LN fixture, then used to make the pre-LN fixture.
"""

import pytest
import torch
import yaml
from conftest import TINY_CKPT, TINY_YAML
from fixtures.original_reference import PRE_LN_CKPT, PRE_LN_IO, reference_forward, student_state

from configuration_armhubert import ARMHubertConfig
from convert_checkpoint import convert
from modeling_armhubert import ARMHubertModel

ATOL, RTOL = 1e-5, 1e-5
CASES = ["single", "single2"]


@pytest.fixture(scope="module")
def pre_ln_io():
    return torch.load(PRE_LN_IO, weights_only=True)


@pytest.fixture(scope="module")
def converted_pre_ln():
    return convert(PRE_LN_CKPT)


@pytest.mark.parametrize("case", ["single", "single2", "single3"])
def test_reference_reproduces_the_original_on_the_released_format_fixture(reference_io, case):
    distiller = yaml.safe_load(TINY_YAML.read_text())["distiller"]
    state = student_state(torch.load(TINY_CKPT, weights_only=True))
    with torch.no_grad():
        output = reference_forward(state, distiller, reference_io[f"input.{case}.source"])
    torch.testing.assert_close(output["features"], reference_io[f"{case}.features"], atol=ATOL, rtol=RTOL)
    for layer in range(4):
        expected = reference_io[f"{case}.layer_results.{layer}"].transpose(0, 1)
        torch.testing.assert_close(output[f"layer_results.{layer}"], expected, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(
            output[f"projections.{layer}"], reference_io[f"{case}.projections.{layer}"], atol=ATOL, rtol=RTOL
        )
    torch.testing.assert_close(output["x"], reference_io[f"{case}.x"], atol=ATOL, rtol=RTOL)


def test_pre_ln_fixture_is_what_the_reference_computes(pre_ln_io):
    checkpoint = torch.load(PRE_LN_CKPT, weights_only=True)
    distiller = checkpoint["hyper_parameters"]["cfg"]["distiller"]
    assert distiller["layer_norm_first"] is True
    with torch.no_grad():
        output = reference_forward(student_state(checkpoint), distiller, pre_ln_io["input.single.source"])
    for key, value in output.items():
        torch.testing.assert_close(value, pre_ln_io[f"single.{key}"], atol=0, rtol=0)
    # The encoder's final LayerNorm changes the last layer a lot: a port that applies it is far off.
    assert (pre_ln_io["single.layer_norm_x"] - pre_ln_io["single.layer_results.3"]).abs().max() > 1.0


@pytest.mark.parametrize("case", CASES)
def test_converted_pre_ln_checkpoint_gives_the_original_outputs(converted_pre_ln, pre_ln_io, case):
    assert converted_pre_ln.config.do_stable_layer_norm
    with torch.no_grad():
        output = converted_pre_ln(pre_ln_io[f"input.{case}.source"], output_hidden_states=True)
    torch.testing.assert_close(output.extract_features, pre_ln_io[f"{case}.features"], atol=ATOL, rtol=RTOL)
    for layer in range(4):
        torch.testing.assert_close(
            output.hidden_states[layer + 1], pre_ln_io[f"{case}.layer_results.{layer}"], atol=ATOL, rtol=RTOL
        )
        torch.testing.assert_close(
            output.projected_hidden_states[layer], pre_ln_io[f"{case}.projections.{layer}"], atol=ATOL, rtol=RTOL
        )
    torch.testing.assert_close(output.last_hidden_state, pre_ln_io[f"{case}.x"], atol=ATOL, rtol=RTOL)


def test_head_less_pre_ln_model_outputs_the_final_layer_norm_of_the_raw_last_layer(converted_pre_ln, pre_ln_io):
    fields = {**converted_pre_ln.config.to_dict(), "projection_head_size": None, "layer_grad_scale": False}
    head_less = ARMHubertModel(ARMHubertConfig.from_dict(fields)).eval()
    state = {k: v for k, v in converted_pre_ln.state_dict().items() if not k.startswith("projection_heads.")}
    head_less.load_state_dict(state)
    with torch.no_grad():
        output = head_less(pre_ln_io["input.single.source"], output_hidden_states=True)
    torch.testing.assert_close(output.last_hidden_state, pre_ln_io["single.layer_norm_x"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(output.hidden_states[-1], pre_ln_io["single.layer_results.3"], atol=ATOL, rtol=RTOL)
