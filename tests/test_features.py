"""Corpus feature extraction: written features are the model's, in both formats; resume after kill -9; sources;
processes; bad input gets one line and exit status 2."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import accelerate
import datasets
import numpy as np
import pytest
import soundfile
import torch
from helpers import ROOT, load_script, tiny_config
from hostile import digest, refusal
from safetensors.torch import save_file
from transformers import HubertConfig, HubertModel

from armhubert import cli
from armhubert.cli import MissingExtra, UserError
from armhubert.features.encoding import load_encoder, select_layers
from armhubert.features.plan import ExtractionArguments, ShardPlan, check_arguments, current_processes, plan_batches
from armhubert.features.storage import FEATURES_FORMAT, FeatureIndex, ShardWriter, build_index
from armhubert.features.units import assign_units, deduplicate_runs, load_codebook
from armhubert.speech.audio import read_audio
from modeling_armhubert import ARMHubertForCTC, ARMHubertModel
from pipeline_armhubert import encode_chunked, release_feature_extractor

CORPUS = ROOT / "data"
SPLIT = "test-clean"  # 8 utterances, 26 s
extract = load_script("extract_features")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return ARMHubertModel.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def utterances():
    """{id: 16 kHz samples} of the test split."""
    files = sorted((CORPUS / "LibriSpeech" / SPLIT).rglob("*.flac"))
    return {path.stem: read_audio(path) for path in files}


def run(*args):
    assert extract.main([str(arg) for arg in args]) == 0


def padded_batch_outputs(model, utterances, ids, output_hidden_states=True):
    """The model's outputs for one padded batch, per utterance cut to its frames (what the tool must write)."""
    batch = release_feature_extractor()(
        [utterances[i] for i in ids], sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt"
    )
    with torch.inference_mode():
        output = model(batch.input_values, attention_mask=batch.attention_mask, output_hidden_states=True)
    frames = model._get_feat_extract_output_lengths(batch.attention_mask.sum(-1)).tolist()
    return {i: (output, row, frames[row]) for row, i in enumerate(ids)}


def expected_features(model, utterances, max_batch_seconds):
    """{id: {layer_N: (T, D)}} for projected layers 1 and 4, batch by batch as the tool plans them."""
    ids = sorted(utterances)
    lengths = [len(utterances[i]) for i in ids]
    expected = {}
    for batch in plan_batches(lengths, ids, max_batch_seconds, None):
        for utterance_id, (output, row, frames) in padded_batch_outputs(
            model, utterances, [ids[r] for r in batch]
        ).items():
            projected = output.projected_hidden_states
            expected[utterance_id] = {
                "layer_1": projected[0][row, :frames],
                "layer_4": projected[3][row, :frames],
            }
    return expected


@pytest.mark.parametrize("max_batch_seconds", [4.0, 12.0])  # one utterance per batch; padded batches of 3-4
def test_written_features_are_the_models_outputs_exactly_in_both_formats(
    tmp_path, tiny_model_dir, model, utterances, max_batch_seconds
):
    common = ["--input", CORPUS, "--split", SPLIT, "--model", tiny_model_dir, "--layers", "1,4"]
    common += ["--max_batch_seconds", max_batch_seconds, "--shard_mb", 0.02]
    run(*common, "--output_dir", tmp_path / "st")
    run(*common, "--output_dir", tmp_path / "arrow", "--format", "arrow")
    expected = expected_features(model, utterances, max_batch_seconds)
    if max_batch_seconds == 4.0:  # batches of one: the utterance run alone
        alone = torch.from_numpy(utterances["1001-301-0000"])[None]
        with torch.inference_mode():
            projected = model(alone, output_hidden_states=True).projected_hidden_states
        assert torch.equal(expected["1001-301-0000"]["layer_4"], projected[3][0])

    index = FeatureIndex(tmp_path / "st")
    assert sorted(index.ids) == sorted(utterances) and len(index.index["shards"]) > 1
    for utterance_id, layers in expected.items():
        written = index[utterance_id]
        assert set(written) == {"layer_1", "layer_4"}
        for name, tensor in layers.items():
            assert written[name].dtype == torch.float32 and torch.equal(written[name], tensor), (utterance_id, name)

    dataset = datasets.load_from_disk(str(tmp_path / "arrow" / "dataset")).with_format("torch")
    assert sorted(dataset["id"]) == sorted(utterances)
    assert not list((tmp_path / "arrow").glob("shard-*"))  # converted, then removed
    for row in dataset:
        for name, tensor in expected[row["id"]].items():
            assert torch.equal(row[name], tensor) and row["frames"] == tensor.shape[0]


