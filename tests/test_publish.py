"""Publishing: genuine release files, refusal of code in pickles, release folders, cards, Hub upload, HubertModel."""

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    MODEL_FOLDER_FILES,
    ROOT,
    TINY_CKPT,
    TRAIN_960H,
    genuine_checkpoint,
    original_state,
    random_model,
    release_cfg,
    run_main,
    tiny_config,
    waveform,
)
from huggingface_hub import ModelCard

import convert_checkpoint  # the command
from armhubert.cli import UserError
from armhubert.convert import folders
from armhubert.convert.cards import CardFacts, file_sha256, model_card
from armhubert.convert.hubert_export import to_hubert_model
from armhubert.convert.original import load_original_checkpoint, read_training_config
from armhubert.convert.publish import PublishError, push_to_hub
from armhubert.convert.releases import detect_release, release_by_name
from armhubert.files import atomic as outputs
from configuration_armhubert import ARMHubertConfig


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    """Two full-size releases in their original formats (ARM: genuine .ckpt; STaR: .ckpt + .yaml) and a tiny run."""
    folder = tmp_path_factory.mktemp("releases")
    arm = random_model(ARMHubertConfig.from_preset("armhubert-s-960h"), seed=1)
    student = original_state(arm)
    student_bytes = sum(value.numel() * value.element_size() for value in student.values())
    # A teacher as large as the student (the real one is 4x: kept smaller for test time); the optimizer
    # moments add two student sizes more.
    genuine_checkpoint(
        folder / "ARMHuBERT-S-960h.ckpt", student, release_cfg(arm, "armhubert"), teacher_numel=student_bytes // 4
    )
    star = random_model(ARMHubertConfig.from_preset("starhubert"), seed=2)
    star_cfg = release_cfg(star, "starhubert")
    extra = {"final_proj.weight": torch.randn(256, 432), "final_proj.bias": torch.randn(256)}
    genuine_checkpoint(
        folder / "starhubert.ckpt", original_state(star), star_cfg, with_hparams=False, extra_student=extra
    )
    (folder / "starhubert.yaml").write_text(yaml.safe_dump(star_cfg))
    tiny = torch.load(TINY_CKPT, weights_only=True)
    tiny_student = {
        key.split("student_model.", 1)[1]: value for key, value in tiny["state_dict"].items() if "student_model." in key
    }
    genuine_checkpoint(folder / "tiny-run.ckpt", tiny_student, tiny["hyper_parameters"]["cfg"])
    return types.SimpleNamespace(path=folder, arm=arm, star=star, student_bytes=student_bytes)


REPO_ID = "me/compressed-speech"


@pytest.fixture(scope="module")
def release_repo(release_dir, tmp_path_factory):
    """`--all` over the release folder with `--push-to-hub` while offline: the repository is written, not uploaded."""
    repo = tmp_path_factory.mktemp("published") / "repo"
    code = convert_checkpoint.main(
        [
            "--all",
            str(release_dir.path),
            "--output-dir",
            str(repo),
            "--default",
            "ARMHuBERT-S-960h",
            "--push-to-hub",
            REPO_ID,
        ]
    )
    assert code == 2  # HF_HUB_OFFLINE: the upload fails cleanly (its message is checked in the push test)
    return repo


# --------------------------------------------------------------------------------------------------
# Safe loading


