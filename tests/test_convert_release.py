"""`convert_checkpoint.py --release NAME|none`: a checkpoint under any file name converts as the release
it is, or as none."""

import json

import yaml
from helpers import random_model, tiny_config
from huggingface_hub import ModelCard
from test_convert import run_main, write_original_checkpoint

from configuration_armhubert import ARMHubertConfig

STAR = dict(layer_reuses_attention_map=[False] * 4, projection_head_size=None, use_mask_embedding=False)


def star_run(path, config):
    """A STaR checkpoint as the original training writes it (.ckpt without hyper-parameters + .yaml)."""
    cfg = write_original_checkpoint(path, random_model(config), family="starhubert", with_hparams=False)
    path.with_suffix(".yaml").write_text(yaml.safe_dump(cfg))
    return path, path.with_suffix(".yaml")


def test_a_run_saved_under_a_release_name_converts_with_release_none(tmp_path, capsys):
    """Its own STaR run saved as starhubert.ckpt is not STaRHuBERT: the file name alone is refused."""
    checkpoint, recipe = star_run(tmp_path / "starhubert.ckpt", tiny_config(**STAR))
    code, stderr = run_main(capsys, checkpoint, "--config", recipe, "--output-dir", tmp_path / "refused")
    assert code == 2 and "does not have the shape of STaRHuBERT" in stderr and "--release none" in stderr
    assert not (tmp_path / "refused").exists()

    code, stderr = run_main(
        capsys, checkpoint, "--config", recipe, "--release", "none", "--output-dir", tmp_path / "ok"
    )
    assert code == 0, stderr
    card = ModelCard.load(tmp_path / "ok" / "README.md").text
    assert "79.5" not in card  # not STaRHuBERT's published overall score
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["hidden_size"] == 48


def test_a_release_under_any_file_name_converts_with_its_name(tmp_path, capsys):
    checkpoint, recipe = star_run(tmp_path / "run-17.ckpt", ARMHubertConfig.from_preset("starhubert"))
    out = tmp_path / "starhubert"
    code, stderr = run_main(capsys, checkpoint, "--config", recipe, "--release", "starhubert", "--output-dir", out)
    assert code == 0, stderr
    card = ModelCard.load(out / "README.md").text
    assert "STaRHuBERT" in card and "79.5" in card  # the release's SUPERB row
    # The old spelling still works; a wrong release is refused by shape.
    tiny, tiny_recipe = star_run(tmp_path / "tiny.ckpt", tiny_config(**STAR))
    code, stderr = run_main(
        capsys, tiny, "--config", tiny_recipe, "--name", "STaRHuBERT", "--output-dir", tmp_path / "x"
    )
    assert code == 2 and "(--release STaRHuBERT)" in stderr and not (tmp_path / "x").exists()
