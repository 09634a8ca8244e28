"""Metrics of fine-tuned models, shared by the fine-tuning recipes and `scripts/evaluate.py`.

- CTC: WER and CER (jiwer) of greedy decoding: the argmax token of every frame, repeats merged,
  blanks dropped (`error_rates`, `greedy_decoding_metrics` for the Trainer), on transcripts
  normalised by `normalize_transcript`;
- classification: accuracy and the confusion matrix (`accuracy`, `confusion_matrix`).
"""

import re
from collections.abc import Callable, Sequence

import jiwer
import numpy as np
from transformers import EvalPrediction, Wav2Vec2CTCTokenizer


def normalize_transcript(text: str, chars_to_ignore: str = "") -> str:
    """Drop ignored characters and collapse whitespace; case is kept (LibriSpeech is upper case).

    What CTC training labels and evaluation references are made of.
    """
    if chars_to_ignore:
        text = re.sub(f"[{re.escape(chars_to_ignore)}]", "", text)
    return " ".join(text.split())


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """{"wer", "cer"} over the pairs whose reference is not empty (jiwer refuses empty references)."""
    pairs = [(reference, hypothesis) for reference, hypothesis in zip(references, hypotheses) if reference.strip()]
    references, hypotheses = [reference for reference, _ in pairs], [hypothesis for _, hypothesis in pairs]
    return {"wer": jiwer.wer(references, hypotheses), "cer": jiwer.cer(references, hypotheses)}


def greedy_decoding_metrics(tokenizer: Wav2Vec2CTCTokenizer) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for Trainer: WER and CER of the argmax path (repeats merged, blanks dropped).

    Predictions are the argmax ids (B, T) of every frame, -100 where the Trainer padded them.
    """

    def compute(prediction):
        predicted_ids = np.where(prediction.predictions == -100, tokenizer.pad_token_id, prediction.predictions)
        label_ids = np.where(prediction.label_ids == -100, tokenizer.pad_token_id, prediction.label_ids)
        hypotheses = tokenizer.batch_decode(predicted_ids)
        references = tokenizer.batch_decode(label_ids, group_tokens=False)  # labels are not CTC paths
        return error_rates(references, hypotheses)

    return compute


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """`compute_metrics` for Trainer: share of utterances whose top-scoring label is right."""
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def confusion_matrix(true_ids: Sequence[int], predicted_ids: Sequence[int], num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) counts: row = true label, column = predicted label."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true_ids, dtype=np.int64), np.asarray(predicted_ids, dtype=np.int64)), 1)
    return matrix
