"""Model cards: one `README.md` per converted variant, and one for a multi-variant repository.

A variant's card says what the model is, its shape and size, the published SUPERB results of its
release (only for a checkpoint of that release's shape), how to load it, which outputs to use, how it
differs from the original implementation, and how to cite it.
"""

import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from huggingface_hub import ModelCard, ModelCardData

from configuration_armhubert import SAMPLING_RATE, ARMHubertConfig

from ..folders.cards import card_metadata, code_link, inline_code, markdown_text, python_string, render_card, table_row
from ..progress import progress
from .releases import (
    COMPUTE_CLAIMS,
    MACS_NOTE,
    PAPER_RESULTS,
    PLOT_READINGS,
    SUPERB_COLUMNS,
    Release,
    paper_results,
)

FAMILY_TITLES = {
    "armhubert": "ARMHuBERT",
    "armwavlm": "ARMwavLM",
    "maskhubert": "MaskHuBERT",
    "starhubert": "STaRHuBERT",
}
CITATIONS = {
    "recycle-and-distill": """@inproceedings{jang2023recycle,
  title     = {Recycle-and-Distill: Universal Compression Strategy for Transformer-based Speech SSL Models
               with Attention Map Reusing and Masking Distillation},
  author    = {Jang, Kangwook and Kim, Sungnyun and Yun, Se-Young and Kim, Hoirin},
  booktitle = {Interspeech 2023},
  year      = {2023},
  note      = {arXiv:2305.11685}
}""",
    "star": """@inproceedings{jang2024star,
  title     = {STaR: Distilling Speech Temporal Relation for Lightweight Speech Self-Supervised Learning Models},
  author    = {Jang, Kangwook and Kim, Sungnyun and Kim, Hoirin},
  booktitle = {ICASSP 2024},
  year      = {2024},
  note      = {arXiv:2312.09040}
}""",
}
_REUSE_METHOD = (
    "Recycle-and-Distill: attention-map reuse (the reusing layers have no query/key projections) and masking "
    "distillation"
)
METHODS = {
    "armhubert": _REUSE_METHOD,
    "armwavlm": _REUSE_METHOD,
    "maskhubert": "Recycle-and-Distill's masking distillation, without attention-map reuse",
    "starhubert": "speech temporal-relation (STaR) distillation",
}
_PLACEHOLDER_REPO = "path/to/this/repository"  # shown in load examples when no Hub id is known
_REMOTE_FORMAT = "ARMHuBERT (remote code)"
_LICENSE_SECTION = "## License\n\nApache-2.0, as the original release.\n"


@dataclass
class CardFacts:
    """What a variant's card says, gathered during conversion."""

    title: str
    release: Release | None
    family: str
    output_format: str
    parameters: int
    hubert_additions: dict[str, int]  # what HubertModel has that the original has not: description -> parameters
    source_name: str
    source_sha256: str
    config: ARMHubertConfig


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    blocks = math.ceil(os.path.getsize(path) / (1 << 20))
    with open(path, "rb") as handle:
        for block in progress(iter(lambda: handle.read(1 << 20), b""), blocks, "checksum", "MiB"):
            digest.update(block)
    return digest.hexdigest()


RELEASE_TAGS = ("self-supervised-learning", "knowledge-distillation", "hubert")


def card_data(families: Iterable[str], releases_known: bool = True) -> ModelCardData:
    """The card's YAML metadata (`armhubert.folders.cards.card_metadata`): the release tags, one tag per family and,
    only for identified releases (all distilled on LibriSpeech), data set and language.

    `pipeline_tag` is the Hub's feature-extraction category: the folders carry the audio version of that
    pipeline (`audio-feature-extraction`, custom code; the cards show how to call it).
    """
    known = dict(datasets=["librispeech_asr"], language=["en"]) if releases_known else {}
    return card_metadata("feature-extraction", [*RELEASE_TAGS, *sorted(set(families))], **known)


def _card(families, body, releases_known=True):
    return render_card(card_data(families, releases_known), body)


def _layer_list(indices):
    return ", ".join(str(index) for index in indices)