def test_genuine_release_file_converts_to_the_fixture_outputs(tmp_path, reference_io, capsys):
    tiny = torch.load(TINY_CKPT, weights_only=True)
    student = {
        key.split("student_model.", 1)[1]: value for key, value in tiny["state_dict"].items() if "student_model." in key
    }
    path = genuine_checkpoint(tmp_path / "genuine.ckpt", student, tiny["hyper_parameters"]["cfg"], teacher_numel=50_000)
    # Genuine: plain weights-only loading refuses it because of the s3prl schedule object.
    with pytest.raises(Exception, match="s3prl.optimizers.WarmupLinearSchedule"):
        torch.load(path, weights_only=True)

    code, stderr = run_main(capsys, path, "--output-dir", tmp_path / "out")
    assert code == 0, stderr
    from modeling_armhubert import ARMHubertModel

    model = ARMHubertModel.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        for case in ("single", "single2", "single3"):
            output = model(reference_io[f"input.{case}.source"], output_hidden_states=True)
            torch.testing.assert_close(output.extract_features, reference_io[f"{case}.features"], atol=1e-5, rtol=1e-5)
            for layer in range(4):
                expected = reference_io[f"{case}.layer_results.{layer}"].transpose(0, 1)
                torch.testing.assert_close(output.hidden_states[layer + 1], expected, atol=1e-5, rtol=1e-5)
                expected = reference_io[f"{case}.projections.{layer}"]
                torch.testing.assert_close(output.projected_hidden_states[layer], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(output.last_hidden_state, reference_io[f"{case}.x"], atol=1e-5, rtol=1e-5)


class CreatesAFile:
    """Unpickling this calls open(path, "w"): code execution that leaves a trace."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


class Custom:
    pass


Custom.__module__ = "training_utils.callbacks"


def test_pickled_code_is_refused_by_name_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    tiny = torch.load(TINY_CKPT, weights_only=True)
    hostile = tmp_path / "hostile.ckpt"
    torch.save({**tiny, "optimizer_states": [{"param_groups": [{"schedule": CreatesAFile(str(marker))}]}]}, hostile)
    module = sys.modules[__name__]
    training_utils = types.ModuleType("training_utils.callbacks")
    training_utils.Custom = Custom
    sys.modules.update(
        {"training_utils": types.ModuleType("training_utils"), "training_utils.callbacks": training_utils}
    )
    try:
        unknown = tmp_path / "unknown.ckpt"
        torch.save({**tiny, "callbacks": {"x": Custom()}}, unknown)
    finally:
        sys.modules.pop("training_utils.callbacks")
        sys.modules.pop("training_utils")
    assert module is sys.modules[__name__]

    expected_names = {hostile: f"{open.__module__}.{open.__name__}", unknown: "training_utils.callbacks.Custom"}
    for path, name in expected_names.items():
        code, stderr = run_main(capsys, path, "--output-dir", tmp_path / "out")
        assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert f"refusing to load {path}" in stderr and name in stderr, stderr
        with pytest.raises(UserError, match=name):
            load_original_checkpoint(path)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Release folders, names and cards


def test_all_writes_one_subfolder_per_release_with_code_once_at_the_root(release_dir, release_repo):
    repo = release_repo
    variants = ["ARMHuBERT-S-960h", "STaRHuBERT", "tiny-run"]
    assert sorted(p.name for p in repo.iterdir()) == sorted(["README.md", *MODEL_FOLDER_FILES, *variants])
    for variant in variants:
        assert sorted(p.name for p in (repo / variant).iterdir()) == [
            "README.md",
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
        ]
        config = json.loads((repo / variant / "config.json").read_text())
        assert config["auto_map"]["AutoModel"] == "modeling_armhubert.ARMHubertModel"
    assert not [p for p in repo.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers

    from transformers import AutoFeatureExtractor, AutoModel

    audio = waveform(16000, seed=5)
    for variant, original in (("ARMHuBERT-S-960h", release_dir.arm), ("STaRHuBERT", release_dir.star)):
        model = AutoModel.from_pretrained(repo, subfolder=variant).eval()
        assert AutoFeatureExtractor.from_pretrained(repo, subfolder=variant).sampling_rate == 16000
        with torch.no_grad():
            assert torch.equal(model(audio).last_hidden_state, original(audio).last_hidden_state)

    root = ModelCard.load(repo / "README.md")
    assert root.text.startswith(f"\n# {REPO_ID}") or f"# {REPO_ID}\n" in root.text
    assert "| [`STaRHuBERT`](STaRHuBERT/README.md) | 22,308,592 | 463.5 G | 79.5 |" in root.text
    assert "| [`ARMHuBERT-S-960h`](ARMHuBERT-S-960h/README.md) | 22,394,080 | 449.4 G | 77.5 |" in root.text
    assert "| [`tiny-run`](tiny-run/README.md) |" in root.text
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in root.text  # the --default variant
    assert f'AutoModel.from_pretrained("{REPO_ID}", subfolder="STaRHuBERT", trust_remote_code=True)' in root.text


def test_model_cards_render_the_release_numbers(release_dir, release_repo):
    card = ModelCard.load(release_repo / "ARMHuBERT-S-960h" / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "feature-extraction"
    assert card.data.datasets == ["librispeech_asr"] and "armhubert" in card.data.tags
    text = card.text
    assert "# ARMHuBERT-S-960h" in text
    assert "| parameters | 22,394,080 (counted from the weights; paper: 22.39 M) |" in text
    assert "| MACs | 449.4 G (" in text
    assert (
        "| ARMHuBERT-S-960h | 77.5 | 8.63 | 10.82 | 96.82 | 0.0720 | 63.76 | 5.58 | 7.01 | 97.02 | 86.34 | 29.02 | 62.96 |"
        in text
    )
    assert "| HuBERT Base (teacher) | 80.8 |" in text
    assert f'AutoModel.from_pretrained("{REPO_ID}", subfolder="ARMHuBERT-S-960h", trust_remote_code=True)' in text
    assert "use the 12 `projected_hidden_states`" in text and "Batch invariance" in text
    assert "Recycle-and-Distill" in text and "Apache-2.0" in text
    sha = file_sha256(release_dir.path / "ARMHuBERT-S-960h.ckpt")
    assert f"`ARMHuBERT-S-960h.ckpt` (sha256 `{sha}`)" in text

    star = ModelCard.load(release_repo / "STaRHuBERT" / "README.md").text
    assert "| parameters | 22,308,592 (counted from the weights; paper: 22.31 M) |" in star
    assert "| STaRHuBERT | 79.5 | 8.16 | 9.35 |" in star and "use `hidden_states[1:]`" in star
    assert "STaR: Distilling Speech Temporal Relation" in star and "Batch invariance" not in star

    unknown = ModelCard.load(release_repo / "tiny-run" / "README.md").text
    assert "could not be determined" in unknown and "SUPERB results" not in unknown


@pytest.mark.parametrize(
    "name, parameters, macs, row",
    [
        (
            "ARMHuBERT-960h",
            "26,448,448",
            "not reported",
            "| 78.1 | 7.72 | 9.96 | 96.88 | 0.0635 | 65.03 | 5.68 | 7.10 |",
        ),
        (
            "MaskHuBERT-960h",
            "26,635,840",
            "not reported",
            "| 77.8 | 7.30 | 9.77 | 96.36 | 0.0664 | 62.83 | 5.38 | 6.79 |",
        ),
        (
            "ARMwavLM-S-100h",
            "22,394,080",
            "not reported",
            "| 77.0 | 8.33 | 11.37 | 96.30 | 0.0579 | 65.40 | 6.38 | 7.41 |",
        ),
        ("STaRHuBERT-100h", "22,308,592", "463.5 G", "| 77.8 | 9.17 | 10.92 | 96.46 | 0.0626 | 72.26 | 5.66 | 5.97 |"),
    ],
)
def test_card_numbers_for_other_releases(name, parameters, macs, row):
    from modeling_armhubert import ARMHubertModel

    release = release_by_name(name)
    config = ARMHubertConfig.from_preset(release.preset)
    with torch.device("meta"):
        counted = sum(p.numel() for p in ARMHubertModel(config).parameters())
    facts = CardFacts(name, release, release.family, "armhubert", counted, {}, f"{name}.ckpt", "0" * 64, config)
    text = model_card(facts, repo="someone/models", subfolder=name).text
    assert f"| parameters | {parameters} (counted" in text
    assert f"| MACs | {macs}" in text
    assert f"| {name} {row}" in text
    weighted = "hidden_states[1:]" if name.startswith("STaR") else "projected_hidden_states"
    assert f"use `{weighted}`" in text or f"use the 12 `{weighted}`" in text
    assert ("Batch invariance" in text) == name.startswith("ARM")


def test_release_detection_and_names(release_dir, tmp_path, capsys):
    def detected(preset, **cfg):
        release = detect_release(
            ARMHubertConfig.from_preset(preset), read_training_config({"hyper_parameters": {"cfg": cfg}})
        )
        return release and release.name

    assert detected("armhubert-960h", model="armhubert", data={"train_set": TRAIN_960H}) == "ARMHuBERT-960h"
    assert (
        detected("armhubert-s-100h", model="armhubert", data={"train_set": ["train-clean-100"]}) == "ARMHuBERT-S-100h"
    )
    assert detected("armwavlm-s-960h", model="armwavlm", data={"train_set": TRAIN_960H}) == "ARMwavLM-S-960h"
    assert detected("armhubert-s-960h", model="armhubert") is None  # 100 h or 960 h: the config does not say
    assert detected("maskhubert-960h") == "MaskHuBERT-960h"
    assert detected("starhubert", model="star", data={"train_set": ["train-clean-100"]}) == "STaRHuBERT-100h"

    code, stderr = run_main(capsys, TINY_CKPT, "--name", "ARMHuBERT-960h", "--output-dir", tmp_path / "a")
    assert code == 2 and "does not have the shape of ARMHuBERT-960h: hidden_size 48 (release: 480)" in stderr
    code, stderr = run_main(capsys, TINY_CKPT, "--name", "HuBERT-XL", "--output-dir", tmp_path / "b")
    assert code == 2 and "unknown release name 'HuBERT-XL'; the releases are ARMHuBERT-960h" in stderr
    renamed = tmp_path / "src" / "MaskHuBERT-960h.ckpt"
    renamed.parent.mkdir()
    shutil.copy(TINY_CKPT, renamed)
    code, stderr = run_main(capsys, "--all", renamed.parent, "--output-dir", tmp_path / "c")
    assert code == 2 and "checkpoint MaskHuBERT-960h.ckpt does not have the shape of MaskHuBERT-960h" in stderr
    code, stderr = run_main(capsys, "--all", tmp_path / "c-empty-missing", "--output-dir", tmp_path / "d")
    assert code == 2 and "is not a folder" in stderr
    (tmp_path / "src" / "notes.txt").write_text("no checkpoint")
    renamed.unlink()
    code, stderr = run_main(capsys, "--all", renamed.parent, "--output-dir", tmp_path / "e")
    assert code == 2 and f"{renamed.parent} holds no .ckpt files" in stderr
    for name in ("STaRHuBERT-S", "starhubert-s"):  # a release without a public shape: both files are it
        shutil.copy(TINY_CKPT, renamed.parent / f"{name}.ckpt")
    code, stderr = run_main(capsys, "--all", renamed.parent, "--output-dir", tmp_path / "f")
    assert code == 2 and f"two checkpoints of {renamed.parent} are both STaRHuBERT-S" in stderr
    with pytest.raises(UserError, match="--config and --release apply to one CHECKPOINT"):
        convert_checkpoint.parse_args(["--all", str(release_dir.path), "--name", "STaRHuBERT", "--output-dir", "x"])
    assert not [p for p in tmp_path.iterdir() if p.name not in ("src",)]


# --------------------------------------------------------------------------------------------------
# Hub upload


def test_push_to_hub_offline_or_unreachable_fails_cleanly_and_keeps_the_output(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, stderr = run_main(capsys, TINY_CKPT, "--output-dir", out, "--push-to-hub", "me/tiny", "--private")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "could not publish to me/tiny: HF_HUB_OFFLINE is set" in stderr and f"complete in {out}" in stderr
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with pytest.raises(PublishError, match="Connect"):
        push_to_hub(out, "me/tiny")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))  # no stored token either
    with pytest.raises(PublishError, match="[Tt]oken"):
        push_to_hub(out, "me/tiny")
    assert (out / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------
# Plain HubertModel export


def _star_config(**overrides):
    fields = dict(layer_reuses_attention_map=[False] * 4, projection_head_size=None, use_mask_embedding=False)
    return tiny_config(**{**fields, **overrides})


def _assert_same_outputs(ours, hubert):
    audio = torch.cat([waveform(12000, seed=30), waveform(12000, seed=31)])
    attention_mask = torch.ones_like(audio, dtype=torch.long)
    attention_mask[1, 9000:] = 0
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": attention_mask}):
            expected = ours(audio, output_hidden_states=True, **kwargs)
            got = hubert(audio, output_hidden_states=True, **kwargs)
            torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
            assert len(got.hidden_states) == len(expected.hidden_states)
            for got_layer, expected_layer in zip(got.hidden_states, expected.hidden_states):
                torch.testing.assert_close(got_layer, expected_layer, atol=1e-5, rtol=1e-5)


def test_format_hubert_writes_a_plain_hubert_model_with_identical_outputs(tmp_path, capsys):
    star = random_model(_star_config(), seed=3)
    cfg = release_cfg(star, "starhubert")
    genuine_checkpoint(tmp_path / "star.ckpt", original_state(star), cfg, with_hparams=False)
    (tmp_path / "star.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "hubert"
    code, stderr = run_main(
        capsys, tmp_path / "star.ckpt", "--config", tmp_path / "star.yaml", "--format", "hubert", "--output-dir", out
    )
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hubert" and "auto_map" not in config

    from transformers import AutoModel, HubertModel

    hubert = AutoModel.from_pretrained(out).eval()
    assert type(hubert) is HubertModel
    _assert_same_outputs(star, hubert)
    card = (out / "README.md").read_text()
    assert "trust_remote_code" not in card and "hidden_states[1:]" in card
    code, stderr = run_main(  # a `hubert` folder, but ours (its card says so): --overwrite replaces it
        capsys,
        tmp_path / "star.ckpt",
        "--config",
        tmp_path / "star.yaml",
        "--format",
        "hubert",
        "--output-dir",
        out,
        "--overwrite",
    )
    assert code == 0, stderr
    counted = sum(p.numel() for p in hubert.parameters())
    assert (
        f"| parameters | {counted:,} (counted from the weights; {48 * 49 + 48:,} of them are `HubertModel`'s own"
        in card
    )

    code, stderr = run_main(capsys, TINY_CKPT, "--format", "hubert", "--output-dir", tmp_path / "arm")
    assert code == 2 and "its layers reuse attention maps and it has projection heads" in stderr
    assert not (tmp_path / "arm").exists()


def test_hubert_conversion_with_a_feature_projection_and_layer_norm_cnn():
    config = _star_config(
        use_mask_embedding=True, feat_extract_norm="layer", conv_bias=True, conv_dim=[32] * 6 + [40] * 3
    )
    ours = random_model(config, seed=4)
    assert ours.feature_projection is not None
    hubert = to_hubert_model(ours)
    assert torch.equal(hubert.masked_spec_embed, ours.mask_emb)
    _assert_same_outputs(ours, hubert)
    # transformers 5's HubertModel reports a pre-LN model's last hidden state before the final LayerNorm.
    with pytest.raises(UserError, match="it is pre-LN"):
        to_hubert_model(random_model(_star_config(do_stable_layer_norm=True)))


# --------------------------------------------------------------------------------------------------
# Atomic writes


def test_interrupted_repository_build_leaves_the_target_as_it_was(tmp_path, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("run-a", "run-b"):
        shutil.copy(TINY_CKPT, source / f"{name}.ckpt")
    target = tmp_path / "repo"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(folders, "repository_card", interrupted)  # the last step before the rename
    with pytest.raises(KeyboardInterrupt):
        folders.convert_folder(source, target, default="run-a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]

    (target / "variant").mkdir(parents=True)  # a repository published before: what --overwrite may replace
    for path in (target / "README.md", target / "variant" / "config.json", target / "variant" / "model.safetensors"):
        path.write_text('{"model_type": "armhubert"}')  # config.json says it is our model
    published = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    with pytest.raises(KeyboardInterrupt):
        folders.convert_folder(source, target, overwrite=True, default="run-a")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == published
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "src"]

    monkeypatch.undo()
    real_replace = os.replace

    def rename_fails_once_the_old_folder_is_retired(src, dst):
        if Path(src).name.startswith(".repo.") and Path(dst) == target:
            raise OSError("disk full")
        return real_replace(src, dst)

    # Where paths cannot be swapped in one step: the old folder is renamed aside, then put back.
    monkeypatch.setattr(outputs, "_exchange", lambda first, second: False)
    monkeypatch.setattr(os, "replace", rename_fails_once_the_old_folder_is_retired)
    with pytest.raises(OSError, match="disk full"):
        folders.convert_folder(source, target, overwrite=True, default="run-a")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == published
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "src"]


# --------------------------------------------------------------------------------------------------
# A fresh interpreter: memory while loading a release file, and remote code found at the repository root


_FRESH_PROCESS_CHECKS = r"""
import json, sys, torch
from transformers import AutoModel

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))

