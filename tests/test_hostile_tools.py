"""Hostile input to the newer tools, `scripts/evaluate.py` and `scripts/extract_features.py`: the same doors as
the converter.

Each case asserts exit status 2, exactly one line on stderr (no traceback) naming the problem, and every input
byte-identical afterwards (and no output left). Cases that could hang (a FIFO where audio is expected) or
take memory (a sparse 1 GiB run.json, a codebook declaring gigabytes) run in one child process, under a
timeout and an address-space cap, which reports each case's exit status, stderr, seconds and peak-memory
growth: the growth is asserted under 200 MB (bounded by design: the refusal comes before the read), the
seconds are printed.
"""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
import torch
from filelock import FileLock
from helpers import TINY_CKPT, load_script, tiny_config
from hostile import digest, file_size_limited, long_flac, refusal, run_capped, run_child
from transformers import HubertConfig, Wav2Vec2CTCTokenizer

from armhubert.features.units import CODEBOOK_FORMAT, Codebook, save_codebook
from armhubert.files.untrusted import parse_json
from armhubert.resources import BUNDLED_CORPUS
from modeling_armhubert import ARMHubertForCTC, ARMHubertForSequenceClassification, ARMHubertModel
from pipeline_armhubert import release_feature_extractor

evaluate = load_script("evaluate")
extract = load_script("extract_features")
LABELS = ["yes", "no"]


def write_wav(path, seconds=1.0, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = 0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32)
    soundfile.write(path, samples, 16000)
    return path


