"""Model cards: what every card shares, and the cards of trained models.

Shared by every card (also the converted releases' cards in `armhubert.convert.cards`): the YAML front
matter (`card_metadata`: license, library, tags), rendering (`render_card`), and the escaping of every
user-supplied string for where it lands (`markdown_text`, `inline_code`, `python_string`, `table_row`,
`code_link`): a file or folder name, a data path or a split name can hold Markdown, HTML, backticks or
quotes, and must show as written, never as a link, an image, or code that runs when a reader copies it.

The cards of trained models (fine-tuned heads from `scripts/finetune_*.py`, distilled students) state
what is known from the run only: the base model, the data as it really was (the bundled corpus is a
synthetic espeak-ng corpus in LibriSpeech layout, not LibriSpeech), the steps and the results, in the
text and in the YAML metadata the Hub reads.
"""

import os
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..resources import BUNDLED_CORPUS, HUB_DATASET, is_hub_librispeech

LICENSE = "apache-2.0"  # the original release's license, and this project's
BASE_TAGS = ("audio", "speech")
TRAINED_TAGS = ("armhubert",)  # trained models are of this project's model type

# ----------------------------------------------------------------------------------------------------
# What every card shares: front matter, rendering, escaping of user-supplied text


def card_metadata(pipeline_tag: str, tags: Iterable[str] = (), **fields) -> ModelCardData:
    """The YAML front matter of every card: license, library, pipeline, BASE_TAGS then `tags`, and `fields`
    (base_model, datasets, eval_results, ...; None values are left out)."""
    return ModelCardData(
        license=LICENSE,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=[*BASE_TAGS, *tags],
        **fields,
    )


def render_card(metadata: ModelCardData, body: str) -> ModelCard:
    """The README.md of a model folder: front matter, then the Markdown body."""
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}")


# Control characters (newlines included) would end a heading, a table row or a line of code.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
# What Markdown or HTML could read as markup inside a line: escapes, code, emphasis, links, images, tags,
# entities, heading ends, strike-through. (`|` only matters in tables: `table_row` escapes it.)
_MARKUP = re.compile(r"([\\`*_{}\[\]<>()#!~&])")


def _one_line(text: object) -> str:
    return _CONTROL.sub(" ", str(text))


def markdown_text(text: object) -> str:
    """`text` as literal Markdown text on one line: every markup character backslash-escaped, so that
    `<img src=x onerror=alert(1)>` or `[click me](javascript:alert(1))` show as written."""
    return _MARKUP.sub(r"\\\1", _one_line(text))


def inline_code(text: object) -> str:
    """`text` as a Markdown code span on one line, fenced by more backticks than it holds in a row."""
    text = _one_line(text)
    if not text.strip():
        return "` `" if not text else f"`{text}`"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padded = text.startswith(("`", " ")) or text.endswith(("`", " "))  # one space each side is stripped
    return f"{fence} {text} {fence}" if padded else f"{fence}{text}{fence}"


def python_string(text: object) -> str:
    """`text` as a Python string literal (`repr`): in double quotes when it holds no quote, as cards write."""
    text = str(text)
    literal = repr(text)
    return f'"{literal[1:-1]}"' if "'" not in text and '"' not in text else literal


def table_row(*cells: str) -> str:
    """One Markdown table row of already-escaped cells; a `|` inside a cell is escaped (also in code spans)."""
    return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"


def code_link(text: str, target: str) -> str:
    """A link showing `text` as code, to the relative path `target` (percent-encoded)."""
    return f"[{inline_code(text)}]({urllib.parse.quote(target)})"


# ----------------------------------------------------------------------------------------------------
# Cards of trained models

BUNDLED_DESCRIPTION = (
    "the repository's bundled synthetic corpus (espeak-ng speech in LibriSpeech layout, `data/LibriSpeech`; "
    "not LibriSpeech: it shows that the pipeline runs, not how well a model does on real speech)"
)
BUNDLED_NAME = "the repository's bundled synthetic corpus"


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
    """(one phrase for the card's text, Hub dataset ids for its metadata) of a data source and its splits.

    `splits` is Markdown (its user-supplied parts already escaped with `markdown_text`).
    """
    where = f" ({splits})" if splits else ""
    if is_bundled_corpus(source):
        return BUNDLED_DESCRIPTION + where, []
    if is_hub_librispeech(source):
        return f"LibriSpeech{where} from the Hub (`{HUB_DATASET}`)", [HUB_DATASET]
    return f"the local data {inline_code(source)}{where}", []


def data_name(source: str | os.PathLike) -> str:
    """The data's name in the card's metadata (plain text: the YAML writer quotes it)."""
    if is_bundled_corpus(source):
        return BUNDLED_NAME
    return "LibriSpeech" if is_hub_librispeech(source) else str(source)


def _hub_id(name: str | None) -> str | None:
    """`name` when it can be a Hub model id (not a local folder), for `base_model` metadata."""
    if not name or os.path.exists(name) or name.count("/") != 1 or name.startswith((".", "/")):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


@dataclass
class TrainedModelFacts:
    """What a trained model's card says. `metrics`: name -> value (e.g. {"wer": 0.12}), from the evaluation.

    `title` and `base_model` are plain text (escaped where they land); `summary`, `data_text`,
    `results_text`, `usage` and `extra_sections` are Markdown whose user-supplied parts are already
    escaped; `data_name` is the data's plain name for the metadata.
    """

    title: str
    summary: str  # one sentence: what the model is and how it was made
    pipeline_tag: str
    base_model: str | None
    data_text: str
    data_name: str = "local"
    datasets: list[str] = field(default_factory=list)
    steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    results_text: str = ""
    usage: str = ""
    extra_sections: Sequence[str] = ()