def test_float16_storage_and_the_last_layer_shortcut(tmp_path, tiny_model_dir, model, utterances):
    run("--input", CORPUS, "--split", SPLIT, "--model", tiny_model_dir, "--dtype", "float16", "--output_dir", tmp_path)
    index = FeatureIndex(tmp_path)
    assert index.index["features"] == ["layer_4"] and index.index["representation"] == "projected"
    expected = expected_features(model, utterances, 100.0)
    for utterance_id in index.ids:
        written = index[utterance_id]["layer_4"]
        assert written.dtype == torch.float16
        assert torch.equal(written, expected[utterance_id]["layer_4"].half())


KILLED_RUN = """
import os, signal
import torch
torch.set_num_threads(1)  # as this test process: the same float rounding, so the same bytes
import armhubert.features.storage as shards
import extract_features  # scripts/ is on the PYTHONPATH the test passes
outputs = []
original = shards.shutil.copyfileobj
def copy_then_die(source, output, length=0):  # the shard writer copies each staged tensor into the shard file
    if output not in outputs:
        outputs.append(output)
    if len(outputs) == 3:  # the third shard: header and half a tensor written, then killed
        output.write(source.read(100))
        output.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    original(source, output, length)
shards.shutil.copyfileobj = copy_then_die
extract_features.main({argv!r})
"""