def fifo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny CTC folder, a tiny classifier folder (random weights: the figures do not matter here) and audio."""
    root = tmp_path_factory.mktemp("tools")
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{char: 3 + i for i, char in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
    (root / "vocab.json").write_text(json.dumps(vocab))
    ctc = root / "ctc"
    torch.manual_seed(0)
    ARMHubertForCTC(tiny_config(vocab_size=len(vocab), pad_token_id=0)).save_pretrained(ctc)
    Wav2Vec2CTCTokenizer(str(root / "vocab.json"), word_delimiter_token="|").save_pretrained(ctc)
    release_feature_extractor().save_pretrained(ctc)
    sid = root / "sid"
    config = tiny_config(num_labels=2, label2id={k: i for i, k in enumerate(LABELS)}, id2label=dict(enumerate(LABELS)))
    ARMHubertForSequenceClassification(config).save_pretrained(sid)
    release_feature_extractor().save_pretrained(sid)
    audio = [write_wav(root / "audio" / f"{i}.wav", seed=i) for i in range(2)]
    return {"root": root, "ctc": ctc, "sid": sid, "audio": audio}


def csv_file(path, rows, column="text"):
    path.write_text("path," + column + "\n" + "".join(f"{audio},{value}\n" for audio, value in rows))
    return path


# ---- 1. data loss: --output_json never lands on an input, never replaces a file without --overwrite


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("how", ["absolute", "relative", "symlink", "dataset-row", "folder-entry"])
def test_output_json_naming_an_audio_file_the_data_lists_is_refused(folders, tmp_path, capsys, how, overwrite):
    audio = tmp_path / "corpus" / "a.wav"
    write_wav(audio)
    model, extra = folders["ctc"], []
    if how in ("absolute", "relative", "symlink"):
        data = csv_file(tmp_path / "corpus" / "dev.csv", [(audio if how != "relative" else "a.wav", "a b")])
        output = audio if how != "symlink" else tmp_path / "link.wav"
        if how == "symlink":
            output.symlink_to(audio)
    elif how == "dataset-row":  # the dataset names a file outside its own folder
        data = tmp_path / "saved"
        datasets.Dataset.from_dict({"audio": [{"path": str(audio), "bytes": None}], "text": ["a b"]}).save_to_disk(data)
        output = audio
    else:  # label folders: the audio file is inside --data, named through another path
        model, data = folders["sid"], tmp_path / "labels"
        write_wav(data / "yes" / "a.wav")
        output = tmp_path / "labels" / "yes" / "a.wav"
    before = digest(tmp_path / "corpus", data)
    extra = ["--overwrite"] if overwrite else []
    line = refusal(capsys, evaluate.main, model, "--data", data, "--output_json", output, *extra)
    apart = "the output" in line and ("is the input" in line or "inside the input" in line)
    assert apart or (not overwrite and "exists; pass --overwrite" in line), line
    assert digest(tmp_path / "corpus", data) == before


def test_output_json_never_replaces_a_file_without_overwrite(folders, tmp_path, capsys):
    data = csv_file(tmp_path / "dev.csv", [(folders["audio"][0], "a b")])
    notes = tmp_path / "notes.json"
    notes.write_text("my notes")
    line = refusal(capsys, evaluate.main, folders["ctc"], "--data", data, "--output_json", notes)
    assert "exists; pass --overwrite" in line and notes.read_text() == "my notes"
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert "is a folder" in refusal(capsys, evaluate.main, folders["ctc"], "--data", data, "--output_json", folder)
    assert "is empty" in refusal(capsys, evaluate.main, folders["ctc"], "--data", data, "--output_json", "")
    for special in ("/dev/null", fifo(tmp_path / "pipe.json")):  # never replaced, even with --overwrite
        line = refusal(capsys, evaluate.main, folders["ctc"], "--data", data, "--output_json", special, "--overwrite")
        assert "is not a regular file" in line
    assert os.path.exists("/dev/null") and Path("/dev/null").is_char_device()
    (tmp_path / "pipe.json").unlink()
    # With --overwrite it is replaced (in one rename), and a new name is written without it.
    assert evaluate.main([str(folders["ctc"]), "--data", str(data), "--output_json", str(notes), "--overwrite"]) == 0
    assert json.loads(notes.read_text())["utterances"] == 1
    assert evaluate.main([str(folders["ctc"]), "--data", str(data), "--output_json", str(tmp_path / "new.json")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder", "dev.csv", "new.json", "notes.json"]


_EVALUATE_FSIZE_CHILD = file_size_limited(
    'from helpers import load_script\nevaluate = load_script("evaluate")', "evaluate.main", limit=64
)


@pytest.mark.parametrize("existing", [False, True])
def test_an_output_json_that_cannot_be_written_gives_one_line_and_keeps_the_previous_file(folders, tmp_path, existing):
    """A full disk (emulated by a 64-byte file-size limit; the report is larger): one line, exit 2, the previous
    --output_json as it was (or none), no temporary file left, the inputs unchanged."""
    data = csv_file(tmp_path / "data.csv", [(folders["audio"][0], "hello")])
    output = tmp_path / "out" / "report.json"
    output.parent.mkdir()
    if existing:
        output.write_text("the previous report")
    before = digest(tmp_path, folders["ctc"])
    child = run_child(_EVALUATE_FSIZE_CHILD, [folders["ctc"], "--data", data, "--output_json", output, "--overwrite"])
    lines = child.stdout.strip().splitlines()
    assert child.returncode == 2 and len(lines) == 1, (child.stdout, child.stderr[-2000:])
    assert str(output) in lines[0] and "File too large" in lines[0], lines
    assert digest(tmp_path, folders["ctc"]) == before
    assert sorted(p.name for p in output.parent.iterdir()) == (["report.json"] if existing else [])


def test_a_file_that_appears_while_evaluating_is_not_replaced(tmp_path):
    from armhubert.cli import UserError
    from armhubert.files.atomic import atomic_write_text

    target = tmp_path / "figures.json"
    target.write_text("arrived meanwhile")
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        atomic_write_text(target, "{}", replace=False)
    assert target.read_text() == "arrived meanwhile" and [p.name for p in tmp_path.iterdir()] == ["figures.json"]


# ---- 3. model folders go through the checked loader; non-finite weights are refused before encoding


def _broken_model(folder, kind):
    folder.mkdir()
    if kind == "hubert":
        HubertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(folder)
        return "HubertConfig"
    if kind == "deep-config":
        (folder / "config.json").write_text('{"model_type": "armhubert", "x": ' + "[" * 5000 + "]" * 5000 + "}")
        return "nests deeper than 32 levels"
    if kind == "many-values":
        (folder / "config.json").write_text('{"model_type": "armhubert", "x": [' + "[]," * 250_000 + "[]]}")
        return "more than 200,000 JSON values"
    if kind == "wrong-type":
        config = tiny_config().to_dict()
        config["num_hidden_layers"] = [4]
        (folder / "config.json").write_text(json.dumps(config))
        return "cannot load the model"
    if kind == "duplicate-key":  # json.loads keeps the last: the model would not be what the file seems to say
        text = json.dumps(tiny_config().to_dict())
        (folder / "config.json").write_text(text.replace('"hidden_size": 48', '"hidden_size": 48, "hidden_size": 96'))
        return "holds the key 'hidden_size' twice"
    if kind == "list-config":
        (folder / "config.json").write_text("[1, 2]")
        return "holds a list, not a JSON object"
    if kind == "fifo-config":
        fifo(folder / "config.json")
        return "is a FIFO (named pipe), not a regular file"
    if kind == "huge":
        config = tiny_config(hidden_size=4096 * 16, intermediate_size=4096 * 64, num_attention_heads=16).to_dict()
        (folder / "config.json").write_text(json.dumps(config))
        return "parameters, more than"
    if kind == "broken-preprocessor":
        torch.manual_seed(0)
        ARMHubertForCTC(tiny_config(vocab_size=8)).save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text('{"feature_size": ' + "[" * 100 + "]" * 100 + "}")
        return "nests deeper than 32 levels"
    raise AssertionError(kind)


MODEL_CASES = [
    "hubert",
    "deep-config",
    "many-values",
    "wrong-type",
    "duplicate-key",
    "list-config",
    "huge",
    "broken-preprocessor",
]


@pytest.mark.parametrize("kind", MODEL_CASES)
def test_a_broken_or_foreign_model_folder_is_one_line_for_both_tools(folders, tmp_path, capsys, kind):
    message = _broken_model(tmp_path / "model", kind)
    before = digest(tmp_path / "model", folders["audio"][0])
    data = csv_file(tmp_path / "dev.csv", [(folders["audio"][0], "a b")])
    assert message in refusal(capsys, evaluate.main, tmp_path / "model", "--data", data)
    line = refusal(
        capsys,
        extract.main,
        "--model",
        tmp_path / "model",
        "--input",
        folders["audio"][0].parent,
        "--output_dir",
        tmp_path / "out",
    )
    assert message in line or (kind == "hubert" and "HubertConfig model" in line), line
    assert digest(tmp_path / "model", folders["audio"][0]) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_model_with_non_finite_weights_is_refused_before_encoding(folders, tmp_path, capsys, value):
    for name in ("ctc", "sid"):
        model = {"ctc": ARMHubertForCTC, "sid": ARMHubertForSequenceClassification}[name].from_pretrained(folders[name])
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = value
        model.save_pretrained(tmp_path / name)
        release_feature_extractor().save_pretrained(tmp_path / name)
    Wav2Vec2CTCTokenizer.from_pretrained(folders["ctc"]).save_pretrained(tmp_path / "ctc")
    data = csv_file(tmp_path / "dev.csv", [(folders["audio"][0], "a b")])
    assert "has NaN or infinite weights" in refusal(capsys, evaluate.main, tmp_path / "ctc", "--data", data)
    labels = csv_file(tmp_path / "labels.csv", [(folders["audio"][0], "yes")], "label")
    assert "has NaN or infinite weights" in refusal(capsys, evaluate.main, tmp_path / "sid", "--data", labels)
    for name in ("ctc", "sid"):
        argv = [
            "--model",
            tmp_path / name,
            "--input",
            folders["audio"][0].parent,
            "--output_dir",
            tmp_path / f"o-{name}",
        ]
        assert "features would be NaN" in refusal(capsys, extract.main, *argv)
        assert not (tmp_path / f"o-{name}").exists()


# ---- 4. the features tool: empty input, float options, codebooks, run.json, shards, leftovers


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--input", "", "--input is empty"),
        ("--input", " ", "--input is empty"),
        ("--output_dir", "", "--output_dir is empty"),
        ("--max_batch_seconds", "inf", "--max_batch_seconds must be a finite number"),
        ("--max_batch_seconds", "nan", "--max_batch_seconds must be a finite number"),
        ("--max_batch_seconds", "1e300", "--max_batch_seconds must be a finite number"),
        ("--shard_mb", "inf", "--shard_mb must be a finite number"),
        ("--shard_mb", "-1", "--shard_mb must be a finite number"),
        ("--units_sample_hours", "nan", "--units_sample_hours must be a finite number"),
        ("--chunk_length_s", "nan", "--chunk_length_s must be a finite number"),
        ("--chunk_length_s", "inf", "--chunk_length_s must be a finite number"),
        ("--chunk_length_s", "-3", "--chunk_length_s must be a finite number"),
        ("--chunk_length_s", "0.01", "--chunk_length_s 0.01 is shorter than the receptive field"),
        ("--stride_length_s", "nan", "--stride_length_s must be a finite number"),
        ("--stride_length_s", "-inf", "--stride_length_s must be a finite number"),
    ],
)
def test_features_options_are_checked_before_anything_is_read(folders, tmp_path, capsys, option, value, message):
    argv = {"--model": folders["ctc"], "--input": folders["audio"][0].parent, "--output_dir": tmp_path / "out"}
    argv["--stride_length_s"] = 0 if option == "--chunk_length_s" else 1
    argv[option] = value
    before = digest(folders["audio"][0].parent)
    assert message in refusal(capsys, extract.main, *[f"{name}={value}" for name, value in argv.items()])
    assert not (tmp_path / "out").exists() and digest(folders["audio"][0].parent) == before
    assert not Path(".", "index.json").exists()


def _codebook_file(path, header, data=b""):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("metadata-list", "is not a codebook of this tool"),
        ("metadata-deep", "nests deeper than 32 levels"),
        ("one-dimensional", "holds centroids of shape (4,)"),
        ("too-wide", "holds centroids of shape (4, 100000)"),
        ("integer", "holds 'I32' centroids"),
        ("no-centroids", "holds no centroids"),
        ("other-width", "has 5-wide centroids"),
        ("fifo", "is a FIFO (named pipe)"),
    ],
)
def test_a_hostile_codebook_is_one_line(folders, tmp_path, capsys, kind, message):
    def header(shape, dtype="F32", metadata=None, name="centroids"):
        metadata = metadata or json.dumps(
            {"format": CODEBOOK_FORMAT, "layer": "layer_4", "representation": "projected"}
        )
        size = int(np.prod(shape)) * 4
        return {
            "__metadata__": {"armhubert": metadata},
            name: {"dtype": dtype, "shape": shape, "data_offsets": [0, size]},
        }

    path = tmp_path / "codebook.safetensors"
    if kind == "metadata-list":
        _codebook_file(path, header([2, 48], metadata="[1, 2]"), bytes(2 * 48 * 4))
    elif kind == "metadata-deep":
        _codebook_file(path, header([2, 48], metadata="[" * 100 + "]" * 100), bytes(2 * 48 * 4))
    elif kind == "one-dimensional":
        _codebook_file(path, header([4]), bytes(16))
    elif kind == "too-wide":
        path.write_bytes(b"")
        _codebook_file(path, header([4, 100_000]))
        os.truncate(path, path.stat().st_size + 4 * 100_000 * 4)  # sparse: declared, not stored
    elif kind == "integer":
        _codebook_file(path, header([2, 48], dtype="I32"), bytes(2 * 48 * 4))
    elif kind == "no-centroids":
        _codebook_file(path, header([2, 48], name="other"), bytes(2 * 48 * 4))
    elif kind == "other-width":
        save_codebook(Codebook(torch.randn(3, 5), "layer_4", "projected", "m", 10), path)
    else:
        fifo(path)
    before = digest(tmp_path) if kind != "fifo" else {}
    line = refusal(
        capsys,
        extract.main,
        "--model",
        folders["ctc"],
        "--input",
        folders["audio"][0].parent,
        "--codebook",
        path,
        "--save_features",
        "false",
        "--output_dir",
        tmp_path / "out",
    )
    assert message in line, line
    assert not (tmp_path / "out").exists() and (kind == "fifo" or digest(tmp_path) == before)


def test_parse_json_bounds_values_and_depth_before_building():
    from armhubert.cli import UserError

    assert parse_json(b'{"a": ["x,[{\\"", {"b": null}]}', "f") == {"a": ['x,[{"', {"b": None}]}
    for text, message in [
        (b"[" + b"[]," * 300_000 + b"[]]", "more than 200,000 JSON values"),
        (b"[" * 33 + b"]" * 33, "nests deeper than 32 levels"),
        (b'{"a": 1', "is not valid JSON"),
        (b'{"a": 1, "b": {"c": 2, "c": 3}}', "holds the key 'c' twice"),
        (b'["' + b"9" * 5000 + b'", ' + b"9" * 5000 + b"]", "is not valid JSON"),  # Python's int() digit limit
    ]:
        with pytest.raises(UserError, match=message):
            parse_json(text, "f")
    assert parse_json(b'"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["', "f").startswith("[")  # brackets in text do not count


@pytest.fixture(scope="module")
def feature_run(folders, tmp_path_factory):
    """A finished features run over two files, its shards one utterance each."""
    output = tmp_path_factory.mktemp("features") / "out"
    argv = ["--model", folders["ctc"], "--input", folders["audio"][0].parent, "--max_batch_seconds", "1.5"]
    argv += ["--shard_mb", "0.0001", "--device", "cpu", "--progress", "false", "--output_dir", output]
    assert extract.main([str(x) for x in argv]) == 0
    return argv, output


def test_resume_rewrites_a_shard_whose_bytes_changed_and_keeps_an_intact_one(feature_run, tmp_path):
    argv, output = feature_run
    copy = tmp_path / "out"
    subprocess.run(["cp", "-a", str(output), str(copy)], check=True)
    original = digest(copy)
    shards = sorted(copy.glob("shard-*.safetensors"))
    data = bytearray(shards[0].read_bytes())
    data[-3] ^= 0x40  # a feature byte: the header and its fingerprint are unchanged
    shards[0].write_bytes(bytes(data))
    (copy / "index.json").unlink()
    untouched = shards[1].stat().st_mtime_ns
    assert extract.main([str(x) for x in argv[:-1]] + [str(copy), "--resume"]) == 0
    assert digest(copy) == {path.replace(str(output), str(copy)): value for path, value in original.items()}
    assert shards[1].stat().st_mtime_ns == untouched  # kept, not re-encoded


def _edit_shard_records(path, change):
    """Rewrite a shard's metadata records with `change(records)`, its fingerprint, sha256 and tensors unchanged
    (what `--resume` checks still matches: only the layout the records claim is hostile)."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = json.loads(header["__metadata__"]["armhubert"])
    metadata["utterances"] = change(metadata["utterances"])
    header["__metadata__"]["armhubert"] = json.dumps(metadata)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])


