"""convert_checkpoint.py / armhubert.convert: original-format checkpoints of every family -> Transformers folders."""

import ast
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import (
    MODEL_FOLDER_FILES,
    ROOT,
    TINY_CKPT,
    TINY_IO,
    TINY_YAML,
    distiller_section,
    random_model,
    run_main,
    tiny_config,
    to_original,
    waveform,
)

from armhubert.cli import UserError
from armhubert.convert import folders
from armhubert.convert.original import config_from_distiller, convert, parse_literal_expression


def write_original_checkpoint(path, model, family="armhubert", with_hparams=True, extra_student=None):
    """Save `model` the way the original training did: teacher tensors first, then `student_model.*`."""
    state = {"teacher_model.model.mask_emb": torch.randn(768)}
    state.update({f"student_model.{to_original(k)}": v.clone() for k, v in model.state_dict().items()})
    state.update({f"student_model.{k}": v for k, v in (extra_student or {}).items()})
    checkpoint = {"epoch": 1, "global_step": 10, "pytorch-lightning_version": "1.7.7", "state_dict": state}
    cfg = {"model": family, "distiller": distiller_section(model.config)}
    if with_hparams:
        checkpoint["hyper_parameters"] = {"cfg": cfg}
    torch.save(checkpoint, path)
    return cfg


def run_cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "convert_checkpoint.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_literal_expressions_parse_without_eval():
    layers = parse_literal_expression("[(128, 10, 5)] + [(256, 1, 1)] + [(256, 3, 2)] * 4")
    assert layers == [(128, 10, 5), (256, 1, 1)] + [(256, 3, 2)] * 4
    assert parse_literal_expression("[True, False]") == [True, False]
    assert parse_literal_expression("[11]") == [11]
    for hostile in ["__import__('os').system('true')", "[x for x in range(3)]", "open('f')", "(1).real"]:
        with pytest.raises(UserError, match="only list/tuple literals"):
            parse_literal_expression(hostile)
    assert parse_literal_expression("-(1 + 2)") == -3
    refused = {
        "-True": "uses '-True'; only list/tuple literals",
        "[1, 2": "cannot be parsed: '[' was never closed",
        "[1] + (2,)": 'cannot be evaluated (can only concatenate list (not "tuple") to list)',
        "-'a'": "cannot be evaluated (bad operand type for unary -: 'str')",
        "-" * 9_999 + "1": "nests too deeply",  # CPython's parser: a MemoryError
        "1+" * 4_999 + "1": "nests too deeply",  # the evaluation: a RecursionError
    }
    for text, message in refused.items():
        with pytest.raises(UserError, match=re.escape(message)) as refusal:
            parse_literal_expression(text)
        assert str(refusal.value).startswith("config expression ") and "\n" not in str(refusal.value)


def test_a_distiller_section_that_describes_no_model_is_refused():
    section = distiller_section(tiny_config())
    for broken in (None, [section], {"encoder_layers": 4}):
        with pytest.raises(UserError, match=r"^the config has no usable 'distiller' section \(expected"):
            config_from_distiller(broken)
    with pytest.raises(UserError, match=r"^distiller\.reuse_pattern must list 4 booleans \(one per layer\), got"):
        config_from_distiller({**section, "reuse_pattern": [True] * 3})
    null_pattern = config_from_distiller({**section, "reuse_pattern": None})  # every layer computes its map
    assert null_pattern.layer_reuses_attention_map == [False] * 4
    with pytest.raises(UserError, match="does not describe a valid model: .* not divisible by num_attention_heads=5"):
        config_from_distiller({**section, "encoder_attention_heads": 5})


