"""Task heads: CTC and sequence classification, weighted layer sum, SpecAugment, Auto classes."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import random_model, tiny_config, waveform

from armhubert.folders.remote_code import add_remote_code_entries, ship_pipeline
from modeling_armhubert import ARMHubertForCTC, ARMHubertForSequenceClassification, ARMHubertModel, head_input_size

STAR = dict(layer_reuses_attention_map=[False] * 4, projection_head_size=None, use_mask_embedding=False)
NO_DROPOUT = dict(
    hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0
)


def padded_batch():
    long, short = waveform(12000, seed=1)[0], waveform(7000, seed=2)[0]
    input_values = torch.zeros(2, 12000)
    input_values[0], input_values[1, :7000] = long, short
    attention_mask = torch.zeros(2, 12000, dtype=torch.long)
    attention_mask[0], attention_mask[1, :7000] = 1, 1
    return input_values, attention_mask


def head(head_class, seed=0, **overrides):
    torch.manual_seed(seed)
    model = head_class(tiny_config(**{**NO_DROPOUT, **overrides}))
    return model.eval()


def test_ctc_loss_is_torch_ctc_over_the_real_frames_at_320_samples_per_frame():
    model = head(ARMHubertForCTC, vocab_size=12)
    input_values, attention_mask = padded_batch()
    labels = torch.tensor([[3, 4, 4, 5, 6], [7, 8, -100, -100, -100]])
    output = model(input_values, attention_mask=attention_mask, labels=labels)

    assert model.config.inputs_to_logits_ratio == 320
    frames = model._get_feat_extract_output_lengths(attention_mask.sum(-1))
    assert output.logits.shape == (2, int(frames.max()), 12)
    assert frames.tolist() == [(12000 - 400) // 320 + 1, (7000 - 400) // 320 + 1]
    log_probs = F.log_softmax(output.logits, dim=-1).transpose(0, 1)
    expected = F.ctc_loss(log_probs, torch.tensor([3, 4, 4, 5, 6, 7, 8]), frames, torch.tensor([5, 2]), blank=0)
    torch.testing.assert_close(output.loss, expected)


@pytest.mark.parametrize("family", ["arm", "star"])
def test_weighted_layer_sum_uses_the_representations_superb_used(family):
    overrides = STAR if family == "star" else {}
    model = head(ARMHubertForSequenceClassification, num_labels=3, use_weighted_layer_sum=True, **overrides)
    base = model.armhubert
    input_values, attention_mask = padded_batch()
    with torch.no_grad():
        reference = base(input_values, attention_mask=attention_mask, output_hidden_states=True)
        layers = reference.projected_hidden_states if family == "arm" else reference.hidden_states[1:]
        assert len(layers) == 4 and layers[0].shape[-1] == head_input_size(model.config)
        for chosen in (0, 2):
            # -inf everywhere else: the softmax picks exactly one layer.
            model.layer_sum.layer_weights.fill_(float("-inf"))
            model.layer_sum.layer_weights[chosen] = 0.0
            _, features, _ = model._encode(input_values, attention_mask, False, False)
            torch.testing.assert_close(features, layers[chosen])
    assert model.projector.in_features == (64 if family == "arm" else 48)


def test_weighted_sum_weights_receive_gradients():
    model = head(ARMHubertForCTC, vocab_size=12, use_weighted_layer_sum=True).train()
    input_values, attention_mask = padded_batch()
    loss = model(input_values, attention_mask=attention_mask, labels=torch.tensor([[3, 4, 5], [6, 7, 8]])).loss
    loss.backward()
    grad = model.layer_sum.layer_weights.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    classifier = head(ARMHubertForSequenceClassification, num_labels=3, use_weighted_layer_sum=True).train()
    classifier(input_values, attention_mask=attention_mask, labels=torch.tensor([0, 2])).loss.backward()
    assert classifier.layer_sum.layer_weights.grad.abs().sum() > 0


def test_classification_mean_pools_over_real_frames_only():
    model = head(ARMHubertForSequenceClassification, num_labels=3)
    input_values, attention_mask = padded_batch()
    with torch.no_grad():
        logits = model(input_values, attention_mask=attention_mask).logits
        hidden = model.armhubert(input_values, attention_mask=attention_mask).last_hidden_state
        frames = model._get_feat_extract_output_lengths(attention_mask.sum(-1))
        for row in range(2):
            pooled = model.projector(hidden[row, : frames[row]]).mean(dim=0)
            torch.testing.assert_close(logits[row], model.classifier(pooled))
    assert int(frames[1]) < hidden.shape[1]  # row 1 really has padded frames


def capture_encoder_input(model):
    seen = []
    model.armhubert.encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(args[0].detach()), with_kwargs=True
    )
    return seen


@pytest.mark.parametrize("family", ["arm", "star"])
def test_spec_augment_masks_frames_and_channels_in_training_only(family):
    overrides = STAR if family == "star" else {}
    model = head(
        ARMHubertForCTC,
        vocab_size=12,
        mask_time_prob=0.5,
        mask_time_length=2,
        mask_feature_prob=0.3,
        mask_feature_length=4,
        mask_feature_min_masks=1,
        **overrides,
    )
    seen = capture_encoder_input(model)
    input_values, attention_mask = padded_batch()
    embedding = model.armhubert.mask_emb if family == "arm" else model.spec_augment.masked_spec_embed
    assert embedding is not None
    with torch.no_grad():
        model.eval()(input_values, attention_mask=attention_mask)
        model.train()(input_values, attention_mask=attention_mask)
    clean, masked = seen
    zeroed_channels = (masked == 0).all(dim=1)  # (B, D): channels zeroed on every frame
    assert zeroed_channels.any(dim=1).all()
    kept = ~zeroed_channels[:, None, :]
    is_masked_frame = ((masked - embedding).abs().masked_fill(~kept, 0) < 1e-6).all(-1)
    assert is_masked_frame.any(dim=1).all()  # every row has masked frames
    real = model._get_feature_vector_attention_mask(clean.shape[1], attention_mask).bool()
    assert not is_masked_frame[~real].any()  # padded frames are never masked
    # Elsewhere only the zeroed channels differ from the clean input.
    untouched = ~is_masked_frame & real
    keep = kept.expand_as(masked)[untouched].to(masked.dtype)
    torch.testing.assert_close(masked[untouched] * keep, clean[untouched] * keep)
    assert not ((clean - embedding).abs() < 1e-6).all(-1).any()  # eval: nothing masked


def test_spec_augment_can_be_switched_off():
    model = head(ARMHubertForCTC, vocab_size=12, apply_spec_augment=False, mask_time_prob=0.9, mask_time_length=2)
    seen = capture_encoder_input(model)
    input_values, attention_mask = padded_batch()
    with torch.no_grad():
        model.eval()(input_values, attention_mask=attention_mask)
        model.train()(input_values, attention_mask=attention_mask)
    torch.testing.assert_close(seen[0], seen[1])


def test_freezing_the_feature_encoder_and_the_base_model():
    model = head(ARMHubertForCTC, vocab_size=12).train()
    model.freeze_feature_encoder()
    input_values, attention_mask = padded_batch()
    model(input_values, attention_mask=attention_mask, labels=torch.tensor([[3, 4], [5, 6]])).loss.backward()
    assert all(p.grad is None for p in model.armhubert.feature_extractor.parameters())
    assert model.armhubert.encoder.layers[0].attention.v_proj.weight.grad is not None

    classifier = head(ARMHubertForSequenceClassification, num_labels=3, use_weighted_layer_sum=True)
    classifier.freeze_base_model()
    trainable = {name.split(".")[0] for name, p in classifier.named_parameters() if p.requires_grad}
    assert trainable == {"layer_sum", "projector", "classifier"}


def test_bad_labels_and_configs_give_clear_messages():
    model = head(ARMHubertForCTC, vocab_size=12)
    input_values, attention_mask = padded_batch()
    with pytest.raises(ValueError, match=r"ids \[12\] outside the vocabulary \[0, 12\)"):
        model(input_values, attention_mask=attention_mask, labels=torch.tensor([[3, 12], [4, -100]]))
    with pytest.raises(ValueError, match="labels row 1 has 30 tokens but its audio gives only 21 frames"):
        model(input_values, attention_mask=attention_mask, labels=torch.tensor([[3] * 30, [4] * 30]))
    for labels in (torch.tensor([[3, 4]]), torch.tensor([3, 4]), torch.tensor([[3.0], [4.0]])):
        with pytest.raises(
            ValueError, match=r"CTC labels must be an integer tensor of shape \(batch, tokens\) = \(2, U\)"
        ):
            model(input_values, attention_mask=attention_mask, labels=labels)
    with pytest.raises(ValueError, match="vocab_size >= 2"):
        ARMHubertForCTC(tiny_config(vocab_size=1))
    with pytest.raises(ValueError, match="pad_token_id as the CTC blank"):
        ARMHubertForCTC(tiny_config(vocab_size=5, pad_token_id=7))
    classifier = head(ARMHubertForSequenceClassification, num_labels=3)
    with pytest.raises(ValueError, match=r"class ids \[3\] outside \[0, 3\)"):
        classifier(input_values, attention_mask=attention_mask, labels=torch.tensor([0, 3]))


@pytest.mark.parametrize("family", ["arm", "star"])
def test_heads_load_a_saved_encoder_and_initialise_only_their_own_parameters(tmp_path, family):
    encoder = random_model(tiny_config(**(STAR if family == "star" else {})))
    encoder.save_pretrained(tmp_path)
    model = ARMHubertForCTC.from_pretrained(tmp_path, vocab_size=9, use_weighted_layer_sum=True)
    for name, value in encoder.state_dict().items():
        assert torch.equal(model.armhubert.state_dict()[name], value), name
    assert torch.equal(model.layer_sum.layer_weights, torch.zeros(4))
    assert torch.isfinite(model.lm_head.weight).all() and model.lm_head.weight.std() < 0.1
    if family == "star":  # no distilled mask embedding: SpecAugment brings its own, initialised in [0, 1)
        spec_embed = model.spec_augment.masked_spec_embed
        assert spec_embed.shape == (48,) and bool(((spec_embed >= 0) & (spec_embed < 1)).all())


def test_auto_classes_build_the_heads():
    from transformers import AutoModelForAudioClassification, AutoModelForCTC

    config = tiny_config(vocab_size=7, num_labels=2)
    assert type(AutoModelForCTC.from_config(config)) is ARMHubertForCTC
    assert type(AutoModelForAudioClassification.from_config(config)) is ARMHubertForSequenceClassification


def test_heads_and_pipeline_reload_through_auto_classes_with_remote_code_in_a_fresh_process(tmp_path):
    ctc = head(ARMHubertForCTC, vocab_size=9)
    classifier = head(ARMHubertForSequenceClassification, num_labels=3, use_weighted_layer_sum=True)
    encoder = random_model(tiny_config(**STAR))
    add_remote_code_entries(encoder.config)
    for name, model in (("ctc", ctc), ("cls", classifier), ("enc", encoder)):
        model.save_pretrained(tmp_path / name)
        ship_pipeline(tmp_path / name)
    input_values, attention_mask = padded_batch()
    torch.save({"x": input_values, "mask": attention_mask}, tmp_path / "input.pt")
    script = f"""
