"""Half precision: the reuse keeps its float32 parts under autocast and with bf16 values.

After the release's second softmax a reused weight is ~(1 + p_ij) / (n + 1): the map's structure is a
relative ~1/n ripple, below bf16's resolution beyond ~250 frames. These tests hold the reuse's output
minus the plain mean of V (the structure) to the float64 result, and run bf16 models end to end.
"""

import copy
from types import SimpleNamespace

import pytest
import torch
from helpers import random_model, tiny_config, waveform
from test_distill_fidelity import batch, tiny_trainer

import attention_armhubert
from armhubert.distill.masks import SpanMasker
from attention_armhubert import Handover, ResoftmaxReuse, flex_resoftmax, logsumexp_blocks, real_mean, resoftmax_blocks

SCALE = 16**-0.5
QUIET = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)


def bf16_operands(time, padded):
    """bf16 Q, K, V (1 or 2, 4, T, 16), their float32 log-sum-exp, a padding mask (row 1 padded) or None."""
    generator = torch.Generator().manual_seed(time)
    batch_size = 2 if padded else 1
    query, key, value = (torch.randn(batch_size, 4, time, 16, generator=generator).bfloat16() for _ in range(3))
    mask = None
    if padded:
        mask = torch.zeros(batch_size, time, dtype=torch.bool)
        mask[1, time * 2 // 3 :] = True
    return query, key, value, mask


def exact_reuse(query, key, value, mask):
    """(float64 output, float32 lse): softmax(softmax(Q K^T * scale)) V over real keys, in float64."""
    scores = query.double() @ key.double().transpose(-1, -2) * SCALE
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None], float("-inf"))
    probabilities = torch.softmax(scores, -1)
    if mask is not None:
        probabilities = probabilities.masked_fill(mask[:, None, None], float("-inf"))
    return torch.softmax(probabilities, -1) @ value.double(), torch.logsumexp(scores, -1).float()


def structure_error(output, exact, value, mask):
    """Relative L2 error of output - mean(V over real keys) against the exact one, over real query rows."""
    mean = real_mean(value.double(), mask)
    difference, reference = output.double() - mean, exact - mean
    if mask is not None:
        difference, reference = (t.masked_fill(mask[:, None, :, None], 0.0) for t in (difference, reference))
    return float((difference - reference).norm() / reference.norm())


def reuse_explicit(query, key, logsumexp, value, mask, scale):
    """The explicit reusing layer (`reuse_map`) on the computing layer's bf16 map, as autocast makes it."""
    scores = torch.matmul(query * scale, key.transpose(-1, -2))
    handover = Handover(map=attention_armhubert.masked_softmax(scores, mask))
    attention = SimpleNamespace(reuse_softmax="resoftmax", training=False)
    return attention_armhubert.reuse_map(attention, handover, value, mask, 0.0)[0]


def reuse_fused(query, key, logsumexp, value, mask, scale):
    leaves = [t.clone().requires_grad_() for t in (query, key, value)]
    return ResoftmaxReuse.apply(leaves[0], leaves[1], logsumexp, leaves[2], mask, scale).detach()


