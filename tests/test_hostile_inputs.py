"""Hostile and broken input to convert_checkpoint.py: one line, exit status 2, nothing written, inputs intact.

Every hostile file is built here (tiny, from the fixture). Each case checks what matters: the exit
status, exactly one line on stderr without a traceback, the message naming the problem, no output and
no staging folder left behind, and every input byte-identical afterwards.
"""

import os
import pickle
import shutil
import warnings
import zipfile

import pytest
import torch
from helpers import TINY_CKPT
from hostile import digest, distiller, hidden_entries, refusal, save, tiny_checkpoint, tiny_yaml_text

import convert_checkpoint


def _nested(weight):
    with warnings.catch_warnings():  # "nested tensors are a prototype"
        warnings.simplefilter("ignore")
        return torch.nested.nested_tensor(list(weight))


def _checkpoint_cases(folder):
    """name -> (command arguments before --output-dir, fragment of the expected message)."""
    cases = {}

    def changed(name, change, message):
        checkpoint = tiny_checkpoint()
        change(checkpoint)
        cases[name] = ([save(folder / f"{name}.ckpt", checkpoint)], message)

    def student(checkpoint, key="encoder.layers.0.fc1.weight"):
        return f"student_model.{key}"

    changed("hparams-list", lambda c: c.update(hyper_parameters=[1, 2]), "hyper_parameters is a list, not a mapping")
    changed(
        "string-size", lambda c: distiller(c).update(encoder_embed_dim="48"), "encoder_embed_dim must be an integer"
    )
    changed("negative-size", lambda c: distiller(c).update(encoder_ffn_embed_dim=-96), "encoder_ffn_embed_dim must be")
    changed("zero-heads", lambda c: distiller(c).update(encoder_attention_heads=0), "encoder_attention_heads must be")
    changed(
        "huge-layers",
        lambda c: distiller(c).update(encoder_layers=10**9),
        "encoder_layers must be an integer in 1..1024",
    )
    changed("bool-layers", lambda c: distiller(c).update(encoder_layers=True), "encoder_layers must be an integer")
    changed("tensor-in-config", lambda c: distiller(c).update(encoder_layers=torch.tensor([4, 4])), "holds a Tensor")
    changed(
        "dropout-text", lambda c: distiller(c).update(dropout="0.1"), "distiller.dropout must be a number in [0, 1]"
    )
    changed(
        "activation",
        lambda c: distiller(c).update(activation_fn="rm -rf"),
        "activation_fn must be an activation transformers knows, got 'rm -rf'",
    )
    changed(
        "flag-text",
        lambda c: distiller(c).update(layerwise_proj="false"),
        "distiller.layerwise_proj must be true or false, got 'false'",
    )
    changed("flag-two", lambda c: distiller(c).update(conv_bias=2), "distiller.conv_bias must be true or false, got 2")
    changed("reuse-pattern", lambda c: distiller(c).update(reuse_pattern="[True, 7]"), "reuse_pattern must list 4")
    changed(
        "conv-layers", lambda c: distiller(c).update(conv_feature_layers="[(32, 10)]"), "conv_feature_layers must be"
    )
    changed(
        "conv-negative", lambda c: distiller(c).update(conv_feature_layers="[(-32, 10, 5)]"), "conv_feature_layers must"
    )
    changed("family-list", lambda c: c["hyper_parameters"]["cfg"].update(model=["armhubert"]), "unknown model family")
    changed("integer-key", lambda c: c["state_dict"].update({5: torch.zeros(1)}), "key 5 that is not a name")
    changed(
        "sparse-weight",
        lambda c: c["state_dict"].update({student(c): c["state_dict"][student(c)].to_sparse()}),
        "is a torch.sparse_coo tensor",
    )
    changed(
        "meta-weight",
        lambda c: c["state_dict"].update({student(c): c["state_dict"][student(c)].to("meta")}),
        "tensor on meta",
    )
    changed(
        "integer-weight",
        lambda c: c["state_dict"].update({student(c): c["state_dict"][student(c)].long()}),
        "has dtype torch.int64",
    )
    changed(
        "expanded-weight",
        lambda c: c["state_dict"].update({student(c): torch.zeros(1).expand(c["state_dict"][student(c)].shape)}),
        "but its storage holds 4",
    )
    changed(
        "nested-weight",
        lambda c: c["state_dict"].update({student(c): _nested(c["state_dict"][student(c)])}),
        "is a nested tensor; weights are dense CPU tensors",
    )
    changed(
        "nan-weight",
        lambda c: c["state_dict"][student(c)].fill_(float("nan")),
        "the converted model has NaN or infinite weights (encoder.layers.0.feed_forward.intermediate_dense.weight)",
    )

    text = folder / "notes.ckpt"
    text.write_text("just some notes\n")
    cases["text-file"] = ([text], "not the zip archive torch.save writes")
    protocol4 = folder / "protocol4.ckpt"
    protocol4.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    cases["protocol-4-pickle"] = ([protocol4], "not the zip archive torch.save writes")
    protocol4_zip = folder / "protocol4-zip.ckpt"
    torch.save(tiny_checkpoint(), protocol4_zip, pickle_protocol=4)
    cases["protocol-4-zip"] = ([protocol4_zip], "uses opcode 149 (FRAME, pickle protocol 4), which weights-only")
    random_bytes = folder / "random.ckpt"
    random_bytes.write_bytes(bytes(range(256)) * 40)
    cases["random-bytes"] = ([random_bytes], "not the zip archive torch.save writes")
    legacy = folder / "legacy.ckpt"
    torch.save(tiny_checkpoint(), legacy, _use_new_zipfile_serialization=False)
    cases["legacy-format"] = ([legacy], "re-save an older checkpoint with a current torch")
    other_zip = folder / "archive.ckpt"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    cases["foreign-zip"] = ([other_zip], "is not a readable PyTorch checkpoint")

    bad_utf8 = folder / "latin1.yaml"
    bad_utf8.write_bytes(tiny_yaml_text().encode() + "# r\xe9sum\xe9\n".encode("latin-1"))
    cases["yaml-not-utf8"] = ([TINY_CKPT, "--config", bad_utf8], "is not UTF-8 text")
    not_yaml = folder / "broken.yaml"
    not_yaml.write_text("distiller: [unclosed\n")
    cases["yaml-invalid"] = ([TINY_CKPT, "--config", not_yaml], "is not valid YAML")
    scalar_yaml = folder / "scalar.yaml"
    scalar_yaml.write_text("42\n")
    cases["yaml-scalar"] = ([TINY_CKPT, "--config", scalar_yaml], "not a mapping of sections")
    tagged_yaml = folder / "tagged.yaml"
    tagged_yaml.write_text("model: !!python/object/apply:os.system ['true']\n")
    cases["yaml-python-tag"] = ([TINY_CKPT, "--config", tagged_yaml], "is not valid YAML")
    return cases


