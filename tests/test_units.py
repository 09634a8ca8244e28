"""Discrete units: k-means codebooks, nearest-centroid assignment, deduplication, and the --units / --codebook paths."""

import json

import pytest
import torch
from helpers import ROOT, load_script
from hostile import refusal
from safetensors.torch import save_file

from armhubert.cli import UserError, check_fields
from armhubert.features.plan import ExtractionArguments
from armhubert.features.storage import FeatureIndex
from armhubert.features.units import (
    CODEBOOK_FORMAT,
    Codebook,
    assign_units,
    deduplicate_runs,
    fit_codebook,
    load_codebook,
    open_codebook,
    save_codebook,
)

CORPUS, SPLIT = ROOT / "data", "test-clean"
extract = load_script("extract_features")


def test_assignment_is_the_nearest_centroid_and_ties_go_to_the_lower_unit():
    generator = torch.Generator().manual_seed(0)
    features, centroids = torch.randn(10000, 24, generator=generator), torch.randn(50, 24, generator=generator)
    units = assign_units(features, centroids)
    assert units.dtype == torch.int16 and units.shape == (10000,)
    assert torch.equal(units.long(), torch.cdist(features, centroids).argmin(dim=1))
    twins = torch.stack([centroids[3], centroids[3], centroids[7]])
    assert assign_units(centroids[[3, 7]], twins).tolist() == [0, 2]
    assert assign_units(torch.zeros(0, 24), centroids).shape == (0,)


def test_deduplicated_runs():
    units = torch.tensor([1, 1, 1, 5, 5, 2, 1, 1], dtype=torch.int16)
    assert deduplicate_runs(units).tolist() == [1, 5, 2, 1]


def test_k_means_converges_to_cluster_means_and_is_deterministic():
    generator = torch.Generator().manual_seed(1)
    centres = 10 * torch.randn(6, 16, generator=generator)
    features = centres[torch.arange(6).repeat_interleave(200)] + torch.randn(1200, 16, generator=generator)
    first, second = fit_codebook(features, 8, seed=0), fit_codebook(features, 8, seed=0)
    assert torch.equal(first, second) and first.shape == (8, 16) and first.dtype == torch.float32
    units = assign_units(features, first).long()
    # Lloyd's fixed point: every centroid is the mean of the frames assigned to it.
    for unit in units.unique():
        torch.testing.assert_close(first[unit], features[units == unit].mean(0), rtol=0, atol=1e-3)

    def mean_distance(codebook):
        return torch.cdist(features, codebook).min(dim=1).values.pow(2).mean()

    assert mean_distance(first) < 0.5 * mean_distance(features[torch.randperm(1200, generator=generator)[:8]])
    # k-means++ seeds put one centroid in each well-separated cluster (faiss's random seeds often merge two).
    labels = torch.arange(6).repeat_interleave(200)
    units = assign_units(features, fit_codebook(features, 6, seed=0))
    found = [set(units[labels == label].tolist()) for label in range(6)]
    assert all(len(unit) == 1 for unit in found) and len(set.union(*found)) == 6
    with pytest.raises(UserError, match="at least K = 6 frames"):
        fit_codebook(features[:5], 6)