def test_distiller_flags_are_booleans_or_0_1_never_text():
    section = distiller_section(tiny_config(projection_head_size=8, layer_grad_scale=True))
    expected = config_from_distiller(section).to_dict()
    as_integers = {name: int(section[name]) for name in ("conv_bias", "layer_norm_first", "layer_grad_scale")}
    assert config_from_distiller({**section, **as_integers, "layerwise_proj": 1}).to_dict() == expected
    defaults = {k: v for k, v in section.items() if k not in ("conv_bias", "layer_norm_first")}
    assert config_from_distiller(defaults).to_dict() == expected  # absent flags are off
    for name in ("conv_bias", "layer_norm_first", "layer_grad_scale", "layerwise_proj"):
        for bad in ("false", "True", 2, -1, None, 0.0):
            with pytest.raises(UserError, match=rf"^distiller\.{name} must be true or false, got "):
                config_from_distiller({**section, name: bad})
    as_numbers = config_from_distiller({**section, "reuse_pattern": [1, 0, True, False]})  # each flag alike
    assert as_numbers.layer_reuses_attention_map == [False, True, False, True]
    for bad in ("false", 1.0, 2):
        with pytest.raises(UserError, match=r"^distiller\.reuse_pattern must list 4 booleans \(one per layer\)"):
            config_from_distiller({**section, "reuse_pattern": [True, bad, True, True]})


def test_cli_writes_a_complete_folder_that_reproduces_the_fixture(tmp_path):
    result = run_cli(TINY_CKPT, "--output-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", *MODEL_FOLDER_FILES])
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_armhubert.ARMHubertConfig",
        "AutoModel": "modeling_armhubert.ARMHubertModel",
        "AutoModelForCTC": "modeling_armhubert.ARMHubertForCTC",
        "AutoModelForAudioClassification": "modeling_armhubert.ARMHubertForSequenceClassification",
    }
    assert "audio-feature-extraction" in config["custom_pipelines"]
    assert config["layer_reuses_attention_map"] == [False, True, False, True]
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["feature_extractor_type"] == "Wav2Vec2FeatureExtractor"
    assert preprocessor["sampling_rate"] == 16000
    assert preprocessor["do_normalize"] is False and preprocessor["return_attention_mask"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_from_pretrained_round_trip_and_remote_code_in_a_fresh_process(tmp_path):
    from modeling_armhubert import ARMHubertModel

    out = folders.convert_checkpoint(TINY_CKPT, tmp_path / "model")
    io = torch.load(TINY_IO, weights_only=True)
    reloaded = ARMHubertModel.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(io["input.single.source"]).last_hidden_state, io["single.x"], atol=1e-5, rtol=1e-5
        )
    torch.save(io["input.single.source"], tmp_path / "input.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModel\n"
        "torch.set_num_threads(1)  # as this process: identical reductions, identical numbers\n"
        f"model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        f"x = torch.load({str(tmp_path / 'input.pt')!r}, weights_only=True)\n"
        "with torch.no_grad(): y = model(x, output_hidden_states=True)\n"
        f"torch.save([y.last_hidden_state] + list(y.hidden_states), {str(tmp_path / 'out.pt')!r})\n"
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    remote = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        local = reloaded(io["input.single.source"], output_hidden_states=True)
    for got, want in zip(remote, [local.last_hidden_state, *local.hidden_states]):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    "family, overrides",
    [
        ("maskhubert", dict(layer_reuses_attention_map=[False] * 4)),
        ("armhubert", dict(do_stable_layer_norm=True, layer_reuses_attention_map=[False, True, True, False])),
    ],
)
def test_other_families_convert_with_identical_outputs(tmp_path, family, overrides):
    model = random_model(tiny_config(**overrides))
    write_original_checkpoint(tmp_path / "orig.ckpt", model, family=family)
    converted = convert(tmp_path / "orig.ckpt")
    audio = waveform(8000, seed=20)
    with torch.no_grad():
        assert torch.equal(converted(audio).last_hidden_state, model(audio).last_hidden_state)