def test_broken_checkpoints_and_configs_give_one_line_and_write_nothing(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = _checkpoint_cases(inputs)
    before = digest(inputs, TINY_CKPT)
    for name, (args, message) in cases.items():
        line = refusal(capsys, convert_checkpoint.main, *args, "--output-dir", tmp_path / f"out-{name}")
        assert line.startswith("convert_checkpoint.py: error: ") and message in line, (name, line)
        assert len(line) < 400, (name, line)  # untrusted values are shown in brief
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]  # no output, no staging folder
    assert digest(inputs, TINY_CKPT) == before


def test_output_overlapping_an_input_is_refused_and_nothing_is_deleted(tmp_path, capsys):
    downloads = tmp_path / "dl"
    downloads.mkdir()
    for name in ("a.ckpt", "b.ckpt"):
        shutil.copy(TINY_CKPT, downloads / name)
    (downloads / "a.yaml").write_text(tiny_yaml_text())
    before = digest(downloads)
    cases = [
        ([downloads / "a.ckpt", "--output-dir", downloads, "--overwrite"], "contains the input"),
        ([downloads / "a.ckpt", "--output-dir", downloads / "a.ckpt", "--overwrite"], "is the input"),
        ([TINY_CKPT, "--config", downloads / "a.yaml", "--output-dir", downloads, "--overwrite"], "contains the input"),
        (["--all", downloads, "--output-dir", downloads, "--overwrite"], "is the input"),
        (["--all", downloads, "--output-dir", tmp_path, "--overwrite"], "contains the input"),
        (["--all", downloads, "--output-dir", downloads / "converted"], "is inside the input"),
    ]
    for args, message in cases:
        line = refusal(capsys, convert_checkpoint.main, *args)
        assert message in line, line
    assert digest(downloads) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl"]