ckpt, repo, audio_path, result_path = sys.argv[1:]
# Before this repo's modules are imported (they register the model type locally): remote code only.
remote = AutoModel.from_pretrained(repo, subfolder="ARMHuBERT-S-960h", trust_remote_code=True).eval()

from armhubert.convert.original import convert

before = {field: kib(field) for field in ("VmRSS:", "RssAnon:", "RssFile:")}
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # restart the peak (VmHWM) from the current size
model = convert(ckpt)
growth = {field: (kib(field) - before[field]) * 1024 for field in ("RssAnon:", "RssFile:")}
growth["peak"] = (kib("VmHWM:") - before["VmRSS:"]) * 1024

audio = torch.load(audio_path, weights_only=True)
with torch.no_grad():
    same = torch.equal(remote(audio).last_hidden_state, model(audio).last_hidden_state)
json.dump({"growth": growth, "module": type(remote).__module__, "same": same}, open(result_path, "w"))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak-memory reset needs Linux /proc")
def test_fresh_process_loads_one_student_copy_and_finds_root_code_from_a_subfolder(release_dir, release_repo, tmp_path):
    repo = release_repo
    torch.save(waveform(16000, seed=6), tmp_path / "audio.pt")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT))
    args = [release_dir.path / "ARMHuBERT-S-960h.ckpt", repo, tmp_path / "audio.pt", tmp_path / "result.json"]
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_CHECKS, *map(str, args)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    checks = json.loads((tmp_path / "result.json").read_text())
    file_size = (release_dir.path / "ARMHuBERT-S-960h.ckpt").stat().st_size
    assert file_size > 3.9 * release_dir.student_bytes  # teacher and optimizer moments: 3 students' worth
    student, growth = release_dir.student_bytes, checks["growth"]
    # Afterwards the process holds one copy of the student and nothing of the file.
    assert 0.9 * student < growth["RssAnon:"] < 1.2 * student, (growth, student)
    assert growth["RssFile:"] < 0.1 * student, (growth, student)
    # At the peak: that copy plus the student's pages of the memory-mapped file (page cache, read while
    # copying); the teacher and optimizer tensors (3x the student) are never read.
    assert growth["peak"] < 2.4 * student, (growth, student)
    assert checks["module"].startswith("transformers_modules") and checks["same"]
