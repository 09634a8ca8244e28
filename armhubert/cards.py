"""Model cards of trained models: fine-tuned heads (`scripts/finetune_*.py`) and distilled students.

Converted release checkpoints have their own cards (`armhubert.convert.cards`). These cards state what
is known from the run only: the base model, the data as it really was (the bundled corpus is a
synthetic espeak-ng corpus in LibriSpeech layout, not LibriSpeech), the steps and the results, in the
text and in the YAML metadata the Hub reads.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .librispeech import BUNDLED_CORPUS, HUB_DATASET

BUNDLED_DESCRIPTION = (
    "the repository's bundled synthetic corpus (espeak-ng speech in LibriSpeech layout, `data/LibriSpeech`; "
    "not LibriSpeech: it shows that the pipeline runs, not how well a model does on real speech)"
)
TAGS = ["audio", "speech", "armhubert"]


def format_duration(seconds: float) -> str:
    """`1.5 h`, `12.3 min` or `45 s`: small corpora must not read as `0.0 h`."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def is_bundled_corpus(source: str | os.PathLike) -> bool:
    """Whether a data source is the bundled corpus (its `data/` folder or `data/LibriSpeech` itself)."""
    try:
        resolved = Path(source).resolve()
    except (OSError, ValueError):
        return False
    return resolved in (BUNDLED_CORPUS.resolve(), BUNDLED_CORPUS.resolve().parent)


def describe_data(source: str | os.PathLike, splits: str = "") -> tuple[str, list[str]]:
    """(one phrase for the card's text, Hub dataset ids for its metadata) of a data source and its splits."""
    where = f" ({splits})" if splits else ""
    if is_bundled_corpus(source):
        return BUNDLED_DESCRIPTION + where, []
    if str(source).lower() == HUB_DATASET or str(source).startswith("hf://"):
        return f"LibriSpeech{where} from the Hub (`{HUB_DATASET}`)", [HUB_DATASET]
    return f"the local data `{source}`{where}", []


def _hub_id(name: str | None) -> str | None:
    """`name` when it can be a Hub model id (not a local folder), for `base_model` metadata."""
    if not name or os.path.exists(name) or name.count("/") != 1 or name.startswith((".", "/")):
        return None
    return name


@dataclass
class TrainedModelFacts:
    """What a trained model's card says. `metrics`: name -> value (e.g. {"wer": 0.12}), from the evaluation."""

    title: str
    summary: str  # one sentence: what the model is and how it was made
    pipeline_tag: str
    base_model: str | None
    data_text: str
    datasets: list[str] = field(default_factory=list)
    steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    results_text: str = ""
    usage: str = ""
    extra_sections: Sequence[str] = ()