def test_output_under_a_file_or_where_nothing_can_be_written_gives_one_line(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("a file")
    assert "is a file, not a folder" in refusal(
        capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", a_file / "out"
    )
    assert "exists and is not a folder" in refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", a_file)
    # /proc takes no new folders: the OSError becomes one line (as a read-only or vanished folder would).
    line = refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", "/proc/armhubert-test/out")
    assert "/proc/armhubert-test" in line
    with monkeypatch.context() as patched:  # a read-only folder as an ordinary user sees it (these tests run as root)
        patched.setattr(os, "access", lambda path, mode: False)
        line = refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", tmp_path / "out")
    assert f"{tmp_path} is not writable; choose another folder" in line
    monkeypatch.chdir(tmp_path)
    assert "contains the current folder" in refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", ".")
    assert "contains the current folder" in refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", "..")
    assert a_file.read_text() == "a file" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.parametrize(
    "file_name, message",
    [
        ("..ckpt", "is not a safe name"),
        (".hidden.ckpt", "is not a safe name"),
        ("README.md.ckpt", "would look like a repository file"),
        ("modeling_armhubert.py.ckpt", "would look like a repository file"),
        ('x", trust_remote_code=True); import os; os.system("id") #.ckpt', "is not a safe name"),
        ("run\nnext.ckpt", "is not a safe name"),
    ],
)
def test_all_refuses_file_names_that_would_become_paths_or_code(tmp_path, capsys, file_name, message):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(TINY_CKPT, source / file_name)
    shutil.copy(TINY_CKPT, source / "fine-run.ckpt")
    line = refusal(capsys, convert_checkpoint.main, "--all", source, "--output-dir", tmp_path / "repo")
    assert message in line and "rename it" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_values_that_reach_the_card_code_cannot_inject(tmp_path, capsys):
    quoted = tmp_path / 'out", trust_remote_code=True); import os; os.system("id") #'
    assert "cannot appear in the model card's usage code" in refusal(
        capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", quoted
    )
    line = refusal(
        capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", tmp_path / "x", "--push-to-hub", "me/a`b"
    )
    assert "cannot appear in the model card's usage code" in line
    named = tmp_path / "my`run.ckpt"
    shutil.copy(TINY_CKPT, named)
    assert "the checkpoint file name" in refusal(capsys, convert_checkpoint.main, named, "--output-dir", tmp_path / "y")
    assert "release name" in refusal(
        capsys, convert_checkpoint.main, TINY_CKPT, "--name", '"); x #', "--output-dir", tmp_path / "z"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my`run.ckpt"]


def test_a_safe_name_is_written_verbatim_into_the_card(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(TINY_CKPT, source / "my-run_1.5+b.ckpt")
    assert convert_checkpoint.main(["--all", str(source), "--output-dir", str(tmp_path / "repo")]) == 0, (
        capsys.readouterr()
    )
    card = (tmp_path / "repo" / "my-run_1.5+b" / "README.md").read_text()
    assert f'from_pretrained("{tmp_path / "repo"}", subfolder="my-run_1.5+b", trust_remote_code=True)' in card


def test_overwrite_replaces_only_a_previous_output(tmp_path, capsys):
    converted = tmp_path / "converted"
    assert convert_checkpoint.main([str(TINY_CKPT), "--output-dir", str(converted)]) == 0
    capsys.readouterr()
    for intruder, make in [
        ("notes.txt", lambda path: path.write_text("my notes")),
        (".git", lambda path: (path.mkdir(), (path / "HEAD").write_text("ref: refs/heads/main"))),
        ("data", lambda path: (path.mkdir(), (path / "x.flac").write_bytes(b"audio"))),
        ("link.json", lambda path: path.symlink_to(TINY_CKPT)),
    ]:
        make(converted / intruder)
        before = digest(converted)
        line = refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", converted, "--overwrite")
        assert f"it holds {intruder}" in line and "which this tool did not write" in line, line
        assert digest(converted) == before
        target = converted / intruder
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()

    only_notes = tmp_path / "notes"
    only_notes.mkdir()
    (only_notes / "README.md").write_text("my own readme")
    line = refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", only_notes, "--overwrite")
    assert "holds no complete previous output" in line
    assert (only_notes / "README.md").read_text() == "my own readme"

    repository = tmp_path / "repo"
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(TINY_CKPT, source / "run.ckpt")
    assert convert_checkpoint.main(["--all", str(source), "--output-dir", str(repository)]) == 0
    assert convert_checkpoint.main(["--all", str(source), "--output-dir", str(repository), "--overwrite"]) == 0
    assert convert_checkpoint.main([str(TINY_CKPT), "--output-dir", str(converted), "--overwrite"]) == 0
    assert hidden_entries(tmp_path) == []
