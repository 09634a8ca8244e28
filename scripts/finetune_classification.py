"""Utterance classification with an ARMHuBERT-family encoder, with `Trainer` (accuracy metric).

    # labels from folder names: TRAIN_DIR/<label>/**/*.flac (e.g. speaker id on a LibriSpeech split)
    python scripts/finetune_classification.py --model_name_or_path converted/armhubert-960h --output_dir out/sid \\
        --train_dir data/LibriSpeech/train-clean-100 --eval_dir data/LibriSpeech/dev-clean
    # labels from CSV files with columns path,label (paths relative to the CSV)
    python scripts/finetune_classification.py --model_name_or_path ... --output_dir out/ic \\
        --train_csv train.csv --eval_csv dev.csv [any TrainingArguments]

Audio is decoded with soundfile and resampled to 16 kHz with soxr (`distill_trainer.read_audio`).
OUTPUT_DIR receives the model (labels in `config.id2label`), the feature extractor and a README.md
model card with the accuracy, and opens with
`pipeline("audio-classification", model=OUTPUT_DIR, trust_remote_code=True)`.
"""

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import torch
from transformers import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_common import (  # noqa: E402  (also puts the repository root on sys.path)
    UsageError,
    check_min_duration,
    decode_audio_batch,
    load_head_model,
    parse_run_arguments,
    run_cli,
    train_evaluate_and_save,
)

from modeling_armhubert import release_feature_extractor  # noqa: E402
from distill_trainer import SAMPLING_RATE, DataError  # noqa: E402
from modeling_armhubert import ARMHubertForSequenceClassification  # noqa: E402

PROG = "finetune_classification.py"
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3", ".aiff", ".aif")


@dataclass
class DataArguments:
    train_dir: str = field(default=None, metadata={"help": "Folder with one sub-folder of audio files per label."})
    eval_dir: str = field(default=None, metadata={"help": "Evaluation folder, same layout as --train_dir."})
    train_csv: str = field(default=None, metadata={"help": "CSV with columns path,label (paths relative to the CSV)."})
    eval_csv: str = field(default=None, metadata={"help": "Evaluation CSV, same columns as --train_csv."})
    max_duration: float = field(default=20.0, metadata={"help": "Drop training utterances longer than this (seconds)."})


def examples_from_folder(folder):
    """(path, label) for every audio file below `folder/<label>/` (any depth)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; expected one sub-folder of audio files per label")
    examples = [
        (path, label_dir.name)
        for label_dir in sorted(p for p in folder.iterdir() if p.is_dir())
        for path in sorted(label_dir.rglob("*"))
        if path.suffix.lower() in AUDIO_SUFFIXES
    ]
    if not examples:
        raise DataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in the label sub-folders of {folder}")
    return examples


def examples_from_csv(csv_path):
    """(path, label) for every row of a CSV with `path` and `label` columns."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise DataError(f"cannot read {csv_path}: {error.strerror}") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        found = ", ".join(rows[0]) if rows else "no rows"
        raise DataError(f"{csv_path} needs a header with 'path' and 'label' columns and at least one row; found {found}")
    examples = []
    for number, row in enumerate(rows, 2):
        if not row["path"] or not row["label"]:
            raise DataError(f"{csv_path}:{number}: empty path or label")
        path = Path(row["path"])
        examples.append((path if path.is_absolute() else csv_path.parent / path, row["label"].strip()))
    return examples


def read_examples(folder, csv_path, what):
    if bool(folder) == bool(csv_path):
        raise UsageError(f"give exactly one of --{what}_dir and --{what}_csv")
    return examples_from_folder(folder) if folder else examples_from_csv(csv_path)


def build_dataset(examples, label2id, what, max_duration=None):
    """A `datasets.Dataset` of undecoded audio, label ids and lengths; unreadable files are refused."""
    import datasets

    unknown = sorted({label for _, label in examples} - set(label2id))
    if unknown:
        raise DataError(
            f"the {what} data has labels the training data does not: {', '.join(unknown[:5])}; "
            "every label needs training examples"
        )
    rows = {"audio": [], "label": [], "num_samples": []}
    for path, label in examples:
        try:
            info = soundfile.info(str(path))
        except Exception as error:  # noqa: BLE001 - missing files and every libsndfile error
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(f"cannot read audio file {path}: {reason}") from None
        num_samples = int(round(info.frames * SAMPLING_RATE / info.samplerate))
        if max_duration is not None and num_samples > max_duration * SAMPLING_RATE:
            continue
        rows["audio"].append({"bytes": None, "path": str(path)})
        rows["label"].append(label2id[label])
        rows["num_samples"].append(num_samples)
    if not rows["label"]:
        raise DataError(f"no {what} utterance is at most {max_duration} s long")
    return datasets.Dataset.from_dict(rows)


@dataclass
class ClassificationCollator:
    """Decodes and pads the audio of a batch; stacks the label ids."""

    feature_extractor: object

    def __call__(self, rows):
        batch = decode_audio_batch(rows, self.feature_extractor)
        batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        return batch


def accuracy(prediction):
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def model_card(output_dir, model_args, data_args, labels, train_size, metrics, steps):
    base = model_args.model_name_or_path or f"random {model_args.preset}"
    source = data_args.train_dir or data_args.train_csv
    evaluation = data_args.eval_dir or data_args.eval_csv
    return (
        f"# {Path(output_dir).name}\n\n"
        f"Utterance classifier ({len(labels)} classes) fine-tuned from `{base}` on `{source}` "
        f"({train_size} utterances, {steps} steps) with `scripts/finetune_classification.py`.\n\n"
        f"**Result: accuracy {100 * metrics['eval_accuracy']:.2f} % on `{evaluation}`.**\n\n"
        "```python\n"
        "from transformers import pipeline\n"
        f'classify = pipeline("audio-classification", model="{output_dir}", trust_remote_code=True)\n'
        "classify(samples_16khz)  # or load_16k(path), from armhubert.audio import load_16k\n"
        "```\n"
    )


def run(argv=None):
    model_args, data_args, training_args = parse_run_arguments(DataArguments, argv, PROG)

    train_examples = read_examples(data_args.train_dir, data_args.train_csv, "train")
    eval_examples = read_examples(data_args.eval_dir, data_args.eval_csv, "eval")
    labels = sorted({label for _, label in train_examples})
    if len(labels) < 2:
        raise DataError(f"the training data has {len(labels)} label(s); classification needs at least 2")
    label2id = {label: index for index, label in enumerate(labels)}
    train = build_dataset(train_examples, label2id, "training", data_args.max_duration)
    evaluation = build_dataset(eval_examples, label2id, "evaluation")

    model = load_head_model(
        ARMHubertForSequenceClassification,
        model_args,
        num_labels=len(labels),
        label2id=label2id,
        id2label={index: label for label, index in label2id.items()},
    )
    for dataset, what in ((train, "training"), (evaluation, "evaluation")):
        check_min_duration(dataset, model.config, what)
    feature_extractor = release_feature_extractor()

    trainer = Trainer(
        model=model,
        args=training_args,
        data_collator=ClassificationCollator(feature_extractor),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=feature_extractor,
        compute_metrics=accuracy,
    )
    return train_evaluate_and_save(
        trainer,
        training_args.output_dir,
        lambda metrics, steps: model_card(training_args.output_dir, model_args, data_args, labels, len(train), metrics, steps),
    )


def main(argv=None):
    return run_cli(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