import numpy, torch
from transformers import AutoModelForAudioClassification, AutoModelForCTC, pipeline
root = {str(tmp_path)!r}
data = torch.load(root + "/input.pt", weights_only=True)
ctc = AutoModelForCTC.from_pretrained(root + "/ctc", trust_remote_code=True).eval()
cls = AutoModelForAudioClassification.from_pretrained(root + "/cls", trust_remote_code=True).eval()
ctc_on_encoder = AutoModelForCTC.from_pretrained(root + "/enc", trust_remote_code=True, vocab_size=5)
assert type(ctc).__module__.startswith("transformers_modules"), type(ctc).__module__
features = pipeline(model=root + "/enc", trust_remote_code=True)(data["x"][0].numpy(), return_tensors=True)
with torch.no_grad():
    out = [ctc(data["x"], attention_mask=data["mask"]).logits, cls(data["x"], attention_mask=data["mask"]).logits]
torch.save(out + [features["features"], torch.tensor(features["layers"]), torch.tensor(ctc_on_encoder.config.vocab_size)],
           root + "/out.pt")
"""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ctc_logits, cls_logits, features, layers, vocab_size = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(ctc_logits, ctc(input_values, attention_mask=attention_mask).logits)
        torch.testing.assert_close(cls_logits, classifier(input_values, attention_mask=attention_mask).logits)
        direct = encoder(input_values[:1], output_hidden_states=True)
    assert layers.tolist() == [1, 2, 3, 4] and int(vocab_size) == 5
    torch.testing.assert_close(features, torch.stack(direct.hidden_states[1:])[:, 0])


def test_plain_save_pretrained_folders_open_through_every_auto_class_as_remote_code(tmp_path):
    """`save_pretrained` alone (no `add_remote_code_entries`) records every Auto class, whichever class saved the
    folder: in a process that never imported this project, each of the three folders opens as each of the three
    models through remote code, with the saved weights."""
    models = {
        "enc": random_model(tiny_config()),
        "ctc": head(ARMHubertForCTC, vocab_size=9),
        "cls": head(ARMHubertForSequenceClassification, num_labels=3),
    }
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
        assert sorted(json.loads((tmp_path / name / "config.json").read_text())["auto_map"]) == [
            "AutoConfig",
            "AutoModel",
            "AutoModelForAudioClassification",
            "AutoModelForCTC",
        ]
    script = f"""
