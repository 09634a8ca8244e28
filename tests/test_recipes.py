"""Recipes: found by name or path, relative input paths against the recipe's folder, workers capped at the
CPUs, read by the one parser (file, key=value and --key value alike) and mistyped nested keys refused with a
suggestion (all before any model is built)."""

import os

import pytest
from helpers import ROOT

from armhubert.cli import UserError
from armhubert.distill import recipe as recipes
from armhubert.distill.models import check_config_fields
from armhubert.distill.recipe import (
    DistillTrainingArguments,
    find_recipe,
    load_recipe,
    parse_command_line,
    recipe_arguments,
)
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
    assert recipe_arguments(no_workers_key).dataloader_num_workers == 2  # the default, 4, capped too
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
        return recipe_arguments(load_recipe("quickstart", [f"output_dir={tmp_path}", *overrides]))

    check_config_fields(distill_args("teacher=random-wavlm", "teacher_config.num_buckets=8"))  # a WavLM field
    with pytest.raises(
        UserError, match="unknown teacher_config field 'num_buckets'; teacher_config takes HubertConfig"
    ):
        check_config_fields(distill_args("teacher_config.num_buckets=8"))  # not a HuBERT one
    with pytest.raises(UserError, match="did you mean num_buckets"):
        check_config_fields(distill_args("teacher=random-wavlm", "teacher_config.num_bucket=8"))


def test_flags_and_key_value_words_set_the_same_typed_fields(tmp_path):
    out = str(tmp_path / "out")
    by_words, _ = parse_command_line(["--config", "quickstart", f"output_dir={out}", "learning_rate=1e-3"])
    by_flags, recipe = parse_command_line(["--config", "quickstart", "--output-dir", out, "--learning_rate", "1e-3"])
    assert by_words.learning_rate == by_flags.learning_rate == 0.001 and by_flags.output_dir == out
    assert recipe["learning_rate"] == 0.001 and recipe["output_dir"] == out  # what distill_recipe.yaml records
    args, _ = parse_command_line(
        ["--config", "quickstart", f"output_dir={out}", "--teacher_layers", "4", "3", "2", "1"]
        + ["--no_teacher_single_pass", "--student_config", "{hidden_size: 32}", "--eval_split", "dev-clean"]
    )
    assert args.teacher_layers == [4, 3, 2, 1] and args.teacher_single_pass is False
    assert args.student_config == {"hidden_size": 32} and args.eval_split == "dev-clean"
    # The recipe file, then key=value words, then --key value flags, wherever they stand on the line.
    for argv in (
        ["--learning_rate", "0.2", "learning_rate=0.1"],
        ["learning_rate=0.1", "--learning_rate", "0.2"],
    ):
        args, recipe = parse_command_line(["--config", "quickstart", f"output_dir={out}", *argv])
        assert args.learning_rate == recipe["learning_rate"] == 0.2, argv
    args, _ = parse_command_line(["--config", "quickstart", f"output_dir={out}", "eval_split=null"])
    assert args.eval_split is None and args.eval_strategy == "no"  # nothing to evaluate on
    args, _ = parse_command_line(["--config", "quickstart", f"output_dir={out}"])
    assert (args.adam_beta2, args.max_grad_norm, args.warmup_steps) == (0.98, 0.0, 0.05)  # the release's


def test_resume_is_resume_from_checkpoint(tmp_path):
    out = str(tmp_path / "out")
    for argv, expected in (
        (["--resume", f"output_dir={out}"], "last"),  # the key=value word is never taken as the checkpoint
        ([f"output_dir={out}", "--resume"], "last"),
        (["--resume", "runs/q/checkpoint-3", f"output_dir={out}"], "runs/q/checkpoint-3"),
        (["--resume_from_checkpoint", "runs/q/checkpoint-3", f"output_dir={out}"], "runs/q/checkpoint-3"),
        ([f"output_dir={out}"], None),
    ):
        args, _ = parse_command_line(["--config", "quickstart", *argv])
        assert args.resume_from_checkpoint == expected and args.output_dir == out, argv


def test_a_recipe_file_is_read_as_its_flags(tmp_path, capsys):
    def recipe(text):
        path = tmp_path / "recipe.yaml"
        path.write_text(f"output_dir: {tmp_path / 'out'}\n{text}")
        return ["--config", str(path)]

    args, _ = parse_command_line(recipe("learning_rate: 5e-3\neval_strategy: no\nfp16: yes\nuse_cpu: false\n"))
    assert args.learning_rate == 0.005  # YAML 1.1 reads 5e-3 as text; the field reads it as a float
    assert args.eval_strategy == "no" and args.fp16 is True and args.use_cpu is False
    for text, message in (
        ("seed: 1.5\n", "--seed: invalid int value: '1.5'"),
        ("seed: 1\nseed: 2\n", "'seed' is given twice (line 3)"),
        ("teacher_layers: [1, x]\n", "--teacher_layers: invalid int value: 'x'"),
        ("star_variant: paper\n", "--star_variant: invalid choice: 'paper' (choose from 'public-reimplementation')"),
        ("remove_unused_columns: true\n", "remove_unused_columns is fixed to False by distill_trainer.py"),
        ("learnig_rate: 1.0\n", "unknown recipe key 'learnig_rate' (did you mean learning_rate"),
        ("mask_prob: 1.5\n", "mask_prob must be a finite number in [0, 1], got 1.5"),
    ):
        line = one_line_refusal(capsys, *recipe(text))
        assert message in line, (text, line)
    assert not (tmp_path / "out").exists()


def test_python_callers_get_the_checks_of_the_command_line():
    with pytest.raises(UserError, match="distill_mode must be one of masking, star, regression, got 'masked'"):
        DistillTrainingArguments(distill_mode="masked")
    with pytest.raises(UserError, match="length_column_name is fixed to 'num_samples'"):
        DistillTrainingArguments(length_column_name="length")
    with pytest.raises(UserError, match="student_config must be a mapping or null, got 5"):
        DistillTrainingArguments(student_config=5)
    args = DistillTrainingArguments(student_config="{hidden_size: 32}", train_splits="dev-clean")
    assert args.student_config == {"hidden_size": 32} and args.train_splits == ["dev-clean"]


def test_help_lists_the_distillation_and_trainer_flags(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--config", "--resume", "--distill_mode", "--student_config", "--learning_rate", "--output_dir"):
        assert flag in usage, flag
    assert "AdamW beta2 (the release's 0.98). (default: 0.98)" in " ".join(usage.split())