_HOSTILE_RECORDS = {  # records [id, offset, frames, unit offset, units] of a shard holding one utterance
    "offset-past-the-tensors": (lambda r: [[r[0][0], 10**6, *r[0][2:]]], "starts at frame 1000000"),
    "frames-past-the-tensors": (lambda r: [[r[0][0], 0, r[0][2] + 7, 0, 0]], "which has"),
    "overlapping-utterances": (lambda r: [r[0], [r[0][0] + "-again", 0, *r[0][2:]]], "not where the one before"),
    "extra-utterance": (lambda r: [*r, ["0-extra", r[0][2], 0, 0, 0]], "lists 2 utterances, not the 1"),
    "other-utterance": (lambda r: [["someone-else", *r[0][1:]]], "lists 1 utterances, not the 1 this run planned"),
    "no-utterance": (lambda r: [], "its 0 utterances take 0 rows"),
}


@pytest.mark.parametrize("case", list(_HOSTILE_RECORDS))
def test_resume_refuses_a_shard_whose_records_do_not_lay_out_its_tensors(feature_run, tmp_path, capsys, case):
    argv, output = feature_run
    copy = tmp_path / "out"
    subprocess.run(["cp", "-a", str(output), str(copy)], check=True)
    (copy / "index.json").unlink()
    change, message = _HOSTILE_RECORDS[case]
    _edit_shard_records(sorted(copy.glob("shard-*.safetensors"))[0], change)
    before = digest(copy)
    line = refusal(capsys, extract.main, *argv[:-1], copy, "--resume")
    assert "metadata does not match its tensors" in line and "it was altered" in line, line
    assert message in line and "delete it, then run again with --resume" in line, line
    assert digest(copy) == before  # nothing rewritten, nothing removed