def test_star_checkpoint_needs_its_yaml_and_drops_final_proj(tmp_path, capsys):
    star = random_model(
        tiny_config(layer_reuses_attention_map=[False] * 4, projection_head_size=None, use_mask_embedding=False)
    )
    extra = {"final_proj.weight": torch.randn(256, 48), "final_proj.bias": torch.randn(256)}
    cfg = write_original_checkpoint(
        tmp_path / "star.ckpt", star, family="starhubert", with_hparams=False, extra_student=extra
    )
    cfg["distiller"]["reuse_pattern"] = None  # STaR YAMLs need not list it
    (tmp_path / "star.yaml").write_text(yaml.safe_dump(cfg))

    code, stderr = run_main(capsys, tmp_path / "star.ckpt", "--output-dir", tmp_path / "no-yaml")
    assert code == 2 and "--config" in stderr
    assert not (tmp_path / "no-yaml").exists()

    code, stderr = run_main(
        capsys, tmp_path / "star.ckpt", "--config", tmp_path / "star.yaml", "--output-dir", tmp_path / "out"
    )
    assert code == 0, stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["projection_head_size"] is None and config["use_mask_embedding"] is False
    from modeling_armhubert import ARMHubertModel

    converted = ARMHubertModel.from_pretrained(tmp_path / "out").eval()
    audio = waveform(8000, seed=21)
    with torch.no_grad():
        assert torch.equal(converted(audio).last_hidden_state, star(audio).last_hidden_state)


def test_yaml_config_is_used_for_the_fixture(tmp_path):
    model = convert(TINY_CKPT, TINY_YAML)
    assert model.config.hidden_size == 48 and model.config.projection_head_size == 64