def describe_architecture(config: ARMHubertConfig) -> str:
    """One sentence of the model's shape: CNN, frame rate, layers, widths, map reuse and heads."""
    layers = f"{config.num_hidden_layers} {'pre' if config.do_stable_layer_norm else 'post'}-LN transformer layers"
    text = (
        f"{len(config.conv_dim)}-layer CNN feature encoder ({config.inputs_to_logits_ratio} samples per frame, "
        f"{SAMPLING_RATE / config.inputs_to_logits_ratio:g} frames/s at 16 kHz); {layers} of width "
        f"{config.hidden_size}, feed-forward {config.intermediate_size}, {config.num_attention_heads} attention heads"
    )
    reusing = [index + 1 for index, flag in enumerate(config.layer_reuses_attention_map) if flag]
    if reusing:
        text += (
            f"; layers {_layer_list(reusing)} have no query/key projections and reuse the attention map of the "
            "most recent layer that computes one"
        )
    if config.has_projection_heads:
        text += f"; one projection head per layer, Linear({config.hidden_size} → {config.projection_head_size})"
    else:
        text += "; no projection heads"
    return text


def _what_it_is(facts):
    release, family = facts.release, FAMILY_TITLES[facts.family]
    if release is None:
        return (
            f"A speech encoder of the {family} family, converted from an original checkpoint. Which release it is "
            "could not be determined (convert with `--release NAME` to name it), so no published results are listed."
        )
    source = " ".join(
        part
        for part in (
            f"from {release.teacher}" if release.teacher else "",
            f"on LibriSpeech {release.hours} h" if release.hours else "on LibriSpeech",
        )
        if part
    )
    return (
        f"**{release.name}** is a compressed self-supervised speech encoder distilled {source} with "
        f"{METHODS[release.family]}. It turns raw 16 kHz audio into frame features for downstream speech tasks."
    )


def _parameters_cell(facts):
    text = f"{facts.parameters:,} (counted from the weights"
    if facts.hubert_additions:
        added = sum(facts.hubert_additions.values())
        text += f"; {added:,} of them are `HubertModel`'s own: {' and '.join(facts.hubert_additions)}"
    paper = paper_results(facts.release)
    if paper:
        text += f"; paper: {paper['params M']} M"
    return text + ")"


def _macs_cell(facts):
    paper = paper_results(facts.release)
    if paper and paper["MACs G"]:
        return f"{paper['MACs G']} G ({MACS_NOTE})"
    if facts.release and facts.release.name in COMPUTE_CLAIMS:
        return f"not reported in G ({COMPUTE_CLAIMS[facts.release.name]})"
    return "not reported"