def test_a_run_killed_by_kill_9_and_resumed_by_two_processes_writes_the_files_of_an_uninterrupted_run(
    tmp_path, capsys, tiny_model_dir
):
    args = ["--input", str(CORPUS), "--split", SPLIT, "--model", str(tiny_model_dir), "--layers", "2,4"]
    args += ["--max_batch_seconds", "4", "--shard_mb", "0.001", "--device", "cpu"]
    run(*args, "--output_dir", tmp_path / "whole")
    whole = relative_digest(tmp_path / "whole")
    assert len(whole) == 10  # 8 shards (one utterance each), run.json, index.json

    killed = tmp_path / "killed"
    code = KILLED_RUN.format(argv=args + ["--output_dir", str(killed)])
    child_environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts")])}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=child_environment
    )
    assert result.returncode == -9, result.stderr
    assert sorted(p.name for p in killed.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not (killed / "index.json").exists() and list(killed.glob(".shard-00002*"))  # the half-written one
    assert refusal(capsys, extract.main, *args, "--output_dir", killed).endswith("or choose a new folder")

    # Resumed by two processes (accelerate's process state under torchrun): each takes every other shard.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(ROOT / "scripts" / "extract_features.py"), *args, "--output_dir", str(killed), "--resume"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("encoded") == 1  # one summary, by the process that wrote the index
    assert relative_digest(killed) == whole  # no temporary left either

    run(*args, "--output_dir", killed, "--resume")  # a finished output: nothing changes
    assert relative_digest(killed) == whole
    changed = refusal(capsys, extract.main, *args, "--output_dir", killed, "--resume", "--dtype", "float16")
    assert "other settings (dtype differ)" in changed


def relative_digest(folder):
    """{path relative to folder: sha256} of every file below it, hidden ones too."""
    return {str(Path(path).relative_to(folder)): sha for path, sha in digest(folder).items()}


def write_wav(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, 16000, subtype="FLOAT")


def test_a_folder_of_audio_with_an_unreadable_file_skips_and_lists_it(
    tmp_path, capsys, caplog, tiny_model_dir, utterances
):
    folder = tmp_path / "audio"
    names = sorted(utterances)[:3]
    write_wav(folder / "a" / "one.wav", utterances[names[0]])
    soundfile.write(folder / "a" / "two.flac", utterances[names[1]], 16000)
    write_wav(folder / "three.wav", utterances[names[2]])
    (folder / "broken.wav").write_bytes(b"RIFF not really audio")
    (folder / "notes.txt").write_text("not audio")
    run("--input", folder, "--model", tiny_model_dir, "--output_dir", tmp_path / "out")
    captured = capsys.readouterr()
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert sorted(index["utterances"]) == ["a/one", "a/two", "three"]
    assert [name for name, _ in index["skipped"]] == ["broken"]
    assert "skipped 1 unreadable file(s): broken" in captured.out and "broken" in caplog.text


def test_long_recordings_are_chunked_and_chunking_can_be_turned_off(tmp_path, tiny_model_dir, model, utterances):
    folder = tmp_path / "long"
    recording = np.concatenate([utterances[name] for name in sorted(utterances)[:3]])  # about 9 s
    write_wav(folder / "talk.wav", recording)
    common = ["--input", folder, "--model", tiny_model_dir, "--layers", "2"]
    run(*common, "--chunk_length_s", 3, "--stride_length_s", 0.5, "--output_dir", tmp_path / "chunked")
    run(*common, "--chunk_length_s", 0, "--output_dir", tmp_path / "whole")
    audio = torch.from_numpy(read_audio(folder / "talk.wav"))[None]
    with torch.inference_mode():
        chunked = encode_chunked(model, audio, None, 3.0, 0.5, windows_per_batch=33, output_hidden_states=True)
        whole = model(audio, output_hidden_states=True)
    assert torch.equal(FeatureIndex(tmp_path / "chunked")["talk"]["layer_2"], chunked.projected_hidden_states[1][0])
    assert torch.equal(FeatureIndex(tmp_path / "whole")["talk"]["layer_2"], whole.projected_hidden_states[1][0])


def test_a_long_recording_streams_with_units_and_a_window_it_cannot_read_skips_it_alone(
    tmp_path, tiny_model_dir, model, utterances
):
    folder = tmp_path / "long"
    recording = np.concatenate([utterances[name] for name in sorted(utterances)[:3]])  # about 9 s
    broken = recording.copy()
    broken[16000 * 7] = np.nan  # read only by a late window: its earlier windows were written already
    write_wav(folder / "talk.wav", recording)
    write_wav(folder / "broken.wav", broken)
    write_wav(folder / "short.wav", utterances[sorted(utterances)[3]])
    output = tmp_path / "out"
    run("--input", folder, "--model", tiny_model_dir, "--layers", "2", "--chunk_length_s", 3, "--stride_length_s", 0.5,
        "--units", 8, "--deduplicate_units", "--shard_mb", 100, "--output_dir", output)  # fmt: skip
    index = json.loads((output / "index.json").read_text())
    assert sorted(index["utterances"]) == ["short", "talk"] and {
        record["shard"] for record in index["utterances"].values()
    } == {"shard-00000.safetensors"}
    assert [name for name, _ in index["skipped"]] == ["broken"] and "NaN" in index["skipped"][0][1]
    audio = torch.from_numpy(read_audio(folder / "talk.wav"))[None]
    with torch.inference_mode():
        chunked = encode_chunked(model, audio, None, 3.0, 0.5, windows_per_batch=33, output_hidden_states=True)
    features = FeatureIndex(output)
    assert torch.equal(features["talk"]["layer_2"], chunked.projected_hidden_states[1][0])
    centroids = load_codebook(output / "codebook.safetensors").centroids
    whole_units = deduplicate_runs(assign_units(chunked.projected_hidden_states[1][0], centroids))
    assert torch.equal(features["talk"]["units"], whole_units)  # runs collapsed across window boundaries too


def test_the_shard_writer_writes_the_bytes_of_safetensors_and_drops_a_discarded_utterance(tmp_path):
    generator = torch.Generator().manual_seed(0)

    def utterance(frames):
        return {
            "layer_2": torch.randn(frames, 3, generator=generator),
            "weighted": torch.randn(frames, 2, generator=generator),
            "units": torch.randint(0, 9, (frames - 1,), generator=generator).short(),
        }

    first, second, bad = utterance(4), utterance(5), utterance(3)
    writer = ShardWriter(tmp_path / "shard-00000.safetensors", {"weighted": 2, "layer_2": 3}, torch.float16, True)
    writer.add("a", first)
    writer.begin("bad")
    writer.append(bad)
    writer.discard("bad", "NaN samples")
    writer.begin("b")
    writer.append({name: value[:2] for name, value in second.items()})
    writer.append({name: value[2:] for name, value in second.items()})
    writer.end()
    writer.skip("c", "unreadable")
    writer.close("fingerprint")
    tensors = {name: torch.cat([first[name], second[name]]).half() for name in ("layer_2", "weighted")}
    tensors["units"] = torch.cat([first["units"], second["units"]])
    metadata = {
        "format": FEATURES_FORMAT,
        "fingerprint": "fingerprint",
        "utterances": [["a", 0, 4, 0, 3], ["b", 4, 5, 3, 4]],
        "skipped": [["bad", "NaN samples"], ["c", "unreadable"]],
        # The tensor bytes in the file's order (float16 before int16, then by name).
        "sha256": hashlib.sha256(
            b"".join(tensors[n].numpy().tobytes() for n in ("layer_2", "weighted", "units"))
        ).hexdigest(),
    }
    save_file(tensors, tmp_path / "expected.safetensors", metadata={"armhubert": json.dumps(metadata)})
    assert (tmp_path / "shard-00000.safetensors").read_bytes() == (tmp_path / "expected.safetensors").read_bytes()
    assert not list(tmp_path.glob(".*"))  # no staging or temporary file left


def test_a_saved_dataset_with_an_id_column(tmp_path, tiny_model_dir, model, utterances):
    names = sorted(utterances)[:2]
    for name in names:
        write_wav(tmp_path / "wav" / f"{name}.wav", utterances[name])
    table = {"key": [f"utt-{n}" for n in names], "audio": [str(tmp_path / "wav" / f"{n}.wav") for n in names]}
    datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio()).save_to_disk(str(tmp_path / "ds"))
    run(
        "--input",
        tmp_path / "ds",
        "--id_column",
        "key",
        "--model",
        tiny_model_dir,
        "--layers",
        "all",
        "--output_dir",
        tmp_path / "out",
    )
    index = FeatureIndex(tmp_path / "out")
    assert sorted(index.ids) == sorted(table["key"]) and index.index["features"] == [f"layer_{n}" for n in range(1, 5)]