def _edit_index(folder, change):
    index = json.loads((folder / "index.json").read_text())
    change(index)
    (folder / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "case, change, message",
    [
        ("offset-past", lambda e, s: e[0].update(offset=10**6), "starts at frame 1000000"),
        ("frames-past", lambda e, s: e[0].update(frames=e[0]["frames"] + 7), "which has"),
        ("negative", lambda e, s: e[0].update(offset=-3), "starts at frame -3"),
        ("overlap", lambda e, s: e[1].update(shard=e[0]["shard"]), "not where the one before"),
        ("shard-outside", lambda e, s: e[0].update(shard="../shard-00000.safetensors"), "is not one this tool"),
        ("shard-unlisted", lambda e, s: s.append("/etc/passwd"), "is not an index of this tool"),
        ("text-offset", lambda e, s: e[0].update(offset="0"), "is not one this tool writes"),
        ("lost-utterance", lambda e, s: None, "its 0 utterances take 0 rows"),
    ],
)
def test_the_feature_index_refuses_entries_that_do_not_lay_out_the_shards(feature_run, tmp_path, case, change, message):
    from armhubert.cli import UserError
    from armhubert.features.storage import FeatureIndex

    _, output = feature_run
    copy = tmp_path / "out"
    subprocess.run(["cp", "-a", str(output), str(copy)], check=True)
    assert len(FeatureIndex(copy)) == 2

    def edit(index):
        entries = list(index["utterances"].values())
        change(entries, index["shards"])
        if case == "lost-utterance":
            del index["utterances"][list(index["utterances"])[-1]]

    _edit_index(copy, edit)
    with pytest.raises(UserError) as refused:
        FeatureIndex(copy)
    assert message in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
    fifo_copy = tmp_path / "fifo"  # a shard that is a FIFO: refused before it is opened (opening would block)
    subprocess.run(["cp", "-a", str(output), str(fifo_copy)], check=True)
    shard = sorted(fifo_copy.glob("shard-*.safetensors"))[0]
    shard.unlink()
    fifo(shard)
    with pytest.raises(UserError, match="is a FIFO"):
        FeatureIndex(fifo_copy)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "larger than 1,024 KiB"),  # a sparse 1 GiB run.json
        ("[" + "[]," * 20_000 + "[]]", "more than 10,000 JSON values"),
        ("[" * 100 + "]" * 100, "nests deeper than 32 levels"),
        ('{"options": [1]}', "is not the run file of this tool"),
    ],
)
def test_a_hostile_run_json_is_refused_bounded_and_left_as_it_was(folders, tmp_path, capsys, content, message):
    output = tmp_path / "out"
    output.mkdir()
    run_file = output / "run.json"
    if content is None:
        run_file.write_bytes(b"{")
        os.truncate(run_file, 1 << 30)
    else:
        run_file.write_text(content)
    before = digest(output)
    argv = ["--model", folders["ctc"], "--input", folders["audio"][0].parent, "--output_dir", output, "--resume"]
    assert message in refusal(capsys, extract.main, *argv)
    assert digest(output) == before and sorted(p.name for p in output.iterdir()) == ["run.json"]


def test_a_hostile_shard_metadata_is_re_encoded_not_a_traceback(feature_run, tmp_path):
    argv, output = feature_run
    copy = tmp_path / "out"
    subprocess.run(["cp", "-a", str(output), str(copy)], check=True)
    original = digest(copy)
    shard = sorted(copy.glob("shard-*.safetensors"))[0]
    header = {"__metadata__": {"armhubert": json.dumps({"format": "armhubert-features/1", "utterances": [[1, 2]]})}}
    _codebook_file(shard, header)
    (copy / "index.json").unlink()
    assert extract.main([str(x) for x in argv[:-1]] + [str(copy), "--resume"]) == 0
    assert digest(copy) == {path.replace(str(output), str(copy)): value for path, value in original.items()}


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("when", ["at-the-index", "fitting-units"])
def test_a_run_refused_after_it_began_leaves_the_output_as_it_was(folders, tmp_path, capsys, existing, when):
    corpus = tmp_path / "corpus"
    if when == "at-the-index":  # readable headers, but shorter than the model's receptive field
        argv, message = [], "could be read"
        for i in range(2):
            write_wav(corpus / f"{i}.wav", seconds=0.01, seed=i)
    else:  # run.json is written, then k-means finds too few frames for K units
        argv, message = ["--units", "5000"], "k-means needs at least K = 5000 frames"
        write_wav(corpus / "a.wav")
    output = tmp_path / "out"
    if existing:
        output.mkdir()
    argv = ["--model", folders["ctc"], "--input", corpus, "--output_dir", output, *argv]
    assert message in refusal(capsys, extract.main, *argv)
    assert sorted(output.iterdir()) == [] if existing else not output.exists()
    assert message in refusal(capsys, extract.main, *argv)  # the same command is not refused as "not empty"


