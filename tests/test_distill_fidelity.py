"""The released recipes train what the release trained: loss and gradients of one step, no clipping, STaR options.

The reference step is written here from the original's formulas (the original's published algorithm and
code), independently of `armhubert.distill`: the original's loss (crossed targets, layer weights 0.1 / 1,
sums divided by B*T) on the student built without `layer_grad_scale`, with the original encoder loop's
gradient scaling put on it by hooks (`original_layer_grad_scale`).
"""

import pytest
import torch
import yaml
from fixtures.original_reference import original_layer_grad_scale
from helpers import ROOT, waveform

from armhubert.cli import UserError
from armhubert.distill.losses import star_loss
from armhubert.distill.masks import SpanMasker
from armhubert.distill.models import build_student, layer_pairs, load_teacher
from armhubert.distill.recipe import DistillTrainingArguments, load_recipe, recipe_arguments
from armhubert.distill.trainer import DistillTrainer

QUICKSTART = yaml.safe_load((ROOT / "conf" / "quickstart.yaml").read_text())
RECIPES = sorted(p.stem for p in (ROOT / "conf").glob("*.yaml"))


def tiny_trainer(tmp_path, recipe, *overrides):
    """The recipe's DistillTrainer with its teacher and student shrunk as in the quickstart (CPU, float32)."""
    student_config = dict(QUICKSTART["student_config"])
    if recipe.startswith("mask") or recipe.startswith("star"):
        student_config["layer_reuses_attention_map"] = [False] * 4
    loaded = load_recipe(
        ROOT / "conf" / f"{recipe}.yaml",
        [
            f"output_dir={tmp_path}",
            "teacher=random-hubert",
            f"teacher_config={QUICKSTART['teacher_config']}",
            f"student_config={student_config}",
            "use_cpu=true",
            "fp16=false",
            "report_to=none",
            "eval_strategy=no",
            *overrides,
        ],
    )
    distill_args = training_args = recipe_arguments(loaded)
    teacher = load_teacher(distill_args, seed=0)
    student = build_student(distill_args, teacher.config, seed=0)
    pairs = layer_pairs(distill_args, student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    return DistillTrainer(
        model=student, args=training_args, teacher=teacher, distill_args=distill_args, teacher_layers=pairs
    )


def batch(padded):
    """Two utterances: equal lengths (no padding), or the second one 5000 samples shorter (padded)."""
    first, second = waveform(16000, seed=31), waveform(16000, seed=32)
    attention_mask = torch.ones(2, 16000, dtype=torch.long)
    if padded:
        second[:, 11000:] = 0.0
        attention_mask[1, 11000:] = 0
    return torch.cat([first, second]), attention_mask


def reference_step(trainer, input_values, attention_mask, mask):
    """(loss, {name: gradient}) of the original's training step, from its formulas."""
    student, teacher, distill_args = trainer.model, trainer.teacher.model, trainer.distill_args
    with torch.no_grad():
        clean = teacher(input_values, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        masked = teacher(
            input_values, attention_mask=attention_mask, mask_time_indices=mask, output_hidden_states=True
        ).hidden_states
    scaling, student.config.layer_grad_scale = student.config.layer_grad_scale, False
    try:
        with original_layer_grad_scale(student):
            torch.manual_seed(5)  # the same dropout as the recipe's step
            output = student(
                input_values, attention_mask=attention_mask, mask_time_indices=mask, output_hidden_states=True
            )
    finally:
        student.config.layer_grad_scale = scaling
    num_layers = student.config.num_hidden_layers
    weights = [distill_args.hint_layer_weight] * (num_layers - 1) + [distill_args.last_layer_weight]
    frames = mask.numel()  # B * T: the original divides by the padded batch
    layer_losses = []
    for head, teacher_layer in enumerate(trainer.teacher_layers):
        prediction = output.projected_hidden_states[head]
        on_clean = ((prediction - clean[teacher_layer]) ** 2).mean(-1)
        on_masked = ((prediction - masked[teacher_layer]) ** 2).mean(-1)
        layer_losses.append(weights[head] * ((on_clean * mask).sum() + (on_masked * ~mask).sum()) / frames)
    loss = sum(layer_losses)
    named = [(name, p) for name, p in student.named_parameters() if p.requires_grad]
    gradients = torch.autograd.grad(loss, [p for _, p in named])
    return loss.detach(), {name: grad for (name, _), grad in zip(named, gradients)}


@pytest.mark.parametrize(
    "recipe, padded, overrides",
    [
        ("armhubert-960h", False, []),  # as released; without padding both normalisations are the original's
        ("armwavlm-s-100h", True, ["loss_normalization=original"]),  # p = 0.4, padded rows
    ],
)
def test_released_recipe_step_gives_the_originals_loss_and_gradients(tmp_path, recipe, padded, overrides):
    trainer = tiny_trainer(tmp_path, recipe, *overrides)
    student = trainer.model.train()
    assert student.config.layer_grad_scale == "release"
    input_values, attention_mask = batch(padded)
    masker = SpanMasker(student.config.conv_kernel, student.config.conv_stride, trainer.distill_args.mask_prob)
    mask = masker(attention_mask.sum(-1).tolist(), input_values.shape[1], ["u1", "u2"])
    assert mask.any(-1).all()
    expected_loss, expected_gradients = reference_step(trainer, input_values, attention_mask, mask)

    student.zero_grad()
    torch.manual_seed(5)
    inputs = {"input_values": input_values, "attention_mask": attention_mask, "mask_time_indices": mask}
    loss, _ = trainer.distillation_loss(student, inputs, masked=True)
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-5, atol=0)
    # Absolute tolerance from the largest gradient: some (k_proj biases) are zero up to rounding.
    atol = 1e-6 * max(grad.abs().max().item() for grad in expected_gradients.values())
    for name, param in student.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, expected_gradients[name], rtol=1e-4, atol=atol, msg=name)


