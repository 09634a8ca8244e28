"""`--all` repositories: the bare root loads a complete default variant (ARMHuBERT-960h, else `--default`)."""

import json
import shutil

import pytest
import torch
from helpers import TINY_CKPT, genuine_checkpoint, original_state, random_model, release_cfg, run_main, waveform
from huggingface_hub import ModelCard
from transformers import AutoModel

from configuration_armhubert import ARMHubertConfig

ROOT_MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


@pytest.fixture(scope="module")
def source_with_960h(tmp_path_factory):
    """A release-named full-size ARMHuBERT-960h checkpoint beside a tiny unidentified run."""
    folder = tmp_path_factory.mktemp("downloads")
    arm = random_model(ARMHubertConfig.from_preset("armhubert-960h"), seed=3)
    genuine_checkpoint(
        folder / "ARMHuBERT-960h.ckpt", original_state(arm), release_cfg(arm, "armhubert"), teacher_numel=10
    )
    shutil.copy(TINY_CKPT, folder / "tiny-run.ckpt")
    return folder


@pytest.fixture()
def two_runs(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("run-a", "run-b"):
        shutil.copy(TINY_CKPT, source / f"{name}.ckpt")
    return source


def outputs(folder, **kwargs):
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, **kwargs).eval()
    with torch.no_grad():
        return model(waveform(16000, seed=7), output_hidden_states=True)


def test_bare_root_loads_armhubert_960h(source_with_960h, tmp_path, capsys):
    repo = tmp_path / "repo"
    code, stderr = run_main(capsys, "--all", source_with_960h, "--output-dir", repo)
    assert code == 0, stderr
    for name in ROOT_MODEL_FILES:
        assert (repo / name).read_bytes() == (repo / "ARMHuBERT-960h" / name).read_bytes()
    root, subfolder = outputs(repo), outputs(repo, subfolder="ARMHuBERT-960h")
    assert root.last_hidden_state.shape[-1] == 768  # the release's projection width, not the tiny run's
    torch.testing.assert_close(root.last_hidden_state, subfolder.last_hidden_state, rtol=0, atol=0)
    for mine, theirs in zip(root.projected_hidden_states, subfolder.projected_hidden_states):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    card = ModelCard.load(repo / "README.md").text
    assert "The repository id alone loads **ARMHuBERT-960h**" in card
    assert f'AutoModel.from_pretrained("{repo}", trust_remote_code=True)' in card
    assert "Subfolders (`ARMHuBERT-960h`, `tiny-run`)" in card


def test_default_names_the_root_variant(two_runs, tmp_path, capsys):
    repo = tmp_path / "repo"
    code, stderr = run_main(capsys, "--all", two_runs, "--output-dir", repo, "--default", "run-b")
    assert code == 0, stderr
    for name in ROOT_MODEL_FILES:
        assert (repo / name).read_bytes() == (repo / "run-b" / name).read_bytes()
    assert (
        json.loads((repo / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_armhubert.ARMHubertModel"
    )
    torch.testing.assert_close(outputs(repo).last_hidden_state, outputs(repo, subfolder="run-b").last_hidden_state)
    assert "The repository id alone loads **run-b**" in ModelCard.load(repo / "README.md").text


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            [],
            "no ARMHuBERT-960h among the checkpoints, so the repository root needs a model: pass --default NAME with one of: run-a, run-b",
        ),
        (["--default", "run-c"], "--default run-c: no such variant; choose one of: run-a, run-b"),
    ],
)
def test_without_a_default_it_refuses_listing_the_choices(two_runs, tmp_path, capsys, extra, message):
    code, stderr = run_main(capsys, "--all", two_runs, "--output-dir", tmp_path / "repo", *extra)
    assert code == 2
    assert stderr.strip().splitlines() == [f"convert_checkpoint.py: error: {message}"]
    assert not (tmp_path / "repo").exists()


def test_default_needs_all(capsys):
    code, stderr = run_main(capsys, str(TINY_CKPT), "--output-dir", "x", "--default", "run-a")
    assert code == 2 and stderr.strip() == "convert_checkpoint.py: error: --default applies to --all"


def test_upload_failure_message_has_no_double_period(monkeypatch, tmp_path):
    from armhubert.convert import publish

    def rejected(*args, **kwargs):
        raise publish.PublishError("HfHubHTTPError: Invalid credentials, see https://huggingface.co/settings/tokens.")

    monkeypatch.setattr(publish, "push_to_hub", rejected)
    with pytest.raises(publish.PublishError) as failed:
        publish.publish_output(tmp_path, "me/x")
    assert "settings/tokens. Nothing was committed" in str(failed.value) and ".." not in str(failed.value)


def python_blocks(text):
    return [block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith("python")]


def test_an_unidentified_checkpoints_card_claims_nothing_unknown_and_its_snippets_run(two_runs, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert run_main(capsys, "--all", two_runs, "--output-dir", repo, "--default", "run-a")[0] == 0
    for card_path in (repo / "run-a" / "README.md", repo / "README.md"):
        card = ModelCard.load(card_path)
        assert card.data.datasets is None and card.data.language is None, card_path  # unknown training data
    card = ModelCard.load(repo / "run-a" / "README.md")
    assert "could not be determined" in card.text and "released student" not in card.text
    assert "takes text only, so call the model" not in card.text
    blocks = python_blocks(card.text)
    assert any('pipeline("audio-feature-extraction"' in block for block in blocks)
    namespace = {}
    for block in blocks:  # the load example, then the pipeline snippet, exactly as the card shows them
        exec(block, namespace)
    assert namespace["features"].shape[0] == 4 and namespace["features"].ndim == 3