import torch
from transformers import AutoConfig, AutoModel, AutoModelForAudioClassification, AutoModelForCTC
root, sums = {str(tmp_path)!r}, {{}}
for folder in ("enc", "ctc", "cls"):
    assert type(AutoConfig.from_pretrained(root + "/" + folder, trust_remote_code=True)).__name__ == "ARMHubertConfig"
    for auto in (AutoModel, AutoModelForCTC, AutoModelForAudioClassification):
        model = auto.from_pretrained(root + "/" + folder, trust_remote_code=True, vocab_size=9, num_labels=3)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        encoder = getattr(model, "armhubert", model)
        sums[folder, auto.__name__] = (type(model).__name__, float(encoder.encoder.layers[0].attention.v_proj.weight.sum()))
torch.save(sums, root + "/sums.pt")
"""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    sums = torch.load(tmp_path / "sums.pt", weights_only=False)
    classes = {"AutoModel": "ARMHubertModel", "AutoModelForCTC": "ARMHubertForCTC"}
    for (folder, auto), (class_name, weight_sum) in sums.items():
        assert class_name == classes.get(auto, "ARMHubertForSequenceClassification")
        model = models[folder]
        expected = getattr(model, "armhubert", model).encoder.layers[0].attention.v_proj.weight.detach().sum()
        assert weight_sum == pytest.approx(float(expected), abs=1e-6), (folder, auto)
    assert len(sums) == 9


def test_remote_code_entries_name_every_auto_class_and_the_pipeline():
    config = add_remote_code_entries(tiny_config())
    assert config.auto_map == {
        "AutoConfig": "configuration_armhubert.ARMHubertConfig",
        "AutoModel": "modeling_armhubert.ARMHubertModel",
        "AutoModelForCTC": "modeling_armhubert.ARMHubertForCTC",
        "AutoModelForAudioClassification": "modeling_armhubert.ARMHubertForSequenceClassification",
    }
    assert (
        config.custom_pipelines["audio-feature-extraction"]["impl"]
        == "pipeline_armhubert.ARMHubertFeatureExtractionPipeline"
    )
    assert isinstance(ARMHubertModel(config), ARMHubertModel)


@pytest.mark.parametrize("head_class", [ARMHubertForCTC, ARMHubertForSequenceClassification])
def test_without_layer_sum_only_the_last_projection_head_is_built_and_every_parameter_trains(tmp_path, head_class):
    encoder = random_model(tiny_config(**NO_DROPOUT))
    encoder.save_pretrained(tmp_path)
    model, info = head_class.from_pretrained(
        tmp_path, vocab_size=12, num_labels=3, mask_time_length=2, output_loading_info=True
    )
    # Heads 0..2 would never get a gradient: they are not built, and loading skips their weights quietly.
    assert [key for key in model.state_dict() if "projection_heads" in key] == [
        "armhubert.projection_heads.3.weight",
        "armhubert.projection_heads.3.bias",
    ]
    assert not info["unexpected_keys"] and not any("armhubert" in key for key in info["missing_keys"])
    torch.testing.assert_close(model.armhubert.projection_heads[3].weight, encoder.projection_heads[3].weight)
    head_params = sum(p.numel() for p in encoder.projection_heads[0].parameters())
    assert (
        sum(p.numel() for p in model.armhubert.parameters())
        == sum(p.numel() for p in encoder.parameters()) - 3 * head_params
    )
    with torch.no_grad():  # the encoder's output is the full encoder's
        input_values, attention_mask = padded_batch()
        torch.testing.assert_close(
            model.eval().armhubert(input_values, attention_mask=attention_mask).last_hidden_state,
            encoder(input_values, attention_mask=attention_mask).last_hidden_state,
        )
    labels = torch.tensor([[3, 4], [5, 6]]) if head_class is ARMHubertForCTC else torch.tensor([0, 2])
    model.train()(input_values, attention_mask=attention_mask, labels=labels).loss.backward()
    idle = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert idle == []


def test_last_head_only_is_a_config_attribute_that_only_the_task_models_set(tmp_path):
    """A task model without the layer sum sets `config.last_head_only`; it is never saved, so its folder opens
    as a full encoder whose heads 0..L-2 are reported missing (tools refuse them), as before the attribute."""
    config = tiny_config()
    assert ARMHubertModel(config).projection_heads[0] is not None and not config.last_head_only
    ctc = head(ARMHubertForCTC, vocab_size=12)
    assert ctc.config.last_head_only and ctc.armhubert.projection_heads[0] is None
    ctc.save_pretrained(tmp_path / "ctc")
    assert "last_head_only" not in json.loads((tmp_path / "ctc" / "config.json").read_text())
    encoder, info = ARMHubertModel.from_pretrained(tmp_path / "ctc", output_loading_info=True)
    assert all(head is not None for head in encoder.projection_heads)
    assert {key.split(".")[1] for key in info["missing_keys"]} == {"0", "1", "2"}
    summed = ARMHubertForCTC.from_pretrained(tmp_path / "ctc", use_weighted_layer_sum=True)  # reads every head
    assert not summed.config.last_head_only and all(head is not None for head in summed.armhubert.projection_heads)
    assert ARMHubertForCTC.from_pretrained(tmp_path / "ctc").armhubert.projection_heads[0] is None


def test_with_layer_sum_every_head_is_built_and_a_mask_embedding_nothing_reads_is_frozen():
    summed = head(ARMHubertForCTC, vocab_size=12, use_weighted_layer_sum=True)
    assert all(head is not None for head in summed.armhubert.projection_heads)
    assert summed.armhubert.mask_emb.requires_grad  # SpecAugment masks with it
    for overrides in (dict(apply_spec_augment=False), dict(mask_time_prob=0.0)):
        model = head(ARMHubertForCTC, vocab_size=12, **overrides)
        assert not model.armhubert.mask_emb.requires_grad
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        input_values, attention_mask = padded_batch()
        model.train()(
            input_values, attention_mask=attention_mask, labels=torch.tensor([[3, 4], [5, 6]])
        ).loss.backward()
        assert trainable == {name for name, p in model.named_parameters() if p.grad is not None and p.grad.any()}


def test_projected_features_of_a_task_model_with_one_head_are_refused_clearly():
    from transformers import pipeline

    model = head(ARMHubertForCTC, vocab_size=12)
    extractor = pipeline("audio-feature-extraction", model=model, feature_extractor=None)
    audio = waveform(8000, seed=3)[0].numpy()
    with pytest.raises(ValueError, match="keeps only the last"):
        extractor(audio, representation="projected")
    assert extractor(audio, representation="hidden")["features"].shape[0] == 5


def test_compiled_ctc_training_step_draws_spec_augment_outside_the_graph():
    """torch.compile(fullgraph=False) of a CTC training step with SpecAugment: the mask
    drawing (host NumPy, data-dependent span counts) runs outside the graph; loss and gradients equal eager."""
    import numpy as np

    config = tiny_config(vocab_size=8, mask_time_prob=0.5, mask_time_length=2, mask_feature_prob=0.2, **NO_DROPOUT)
    torch.manual_seed(0)
    model = ARMHubertForCTC(config).train()
    audio, labels = (
        torch.cat([waveform(16000, seed=5), waveform(16000, seed=6)]),
        torch.tensor([[1, 2, 3], [2, 3, -100]]),
    )

    def step(forward):
        np.random.seed(0)
        model.zero_grad()
        loss = forward(audio, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager_loss, eager_gradients = step(model)
    loss, gradients = step(torch.compile(model, backend="eager", fullgraph=False))
    torch.testing.assert_close(loss, eager_loss)
    assert gradients.keys() == eager_gradients.keys()
    for name in gradients:
        torch.testing.assert_close(gradients[name], eager_gradients[name], msg=name)