def test_no_recipe_clips_gradients(tmp_path):
    assert len(RECIPES) == 12
    for name in RECIPES:
        training_args = recipe_arguments(load_recipe(ROOT / "conf" / f"{name}.yaml", [f"output_dir={tmp_path}"]))
        assert training_args.max_grad_norm == 0.0, name  # the Trainer clips only for a positive norm
    training_args = recipe_arguments(load_recipe(ROOT / "conf" / "quickstart.yaml", ["max_grad_norm=1.0"]))
    assert training_args.max_grad_norm == 1.0


def test_star_defaults_and_the_public_reimplementation_variant():
    documented = DistillTrainingArguments(distill_mode="star")
    assert (documented.star_normalization, documented.star_reduction, documented.star_layer0) == (
        "l2",
        "mean",
        "encoder-input",
    )
    assert (documented.star_layer_weight, documented.star_intra_weight) == (1.0, 1.0)
    variant = DistillTrainingArguments(distill_mode="star", star_variant="public-reimplementation")
    assert (variant.star_normalization, variant.star_reduction, variant.star_layer0) == ("none", "mean", "cnn")
    assert (variant.star_layer_weight, variant.star_intra_weight) == (1.0, 1.0)
    with pytest.raises(
        UserError,
        match="star_variant public-reimplementation sets star_normalization=none; remove star_normalization=l2 from "
        "the recipe",
    ):
        DistillTrainingArguments(distill_mode="star", star_variant="public-reimplementation", star_normalization="l2")
    with pytest.raises(UserError, match="star_variant must be one of public-reimplementation"):
        DistillTrainingArguments(distill_mode="star", star_variant="paper")


def test_a_masking_batch_without_masks_is_a_callers_programming_error(tmp_path):
    """Our collator always masks a masking run's batches (run.py gives it the recipe's masker); a Python caller's
    own collator that does not is told so, as the model tells a caller a mis-shaped mask."""
    trainer = tiny_trainer(tmp_path, "armhubert-960h")
    input_values, attention_mask = batch(padded=False)
    inputs = {"input_values": input_values, "attention_mask": attention_mask}
    with pytest.raises(ValueError, match=r"masking distillation needs mask_time_indices in the batch \(AudioCollator"):
        trainer.distillation_loss(trainer.model, inputs, masked=True)


def test_public_reimplementation_variant_uses_raw_grams_with_the_cnn_features_as_layer_0(tmp_path):
    trainer = tiny_trainer(tmp_path, "starhubert-100h", "star_variant=public-reimplementation")
    student, teacher = trainer.model.eval(), trainer.teacher.model
    input_values, attention_mask = batch(padded=True)
    inputs = {"input_values": input_values, "attention_mask": attention_mask}
    with torch.no_grad():
        loss, _ = trainer.distillation_loss(student, inputs, masked=True)
        output = student(input_values, attention_mask=attention_mask, output_hidden_states=True)
        teacher_states = teacher(input_values, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        # The CNN features the transformers receive: after the feature LayerNorm and projection.
        student_cnn = student.feature_layer_norm(student.feature_extractor(input_values).transpose(1, 2))
        teacher_cnn = teacher.feature_projection(teacher.feature_extractor(input_values).transpose(1, 2))
    valid = output.frame_attention_mask.bool()
    layers = [teacher_states[layer] for layer in trainer.teacher_layers]
    expected, _ = star_loss([student_cnn, *output.hidden_states[1:]], [teacher_cnn, *layers], valid, "none", "mean")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    encoder_input, _ = star_loss(list(output.hidden_states), [teacher_states[0], *layers], valid, "none", "mean")
    assert abs(encoder_input - expected) > 1e-3 * expected  # layer 0 matters