def test_no_datasets_cache_is_written_into_the_input_dataset(folders, tmp_path, capsys):
    saved = tmp_path / "saved"
    rows = {"audio": [{"path": str(path), "bytes": None} for path in folders["audio"]], "text": ["a", "b"]}
    datasets.Dataset.from_dict(rows).save_to_disk(saved)
    before = digest(saved)
    argv = ["--model", folders["ctc"], "--input", saved, "--output_dir", tmp_path / "out", "--progress", "false"]
    assert extract.main([str(x) for x in argv]) == 0
    assert evaluate.main([str(folders["ctc"]), "--data", str(saved)]) == 0
    assert digest(saved) == before  # no cache-*.arrow beside the data


# ---- 2. hangs, and 4./6. bounded memory: in a child process with a timeout and an address-space cap

_PRELUDE = r"""
from helpers import load_script
from armhubert.cli import run_main
from armhubert.files.untrusted import load_json_file

def json_file(args):
    return run_main("json", lambda a: load_json_file(a[0], a[0], "a few kB"), args)

evaluate, extract = load_script("evaluate"), load_script("extract_features")
COMMANDS = {"evaluate": evaluate.main, "features": extract.main, "json": json_file}
"""


def _child_cases(folders, folder):
    """(name, command, arguments, expected message fragment)."""
    cases = []
    ctc, sid, good = folders["ctc"], folders["sid"], folders["audio"][0]
    pipe = fifo(folder / "pipe.wav")
    cases.append(("csv-fifo", "evaluate", [ctc, "--data", csv_file(folder / "fifo.csv", [(pipe, "a")])], "is a FIFO"))
    cases.append(
        ("csv-device", "evaluate", [ctc, "--data", csv_file(folder / "dev.csv", [("/dev/zero", "a")])], "is a device")
    )
    cases.append(
        ("csv-folder", "evaluate", [ctc, "--data", csv_file(folder / "dir.csv", [(folder, "a")])], "is a folder")
    )
    weights_fifo = folder / "weights-fifo"
    subprocess.run(["cp", "-a", str(ctc), str(weights_fifo)], check=True)
    (weights_fifo / "model.safetensors").unlink()
    fifo(weights_fifo / "model.safetensors")
    ok_csv = csv_file(folder / "ok-1.csv", [(good, "a")])
    cases.append(("weights-fifo-evaluate", "evaluate", [weights_fifo, "--data", ok_csv], "is a FIFO"))
    argv = ["--model", weights_fifo, "--input", good.parent, "--output_dir", folder / "out-features"]
    cases.append(("weights-fifo-features", "features", argv, "is a FIFO"))
    cases.append(("csv-itself-a-fifo", "evaluate", [ctc, "--data", fifo(folder / "pipe.csv")], "is a FIFO"))
    big = folder / "big.csv"
    big.write_bytes(b"path,text\n")
    os.truncate(big, 100 << 20)  # sparse
    cases.append(("csv-100MiB", "evaluate", [ctc, "--data", big], "is larger than 64 MiB"))
    fifo(folder / "labels" / "yes" / "pipe.flac")
    write_wav(folder / "labels" / "no" / "a.wav")
    cases.append(("label-folder-fifo", "evaluate", [sid, "--data", folder / "labels"], "is a FIFO"))
    saved = folder / "saved-fifo"
    datasets.Dataset.from_dict({"audio": [{"path": str(pipe), "bytes": None}], "label": ["yes"]}).save_to_disk(saved)
    cases.append(("dataset-row-fifo-evaluate", "evaluate", [sid, "--data", saved], "is a FIFO"))
    out = folder / "out-features"
    arrow_fifo = folder / "saved-arrow-fifo"
    datasets.Dataset.from_dict({"audio": [{"path": str(good), "bytes": None}], "label": ["yes"]}).save_to_disk(
        arrow_fifo
    )
    for arrow in arrow_fifo.glob("*.arrow"):
        arrow.unlink()
        fifo(arrow)
    cases.append(("dataset-arrow-fifo-evaluate", "evaluate", [sid, "--data", arrow_fifo], "is a FIFO"))
    argv = ["--model", ctc, "--input", arrow_fifo, "--output_dir", out]
    cases.append(("dataset-arrow-fifo-features", "features", argv, "is a FIFO"))
    cases.append(
        (
            "dataset-row-fifo-features",
            "features",
            ["--model", ctc, "--input", saved, "--output_dir", out],
            "none of the 1 audio files",
        )
    )
    sparse = folder / "sparse-run" / "run.json"
    sparse.parent.mkdir()
    sparse.write_bytes(b"{")
    os.truncate(sparse, 1 << 30)
    argv = ["--model", ctc, "--input", good.parent, "--output_dir", sparse.parent, "--resume"]
    cases.append(("run-json-1GiB", "features", argv, "larger than 1,024 KiB"))
    codebook = folder / "codebook-2GB.safetensors"
    shape = [32767, 4096]  # 537 MB of float32, declared; stored sparse
    header = {
        "__metadata__": {
            "armhubert": json.dumps(
                {"format": "armhubert-codebook/1", "layer": "layer_4", "representation": "projected"}
            )
        },
        "centroids": {"dtype": "F32", "shape": shape, "data_offsets": [0, shape[0] * shape[1] * 4]},
    }
    _codebook_file(codebook, header)
    os.truncate(codebook, codebook.stat().st_size + shape[0] * shape[1] * 4)
    argv = [
        "--model",
        ctc,
        "--input",
        good.parent,
        "--codebook",
        codebook,
        "--save_features",
        "false",
        "--output_dir",
        out,
    ]
    cases.append(("codebook-declared-537MB", "features", argv, "has 4096-wide centroids but"))
    lists = folder / "lists.json"
    lists.write_bytes(b"[" + b"[]," * 20_000_000 + b"[]]")  # 60 MB: 20 million lists once built
    cases.append(("json-20M-empty-lists", "json", [lists], "more than 200,000 JSON values"))
    deep = folder / "deep-model"
    deep.mkdir()
    (deep / "config.json").write_text("[" * 150_000 + "]" * 150_000)
    cases.append(
        ("config-deep-150000", "evaluate", [deep, "--data", csv_file(folder / "ok.csv", [(good, "a")])], "nests deeper")
    )
    return cases