def trained_model_card(facts: TrainedModelFacts) -> str:
    """The README.md text: YAML metadata (library, pipeline, base model, data sets, metrics) and the body."""
    task_names = {"automatic-speech-recognition": "Speech recognition", "audio-classification": "Audio classification"}
    eval_results = [
        EvalResult(
            task_type=facts.pipeline_tag,
            task_name=task_names.get(facts.pipeline_tag),
            dataset_type=(facts.datasets or ["local"])[0],
            dataset_name=facts.data_text.split(" (")[0].strip("`"),
            metric_type=name,
            metric_value=round(float(value), 6),
        )
        for name, value in facts.metrics.items()
    ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=facts.pipeline_tag,
        base_model=_hub_id(facts.base_model),
        datasets=facts.datasets or None,
        tags=TAGS,
        model_name=facts.title if eval_results else None,
        eval_results=eval_results or None,
    )
    base = f"`{facts.base_model}`" if facts.base_model else "a randomly initialised model"
    body = "\n".join(
        part
        for part in (
            f"# {facts.title}\n",
            f"{facts.summary}\n",
            "| | |\n|---|---|",
            f"| base model | {base} |",
            f"| data | {facts.data_text} |",
            f"| training steps | {facts.steps} |\n",
            facts.results_text,
            facts.usage,
            *facts.extra_sections,
        )
        if part
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _pipeline_usage(task: str, output_dir: str, call: str) -> str:
    return (
        "```python\n"
        "from transformers import pipeline\n\n"
        f'model = pipeline(model="{output_dir}", trust_remote_code=True)  # the folder\'s own {task} pipeline\n'
        f"{call}  # 16 kHz mono array, or load_16k(path) from armhubert.audio\n"
        "```\n"
    )


def ctc_card(
    output_dir: str,
    base_model: str | None,
    preset: str | None,
    data_source: str,
    train_split: str,
    eval_split: str,
    train_size: int,
    metrics: dict,
    steps: int,
) -> str:
    """Card of a CTC model fine-tuned by `scripts/finetune_ctc.py`; `metrics` holds `eval_wer` / `eval_cer`."""
    data_text, datasets = describe_data(
        data_source, f"{train_split}, {train_size} utterances; evaluated on {eval_split}"
    )
    return trained_model_card(
        TrainedModelFacts(
            title=Path(output_dir).name,
            summary="Character-level CTC speech recognizer fine-tuned with `scripts/finetune_ctc.py`"
            + (f" from a random `{preset}` model." if not base_model else "."),
            pipeline_tag="automatic-speech-recognition",
            base_model=base_model,
            data_text=data_text,
            datasets=datasets,
            steps=steps,
            metrics={"wer": metrics["eval_wer"], "cer": metrics["eval_cer"]},
            results_text=f"**Result: WER {100 * metrics['eval_wer']:.2f} %, CER {100 * metrics['eval_cer']:.2f} % on "
            f"{eval_split} (greedy decoding, no language model).**\n",
            usage=_pipeline_usage("automatic-speech-recognition", output_dir, 'model(samples_16khz)["text"]'),
        )
    )


def classification_card(
    output_dir: str,
    base_model: str | None,
    preset: str | None,
    train_source: str,
    eval_source: str,
    labels: Sequence[str],
    train_size: int,
    metrics: dict,
    steps: int,
    crop_seconds: float | None = None,
) -> str:
    """Card of an utterance classifier fine-tuned by `scripts/finetune_classification.py`.

    `crop_seconds`: the length of the random training windows (`--crop_seconds`), None for whole utterances.
    """
    bundled = is_bundled_corpus(Path(train_source).parent.parent) or is_bundled_corpus(Path(train_source).parent)
    windows = f", trained on random {crop_seconds:g} s windows" if crop_seconds is not None else ""
    data_text = (
        f"`{train_source}` ({train_size} utterances, {len(labels)} classes{windows}; evaluated on `{eval_source}`)"
    )
    if bundled:
        data_text += f", from {BUNDLED_DESCRIPTION}"
    return trained_model_card(
        TrainedModelFacts(
            title=Path(output_dir).name,
            summary=f"Utterance classifier ({len(labels)} classes) fine-tuned with `scripts/finetune_classification.py`"
            + (f" from a random `{preset}` model." if not base_model else "."),
            pipeline_tag="audio-classification",
            base_model=base_model,
            data_text=data_text,
            steps=steps,
            metrics={"accuracy": metrics["eval_accuracy"]},
            results_text=f"**Result: accuracy {100 * metrics['eval_accuracy']:.2f} % on `{eval_source}`.**\n",
            usage=_pipeline_usage("audio-classification", output_dir, "model(samples_16khz, top_k=3)"),
        )
    )


def last_logged(log_history: Sequence[dict], key: str) -> float | None:
    """The last value of `key` (e.g. "loss", "eval_loss") in a Trainer's log history, None when never logged."""
    values = [entry[key] for entry in log_history if key in entry]
    return float(values[-1]) if values else None


@dataclass
class DistillationFacts:
    """What a distilled student's card says, gathered when the run ends."""

    output_dir: str
    teacher: str
    recipe: str  # distill_mode: masking, star or regression
    student_layout: str  # the preset or config the student was built from (its size may be overridden)
    parameters: int
    data_source: str
    train_splits: Sequence[str]
    train_utterances: int
    train_seconds: float
    steps: int
    final_train_loss: float | None
    final_eval_loss: float | None


def distilled_card(facts: DistillationFacts) -> str:
    """Card of a student written by `distill_trainer.py`: teacher, recipe, data, steps and final losses."""
    splits = ", ".join(facts.train_splits)
    data_text, datasets = describe_data(
        facts.data_source, f"{splits}: {facts.train_utterances} utterances, {format_duration(facts.train_seconds)}"
    )
    losses = {"final training loss": facts.final_train_loss, "final validation loss": facts.final_eval_loss}
    results = "\n".join(f"- {name}: {value:.4g}" for name, value in losses.items() if value is not None)
    teacher_id = facts.teacher if _hub_id(facts.teacher) else None
    return trained_model_card(
        TrainedModelFacts(
            title=Path(facts.output_dir).name,
            summary=f"A {facts.parameters:,}-parameter ARMHubert-family student distilled from `{facts.teacher}` with the "
            f"`{facts.recipe}` recipe of `distill_trainer.py` (layout: `{facts.student_layout}`, with the recipe's "
            "size overrides). It turns raw 16 kHz audio into frame features; its recipe is in `distill_recipe.yaml`.",
            pipeline_tag="feature-extraction",
            base_model=teacher_id,
            data_text=data_text,
            datasets=datasets,
            steps=facts.steps,
            results_text=f"## Final losses\n\n{results}\n" if results else "",
            usage=(
                "```python\n"
                "from transformers import AutoModel, pipeline\n\n"
                f'model = AutoModel.from_pretrained("{facts.output_dir}", trust_remote_code=True)\n'
                f'extract = pipeline(model="{facts.output_dir}", trust_remote_code=True)  # audio-feature-extraction\n'
                'features = extract(samples_16khz)["features"]  # (layers, frames, width)\n'
                "```\n"
            ),
        )
    )
