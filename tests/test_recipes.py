"""Recipes: found by name or path, relative input paths against the recipe's folder, workers capped at the
CPUs, and mistyped nested keys refused with a suggestion (all before any model is built)."""

import os

import pytest
from helpers import ROOT

from armhubert.cli import UserError
from armhubert.distill import recipe as recipes
from armhubert.distill.models import check_config_fields
from armhubert.distill.recipe import build_arguments, find_recipe, load_recipe
from armhubert.resources import BUNDLED_CORPUS, BUNDLED_RECIPES, recipe_names
from distill_trainer import main

FAST = ["dataloader_num_workers=0", "report_to=none", "disable_tqdm=true", "max_steps=1"]


def one_line_refusal(capsys, *argv):
    assert main([str(arg) for arg in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distill_trainer.py: error: "), lines
    return lines[0]


def test_bundled_recipes_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert BUNDLED_RECIPES == ROOT / "conf" and BUNDLED_CORPUS == ROOT / "data" / "LibriSpeech"
    assert {"quickstart", "armhubert-960h", "starhubert-960h"} <= set(recipe_names())
    for name in ("quickstart", "armhubert-960h", "quickstart.yaml"):
        assert find_recipe(name) == BUNDLED_RECIPES / f"{name.removesuffix('.yaml')}.yaml"
    (tmp_path / "quickstart").write_text("output_dir: mine\n")  # a file of that name is the user's recipe
    assert find_recipe("quickstart").resolve() == tmp_path / "quickstart"
    with pytest.raises(UserError, match="give a recipe file or the name of a bundled recipe: .*armhubert-960h"):
        find_recipe("quickstrat")
    with pytest.raises(UserError, match="recipe elsewhere/quickstart.yaml not found"):
        find_recipe("elsewhere/quickstart.yaml")  # a path is a path: no silent swap for the bundled one


def test_relative_inputs_of_a_recipe_file_are_relative_to_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quickstart = load_recipe("quickstart")
    assert quickstart["data_source"] == str(BUNDLED_CORPUS.parent)  # `../data` beside conf/, wherever installed
    assert quickstart["output_dir"] == "runs/quickstart"  # outputs stay relative to the current folder
    (tmp_path / "recipes" / "corpus").mkdir(parents=True)
    (tmp_path / "recipes" / "student.json").write_text("{}")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text(
        "data_source: corpus\nstudent: student.json\nteacher: random-hubert\ndeepspeed: missing.json\n"
    )
    recipe = load_recipe(tmp_path / "recipes" / "mine.yaml", ["teacher=corpus"])
    assert recipe["data_source"] == str(tmp_path / "recipes" / "corpus")
    assert recipe["student"] == str(tmp_path / "recipes" / "student.json")
    assert recipe["deepspeed"] == "missing.json"  # not there: left for the run to report
    assert recipe["teacher"] == "corpus"  # a command-line value is relative to the current folder, as given
    assert load_recipe("armhubert-960h")["data_source"] == "openslr/librispeech_asr"  # a Hub id stays one


def test_worker_counts_of_recipes_are_capped_at_the_cpus_unless_given(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "available_cores", lambda: 2)
    output = [f"output_dir={tmp_path / 'out'}"]
    assert load_recipe("armhubert-960h")["dataloader_num_workers"] == 2  # the recipe says 8
    assert load_recipe("armhubert-960h", ["dataloader_num_workers=8"])["dataloader_num_workers"] == 8
    assert load_recipe("quickstart")["dataloader_num_workers"] == 0
    no_workers_key = {key: value for key, value in load_recipe("quickstart", output).items()}
    del no_workers_key["dataloader_num_workers"]
    assert build_arguments(no_workers_key)[1].dataloader_num_workers == 2  # the default, 4, capped too
    monkeypatch.setattr(recipes, "available_cores", lambda: 16)
    assert load_recipe("armhubert-960h")["dataloader_num_workers"] == 8
    assert recipes.available_cores() >= 1 and os.cpu_count() >= 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("student_config.hidden_sise=64", "unknown student_config field 'hidden_sise' (did you mean hidden_size"),
        ("teacher_config.hiden_size=32", "unknown teacher_config field 'hiden_size' (did you mean hidden_size"),
        ("student_config.hidden_size.x=3", "unknown student_config field 'hidden_size.x'"),
        ("student_config={hidden_sise: 64}", "unknown student_config field 'hidden_sise'"),
    ],
)
def test_mistyped_nested_keys_exit_2_with_a_suggestion(tmp_path, capsys, override, message):
    out = tmp_path / "out"
    line = one_line_refusal(capsys, "--config", "quickstart", f"output_dir={out}", override, *FAST)
    assert message in line, line
    assert "ARMHubertConfig fields" in line or "HubertConfig fields" in line
    assert not out.exists()


def test_teacher_fields_are_those_of_the_random_teachers_class(tmp_path):
    def distill_args(*overrides):
        return build_arguments(load_recipe("quickstart", [f"output_dir={tmp_path}", *overrides]))[0]

    check_config_fields(distill_args("teacher=random-wavlm", "teacher_config.num_buckets=8"))  # a WavLM field
    with pytest.raises(
        UserError, match="unknown teacher_config field 'num_buckets'; teacher_config takes HubertConfig"
    ):
        check_config_fields(distill_args("teacher_config.num_buckets=8"))  # not a HuBERT one
    with pytest.raises(UserError, match="did you mean num_buckets"):
        check_config_fields(distill_args("teacher=random-wavlm", "teacher_config.num_bucket=8"))