def test_fifos_devices_and_bombs_are_refused_without_hanging_in_bounded_memory(folders, tmp_path):
    cases = _child_cases(folders, tmp_path)
    inputs = [path for path in tmp_path.rglob("*") if path.is_file() and path.stat().st_size < 1 << 24]
    before = digest(*inputs)
    run_capped(_PRELUDE, cases, timeout=240)  # a hang fails there (a timeout), it does not block the suite
    assert digest(*inputs) == before
    assert not (tmp_path / "out-features").exists()
    assert sorted(p.name for p in (tmp_path / "sparse-run").iterdir()) == ["run.json"]


def test_weights_a_folder_lacks_are_refused_not_left_random(folders, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ctc"
    subprocess.run(["cp", "-a", str(folders["ctc"]), str(folder)], check=True)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("lm_head.")}, folder / "model.safetensors")
    data = csv_file(tmp_path / "dev.csv", [(folders["audio"][0], "a b")])
    line = refusal(capsys, evaluate.main, folder, "--data", data)
    assert "lacks weights its ARMHubertForCTC needs (lm_head.bias, lm_head.weight)" in line
    # A fine-tuned folder keeps the last projection head only: projected features of other layers are refused.
    argv = ["--model", folders["ctc"], "--input", folders["audio"][0].parent, "--output_dir", tmp_path / "out"]
    line = refusal(capsys, extract.main, *argv, "--layers", "2", "--representation", "projected")
    assert "holds no projection head for layer 2" in line and not (tmp_path / "out").exists()


def test_the_next_write_removes_the_temporary_file_a_killed_write_left(tmp_path):
    from armhubert.files.atomic import _PROCESS_START, atomic_write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    left = tmp_path / f".figures.json.armhubert-tmp-{pid}-abc123"
    alive = tmp_path / f".figures.json.armhubert-tmp-{os.getppid()}-def456"  # a running process's: kept
    other = tmp_path / f".notes.json.armhubert-tmp-{pid}-ghi789"  # another file's: kept
    before_this_process = _PROCESS_START - 60  # only files older than the running process are candidates
    for path in (left, alive, other):
        path.write_text("partial")
        os.utime(path, (before_this_process, before_this_process))
    atomic_write_text(tmp_path / "figures.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["figures.json", alive.name, other.name])


def test_long_audio_that_would_run_whole_is_refused_before_decoding(folders, tmp_path, capsys):
    corpus = tmp_path / "long"
    corpus.mkdir()
    flac = long_flac(corpus / "talk.flac", 0.5)  # 1 s of audio whose header declares 30 minutes
    before = digest(corpus)
    data = csv_file(tmp_path / "dev.csv", [(flac, "a b")])
    line = refusal(capsys, evaluate.main, folders["ctc"], "--data", data)
    assert "1 utterance(s) are longer than 120 s" in line and "(1800 s)" in line
    argv = ["--model", folders["ctc"], "--input", corpus, "--chunk_length_s", "0", "--output_dir", tmp_path / "out"]
    assert "give --chunk_length_s (e.g. 30)" in refusal(capsys, extract.main, *argv)
    assert digest(corpus) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 40 + "]" * 40, "nests deeper than 32 levels"),
        ("[1, 2]", "is not an index of this tool"),
        ("{", "not valid JSON"),
    ],
)
def test_a_hostile_index_json_is_one_user_error(tmp_path, text, message):
    from armhubert.cli import UserError
    from armhubert.features.storage import FeatureIndex

    (tmp_path / "index.json").write_text(text)
    with pytest.raises(UserError, match=message):
        FeatureIndex(tmp_path)


_FSIZE_CHILD = file_size_limited(
    'from helpers import load_script\nextract = load_script("extract_features")', "extract.main"
)


@pytest.mark.parametrize("existing", [False, True])
def test_a_features_run_that_cannot_write_its_shard_gives_one_line_and_takes_back_its_files(
    folders, tmp_path, existing
):
    corpus = tmp_path / "corpus"
    for i in range(3):
        write_wav(corpus / f"{i}.wav", seconds=2.0, seed=i)
    output = tmp_path / "out"
    if existing:
        output.mkdir()
    argv = ["--model", folders["ctc"], "--input", corpus, "--layers", "all", "--representation", "hidden"]
    argv += ["--output_dir", output]
    child = run_child(_FSIZE_CHILD, argv)
    lines = child.stdout.strip().splitlines()
    assert child.returncode == 2 and len(lines) == 1 and "File too large" in lines[0], (
        child.stdout,
        child.stderr[-2000:],
    )
    assert sorted(output.iterdir()) == [] if existing else not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"] + (["out"] if existing else [])


def test_a_refusal_while_a_dataset_is_read_is_still_one_line(folders, tmp_path, capsys, progress_bars):
    saved = tmp_path / "saved"
    rows = {"audio": [{"path": str(folders["audio"][0]), "bytes": None}, {"path": "/dev/zero", "bytes": None}]}
    datasets.Dataset.from_dict({**rows, "label": ["yes", "no"]}).save_to_disk(saved)
    capsys.readouterr()  # the bar of saving it
    assert "/dev/zero is a device" in refusal(capsys, evaluate.main, folders["sid"], "--data", saved)


