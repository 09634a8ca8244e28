"""Evaluate a fine-tuned model folder: WER / CER for CTC, accuracy and confusion matrix for a classifier.

    HF_HUB_OFFLINE=1 python scripts/evaluate.py out/ctc --data data/LibriSpeech --split dev-clean
    HF_HUB_OFFLINE=1 python scripts/evaluate.py out/sid --data data/LibriSpeech/dev-clean
    python scripts/evaluate.py out/ctc-100h --data openslr/librispeech_asr --split test-clean
    python scripts/evaluate.py out/ks --data dev.csv          # columns path,label (classifier) or path,text (CTC)
    python scripts/evaluate.py out/ks --data my_dataset/ --split test   # a datasets save_to_disk folder

MODEL is a folder written by `scripts/finetune_ctc.py` or `scripts/finetune_classification.py` (its
`config.json` says which). `--data` is one of:
- a folder: for CTC a LibriSpeech tree (with `--split`) or one split's folder; for a classifier one
  sub-folder of audio files per label (the speaker folders of a LibriSpeech split are labels);
- a CSV file with columns `path` and `label` (classifier) or `path` and `text` (CTC), paths relative
  to the CSV;
- a `datasets` dataset: a folder written by `save_to_disk`, or a Hub id (`openslr/librispeech_asr`
  with LibriSpeech split names, any other with `--split` and `--dataset_config`), with an audio
  column and a `text` / `label` column.

Batches are formed in the data's order and padded as in fine-tuning (`--batch_size` 8, the Trainer's
evaluation default), so the figures are those the fine-tuning printed on the same data. CTC output is
decoded greedily over each utterance's real frames. Prints the figures (and `--output_json FILE`
writes them: never over an input, an audio file the data names included, nor over an existing file
without `--overwrite`); bad input: one line on stderr, exit status 2. The model folder is read through
the checked loader (`armhubert.folders.model_folders`): a foreign, broken or incomplete folder, or weights that
are not finite, are refused before anything is encoded; audio must be regular files.
"""

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow
import pyarrow.compute
import torch
from transformers import AutoFeatureExtractor, PreTrainedModel, Wav2Vec2CTCTokenizer

from armhubert.cli import CommandParser, UserError, at_least, check_cuda, run_main
from armhubert.files.atomic import atomic_write_text
from armhubert.files.placement import check_output_file
from armhubert.files.untrusted import brief
from armhubert.files.weights import check_finite_weights
from armhubert.folders.model_folders import ModelFolder, load_folder_part, open_model_folder, refuse_missing
from armhubert.progress import progress
from armhubert.speech.audio import DataError
from armhubert.speech.chunking import check_unchunked_lengths
from armhubert.speech.labelled_audio import audio_num_samples, csv_audio_path, examples_from_folder, read_csv_rows
from armhubert.speech.librispeech import HUB_SPLITS, load_librispeech
from armhubert.speech.saved_datasets import caches_outside_inputs, is_saved_dataset, open_dataset
from armhubert.training.finetune import decode_audio_batch
from armhubert.training.metrics import confusion_matrix, error_rates, normalize_transcript
from configuration_armhubert import SAMPLING_RATE, ARMHubertConfig
from modeling_armhubert import ARMHubertForCTC, ARMHubertForSequenceClassification

PROG = "evaluate.py"
HEADS = {"ARMHubertForCTC": ARMHubertForCTC, "ARMHubertForSequenceClassification": ARMHubertForSequenceClassification}
MAX_MATRIX_LABELS = 30  # a larger confusion matrix goes to --output_json only