def test_the_weighted_sum_of_a_fine_tuned_folder(tmp_path, capsys, tiny_model_dir, utterances):
    config = tiny_config(use_weighted_layer_sum=True, vocab_size=8, layer_grad_scale=False)
    task = ARMHubertForCTC(config).eval()
    with torch.no_grad():
        task.layer_sum.layer_weights.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    task.save_pretrained(tmp_path / "ctc")
    run(
        "--input",
        CORPUS,
        "--split",
        SPLIT,
        "--model",
        tmp_path / "ctc",
        "--layers",
        "weighted",
        "--output_dir",
        tmp_path / "out",
    )
    index = FeatureIndex(tmp_path / "out")
    name = index.ids[0]
    with torch.inference_mode():
        output = task.armhubert(torch.from_numpy(utterances[name])[None], output_hidden_states=True)
        expected = task.layer_sum(output.projected_hidden_states)[0]
    torch.testing.assert_close(index[name]["weighted"], expected, rtol=0, atol=1e-6)
    line = refusal(
        capsys,
        extract.main,
        "--input",
        CORPUS,
        "--split",
        SPLIT,
        "--model",
        tiny_model_dir,
        "--layers",
        "weighted",
        "--output_dir",
        tmp_path / "bare",
    )
    assert "use_weighted_layer_sum" in line