def _bad_checkpoints(tmp_path):
    """name -> (args, expected message fragment)."""
    cases = {}
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint")
    cases["not a checkpoint"] = ([text], "not a readable PyTorch checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(TINY_CKPT.read_bytes()[:50_000])
    cases["truncated"] = ([truncated], "not a readable PyTorch checkpoint")
    teacher_only = tmp_path / "teacher.ckpt"
    torch.save(
        {"state_dict": {"teacher_model.model.mask_emb": torch.zeros(3)}, "hyper_parameters": {"cfg": {}}}, teacher_only
    )
    cases["no student keys"] = ([teacher_only], "no 'student_model.*' tensors")

    def edited_yaml(name, edit):
        cfg = yaml.safe_load(TINY_YAML.read_text())
        edit(cfg)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def with_distiller(**fields):
        return lambda cfg: cfg["distiller"].update(fields)

    wrong_yaml = edited_yaml("wrong", with_distiller(encoder_ffn_embed_dim=80))
    cases["shape mismatch"] = ([TINY_CKPT, "--config", wrong_yaml], "shape mismatch for encoder.layers.0.feed_forward")
    pattern_yaml = edited_yaml("pattern", with_distiller(reuse_pattern="[True, True, True, True]"))
    cases["missing keys"] = ([TINY_CKPT, "--config", pattern_yaml], "missing encoder.layers.1.attention.k_proj.bias")
    family_yaml = edited_yaml("family", lambda cfg: cfg.update(model="fithubert"))
    cases["unknown family"] = ([TINY_CKPT, "--config", family_yaml], "unknown model family 'fithubert'")
    hostile_yaml = edited_yaml("hostile", with_distiller(conv_feature_layers="__import__('os').getcwd()"))
    cases["code in config"] = ([TINY_CKPT, "--config", hostile_yaml], "only list/tuple literals")
    cases["missing file"] = ([tmp_path / "absent.ckpt"], "absent.ckpt: No such file or directory")
    return cases


def test_bad_inputs_exit_2_with_one_line_and_leave_the_output_untouched(tmp_path, capsys):
    existing = tmp_path / "existing"  # a previous conversion: what --overwrite may replace
    assert run_main(capsys, TINY_CKPT, "--output-dir", existing)[0] == 0
    previous = {path.name: path.read_bytes() for path in existing.iterdir()}
    for name, (args, message) in _bad_checkpoints(tmp_path).items():
        for target in (tmp_path / f"new-{name.replace(' ', '-')}", existing):
            extra = ["--overwrite"] if target == existing else []
            code, stderr = run_main(capsys, *args, "--output-dir", target, *extra)
            assert code == 2, (name, stderr)
            assert message in stderr, (name, stderr)
            assert len(stderr.strip().splitlines()) == 1, (name, stderr)
        assert not (tmp_path / f"new-{name.replace(' ', '-')}").exists(), name
        assert {path.name: path.read_bytes() for path in existing.iterdir()} == previous, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("command", ["convert_checkpoint.py", "distill_trainer.py"])
def test_command_files_hold_the_command_only(command):
    """The root CLIs parse arguments and run `main`; the Python API is the package's, never re-exported."""
    tree = ast.parse((ROOT / command).read_text())
    assert "__all__" not in {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets}
    imported = {
        alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert imported <= used  # nothing imported only to be handed on
    assert "main" in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_a_failed_upload_is_a_user_error():
    from armhubert.convert.publish import PublishError

    assert issubclass(PublishError, UserError)  # it exits 2 with one line, like bad input


def test_cli_error_is_one_line_without_traceback(tmp_path):
    (tmp_path / "notes.ckpt").write_text("this is not a checkpoint")
    result = run_cli(tmp_path / "notes.ckpt", "--output-dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("convert_checkpoint.py: error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite_and_is_replaced_whole(tmp_path, capsys):
    target = tmp_path / "model"
    target.mkdir()
    for file_name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (target / file_name).write_text('{"model_type": "armhubert"}')  # a previous output of the converter
    code, stderr = run_main(capsys, TINY_CKPT, "--output-dir", target)
    assert code == 2 and "--overwrite" in stderr
    assert (target / "config.json").read_text() == '{"model_type": "armhubert"}'
    (target / "preprocessor_config.json").rename(target / "stale.json")
    code, stderr = run_main(capsys, TINY_CKPT, "--output-dir", target, "--overwrite")
    assert code == 2 and "stale.json, which this tool did not write" in stderr  # a file we never write: kept
    (target / "stale.json").unlink()
    code, stderr = run_main(capsys, TINY_CKPT, "--output-dir", target, "--overwrite")
    assert code == 0, stderr
    assert (target / "config.json").read_text() != '{"model_type": "armhubert"}' and (
        target / "model.safetensors"
    ).exists()


def test_interrupted_write_leaves_no_partial_folder(tmp_path, monkeypatch):
    model = convert(TINY_CKPT)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(folders, "release_feature_extractor", fail)
    with pytest.raises(KeyboardInterrupt):
        folders.save_model_folder(model, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_loading_a_folder_as_remote_code_keeps_the_installed_classes_registered(tmp_path):
    """A folder's own copy of the code (maybe older) must not take over "armhubert" in this process."""
    from transformers import AutoConfig, AutoModel, pipeline
    from transformers.pipelines import PIPELINE_REGISTRY

    from configuration_armhubert import ARMHubertConfig
    from pipeline_armhubert import ARMHubertFeatureExtractionPipeline

    out = folders.convert_checkpoint(TINY_CKPT, tmp_path / "model")
    AutoModel.from_pretrained(out, trust_remote_code=True)
    pipeline(model=str(out), trust_remote_code=True)  # imports the folder's copy of both files
    assert type(AutoConfig.for_model("armhubert")) is ARMHubertConfig
    assert PIPELINE_REGISTRY.supported_tasks["audio-feature-extraction"]["impl"] is ARMHubertFeatureExtractionPipeline


def test_registration_with_auto_classes():
    from transformers import AutoConfig, AutoModel

    from configuration_armhubert import ARMHubertConfig
    from modeling_armhubert import ARMHubertModel

    config = AutoConfig.for_model("armhubert", hidden_size=48, num_attention_heads=4)
    assert isinstance(config, ARMHubertConfig)
    assert isinstance(AutoModel.from_config(config), ARMHubertModel)


def test_an_output_format_the_command_does_not_offer_is_refused_before_anything_is_written(tmp_path):
    """The command's --format offers OUTPUT_FORMATS only; a Python caller's typo is not silently an armhubert folder."""
    with pytest.raises(ValueError, match="output_format must be one of armhubert, hubert, got 'hubrt'"):
        folders.convert_checkpoint(TINY_CKPT, tmp_path / "model", output_format="hubrt")
    assert not (tmp_path / "model").exists()