@dataclass
class EvaluateArguments:
    """What to evaluate on, and how (MODEL is the positional argument)."""

    data: str = field(
        default=None,
        metadata={"help": "A folder (LibriSpeech tree, split or label folders), a CSV file, or a datasets dataset."},
    )
    split: str = field(
        default=None,
        metadata={"help": "Split of a LibriSpeech tree / Hub dataset / DatasetDict (e.g. dev-clean, test)."},
    )
    dataset_config: str = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    audio_column: str = field(default="audio", metadata={"help": "Audio column of a datasets dataset."})
    text_column: str = field(default="text", metadata={"help": "Transcript column of a datasets dataset (CTC)."})
    label_column: str = field(default="label", metadata={"help": "Label column of a datasets dataset (classifier)."})
    chars_to_ignore: str = field(
        default="", metadata={"help": "Characters removed from the transcripts, as in fine-tuning (CTC)."}
    )
    batch_size: int = field(
        default=8, metadata={"help": "Utterances per padded batch (1: no padding at all).", "bounds": at_least(1)}
    )
    max_samples: int = field(
        default=None, metadata={"help": "Evaluate only the first N utterances.", "bounds": at_least(1)}
    )
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "cpu, cuda, or auto (cuda when available)."}
    )
    output_json: str = field(default=None, metadata={"help": "Also write the figures to this JSON file."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --output_json file."})

    # What the fields' own types do not say, checked by `check_fields` in this order.
    RULES = (
        (lambda args: not args.data, "--data is required: a folder, a CSV file or a datasets dataset to evaluate on"),
        (
            lambda args: Path(args.data).exists() and not Path(args.data).is_dir() and not _is_csv(args.data),
            "--data {args.data} is neither a folder nor a CSV file; give a folder (a LibriSpeech tree with --split), "
            "a CSV file or a datasets dataset",
        ),
    )


def parse_arguments(argv: Sequence[str] | None) -> tuple[str, EvaluateArguments]:
    parser = CommandParser([EvaluateArguments], prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A folder written by finetune_ctc.py or finetune_classification.py.")
    args, rest = parser.parse_into_dataclasses(argv)
    check_cuda(args.device)
    if args.output_json is not None:
        check_output_json(args, [rest.model, args.data])
    return rest.model, args


def check_output_json(args: EvaluateArguments, inputs: Sequence[str | Path]) -> None:
    """Refuse an --output_json that is, or lies inside, an input, or that exists without --overwrite."""
    check_output_file(args.output_json, args.overwrite, inputs, what="--output_json")


def head_class(folder: str) -> tuple[ModelFolder, type[PreTrainedModel]]:
    """`folder` through the model-folder door, and the head class (CTC or classification) its checked config
    names; nothing of the weights is read."""
    if not Path(folder).is_dir():  # a fine-tuning output is a local folder: the door would ask the Hub
        raise UserError(
            f"{folder} is not a model folder (no such folder); give a folder written by a fine-tuning script"
        )
    model = open_model_folder(folder, subfolder_option=None)
    config, architecture = model.config, model.architecture or "ARMHubertModel"
    if not isinstance(config, ARMHubertConfig) or architecture not in HEADS:
        kind = brief(architecture) if not str(architecture).isidentifier() else architecture
        kind = kind if isinstance(config, ARMHubertConfig) else f"a {type(config).__name__} model"
        raise UserError(
            f"{folder} holds {kind}, not a fine-tuned model (an ARMHuBERT CTC or classification head); evaluate a "
            "folder written by scripts/finetune_ctc.py or scripts/finetune_classification.py"
        )
    return model, HEADS[architecture]


def load_model(folder: ModelFolder, head: type[PreTrainedModel]) -> PreTrainedModel:
    """The fine-tuned model of the checked `folder`, in eval mode; refused when a weight is missing (it would be
    random) or not finite (every figure would be computed from NaN)."""
    model, missing = folder.load_with_missing(head.from_pretrained)
    refuse_missing(missing, folder.where, f"its {head.__name__}")
    check_finite_weights(
        model, f"the model {folder.where}", "its outputs would be NaN; evaluate a model that trained well"
    )
    return model.eval()


# ---- data: every source becomes a Dataset with `audio` (undecoded), `num_samples` and `target` (text or label name)


def _is_csv(data: str) -> bool:
    return Path(data).suffix.lower() == ".csv"


def _is_hub_id(data: str) -> bool:
    return not Path(data).exists() and data.count("/") <= 1 and not data.endswith(".csv") or data.startswith("hf://")


def _from_rows(paths: Sequence[Path], targets: Sequence[str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "audio": [{"bytes": None, "path": str(path)} for path in paths],
            "num_samples": [audio_num_samples(path) for path in paths],
            "target": list(targets),
        }
    )


def _from_csv(csv_path: str, column: str) -> datasets.Dataset:
    rows = read_csv_rows(csv_path, ("path", column))
    for number, row in enumerate(rows, 2):
        if not row["path"] or row[column] is None or (column == "label" and not row[column].strip()):
            raise DataError(f"{csv_path}:{number}: empty path or {column}")
    return _from_rows([csv_audio_path(csv_path, row["path"]) for row in rows], [row[column].strip() for row in rows])


def _from_datasets(dataset: datasets.Dataset, args: EvaluateArguments, column: str) -> datasets.Dataset:
    """A `datasets` dataset's audio and target columns, audio left undecoded (we decode with soundfile)."""
    missing = [name for name in (args.audio_column, column) if name not in dataset.column_names]
    if missing:
        raise DataError(
            f"the dataset has no column {', '.join(missing)} (columns: {', '.join(dataset.column_names)}); "
            "name them with --audio_column / --text_column / --label_column"
        )
    feature = dataset.features[column]
    dataset = dataset.cast_column(args.audio_column, datasets.Audio(decode=False))
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    return dataset.map(
        lambda audio, target: {
            "audio": audio,
            "num_samples": audio_num_samples(audio),
            "target": names[target] if names else str(target).strip(),
        },
        input_columns=[args.audio_column, column],
        remove_columns=dataset.column_names,
    )


def _saved_or_hub_dataset(args: EvaluateArguments) -> datasets.Dataset:
    return open_dataset(args.data.removeprefix("hf://"), args.split, args.dataset_config)


def audio_paths(dataset: datasets.Dataset, rows_at_once: int = 10_000) -> list[str]:
    """The files the rows' audio names (rows that carry their bytes name none), read from the Arrow columns
    without copying the audio bytes a dataset may embed."""
    paths, table = [], dataset.select_columns(["audio"]).with_format("arrow")
    for start in range(0, len(table), rows_at_once):
        for chunk in table[start : start + rows_at_once]["audio"].chunks:
            data = chunk.field("bytes")
            embedded = [0] * len(data)  # an all-None column has the null type: no bytes anywhere
            if not pyarrow.types.is_null(data.type):
                embedded = pyarrow.compute.binary_length(data).fill_null(0).to_pylist()
            paths += [path for path, inline in zip(chunk.field("path").to_pylist(), embedded) if path and not inline]
    return paths


def load_ctc_data(args: EvaluateArguments) -> datasets.Dataset:
    """Utterances with transcripts (`target`) from a LibriSpeech tree / split, a CSV, or a datasets dataset."""
    path = Path(args.data)
    if _is_csv(args.data):
        return _from_csv(args.data, "text")
    if is_saved_dataset(path) or (_is_hub_id(args.data) and args.split not in HUB_SPLITS):
        return _from_datasets(_saved_or_hub_dataset(args), args, args.text_column)
    if args.split:
        dataset = load_librispeech(args.data, args.split)
    elif not path.exists():
        raise DataError(f"{args.data} does not exist; give a LibriSpeech folder, a CSV file or a datasets dataset")
    else:  # a folder (EvaluateArguments.RULES): the folder of one split
        dataset = load_librispeech(path.parent, path.name)
    return dataset.rename_column("text", "target").select_columns(["audio", "num_samples", "target"])


def load_classification_data(args: EvaluateArguments) -> datasets.Dataset:
    """Utterances with label names (`target`) from label folders, a CSV, or a datasets dataset."""
    path = Path(args.data)
    if _is_csv(args.data):
        return _from_csv(args.data, "label")
    if is_saved_dataset(path) or _is_hub_id(args.data):
        return _from_datasets(_saved_or_hub_dataset(args), args, args.label_column)
    examples = examples_from_folder(path / args.split if args.split else path)
    return _from_rows([example_path for example_path, _ in examples], [label for _, label in examples])


def batches(dataset: datasets.Dataset, batch_size: int) -> Iterator[list[dict]]:
    for start in range(0, len(dataset), batch_size):
        yield [dataset[index] for index in range(start, min(start + batch_size, len(dataset)))]


def _check_lengths(dataset: datasets.Dataset, model: PreTrainedModel) -> None:
    lengths = list(dataset["num_samples"])
    check_unchunked_lengths(
        lengths,
        lambda row: dataset[row]["audio"].get("path") or f"row {row}",
        "evaluation runs whole utterances: cut them into utterances first",
    )
    short = [i for i, n in enumerate(lengths) if n < model.config.receptive_field]
    if short:
        path = dataset[short[0]]["audio"].get("path")
        raise DataError(
            f"{len(short)} utterance(s) are shorter than the model's {model.config.receptive_field}-sample receptive "
            f"field, e.g. {path}; remove them"
        )


def predict(model, extractor, dataset, batch_size, device, description) -> Iterator[tuple[list[dict], Any, Any]]:
    """(rows, model output, frame mask) per padded batch, with a progress bar on a terminal."""
    total = math.ceil(len(dataset) / batch_size)
    for rows in progress(batches(dataset, batch_size), total=total, description=description, unit="batch"):
        batch = decode_audio_batch(rows, extractor)
        with torch.inference_mode():
            output = model(batch.input_values.to(device), attention_mask=batch.attention_mask.to(device))
        frames = model._get_feat_extract_output_lengths(batch.attention_mask.sum(-1))
        yield rows, output, frames


def evaluate_ctc(model, folder: str, dataset, args: EvaluateArguments, device) -> dict[str, Any]:
    """WER and CER of greedy decoding against the normalised transcripts."""
    # Not AutoTokenizer: it would ask about remote code.
    tokenizer = load_folder_part(Wav2Vec2CTCTokenizer.from_pretrained, folder, "tokenizer")
    extractor = load_folder_part(AutoFeatureExtractor.from_pretrained, folder, "feature extractor")
    references, hypotheses = [], []
    for rows, output, frames in predict(model, extractor, dataset, args.batch_size, device, "evaluating"):
        ids = output.logits.argmax(-1).cpu()
        hypotheses += tokenizer.batch_decode([row_ids[:length] for row_ids, length in zip(ids, frames.tolist())])
        references += [normalize_transcript(row["target"], args.chars_to_ignore) for row in rows]
    if not any(reference.strip() for reference in references):
        raise DataError(f"every transcript in {args.data} is empty: nothing to compute WER / CER on")
    known = set(tokenizer.get_vocab()) | {" "}
    unknown = sorted({char for reference in references for char in reference} - known)
    result = error_rates(references, hypotheses)
    result.update(utterances=len(references), characters_outside_vocabulary=unknown)
    return result


def evaluate_classification(model, folder: str, dataset, args: EvaluateArguments, device) -> dict[str, Any]:
    """Accuracy and the confusion matrix (rows: true label, columns: predicted) in the model's label order."""
    label2id = {str(name): int(index) for name, index in model.config.label2id.items()}
    unknown = sorted(set(dataset["target"]) - set(label2id))
    if unknown:
        raise DataError(
            f"the data has labels the model was not trained on: {', '.join(unknown[:5])}; the model knows "
            + ", ".join(sorted(label2id, key=label2id.get))
        )
    extractor = load_folder_part(AutoFeatureExtractor.from_pretrained, folder, "feature extractor")
    true_ids, predicted_ids = [], []
    for rows, output, _ in predict(model, extractor, dataset, args.batch_size, device, "evaluating"):
        predicted_ids += output.logits.argmax(-1).cpu().tolist()
        true_ids += [label2id[row["target"]] for row in rows]
    labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
    return {
        "accuracy": float(np.mean(np.asarray(true_ids) == np.asarray(predicted_ids))),
        "utterances": len(true_ids),
        "labels": labels,
        "confusion_matrix": confusion_matrix(true_ids, predicted_ids, len(labels)).tolist(),
    }


def format_report(result: dict[str, Any]) -> list[str]:
    if "wer" in result:
        lines = [f"wer: {result['wer']:.4f} ({100 * result['wer']:.2f} %)"]
        lines.append(f"cer: {result['cer']:.4f} ({100 * result['cer']:.2f} %)")
        if result["characters_outside_vocabulary"]:
            chars = ", ".join(repr(char) for char in result["characters_outside_vocabulary"][:10])
            lines.append(f"note: the transcripts use characters the model cannot emit ({chars}); they count as errors")
        return lines
    lines = [f"accuracy: {result['accuracy']:.4f} ({100 * result['accuracy']:.2f} %)"]
    labels, matrix = result["labels"], result["confusion_matrix"]
    if len(labels) > MAX_MATRIX_LABELS:
        return lines + [f"confusion matrix: {len(labels)} labels, in --output_json only"]
    lines += ["", "confusion matrix (rows: true label, columns: predicted)", ""]
    lines += ["| true \\ predicted | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(str(count) for count in row) + " |" for label, row in zip(labels, matrix)]
    return lines


def evaluate(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate MODEL on --data; prints and returns the figures."""
    folder, args = parse_arguments(argv)
    model_folder, head = head_class(folder)
    is_ctc = head is ARMHubertForCTC
    with caches_outside_inputs():
        dataset = load_ctc_data(args) if is_ctc else load_classification_data(args)
    if not len(dataset):  # before anything reads its columns: a dataset mapped from no rows has none
        raise DataError(f"{args.data} holds no utterance to evaluate")
    if args.output_json is not None:  # apart from every audio file the data names, too
        check_output_json(args, [folder, args.data, *audio_paths(dataset)])
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    model = load_model(model_folder, head)
    _check_lengths(dataset, model)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    model.to(device)
    run = evaluate_ctc if is_ctc else evaluate_classification
    result = run(model, folder, dataset, args, device)
    seconds = sum(dataset["num_samples"]) / SAMPLING_RATE
    where = f"{args.data} {args.split}" if args.split else args.data
    print(
        f"model: {folder} ({'CTC' if is_ctc else 'classifier'}); data: {where}, {len(dataset)} utterances, {seconds:.1f} s"
    )
    print("\n".join(format_report(result)))
    if args.output_json:
        report = {"model": folder, "arguments": asdict(args), **result}
        atomic_write_text(args.output_json, json.dumps(report, indent=1, ensure_ascii=False), replace=args.overwrite)
        print(f"wrote {args.output_json}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, evaluate, argv)
