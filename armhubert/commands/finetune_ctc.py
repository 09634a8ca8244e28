"""Character-level CTC fine-tuning of an ARMHuBERT-family encoder on LibriSpeech, with `Trainer`.

    python scripts/finetune_ctc.py --model_name_or_path converted/armhubert-960h --output_dir out/ctc \\
        [--data_source openslr/librispeech_asr] [--train_split train-clean-100] [--eval_split dev-clean] \\
        [any TrainingArguments, e.g. --num_train_epochs 20 --learning_rate 1e-4 --per_device_train_batch_size 8]

Data come from a local LibriSpeech tree (default: the bundled corpus) or the Hub copy, through
`armhubert.speech.librispeech.load_librispeech`; the set-up shared with classification is `armhubert.training.finetune`.
The vocabulary is built from the training transcripts (characters, "|" between words, [PAD] = CTC
blank, [UNK]); evaluation reports WER and CER of greedy decoding (jiwer). OUTPUT_DIR receives the model, the processor and a README.md model card with the
result, and opens with `pipeline("automatic-speech-recognition", model=OUTPUT_DIR, trust_remote_code=True)`.
"""

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import BatchFeature, Wav2Vec2CTCTokenizer, Wav2Vec2Processor

from armhubert.cli import run_main
from armhubert.folders.cards import ctc_card
from armhubert.resources import BUNDLED_CORPUS
from armhubert.speech.audio import DataError
from armhubert.speech.librispeech import load_librispeech
from armhubert.training.finetune import (
    check_min_duration,
    decode_audio_batch,
    load_head_model,
    max_duration_field,
    parse_run_arguments,
    train_evaluate_and_save,
)
from armhubert.training.guarded_trainer import GuardedTrainer
from armhubert.training.metrics import greedy_decoding_metrics, normalize_transcript
from modeling_armhubert import ARMHubertForCTC
from pipeline_armhubert import release_feature_extractor

PROG = "finetune_ctc.py"
PAD, UNK, WORD_DELIMITER = "[PAD]", "[UNK]", "|"


@dataclass
class DataArguments:
    """Which LibriSpeech splits to train and evaluate on, and how to clean their transcripts."""

    INPUT_FIELDS = ("data_source",)  # paths the output must stay apart from (not an argument)

    data_source: str = field(
        default=str(BUNDLED_CORPUS),
        metadata={"help": "A local LibriSpeech folder (default: the bundled corpus) or openslr/librispeech_asr."},
    )
    train_split: str = field(default="train-clean-100", metadata={"help": "Training split(s), comma-separated."})
    eval_split: str = field(default="dev-clean", metadata={"help": "Evaluation split(s), comma-separated."})
    max_duration: float = max_duration_field()
    max_train_samples: int = field(default=None, metadata={"help": "Keep only the first N training utterances."})
    max_eval_samples: int = field(default=None, metadata={"help": "Keep only the first N evaluation utterances."})
    chars_to_ignore: str = field(
        default="",
        metadata={"help": "Characters removed from every transcript before building the vocabulary, e.g. ',?.!'."},
    )


def build_vocabulary(transcripts: Sequence[str]) -> dict[str, int]:
    """{token: id}: [PAD] = 0 (the CTC blank), [UNK] = 1, "|" for spaces, then every character seen."""
    characters = sorted({char for text in transcripts for char in text} - {" "})
    if not characters:
        raise DataError("the training transcripts are empty: nothing to build a vocabulary from")
    return {token: index for index, token in enumerate([PAD, UNK, WORD_DELIMITER, *characters])}


def check_characters(dataset: datasets.Dataset, vocabulary: dict[str, int], split_name: str) -> None:
    """Transcripts may only use characters of the vocabulary: name the first one that does not."""
    known = set(vocabulary) | {" "}
    for utterance_id, text in zip(dataset["id"], dataset["text"]):
        unknown = sorted(set(text) - known)
        if unknown:
            raise DataError(
                f"the {split_name} transcript of {utterance_id} uses characters that the training transcripts do not "
                f"have: {', '.join(repr(char) for char in unknown)}; remove them with --chars_to_ignore or train on data "
                "that has them"
            )