KERNELS = {
    "blocks": lambda *arguments: resoftmax_blocks(*arguments)[0],
    "fused": reuse_fused,
    "flex": flex_resoftmax,
    "explicit": reuse_explicit,
}


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("time, padded", [(500, False), (1500, False), (500, True)], ids=["500", "1500", "500-padded"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_reuse_keeps_its_structure_under_bf16_autocast(kernel, time, padded):
    """Before the fix: 76 % (T = 500) and 245 % (T = 1,500) structure error (flex), 110 % / 416 % (fused)."""
    query, key, value, mask = bf16_operands(time, padded)
    exact, logsumexp = exact_reuse(query, key, value, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = KERNELS[kernel](query, key, logsumexp, value, mask, SCALE)
    assert output.dtype == torch.float32 and torch.isfinite(output).all()
    assert structure_error(output, exact, value, mask) <= 0.05


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_logsumexp_blocks_is_float32_under_autocast(padded):
    query, key, _, mask = bf16_operands(300, padded)
    _, exact = exact_reuse(query, key, query, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        computed = logsumexp_blocks(query.float(), key.float(), mask, SCALE)
    torch.testing.assert_close(computed, exact, rtol=0, atol=1e-4)


def test_fused_gradients_under_autocast_are_the_float32_ones():
    """ResoftmaxReuse's backward runs in float32 under autocast: its gradients equal those without autocast."""
    query, key, value, mask = (t.float() if t.is_floating_point() else t for t in bf16_operands(300, True))
    _, logsumexp = exact_reuse(query, key, value, mask)
    probe = torch.randn(2, 4, 300, 16, generator=torch.Generator().manual_seed(1))

    def gradients(autocast):
        leaves = [t.clone().requires_grad_() for t in (query, key, value)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            output = ResoftmaxReuse.apply(leaves[0], leaves[1], logsumexp, leaves[2], mask, SCALE)
        (output * probe).sum().backward()
        return [leaf.grad for leaf in leaves]

    for autocast, plain in zip(gradients(True), gradients(False)):
        torch.testing.assert_close(autocast, plain, rtol=1e-5, atol=1e-7)


def layer_cosines(model, audio, attention_mask, half_model=None, autocast=False):
    """Cosine of every layer output (real frames of the padded row) to the float32 model's."""
    with torch.inference_mode():
        reference = model(audio, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            half = (half_model or model)(audio, attention_mask=attention_mask, output_hidden_states=True)
    cosines = []
    for computed, expected in zip(half.hidden_states, reference):
        computed, expected = computed[1, :20].double().flatten(), expected[1, :20].double().flatten()
        assert torch.isfinite(computed).all()
        cosines.append(float(computed @ expected / computed.norm() / expected.norm()))
    return cosines


@pytest.mark.parametrize("path", ["explicit", "fused", "flex_attention"])
def test_bf16_models_stay_close_to_float32_on_every_layer(path):
    """A padded batch through a model under bf16 autocast and with bf16 weights: every layer's cosine to
    the float32 model's >= 0.999, outputs finite."""
    implementation = "flex_attention" if path == "flex_attention" else "sdpa"
    config = tiny_config(layer_reuses_attention_map=[False, True, True, False], attn_implementation=implementation)
    if path != "explicit":
        config.explicit_map_elements = 0  # these short inputs would otherwise hand over explicit maps
    model = random_model(config).eval()
    audio = torch.cat([waveform(16000, seed=3), waveform(16000, seed=4)])
    attention_mask = torch.ones_like(audio, dtype=torch.long)
    attention_mask[1, 7000:] = 0
    assert min(layer_cosines(model, audio, attention_mask, autocast=True)) >= 0.999
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    assert min(layer_cosines(model, audio, attention_mask, half_model=bf16)) >= 0.999


@pytest.mark.parametrize("recompute", [False, True], ids=["explicit", "fused"])
def test_distillation_step_under_bf16_autocast_is_finite_and_close_to_float32(tmp_path, recompute):
    trainer = tiny_trainer(tmp_path, "armhubert-960h")
    student = trainer.model.train()
    student.config.explicit_map_elements = 0  # the fused path at this short length too
    student.config.reuse_recompute_backward = recompute
    student.config.update(QUIET)
    input_values, attention_mask = batch(padded=True)
    masker = SpanMasker(student.config.conv_kernel, student.config.conv_stride, trainer.distill_args.mask_prob)
    mask = masker(attention_mask.sum(-1).tolist(), input_values.shape[1], ["u1", "u2"])
    inputs = {"input_values": input_values, "attention_mask": attention_mask, "mask_time_indices": mask}

    def step(autocast):
        student.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = trainer.distillation_loss(student, inputs, masked=True)
        loss.backward()
        return loss.detach(), [p.grad for p in student.parameters() if p.grad is not None]

    plain_loss, _ = step(False)
    loss, gradients = step(True)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in gradients)
    torch.testing.assert_close(loss, plain_loss, rtol=0.02, atol=0)