def trained_model_card(facts: TrainedModelFacts) -> str:
    """The README.md text: YAML metadata (license, library, pipeline, base model, data sets, metrics) and the body."""
    task_names = {"automatic-speech-recognition": "Speech recognition", "audio-classification": "Audio classification"}
    eval_results = [
        EvalResult(
            task_type=facts.pipeline_tag,
            task_name=task_names.get(facts.pipeline_tag),
            dataset_type=(facts.datasets or ["local"])[0],
            dataset_name=facts.data_name,
            metric_type=name,
            metric_value=round(float(value), 6),
        )
        for name, value in facts.metrics.items()
    ]
    metadata = card_metadata(
        facts.pipeline_tag,
        TRAINED_TAGS,
        base_model=_hub_id(facts.base_model),
        datasets=facts.datasets or None,
        model_name=facts.title if eval_results else None,
        eval_results=eval_results or None,
    )
    base = inline_code(facts.base_model) if facts.base_model else "a randomly initialised model"
    body = "\n".join(
        part
        for part in (
            f"# {markdown_text(facts.title)}\n",
            f"{facts.summary}\n",
            "| | |\n|---|---|",
            table_row("base model", base),
            table_row("data", facts.data_text),
            table_row("training steps", str(facts.steps)) + "\n",
            facts.results_text,
            facts.usage,
            *facts.extra_sections,
        )
        if part
    )
    return str(render_card(metadata, body))


def _pipeline_usage(task: str, output_dir: str, call: str) -> str:
    return (
        "```python\n"
        "from transformers import pipeline\n\n"
        f"model = pipeline(model={python_string(output_dir)}, trust_remote_code=True)  # the folder's own {task} pipeline\n"
        f"{call}  # 16 kHz mono array, or load_16k(path) from armhubert.speech.audio\n"
        "```\n"
    )


def _from_preset(base_model: str | None, preset: str | None) -> str:
    """The end of a fine-tuned card's summary: from a random preset, or from the base model (in the table)."""
    return f" from a random {inline_code(preset)} model." if not base_model else "."


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
        data_source,
        f"{markdown_text(train_split)}, {train_size} utterances; evaluated on {markdown_text(eval_split)}",
    )
    return trained_model_card(
        TrainedModelFacts(
            title=Path(output_dir).name,
            summary="Character-level CTC speech recognizer fine-tuned with `scripts/finetune_ctc.py`"
            + _from_preset(base_model, preset),
            pipeline_tag="automatic-speech-recognition",
            base_model=base_model,
            data_text=data_text,
            data_name=data_name(data_source),
            datasets=datasets,
            steps=steps,
            metrics={"wer": metrics["eval_wer"], "cer": metrics["eval_cer"]},
            results_text=f"**Result: WER {100 * metrics['eval_wer']:.2f} %, CER {100 * metrics['eval_cer']:.2f} % on "
            f"{markdown_text(eval_split)} (greedy decoding, no language model).**\n",
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
        f"{inline_code(train_source)} ({train_size} utterances, {len(labels)} classes{windows}; evaluated on "
        f"{inline_code(eval_source)})"
    )
    if bundled:
        data_text += f", from {BUNDLED_DESCRIPTION}"
    return trained_model_card(
        TrainedModelFacts(
            title=Path(output_dir).name,
            summary=f"Utterance classifier ({len(labels)} classes) fine-tuned with `scripts/finetune_classification.py`"
            + _from_preset(base_model, preset),
            pipeline_tag="audio-classification",
            base_model=base_model,
            data_text=data_text,
            data_name=str(train_source),
            steps=steps,
            metrics={"accuracy": metrics["eval_accuracy"]},
            results_text=f"**Result: accuracy {100 * metrics['eval_accuracy']:.2f} % on {inline_code(eval_source)}.**\n",
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
    splits = markdown_text(", ".join(facts.train_splits))
    data_text, datasets = describe_data(
        facts.data_source, f"{splits}: {facts.train_utterances} utterances, {format_duration(facts.train_seconds)}"
    )
    losses = {"final training loss": facts.final_train_loss, "final validation loss": facts.final_eval_loss}
    results = "\n".join(f"- {name}: {value:.4g}" for name, value in losses.items() if value is not None)
    teacher_id = facts.teacher if _hub_id(facts.teacher) else None
    folder = python_string(facts.output_dir)
    return trained_model_card(
        TrainedModelFacts(
            title=Path(facts.output_dir).name,
            summary=f"A {facts.parameters:,}-parameter ARMHubert-family student distilled from "
            f"{inline_code(facts.teacher)} with the {inline_code(facts.recipe)} recipe of `distill_trainer.py` "
            f"(layout: {inline_code(facts.student_layout)}, with the recipe's size overrides). It turns raw 16 kHz "
            "audio into frame features; its recipe is in `distill_recipe.yaml`.",
            pipeline_tag="feature-extraction",
            base_model=teacher_id,
            data_text=data_text,
            data_name=data_name(facts.data_source),
            datasets=datasets,
            steps=facts.steps,
            results_text=f"## Final losses\n\n{results}\n" if results else "",
            usage=(
                "```python\n"
                "from transformers import AutoModel, pipeline\n\n"
                f"model = AutoModel.from_pretrained({folder}, trust_remote_code=True)\n"
                f"extract = pipeline(model={folder}, trust_remote_code=True)  # audio-feature-extraction\n"
                'features = extract(samples_16khz)["features"]  # (layers, frames, width)\n'
                "```\n"
            ),
        )
    )