def test_a_codebook_keeps_its_layer_and_broken_ones_are_refused(tmp_path):
    codebook = Codebook(torch.randn(8, 12), "layer_9", "projected", "converted/armhubert-960h", 1234)
    loaded = load_codebook(save_codebook(codebook, tmp_path / "codebook.safetensors"))
    assert torch.equal(loaded.centroids, codebook.centroids)
    assert (loaded.layer, loaded.representation, loaded.model, loaded.fitted_frames) == (
        "layer_9",
        "projected",
        "converted/armhubert-960h",
        1234,
    )
    save_file({"weight": torch.zeros(3)}, tmp_path / "model.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 40)
    for path, message in [
        (tmp_path / "missing.safetensors", "does not exist"),
        (tmp_path / "model.safetensors", "not a codebook"),
        (tmp_path / "garbage.safetensors", "not a readable safetensors"),
    ]:
        with pytest.raises(UserError, match=message):
            load_codebook(path)
    with pytest.raises(UserError, match="non-finite"):
        save_codebook(Codebook(torch.full((2, 3), float("nan")), "layer_1", "hidden", "m", 2), tmp_path / "nan.st")
    centroids = torch.ones(2, 3)
    centroids[1, 2] = float("inf")  # written by another tool: the door reads it, then refuses it
    header = {"format": CODEBOOK_FORMAT, "layer": "layer_1", "representation": "hidden", "model": "m"}
    save_file({"centroids": centroids}, tmp_path / "inf.st", metadata={"armhubert": json.dumps(header)})
    with pytest.raises(UserError, match=r"^codebook .*inf\.st holds NaN or infinite centroids; fit a new one"):
        load_codebook(tmp_path / "inf.st")
    for count in (1, 40000):
        with pytest.raises(UserError, match=rf"^--units must be an integer in \[2, 32767\], got {count}$"):
            check_fields(ExtractionArguments(input="in", output_dir="out", units=count))


def test_a_codebook_checked_on_its_header_is_read_from_the_same_open_file(tmp_path):
    path, other = tmp_path / "codebook.safetensors", tmp_path / "other.safetensors"
    save_codebook(Codebook(torch.randn(4, 6), "layer_2", "hidden", "m", 10), path)
    save_codebook(Codebook(torch.randn(3000, 512), "layer_9", "projected", "m", 10), other)
    with open_codebook(path) as codebook_file:
        assert codebook_file.header.centroids.is_meta and codebook_file.header.dim == 6
        other.replace(path)  # swapped after the header was checked: what was checked is still what is read
        codebook = codebook_file.read()
    assert codebook.centroids.shape == (4, 6) and codebook.layer == "layer_2"


def test_fitted_units_are_the_nearest_centroids_and_an_applied_codebook_gives_the_same_units(tmp_path, tiny_model_dir):
    common = ["--input", CORPUS, "--split", SPLIT, "--model", tiny_model_dir]
    assert extract.main([str(a) for a in [*common, "--layers", "2,4", "--units", 16, "--units_layer", 4,
                                          "--output_dir", tmp_path / "fit"]]) == 0  # fmt: skip
    codebook = load_codebook(tmp_path / "fit" / "codebook.safetensors")
    assert (codebook.num_units, codebook.layer, codebook.representation) == (16, "layer_4", "projected")
    fitted = FeatureIndex(tmp_path / "fit")
    assert fitted.index["units"]["layer"] == "layer_4"
    for utterance_id in fitted.ids:
        written = fitted[utterance_id]
        assert written["units"].dtype == torch.int16
        assert torch.equal(written["units"], assign_units(written["layer_4"], codebook.centroids))

    applied = []
    for name in ("apply-1", "apply-2"):
        args = [*common, "--codebook", tmp_path / "fit" / "codebook.safetensors", "--save_features", "false"]
        assert extract.main([str(a) for a in [*args, "--output_dir", tmp_path / name]]) == 0
        applied.append(FeatureIndex(tmp_path / name))
    assert applied[0].index["features"] == [] and applied[0].index["units"]["layer"] == "layer_4"
    for utterance_id in fitted.ids:
        assert torch.equal(applied[0][utterance_id]["units"], fitted[utterance_id]["units"])
        assert torch.equal(applied[1][utterance_id]["units"], fitted[utterance_id]["units"])

    args = [*common, "--codebook", tmp_path / "fit" / "codebook.safetensors", "--deduplicate_units"]
    assert extract.main([str(a) for a in [*args, "--output_dir", tmp_path / "dedup"]]) == 0
    deduplicated = FeatureIndex(tmp_path / "dedup")
    for utterance_id in fitted.ids:
        assert torch.equal(deduplicated[utterance_id]["units"], deduplicate_runs(fitted[utterance_id]["units"]))


def test_bad_units_options_get_one_line_and_exit_status_2(tmp_path, capsys, tiny_model_dir):
    common = ["--input", CORPUS, "--split", SPLIT, "--model", tiny_model_dir]
    narrow = save_codebook(Codebook(torch.randn(4, 10), "layer_4", "projected", "x", 4), tmp_path / "narrow.st")
    other = save_codebook(Codebook(torch.randn(4, 64), "layer_2", "hidden", "x", 4), tmp_path / "other.st")
    cases = {
        "--units must be an integer in [2, 32767], got 1": ["--units", 1],
        "10-wide centroids but layer_4 of this model is 64 wide": ["--codebook", narrow],
        "fitted on layer_2 (hidden)": ["--codebook", other, "--units_layer", 4],
        "not both": ["--units", 8, "--codebook", narrow],
        "say which one the units use": ["--layers", "2,4", "--units", 8],
        "at least K = 30000 frames": ["--units", 30000],
    }
    for expected, args in cases.items():
        assert expected in refusal(capsys, extract.main, *common, *args, "--output_dir", tmp_path / "out")