def make_tokenizer(vocabulary: dict[str, int]) -> Wav2Vec2CTCTokenizer:
    """A character CTC tokenizer over `vocabulary` (it only reads its vocabulary from a file)."""
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "vocab.json"
        vocab_file.write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
        # No <s> / </s>: CTC never emits them, and adding them would grow the tokenizer past the head.
        return Wav2Vec2CTCTokenizer(
            str(vocab_file),
            unk_token=UNK,
            pad_token=PAD,
            word_delimiter_token=WORD_DELIMITER,
            bos_token=None,
            eos_token=None,
        )


@dataclass
class CTCCollator:
    """Decodes and pads the audio of a batch; pads labels with -100 (ignored by the CTC loss)."""

    processor: Wav2Vec2Processor

    def __call__(self, rows: Sequence[dict]) -> BatchFeature:
        batch = decode_audio_batch(rows, self.processor.feature_extractor)
        labels = self.processor.tokenizer.pad({"input_ids": [row["labels"] for row in rows]}, return_tensors="pt")
        batch["labels"] = labels["input_ids"].masked_fill(labels["attention_mask"].ne(1), -100)
        return batch


class CTCTrainer(GuardedTrainer):
    """`GuardedTrainer` whose evaluation hands the metrics each utterance's greedy ids over its own frames.

    In a padded batch the frames past an utterance's end hold the model's output on the padding; decoded,
    they add characters the utterance never had (on the CTC demo: WER 0.48 instead of the 0.35 that
    `scripts/evaluate.py` measures on the same model and data). They become -100, which the metrics read
    as blanks, and only the ids (batch, frames) are kept, not the whole logit tensors.
    """

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if logits is None:
            return loss, logits, labels
        ids = (logits[0] if isinstance(logits, tuple) else logits).argmax(dim=-1)
        if inputs.get("attention_mask") is not None:
            frames = getattr(model, "module", model)._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1))
            past_end = torch.arange(ids.shape[1], device=ids.device)[None, :] >= frames.to(ids.device)[:, None]
            ids = ids.masked_fill(past_end, -100)
        return loss, ids, labels


def load_splits(data_args: DataArguments) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The training and evaluation splits, cut to --max_*_samples, transcripts normalised."""

    def splits(value):
        return [name.strip() for name in value.split(",") if name.strip()]

    # The evaluation split first: an unknown name is refused before the training split's filter prints progress.
    evaluation = load_librispeech(data_args.data_source, splits(data_args.eval_split))
    train = load_librispeech(data_args.data_source, splits(data_args.train_split), max_duration=data_args.max_duration)
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    ignore = data_args.chars_to_ignore
    normalize = lambda text: {"text": normalize_transcript(text, ignore)}  # noqa: E731
    return train.map(normalize, input_columns="text"), evaluation.map(normalize, input_columns="text")


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Fine-tune; returns {"train", "eval", "log_history"} (see armhubert.training.finetune.train_evaluate_and_save)."""
    model_args, data_args, training_args = parse_run_arguments(DataArguments, argv, PROG)

    train, evaluation = load_splits(data_args)
    vocabulary = build_vocabulary(train["text"])
    check_characters(train, vocabulary, "training")
    check_characters(evaluation, vocabulary, "evaluation")
    tokenizer = make_tokenizer(vocabulary)

    model = load_head_model(
        ARMHubertForCTC,
        model_args,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=None,
    )
    processor = Wav2Vec2Processor(feature_extractor=release_feature_extractor(), tokenizer=tokenizer)
    for dataset, what in ((train, "training"), (evaluation, "evaluation")):
        check_min_duration(dataset, model.config, what)

    def encode(texts):
        return {"labels": tokenizer(texts).input_ids}

    train = train.map(encode, input_columns="text", batched=True)
    evaluation = evaluation.map(encode, input_columns="text", batched=True)

    trainer = CTCTrainer(
        model=model,
        args=training_args,
        data_collator=CTCCollator(processor),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        compute_metrics=greedy_decoding_metrics(tokenizer),
    )
    return train_evaluate_and_save(
        trainer,
        training_args.output_dir,
        lambda metrics, steps: ctc_card(
            training_args.output_dir,
            model_args.model_name_or_path,
            model_args.preset,
            data_args.data_source,
            data_args.train_split,
            data_args.eval_split,
            len(train),
            metrics,
            steps,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, run, argv)