def test_the_option_checks_refuse_weighted_misuse_and_a_missing_units_extra_before_anything_is_read(monkeypatch):
    def arguments(**options):  # an input that does not exist: nothing is read before these refusals
        return ExtractionArguments(input="/nonexistent/corpus", output_dir="/nonexistent/out", **options)

    cases = {
        "^--layers weighted needs a fine-tuned --model folder, not a random preset$": dict(preset="armhubert-960h"),
        "^with --layers weighted the units are computed on the weighted sum; drop --units_layer$": dict(
            model="/nonexistent/model", units=8, units_layer=2
        ),
    }
    for message, options in cases.items():
        with pytest.raises(UserError, match=message):
            check_arguments(arguments(layers="weighted", **options))
    other_cases = {  # RULES (the parser checks them too) and MODEL_RULES
        r"^--preset 'armhubert-96h' is unknown; use one of armhubert-960h, ": dict(preset="armhubert-96h"),
        "^--save_features false leaves nothing to write; add --units K or --codebook FILE$": dict(
            preset="armhubert-960h", save_features=False
        ),
        r"^give a model: --model FOLDER_OR_HUB_ID \(or --preset NAME for random weights\), not both$": dict(),
    }
    for message, options in other_cases.items():
        with pytest.raises(UserError, match=message):
            check_arguments(arguments(**options))
    with pytest.raises(UserError, match="^give a model: "):
        check_arguments(arguments(model="/nonexistent/model", preset="armhubert-960h"))
    check_arguments(arguments(preset="ARMHuBERT-960h"))  # presets are named in any case
    check_arguments(arguments(layers="weighted", preset="armhubert-960h"), encoder_given=True)  # the preset names it
    check_arguments(arguments(layers="weighted", model="/nonexistent/model"))
    monkeypatch.setitem(cli.EXTRAS, "units", (("no_such_module_here", "no-such-package"),))
    with pytest.raises(MissingExtra, match=r"^fitting units \(--units K\) needs no-such-package: pip install"):
        check_arguments(arguments(preset="armhubert-960h", units=8))
    check_arguments(arguments(preset="armhubert-960h"))  # no units: the extra is not needed


def test_bad_input_gets_one_line_and_exit_status_2(tmp_path, capsys, tiny_model_dir):
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.wav").write_bytes(b"garbage")
    (broken / "y.flac").write_bytes(b"")
    base = ["--model", tiny_model_dir]
    cases = {
        "no audio files in": ["--input", tmp_path / "empty", "--output_dir", tmp_path / "o1"],
        "none of the 2 audio files": ["--input", broken, "--output_dir", tmp_path / "o2"],
        "choose layers from 1..4": [
            "--input",
            CORPUS,
            "--split",
            SPLIT,
            "--layers",
            "7",
            "--output_dir",
            tmp_path / "o3",
        ],
        "is inside the input": ["--input", CORPUS, "--split", SPLIT, "--output_dir", CORPUS / "feats"],
        "less than half": [
            "--input",
            CORPUS,
            "--split",
            SPLIT,
            "--stride_length_s",
            20,
            "--output_dir",
            tmp_path / "o4",
        ],
    }
    for expected, args in cases.items():
        assert expected in refusal(capsys, extract.main, *base, *args)
    assert not (CORPUS / "feats").exists() and not any((tmp_path / name).exists() for name in ("o1", "o2", "o3", "o4"))
    broken_run = tmp_path / "o5"
    broken_run.mkdir()
    (broken_run / "run.json").write_text("{not json")
    line = refusal(
        capsys, extract.main, *base, "--input", CORPUS, "--split", SPLIT, "--output_dir", broken_run, "--resume"
    )
    assert "is not the run file of this tool" in line and (broken_run / "run.json").read_text() == "{not json"


