"""scripts/evaluate.py: the figures fine-tuning printed, from every kind of data, and one-line refusals."""

import csv
import json

import datasets
import pytest
from helpers import load_script

from armhubert.resources import BUNDLED_CORPUS

evaluate = load_script("evaluate")
DEV = BUNDLED_CORPUS / "dev-clean"
FLAC = min(DEV.rglob("*.flac"))
COMMON = ["--use_cpu", "--report_to", "none", "--save_strategy", "no", "--seed", "0", "--learning_rate", "1e-3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A tiny CTC model and a tiny speaker classifier fine-tuned for a few steps, with their final evaluations."""
    root = tmp_path_factory.mktemp("evaluate")
    encoder = tiny_model_dir
    ctc = load_script("finetune_ctc").run(
        ["--model_name_or_path", str(encoder), "--output_dir", str(root / "ctc"), "--max_steps", "3"]
        + ["--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "1", *COMMON]
    )
    sid = load_script("finetune_classification").run(
        ["--model_name_or_path", str(encoder), "--output_dir", str(root / "sid"), "--max_steps", "3"]
        + ["--train_dir", str(BUNDLED_CORPUS / "train-clean-100"), "--eval_dir", str(DEV), "--crop_seconds", "1"]
        + ["--per_device_train_batch_size", "4", *COMMON]
    )
    return {"root": root, "encoder": encoder, "ctc": ctc["eval"], "sid": sid["eval"]}


def test_ctc_figures_equal_those_of_fine_tuning(trained, capsys):
    # Fine-tuning evaluated one utterance per batch: no padded frames, so decoding sees the same frames.
    result = evaluate.evaluate([str(trained["root"] / "ctc"), "--data", str(BUNDLED_CORPUS), "--split", "dev-clean"])
    assert result["wer"] == pytest.approx(trained["ctc"]["eval_wer"]) and result["utterances"] == 12
    assert result["cer"] == pytest.approx(trained["ctc"]["eval_cer"])
    out = capsys.readouterr().out
    assert f"wer: {result['wer']:.4f}" in out and "12 utterances" in out
    same = evaluate.evaluate([str(trained["root"] / "ctc"), "--data", str(DEV)])  # the split's folder itself
    assert same["wer"] == result["wer"]


def test_classification_accuracy_and_confusion_matrix(trained, capsys):
    result = evaluate.evaluate([str(trained["root"] / "sid"), "--data", str(DEV)])
    assert result["accuracy"] == pytest.approx(trained["sid"]["eval_accuracy"])  # batches of 8, as the Trainer
    matrix = result["confusion_matrix"]
    assert result["labels"] == ["1001", "1002", "1003", "1004"] and sum(map(sum, matrix)) == 12
    assert sum(matrix[i][i] for i in range(4)) == round(12 * result["accuracy"])
    assert sum(matrix[0]) == 3  # speaker 1001 has 3 dev-clean utterances
    out = capsys.readouterr().out
    assert "| true \\ predicted | 1001 | 1002 | 1003 | 1004 |" in out


def test_csv_and_saved_datasets_give_the_same_figures(trained, tmp_path):
    files = sorted(DEV.rglob("*.flac"))
    with open(tmp_path / "dev.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([[str(path), path.parent.parent.name] for path in files])
    folders = evaluate.evaluate([str(trained["root"] / "sid"), "--data", str(DEV)])
    from_csv = evaluate.evaluate([str(trained["root"] / "sid"), "--data", str(tmp_path / "dev.csv")])
    labels = datasets.ClassLabel(names=["1001", "1002", "1003", "1004"])
    saved = datasets.Dataset.from_dict(
        {
            "audio": [{"path": str(path), "bytes": None} for path in files],
            "speaker": [labels.str2int(p.parent.parent.name) for p in files],
        },
        features=datasets.Features(
            {"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}, "speaker": labels}
        ),
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    argv = [str(trained["root"] / "sid"), "--data", str(tmp_path / "saved"), "--label_column", "speaker"]
    from_disk = evaluate.evaluate(argv + ["--output_json", str(tmp_path / "figures.json")])
    assert folders["confusion_matrix"] == from_csv["confusion_matrix"] == from_disk["confusion_matrix"]
    written = json.loads((tmp_path / "figures.json").read_text())
    assert written["accuracy"] == from_disk["accuracy"] and written["model"] == str(trained["root"] / "sid")


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda t, p: [str(t["root"] / "sid")], "--data is required"),
        (lambda t, p: [str(t["encoder"]), "--data", str(DEV)], "not a fine-tuned model"),
        (lambda t, p: [str(p / "nothing"), "--data", str(DEV)], "is not a model folder"),
        (lambda t, p: [str(t["root"] / "sid"), "--data", str(BUNDLED_CORPUS)], "labels the model was not trained on"),
        (lambda t, p: [str(t["root"] / "ctc"), "--data", str(p / "no" / "such")], "does not exist"),
        (
            lambda t, p: [str(t["root"] / "ctc"), "--data", str(FLAC), "--split", "dev-clean"],
            f"--data {FLAC} is neither a folder nor a CSV file; give a folder (a LibriSpeech tree with --split), a "
            "CSV file or a datasets dataset",
        ),
        (
            lambda t, p: [str(t["root"] / "sid"), "--data", str(DEV), "--batch_size", "0"],
            "--batch_size must be an integer >= 1, got 0",
        ),
        (
            lambda t, p: [str(t["root"] / "sid"), "--data", str(DEV), "--output_json", str(DEV / "x.json")],
            "inside the input",
        ),
    ],
    ids=[
        "no-data",
        "encoder",
        "no-model",
        "unknown-labels",
        "no-corpus",
        "audio-file",
        "batch-size",
        "output-in-input",
    ],
)
def test_bad_input_is_one_line_with_status_2(trained, tmp_path, capsys, make_argv, message):
    assert evaluate.main(make_argv(trained, tmp_path)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("evaluate.py: error: ") and message in error and len(error.splitlines()) == 1, error