def test_a_fifo_in_an_audio_folder_is_skipped_and_listed_never_opened(folders, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    write_wav(corpus / "good.wav")
    fifo(corpus / "pipe.wav")
    (corpus / "gone.flac").symlink_to(tmp_path / "nowhere.flac")
    argv = ["--model", folders["ctc"], "--input", corpus, "--output_dir", tmp_path / "out", "--progress", "false"]
    assert extract.main([str(x) for x in argv]) == 0
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert list(index["utterances"]) == ["good"] and sorted(name for name, _ in index["skipped"]) == ["gone", "pipe"]


# ---- every tool, in one capped child: exit 2, one line, under 200 MB and 2 s of CPU, inputs unchanged

_TOOLS_PRELUDE = r"""
import onnx, onnxruntime, datasets, soundfile  # imported before the cases: their import is no refusal's time
import convert_checkpoint
from helpers import load_script, tiny_config
from armhubert.cli import UserError, run_main
from modeling_armhubert import ARMHubertModel
from pipeline_armhubert import ARMHubertFeatureExtractionPipeline, release_feature_extractor

scripts = {name: load_script(name) for name in ("evaluate", "extract_features", "export_onnx", "quantization_report",
                                                 "finetune_ctc", "finetune_classification")}
features = ARMHubertFeatureExtractionPipeline(model=ARMHubertModel(tiny_config()).eval(),
                                              feature_extractor=release_feature_extractor())

def pipeline(args):  # a library call: its ValueError is what a caller turns into one line
    def call(a):
        try:
            features(a[0])
        except (ValueError, TypeError) as error:
            raise UserError(str(error)) from None
    return run_main("pipeline", call, args)

COMMANDS = {"convert": convert_checkpoint.main, "pipeline": pipeline,
            **{name: script.main for name, script in scripts.items()}}
"""

_FINETUNE_QUIET = ["--use_cpu", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]


def _weights_changed(source, folder, change):
    from safetensors.torch import load_file, save_file

    subprocess.run(["cp", "-a", str(source), str(folder)], check=True)
    weights = load_file(folder / "model.safetensors")
    change(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _tool_cases(folders, root):
    """(name, command, arguments, expected message fragment) for every tool."""
    ctc, good, cases = folders["ctc"], folders["audio"][0], []
    encoder_key = "armhubert.encoder.layers.0.feed_forward.output_dense.weight"
    missing = _weights_changed(ctc, root / "missing", lambda w: w.pop(encoder_key))

    def nan_and_unexpected(weights):
        weights[encoder_key] = torch.full_like(weights[encoder_key], float("nan"))
        weights[encoder_key.replace("layers.0", "not_a_layer")] = torch.zeros(
            3
        )  # an UNEXPECTED line of the load report

    broken = _weights_changed(ctc, root / "nan-unexpected", nan_and_unexpected)
    encoder = root / "encoder"  # a converted encoder (a fine-tuned folder keeps only its last projection head)
    ARMHubertModel(tiny_config()).save_pretrained(encoder)
    release_feature_extractor().save_pretrained(encoder)
    encoder_key = encoder_key.removeprefix("armhubert.")
    encoder_missing = _weights_changed(encoder, root / "encoder-missing", lambda w: w.pop(encoder_key))
    encoder_broken = _weights_changed(encoder, root / "encoder-nan-unexpected", nan_and_unexpected)
    pipe = fifo(root / "pipe.wav")
    flac = long_flac(root / "long.flac", 20)  # one second declaring 20 h
    ok_csv = csv_file(root / "ok.csv", [(good, "a")])
    fifo_csv = csv_file(root / "fifo.csv", [(pipe, "a")])
    out = root / "out"
    onnx_out = root / "out.onnx"
    # convert_checkpoint.py
    cases.append(("convert-fifo-checkpoint", "convert", [pipe, "--output-dir", out], "is a FIFO (named pipe), not a"))
    cases.append(("convert-fifo-config", "convert", [TINY_CKPT, "--config", pipe, "--output-dir", out], "FIFO"))
    cases.append(("convert-device-checkpoint", "convert", ["/dev/zero", "--output-dir", out], "is a device, not a"))
    # evaluate.py
    cases.append(("evaluate-missing-weight", "evaluate", [missing, "--data", ok_csv], "lacks weights"))
    cases.append(("evaluate-nan-unexpected", "evaluate", [broken, "--data", ok_csv], "NaN or infinite weights"))
    cases.append(("evaluate-csv-fifo", "evaluate", [ctc, "--data", fifo_csv], "is a FIFO"))
    cases.append(("evaluate-long-flac", "evaluate", [ctc, "--data", csv_file(root / "l.csv", [(flac, "a")])], "20"))
    # extract_features.py
    argv = ["--input", good.parent, "--output_dir", out]
    cases.append(("features-missing-weight", "extract_features", ["--model", missing, *argv], "lacks weights"))
    cases.append(("features-nan-unexpected", "extract_features", ["--model", broken, *argv], "NaN or infinite"))
    cases.append(
        ("features-input-fifo", "extract_features", ["--model", ctc, "--input", pipe, "--output_dir", out], "")
    )
    argv = ["--model", ctc, "--input", good.parent, "--output_dir", out, "--max_batch_seconds", "nan"]
    cases.append(("features-nan-option", "extract_features", argv, "--max_batch_seconds"))
    # export_onnx.py
    cases.append(("export-missing-weight", "export_onnx", [encoder_missing, "--output", onnx_out], "lacks weights"))
    cases.append(
        ("export-nan-unexpected", "export_onnx", [encoder_broken, "--output", onnx_out], "NaN or infinite weights")
    )
    cases.append(
        ("export-output-fifo", "export_onnx", [encoder, "--output", fifo(root / "p.onnx"), "--overwrite"], "regular")
    )
    cases.append(("export-atol-nan", "export_onnx", [encoder, "--output", onnx_out, "--atol", "nan"], "--atol must be"))
    cases.append(("export-output-is-model", "export_onnx", [encoder, "--output", ctc / "model.safetensors"], ".onnx"))
    # quantization_report.py
    cases.append(("quant-missing-weight", "quantization_report", [encoder_missing, "--audio", good], "lacks weights"))
    cases.append(("quant-nan-unexpected", "quantization_report", [encoder_broken, "--audio", good], "NaN or infinite"))
    cases.append(("quant-audio-fifo", "quantization_report", [encoder, "--audio", pipe], "is not a file"))
    cases.append(("quant-audio-long", "quantization_report", [encoder, "--audio", flac], "20"))
    cases.append(("quant-max-seconds-inf", "quantization_report", [encoder, "--max_seconds", "inf"], "--max_seconds"))
    # fine-tuning: --model_name_or_path and data refusals
    common = [*_FINETUNE_QUIET, "--output_dir", out]
    argv = ["--model_name_or_path", encoder_missing, "--data_source", BUNDLED_CORPUS.parent, *common]
    cases.append(("ctc-missing-weight", "finetune_ctc", argv, "lacks weights"))
    argv = ["--model_name_or_path", ctc, "--data_source", BUNDLED_CORPUS.parent, *common]  # another vocabulary
    cases.append(
        ("ctc-other-vocabulary", "finetune_ctc", argv, "weights of another shape than the model's (lm_head.bias")
    )
    argv = ["--model_name_or_path", ctc, "--data_source", pipe, *common]
    cases.append(("ctc-data-fifo", "finetune_ctc", argv, ""))
    argv = ["--model_name_or_path", ctc, "--data_source", BUNDLED_CORPUS.parent, "--max_duration", "nan", *common]
    cases.append(("ctc-max-duration-nan", "finetune_ctc", argv, "--max_duration must be"))
    labels = root / "labels"
    fifo(labels / "yes" / "pipe.flac")
    write_wav(labels / "no" / "a.wav")
    argv = ["--model_name_or_path", ctc, "--train_dir", labels, "--eval_dir", labels, *common]
    cases.append(("classification-label-fifo", "finetune_classification", argv, "FIFO"))
    rows = root / "rows.csv"
    rows.write_text(f"path,label\n{pipe},yes\n{good},no\n")
    argv = ["--model_name_or_path", ctc, "--train_csv", rows, "--eval_csv", rows, *common]
    cases.append(("classification-csv-fifo", "finetune_classification", argv, "FIFO"))
    argv = ["--model_name_or_path", ctc, "--train_dir", labels, "--eval_dir", labels, "--max_duration", "nan", *common]
    cases.append(("classification-max-duration-nan", "finetune_classification", argv, "--max_duration must be"))
    argv = ["--model_name_or_path", ctc, "--train_csv", fifo(root / "t.csv"), "--eval_csv", rows, *common]
    cases.append(("classification-csv-itself-fifo", "finetune_classification", argv, "FIFO"))
    clean = root / "clean.csv"
    clean.write_text(f"path,label\n{good},yes\n{folders['audio'][1]},no\n")
    argv = ["--model_name_or_path", encoder_missing, "--train_csv", clean, "--eval_csv", clean, *common]
    cases.append(("classification-missing-weight", "finetune_classification", argv, "lacks weights"))
    # the remote-code pipelines (they read files with read_audio_file)
    cases.append(("pipeline-fifo", "pipeline", [pipe], "does not exist"))
    cases.append(("pipeline-device", "pipeline", ["/dev/zero"], "does not exist"))
    cases.append(("pipeline-long-flac", "pipeline", [flac], "declares 1 channels and 72,000 s"))
    return cases


def test_every_tool_refuses_hostile_input_in_one_line_bounded_fast_and_leaves_the_inputs(folders, tmp_path):
    cases = _tool_cases(folders, tmp_path)
    inputs = [folders["root"], *(p for p in tmp_path.rglob("*") if p.is_file())]
    before = digest(*inputs)
    results = run_capped(_TOOLS_PRELUDE, cases, timeout=400)
    tools = {command for _, command, _, _ in cases}
    assert len(tools) == 8 and set(results) == {name for name, *_ in cases}
    assert digest(*inputs) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.onnx").exists()


# Runs each (name, argv) of argv[1] through the ONNX exporter under a 100 kB file-size limit, as `file_size_limited`
# runs one, and prints [name, exit status, what the command wrote on stderr] per case: the cases export one model,
# once (`memoize_onnx_export`), after one start-up.
_EXPORT_FSIZE_CASES = """
import contextlib, io, json, resource, sys
from helpers import load_script, memoize_onnx_export
export = load_script("export_onnx")
memoize_onnx_export(export)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
for name, argv in json.loads(sys.argv[1]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = export.main(argv)
    print(json.dumps([name, code, stderr.getvalue()]), flush=True)
"""


def _full_disk_cases(root):
    """Both cases of the test below, run in one child in `root`: for each `existing` (an --output there before or
    not), the encoder, the --output, the digest of both folders before the run, then the exit status and stderr."""
    encoder = root / "encoder"
    ARMHubertModel(tiny_config()).save_pretrained(encoder)
    release_feature_extractor().save_pretrained(encoder)
    cases = {}
    for existing in (False, True):
        output = root / f"existing-{existing}" / "out" / "model.onnx"
        output.parent.mkdir(parents=True)
        if existing:
            output.write_bytes(b"the previous export")
        argv = [encoder, "--output", output, "--overwrite", "--latency_seconds", "0.5", "--latency_runs", "1"]
        before = digest(encoder, output.parent)
        cases[existing] = dict(encoder=str(encoder), output=str(output), argv=list(map(str, argv)), before=before)
    child = run_child(_EXPORT_FSIZE_CASES, [json.dumps([(existing, case["argv"]) for existing, case in cases.items()])])
    assert child.returncode == 0, child.stderr[-3000:]
    for line in child.stdout.splitlines():
        if line.startswith("["):
            existing, code, stderr = json.loads(line)
            cases[existing].update(code=code, stderr=stderr)
    return [cases[False], cases[True]]


@pytest.fixture(scope="module")
def onnx_full_disk(tmp_path_factory):
    """`_full_disk_cases`, {existing: case}, run once a session: under pytest-xdist by the first worker that needs
    it, in the folder the workers share and under a file lock there, the others reading what it wrote."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    results = shared / "onnx-full-disk.json"
    with FileLock(shared / "onnx-full-disk.lock"):
        if not results.exists():
            results.write_text(json.dumps(_full_disk_cases(shared / "onnx-full-disk")))
    cases = json.loads(results.read_text())
    return {existing: dict(case, output=Path(case["output"])) for existing, case in zip((False, True), cases)}


@pytest.mark.parametrize("existing", [False, True])
def test_an_onnx_export_that_cannot_write_gives_one_line_and_keeps_the_previous_file(onnx_full_disk, existing):
    """A full disk (emulated by a 100 kB file-size limit; the graph is about 1.1 MB): one line, exit 2, the
    previous --output as it was (or none), no temporary file left."""
    case = onnx_full_disk[existing]
    output, lines = case["output"], case["stderr"].strip().splitlines()
    assert case["code"] == 2 and len(lines) == 1, case
    assert f"could not write {output} (File too large); free disk space" in lines[0], lines
    assert digest(case["encoder"], output.parent) == case["before"]
    assert sorted(p.name for p in output.parent.iterdir()) == (["model.onnx"] if existing else [])