def test_layer_choices_a_lost_or_altered_shard_a_missing_index_and_a_bad_device_are_refused_in_one_line(
    tmp_path, monkeypatch
):
    config = tiny_config()
    for layers, units_layer, message in [
        ("4,x", None, r"^--layers '4,x' is not a list of layer numbers such as 4,8,12 \(or last, all, weighted\)$"),
        (",", None, r"^--layers ',': choose layers from 1\.\.4 of this representation$"),
        ("2,4", 9, r"^--units_layer '9': choose layers from 1\.\.4 of this representation$"),
        ("2,4", None, "^--layers 2,4 gives 2 layers; say which one the units use: --units_layer N$"),
    ]:
        with pytest.raises(UserError, match=message):
            select_layers(config, layers, "superb", units_layer, units=True)
    selection = select_layers(config, "4, 2,4", "superb", 2, units=True)
    assert (selection.saved, selection.units_name) == (("layer_4", "layer_2"), "layer_2")
    assert select_layers(config, "2,4", "hidden", 9, units=False).names == ("layer_2", "layer_4")
    with pytest.raises(UserError, match="^--representation projected needs a model with projection heads"):
        select_layers(tiny_config(projection_head_size=None), "last", "projected", None, units=False)

    with pytest.raises(UserError, match=rf"^shard shard-00000\.safetensors is missing from {tmp_path}; run again"):
        build_index(tmp_path, [ShardPlan(0, ((0,),))], {"features": ["layer_4"]}, [])  # e.g. on another machine
    writer = ShardWriter(tmp_path / "shard-00000.safetensors", {"layer_9": 3}, torch.float32, False)
    writer.add("a", {"layer_9": torch.ones(2, 3)})
    writer.close("fingerprint")  # laid out right, but not the features the index names: it would not read them
    with pytest.raises(UserError, match=r"metadata does not match its tensors \(it holds no tensor layer_4\); it was"):
        build_index(tmp_path, [ShardPlan(0, ((0,),))], {"features": ["layer_4"]}, [])
    with pytest.raises(
        UserError, match=r"index\.json is missing: not a finished feature folder \(run with --resume\)$"
    ):
        FeatureIndex(tmp_path)

    class OneProcess:  # accelerate's state, not started here: a test must not fix its device for the others
        process_index, num_processes = 0, 1

        def __init__(self, cpu):
            self.device = torch.device("cpu")

        def wait_for_everyone(self):
            pass

    monkeypatch.setattr(accelerate, "PartialState", OneProcess)
    with pytest.raises(UserError, match=r"^--device 'gpu0' is not a device; use auto, cpu, cuda or cuda:N$"):
        current_processes("gpu0")
    assert current_processes("cpu")[1] == torch.device("cpu")


def test_a_model_of_another_family_is_refused_before_its_weights_are_read(tmp_path):
    hubert = HubertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, conv_dim=(8,),
        conv_kernel=(10,), conv_stride=(5,), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=1,
    )  # fmt: skip
    HubertModel(hubert).save_pretrained(tmp_path / "hubert")
    (tmp_path / "hubert" / "model.safetensors").write_bytes(b"not weights")  # reading them would refuse otherwise
    with pytest.raises(UserError, match="is a HubertConfig model; this tool encodes ARMHuBERT-family models$"):
        load_encoder(str(tmp_path / "hubert"), None, False, torch.device("cpu"))