def _results_section(facts):
    release = facts.release
    if release is None:
        return ""
    if release.name in PLOT_READINGS:
        return (
            f"## Published results\n\nThe STaR paper shows this model in a plot only: {PLOT_READINGS[release.name]}.\n"
        )
    rows = [PAPER_RESULTS[release.name]]
    names = [release.name]
    if release.teacher in PAPER_RESULTS:
        rows.append(PAPER_RESULTS[release.teacher])
        names.append(f"{release.teacher} (teacher)")
    columns = SUPERB_COLUMNS[2:]
    lines = [
        "| model | " + " | ".join(title for _, title in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, row in zip(names, rows):
        lines.append(f"| {name} | " + " | ".join(row[key] or "–" for key, _ in columns) + " |")
    return (
        "## SUPERB results (from the paper)\n\n"
        + "\n".join(lines)
        + "\n\nOverall is the mean over the 11 metrics with error rates as (100 − x) and MTWV × 100. The numbers were "
        "obtained with the original code and s3prl's downstream recipes; this conversion has the same weights.\n"
    )


def _load_arguments(repo, subfolder):
    return python_string(repo) + (f", subfolder={python_string(subfolder)}" if subfolder else "")


def _remote_code_argument(output_format):
    """`from_pretrained`'s extra argument: remote code for our format, none for a plain `HubertModel`."""
    return "" if output_format == "hubert" else ", trust_remote_code=True"


def _usage_section(facts, repo, subfolder):
    arguments = _load_arguments(repo, subfolder)
    config = facts.config
    if config.has_projection_heads:
        layers = (
            f"torch.stack(outputs.projected_hidden_states)  # ({config.num_hidden_layers}, batch, frames, "
            f"{config.projection_head_size})"
        )
    else:
        layers = (
            f"torch.stack(outputs.hidden_states[1:])  # ({config.num_hidden_layers}, batch, frames, "
            f"{config.hidden_size})"
        )
    loading = (
        "A plain `transformers` `HubertModel`: no remote code is needed, and `HubertForCTC` / "
        "`HubertForSequenceClassification` `.from_pretrained(...)` start fine-tuning from these weights."
        if facts.output_format == "hubert"
        else "The model code (`modeling_armhubert.py`, `attention_armhubert.py`, `ops_armhubert.py`, `configuration_armhubert.py`, `pipeline_armhubert.py`) "
        "ships with the repository, "
        "hence `trust_remote_code=True`."
    )
    return f"""## How to use

{loading}

```python
import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained({arguments}{_remote_code_argument(facts.output_format)}).eval()
extractor = AutoFeatureExtractor.from_pretrained({arguments})
waveforms = [np.zeros(16000, np.float32), np.zeros(24000, np.float32)]  # 16 kHz mono, not normalised
batch = extractor(waveforms, sampling_rate=16000, padding=True, return_tensors="pt")
with torch.no_grad():
    outputs = model(batch.input_values, attention_mask=batch.attention_mask, output_hidden_states=True)
layer_features = {layers}
```

Pass `attention_mask` for padded batches.{_pipeline_snippet(facts)}
"""


def _pipeline_snippet(facts):
    """How to call the folder's own `audio-feature-extraction` pipeline (ARMHuBERT format only)."""
    if facts.output_format == "hubert":
        return ""
    return """ The folder also carries an `audio-feature-extraction` pipeline (the built-in `feature-extraction`
task takes text only); it returns the per-layer features SUPERB-style models use:

```python
from transformers import pipeline

extract = pipeline("audio-feature-extraction", model=model, feature_extractor=extractor)
out = extract(np.zeros(16000, np.float32))  # or an audio file path
features = out["features"]  # (layers, frames, width) numpy array; out["layers"] numbers them
```"""


def _outputs_section(facts):
    config = facts.config
    if config.has_projection_heads:
        text = (
            f"For SUPERB-style learned weighted sums use the {config.num_hidden_layers} `projected_hidden_states` "
            f"(each layer's output through its projection head, {config.projection_head_size}-d): that is the set "
            "the published numbers used. `hidden_states` holds the encoder input and every layer's raw "
            f"{config.hidden_size}-d output; `last_hidden_state` is the last head's output."
        )
    else:
        text = (
            f"For SUPERB-style learned weighted sums use `hidden_states[1:]`, the {config.num_hidden_layers} layer "
            f"outputs ({config.hidden_size}-d): that is the set the published numbers used (`hidden_states[0]` is the "
            "encoder input). `last_hidden_state` is the last layer's output."
        )
    if facts.output_format == "armhubert":
        text += " In padded batches `frame_attention_mask` marks the real frames (1) and padding (0)."
    return f"## Which outputs to use\n\n{text}\n"


def _differences_section(facts):
    if any(facts.config.layer_reuses_attention_map):
        reuse = (
            "- **Batch invariance (a fix).** The original code paired a reused attention map with the wrong "
            "utterance and head whenever a batch held more than one utterance, so its batched outputs depended on "
            "the other utterances in the batch (1e-2 to 3.5e-2 max-abs on a small test model). Here maps are paired "
            "per utterance and head: each row of a batch equals that utterance run alone; with batch size 1 "
            "nothing changes.\n"
            "- Reusing layers apply softmax again to the reused probability map, as the original does; the released "
            'weights were trained that way (`reuse_softmax="resoftmax"`).\n'
        )
    else:
        reuse = (
            "- The original's batch-mixing defect concerned attention-map reuse only; this model reuses no maps, so "
            "batched and single-utterance outputs agree with the original alike.\n"
        )
    hubert = "".join(f"- Stored as a plain `HubertModel`: {addition}.\n" for addition in facts.hubert_additions)
    weights = "the released student's" if facts.release else "the checkpoint's student weights"  # release unknown
    return (
        "## Numerics and differences from the original implementation\n\n"
        f"The weights are {weights}, "
        "unchanged (the teacher and optimizer state of the original checkpoint are not included), and the outputs "
        "equal the original code's to float32 rounding.\n\n"
        + reuse
        + hubert
        + "- As in the original (and `transformers`' group-norm HuBERT), the first CNN layer's GroupNorm takes "
        "statistics over the whole padded time axis, so a padded row equals the zero-padded utterance run alone.\n"
    )


def _citation(facts):
    key = "star" if facts.family == "starhubert" else "recycle-and-distill"
    return f"## Citation\n\n```bibtex\n{CITATIONS[key]}\n```\n"


def model_card(facts: CardFacts, repo: str | None = None, subfolder: str | None = None) -> ModelCard:
    """The `README.md` card of one converted variant; `repo` / `subfolder` appear in its load example."""
    repo = repo or _PLACEHOLDER_REPO
    provenance = f"Converted from {inline_code(facts.source_name)} (sha256 `{facts.source_sha256}`)"
    if facts.release is not None:
        provenance += f", published in {facts.release.source}"
    output_format = "plain transformers `HubertModel`" if facts.output_format == "hubert" else _REMOTE_FORMAT
    table = "\n".join(
        [
            "| | |",
            "|---|---|",
            table_row("architecture", describe_architecture(facts.config)),
            table_row("parameters", _parameters_cell(facts)),
            table_row("MACs", _macs_cell(facts)),
            table_row("teacher", (facts.release and facts.release.teacher) or "not stated"),
            table_row("input", "raw 16 kHz mono audio, not normalised"),
            table_row("format", output_format),
        ]
    )
    body = "\n".join(
        [
            f"# {markdown_text(facts.title)}\n",
            _what_it_is(facts) + "\n",
            table + "\n",
            f"{provenance}.\n",
            _results_section(facts),
            _usage_section(facts, repo, subfolder),
            _outputs_section(facts),
            _differences_section(facts),
            _citation(facts),
            _LICENSE_SECTION,
        ]
    )
    return _card([facts.family], body, releases_known=facts.release is not None)


def _variant_link(title):
    """A link to a variant's card in its subfolder."""
    return code_link(title, f"{title}/README.md")


def repository_card(
    title: str, variants: Sequence[CardFacts], repo: str | None = None, default: CardFacts | None = None
) -> ModelCard:
    """The root `README.md` of a multi-variant repository: which model the bare id loads (`default`, a copy of
    that subfolder at the root), what each subfolder holds and how to load it."""
    repo = repo or _PLACEHOLDER_REPO
    lines = ["| subfolder | parameters | MACs | SUPERB overall (paper) | format |", "|---|---|---|---|---|"]
    for facts in variants:
        paper = paper_results(facts.release)
        overall = paper["overall"] if paper else "–"
        output_format = "`HubertModel`" if facts.output_format == "hubert" else _REMOTE_FORMAT
        macs = f"{paper['MACs G']} G" if paper and paper["MACs G"] else "not reported"
        lines.append(table_row(_variant_link(facts.title), f"{facts.parameters:,}", macs, overall, output_format))
    example = next((facts for facts in variants if facts is not default), variants[0])
    arguments = _load_arguments(repo, example.title)
    root_section = ""
    if default is not None:
        root_arguments = _load_arguments(repo, None)
        root_section = f"""The repository id alone loads **{markdown_text(default.title)}** (the root holds a copy of the
{_variant_link(default.title)} subfolder; its card describes it):

```python
model = AutoModel.from_pretrained({root_arguments}{_remote_code_argument(default.output_format)})
```

"""
    subfolders = ", ".join(inline_code(facts.title) for facts in variants)
    body = f"""# {markdown_text(title)}

Compressed self-supervised speech encoders (ARMHuBERT, ARMwavLM, MaskHuBERT, STaRHuBERT), converted from the
original release checkpoints. Each model sits in its own subfolder, with its own card (architecture, published
SUPERB results, which outputs to use, differences from the original code).

{root_section}Subfolders ({subfolders}): pass `subfolder=` to load one of them.

{chr(10).join(lines)}

MACs {MACS_NOTE}.

```python
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained({arguments}{_remote_code_argument(example.output_format)})
extractor = AutoFeatureExtractor.from_pretrained({arguments})
```

{_LICENSE_SECTION}"""
    return _card([facts.family for facts in variants], body, all(facts.release is not None for facts in variants))
