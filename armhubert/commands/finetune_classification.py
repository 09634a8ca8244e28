"""Utterance classification with an ARMHuBERT-family encoder, with `Trainer` (accuracy metric).

    # labels from folder names: TRAIN_DIR/<label>/**/*.flac (e.g. speaker id on a LibriSpeech split)
    python scripts/finetune_classification.py --model_name_or_path converted/armhubert-960h --output_dir out/sid \\
        --train_dir data/LibriSpeech/train-clean-100 --eval_dir data/LibriSpeech/dev-clean
    # labels from CSV files with columns path,label (paths relative to the CSV)
    python scripts/finetune_classification.py --model_name_or_path ... --output_dir out/ic \\
        --train_csv train.csv --eval_csv dev.csv [any TrainingArguments]
    # small data: train on random 1.5 s windows, drawn anew each time (evaluation uses whole utterances)
    ... --crop_seconds 1.5

Audio is decoded with soundfile and resampled to 16 kHz with soxr (`armhubert.speech.audio.read_audio`).
OUTPUT_DIR receives the model (labels in `config.id2label`), the feature extractor and a README.md
model card with the accuracy, and opens with
`pipeline("audio-classification", model=OUTPUT_DIR, trust_remote_code=True)`.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, Wav2Vec2FeatureExtractor

from armhubert.cli import above, run_main
from armhubert.folders.cards import classification_card
from armhubert.speech.audio import DataError
from armhubert.speech.chunking import check_window
from armhubert.speech.labelled_audio import build_dataset, read_examples
from armhubert.training.finetune import (
    check_min_duration,
    decode_audio_batch,
    load_head_model,
    max_duration_field,
    parse_run_arguments,
    random_window,
    train_evaluate_and_save,
)
from armhubert.training.guarded_trainer import GuardedTrainer
from armhubert.training.metrics import accuracy
from configuration_armhubert import SAMPLING_RATE
from modeling_armhubert import ARMHubertForSequenceClassification
from pipeline_armhubert import release_feature_extractor

PROG = "finetune_classification.py"


@dataclass
class DataArguments:
    """Where the labelled audio is: label folders or CSV files, for training and for evaluation."""

    # Paths the output must stay apart from (a class attribute, not an argument).
    INPUT_FIELDS = ("train_dir", "eval_dir", "train_csv", "eval_csv")
    # Each split has one source (`check_fields` checks it; read_examples trusts it).
    RULES = tuple(
        (
            lambda args, what=what: bool(getattr(args, f"{what}_dir")) == bool(getattr(args, f"{what}_csv")),
            f"give exactly one of --{what}_dir and --{what}_csv",
        )
        for what in ("train", "eval")
    )

    train_dir: str = field(default=None, metadata={"help": "Folder with one sub-folder of audio files per label."})
    eval_dir: str = field(default=None, metadata={"help": "Evaluation folder, same layout as --train_dir."})
    train_csv: str = field(default=None, metadata={"help": "CSV with columns path,label (paths relative to the CSV)."})
    eval_csv: str = field(default=None, metadata={"help": "Evaluation CSV, same columns as --train_csv."})
    max_duration: float = max_duration_field()
    crop_seconds: float = field(
        default=None,
        metadata={
            "help": "Train on a random window of this many seconds of each utterance, drawn anew every time "
            "(augmentation for small data); evaluation always uses whole utterances.",
            "bounds": above(0),
        },
    )


@dataclass
class ClassificationCollator:
    """Decodes and pads the audio of a batch; stacks the label ids.

    With `crop_samples`, rows marked `random_crop` are cut to a random window of that many samples
    (`armhubert.training.finetune.random_window`).
    """

    feature_extractor: Wav2Vec2FeatureExtractor
    crop_samples: int | None = None

    def _crop(self, samples: np.ndarray, row: dict) -> np.ndarray:
        if self.crop_samples is None or not row.get("random_crop"):
            return samples
        return random_window(samples, self.crop_samples)

    def __call__(self, rows: Sequence[dict]) -> BatchFeature:
        batch = decode_audio_batch(rows, self.feature_extractor, self._crop)
        batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        return batch


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Fine-tune; returns {"train", "eval", "log_history"} (see armhubert.training.finetune.train_evaluate_and_save)."""
    model_args, data_args, training_args = parse_run_arguments(DataArguments, argv, PROG)

    train_examples = read_examples(data_args.train_dir, data_args.train_csv)
    eval_examples = read_examples(data_args.eval_dir, data_args.eval_csv)
    labels = sorted({label for _, label in train_examples})
    if len(labels) < 2:
        raise DataError(f"the training data has {len(labels)} label(s); classification needs at least 2")
    label2id = {label: index for index, label in enumerate(labels)}
    crop_samples = None if data_args.crop_seconds is None else round(data_args.crop_seconds * SAMPLING_RATE)
    train = build_dataset(train_examples, label2id, "training", data_args.max_duration, crop_samples is not None)
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
    if data_args.crop_seconds is not None:
        check_window(
            data_args.crop_seconds,
            model.config.receptive_field,
            f"--crop_seconds {data_args.crop_seconds}",
            "give a longer window",
        )
    feature_extractor = release_feature_extractor()

    trainer = GuardedTrainer(
        model=model,
        args=training_args,
        data_collator=ClassificationCollator(feature_extractor, crop_samples),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=feature_extractor,
        compute_metrics=accuracy,
    )
    return train_evaluate_and_save(
        trainer,
        training_args.output_dir,
        lambda metrics, steps: classification_card(
            training_args.output_dir,
            model_args.model_name_or_path,
            model_args.preset,
            data_args.train_dir or data_args.train_csv,
            data_args.eval_dir or data_args.eval_csv,
            labels,
            len(train),
            metrics,
            steps,
            data_args.crop_seconds,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, run, argv)
