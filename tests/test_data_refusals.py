"""Every data refusal of the speech readers and the data-reading commands, reached through the door a user hits.

Each case builds the bad input in tmp_path (a CSV with an empty cell, a truncated dataset file, a folder of the
wrong shape, a 65-channel WAV, ...), runs the command's `main` in this process and asserts exit status 2, one
line naming the problem, the inputs byte-identical afterwards and nothing written where the command writes. An
audio dict of the wrong shape is refused by the library's door, `load_16k`.
"""

import os
import string

import datasets
import numpy as np
import pyarrow
import pytest
import soundfile
from helpers import load_script, tiny_config
from hostile import digest, refusal

from armhubert.resources import BUNDLED_CORPUS
from armhubert.speech.audio import load_16k
from modeling_armhubert import ARMHubertForCTC, ARMHubertForSequenceClassification
from pipeline_armhubert import MAX_AUDIO_CHANNELS, release_feature_extractor

evaluate = load_script("evaluate")
extract = load_script("extract_features")
finetune_ctc = load_script("finetune_ctc")
finetune_classification = load_script("finetune_classification")
LABELS = ["yes", "no"]
# The fine-tuning refusals come before the model is built: a preset costs nothing.
TRAINING = ["--use_cpu", "--save_strategy", "no", "--report_to", "none", "--preset", "armhubert-960h"]


def wav(path, seconds=0.5, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = 0.1 * np.random.default_rng(channels).standard_normal((int(16000 * seconds), channels))
    soundfile.write(path, samples.astype(np.float32), 16000)
    return path


def csv_file(path, header, *rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def saved_dataset(path, audio, **columns):
    """A save_to_disk folder of undecoded `audio` entries ({"path", "bytes"}) and string `columns`."""
    features = {"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}}
    features.update({name: datasets.Value("string") for name in columns})
    rows = datasets.Dataset.from_dict({"audio": audio, **columns}, features=datasets.Features(features))
    rows.save_to_disk(str(path))
    return path


def inputs_digest(tmp_path):
    """`digest` of what tmp_path holds, but for a link to a file that cannot be read."""
    return digest(*(path for path in tmp_path.iterdir() if not path.is_symlink()))


def entry(path):
    return {"bytes": None, "path": str(path)}


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Tiny fine-tuned folders (random weights: no figure is looked at): `ctc` over the letters a, b; `sid`
    with the labels yes, no."""
    root = tmp_path_factory.mktemp("heads")
    tokenizer = finetune_ctc.make_tokenizer(finetune_ctc.build_vocabulary(["ab"]))
    ctc = tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    sid = tiny_config(num_labels=2, label2id={k: i for i, k in enumerate(LABELS)}, id2label=dict(enumerate(LABELS)))
    ARMHubertForCTC(ctc).save_pretrained(root / "ctc")
    tokenizer.save_pretrained(root / "ctc")
    ARMHubertForSequenceClassification(sid).save_pretrained(root / "sid")
    for head in ("ctc", "sid"):
        release_feature_extractor().save_pretrained(root / head)
    return root


# ---- evaluate.py: --data of every kind, broken


def _truncated_dataset(tmp_path):
    folder = saved_dataset(tmp_path / "set", [entry(wav(tmp_path / "a.wav"))], text=["a b"])
    arrow = next(folder.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    return [folder]


def _no_rows(tmp_path):
    """A saved dataset whose one shard holds no rows (`save_to_disk` of an empty dataset writes no shard at all,
    a folder `datasets` cannot load back)."""
    folder = saved_dataset(tmp_path / "set", [entry(wav(tmp_path / "a.wav"))], text=["a"])
    empty = datasets.load_from_disk(str(folder)).data.table.slice(0, 0)
    with (
        pyarrow.OSFile(str(next(folder.glob("*.arrow"))), "wb") as file,
        pyarrow.ipc.new_stream(file, empty.schema) as writer,
    ):
        writer.write_table(empty)
    return [folder]


def _dataset_dict(tmp_path):
    rows = datasets.Dataset.from_dict({"audio": [entry(wav(tmp_path / "a.wav"))], "text": ["a"]})
    datasets.DatasetDict({"train": rows, "test": rows}).save_to_disk(str(tmp_path / "set"))
    return [tmp_path / "set"]


EVALUATE_CASES = {
    "csv-empty-path": (
        "ctc",
        lambda t: [csv_file(t / "dev.csv", "path,text", ",a b")],
        "dev.csv:2: empty path or text",
    ),
    "csv-empty-label": (
        "sid",
        lambda t: [csv_file(t / "dev.csv", "path,label", f"{wav(t / 'a.wav')}, ")],
        "dev.csv:2: empty path or label",
    ),
    "dataset-without-text": (
        "ctc",
        lambda t: [saved_dataset(t / "set", [entry(wav(t / "a.wav"))], transcript=["a"])],
        "the dataset has no column text (columns: audio, transcript)",
    ),
    "shorter-than-the-receptive-field": (
        "sid",
        lambda t: [csv_file(t / "dev.csv", "path,label", f"{wav(t / 'a.wav')},yes", f"{wav(t / 'b.wav', 0.01)},no")],
        "1 utterance(s) are shorter than the model's 400-sample receptive field, e.g. ",
    ),
    "empty-transcripts": (
        "ctc",
        lambda t: [csv_file(t / "dev.csv", "path,text", f"{wav(t / 'a.wav')},", f"{wav(t / 'b.wav')},  ")],
        "dev.csv is empty: nothing to compute WER / CER on",
    ),
    "no-rows": ("ctc", _no_rows, "set holds no utterance to evaluate"),
    "audio-entry-of-nulls": (
        "ctc",
        lambda t: [saved_dataset(t / "set", [{"bytes": None, "path": None}], text=["a"])],
        "audio entry has neither 'bytes' nor 'path'",
    ),
    "65-channels": (
        "sid",
        lambda t: [csv_file(t / "dev.csv", "path,label", f"{wav(t / 'a.wav', channels=MAX_AUDIO_CHANNELS + 1)},yes")],
        f"declares {MAX_AUDIO_CHANNELS + 1} channels; at most {MAX_AUDIO_CHANNELS} are read",
    ),
    "truncated-arrow-file": ("ctc", _truncated_dataset, "set does not load: "),
    "dataset-dict-without-split": ("ctc", _dataset_dict, "holds the splits train, test; choose one with --split"),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_CASES))
def test_evaluate_refuses_bad_data_in_one_line(heads, tmp_path, capsys, case):
    head, build, message = EVALUATE_CASES[case]
    data = build(tmp_path)
    before = inputs_digest(tmp_path)
    output = tmp_path / "figures.json"
    line = refusal(capsys, evaluate.main, heads / head, "--data", *data, "--output_json", output)
    assert message in line, line
    assert inputs_digest(tmp_path) == before and not output.exists()


# ---- the fine-tuning commands: their training data, broken


def _eval_csv(tmp_path):
    """A good --eval_csv: one audio file per label."""
    rows = [f"{wav(tmp_path / f'{label}.wav').name},{label}" for label in LABELS]
    return ["--eval_csv", csv_file(tmp_path / "dev.csv", "path,label", *rows)]


def _train_csv(tmp_path, *lines):
    """A good --eval_csv and the --train_csv of `lines` (after the header)."""
    return [*_eval_csv(tmp_path), "--train_csv", csv_file(tmp_path / "train.csv", "path,label", *lines)]


def _unreadable_csv(tmp_path):
    link = tmp_path / "train.csv"
    link.symlink_to("/proc/self/mem")  # a regular file whose read fails with EIO, as on a failing disk
    return [*_eval_csv(tmp_path), "--train_csv", link]


FINETUNE_CASES = {
    "one-label": (
        finetune_classification,
        lambda t: _train_csv(t, "yes.wav,yes", "no.wav,yes"),
        "the training data has 1 label(s); classification needs at least 2",
    ),
    "csv-empty-label": (
        finetune_classification,
        lambda t: _train_csv(t, "yes.wav,yes", "no.wav,"),
        "train.csv:3: empty path or label",
    ),
    "csv-over-the-field-limit": (
        finetune_classification,
        lambda t: _train_csv(t, "yes.wav," + "x" * 200_000),
        "train.csv is not a readable CSV file: field larger than field limit",
    ),
    "csv-read-error": (finetune_classification, _unreadable_csv, "train.csv: Input/output error"),
    "train-dir-missing": (
        finetune_classification,
        lambda t: [*_eval_csv(t), "--train_dir", t / "missing"],
        "missing is not a folder; expected one sub-folder of audio files per label",
    ),
    "train-dir-without-audio": (
        finetune_classification,
        lambda t: [*_eval_csv(t), "--train_dir", csv_file(t / "labels" / "yes" / "notes.txt", "text").parent.parent],
        "no audio files (.flac, .wav, .ogg, .mp3, .aiff, .aif) in the label sub-folders of",
    ),
    "classification-all-too-long": (
        finetune_classification,
        lambda t: [*_train_csv(t, "yes.wav,yes", "no.wav,no"), "--max_duration", "0.1"],
        "no training utterance is at most 0.1 s long",
    ),
    "ctc-all-too-long": (
        finetune_ctc,
        lambda t: ["--max_duration", "0.1"],
        f"no utterance in {BUNDLED_CORPUS} ",
    ),
    "ctc-every-character-ignored": (
        finetune_ctc,
        lambda t: ["--chars_to_ignore", string.ascii_uppercase + "'"],
        "the training transcripts are empty: nothing to build a vocabulary from",
    ),
}


@pytest.mark.parametrize("case", sorted(FINETUNE_CASES))
def test_finetuning_refuses_bad_training_data_in_one_line(tmp_path, capsys, case):
    command, build, message = FINETUNE_CASES[case]
    args = build(tmp_path)
    before = inputs_digest(tmp_path)
    line = refusal(capsys, command.main, "--output_dir", tmp_path / "out", *TRAINING, *args)
    assert message in line, line
    assert inputs_digest(tmp_path) == before and not (tmp_path / "out").exists()


# ---- extract_features.py: --input of every kind, wrong


def _two_files_one_id(tmp_path):
    wav(tmp_path / "corpus" / "a.wav")
    soundfile.write(tmp_path / "corpus" / "a.flac", np.zeros(8000, dtype=np.float32), 16000)
    return ["--input", tmp_path / "corpus"]


def _dataset(tmp_path, *args):
    return ["--input", saved_dataset(tmp_path / "set", [entry(wav(tmp_path / "a.wav"))], text=["a"]), *args]


EXTRACT_CASES = {
    "two-files-one-id": (_two_files_one_id, "has the utterance id 'a' twice (rows 0 and 1)"),
    "no-audio-column": (
        lambda t: _dataset(t, "--audio_column", "voice"),
        "has no column 'voice' (columns: audio, text)",
    ),
    "no-id-column": (lambda t: _dataset(t, "--id_column", "speaker"), "has no column 'speaker' (columns: audio, text)"),
    "a-file": (lambda t: ["--input", wav(t / "a.wav")], "a.wav is a file; give a folder of audio"),
    "a-file-as-folder": (
        lambda t: ["--input", wav(t / "a.wav"), "--input_type", "folder"],
        "a.wav is not a folder; expected a folder of audio files",
    ),
    "librispeech-without-split": (
        lambda t: ["--input", BUNDLED_CORPUS, "--input_type", "librispeech"],
        "a LibriSpeech root needs --split (e.g. dev-clean)",
    ),
    "librispeech-empty-split": (
        lambda t: ["--input", BUNDLED_CORPUS, "--input_type", "librispeech", "--split", ","],
        "no split given; expected a LibriSpeech split name",
    ),
    "units-sample-too-short": (  # headers readable, but every file shorter than the receptive field
        lambda t: ["--input", wav(t / "corpus" / "a.wav", seconds=0.01).parent, "--units", "2"],
        "none of the files of the units sample is readable; check the corpus",
    ),
}


@pytest.mark.parametrize("case", sorted(EXTRACT_CASES))
def test_extract_features_refuses_a_bad_input_in_one_line(tiny_model_dir, tmp_path, capsys, case):
    build, message = EXTRACT_CASES[case]
    args = build(tmp_path)
    before = inputs_digest(tmp_path)
    line = refusal(capsys, extract.main, "--model", tiny_model_dir, "--output_dir", tmp_path / "features", *args)
    assert message in line, line
    assert inputs_digest(tmp_path) == before and not (tmp_path / "features").exists()


# ---- the library door: an undecoded audio dict of the wrong shape


@pytest.mark.parametrize(
    "audio, message",
    [
        ({"bytes": "RIFF....WAVE", "path": None}, "audio entry's 'bytes' / 'path' are not bytes / text"),
        ({"bytes": None, "path": os.sep.encode()}, "audio entry's 'bytes' / 'path' are not bytes / text"),
        ({"bytes": None, "path": None}, "audio entry has neither 'bytes' nor 'path'"),
    ],
)
def test_load_16k_refuses_an_audio_dict_it_cannot_read(audio, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        load_16k(audio)
