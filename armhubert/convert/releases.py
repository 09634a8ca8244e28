"""The released models: names, provenance, published (paper) results, and which release a checkpoint is.

A release name is only accepted for a checkpoint of the release's public shape, so a card never shows
another model's results. Paper figures: SUPERB as reported in Recycle-and-Distill (Interspeech 2023)
and STaR (ICASSP 2024).
"""

import os
from dataclasses import dataclass
from pathlib import Path

from configuration_armhubert import ARMHubertConfig

from ..cli import UserError
from .original import TrainingConfig

HUB_SOURCE = "the `sungnyun/ARMHuBERT` Hub repository"
STAR_SOURCE = "the STaRHuBERT release (`.ckpt` + `.yaml` pairs)"


@dataclass(frozen=True)
class Release:
    """One released model. `preset` names the `ARMHubertConfig` preset of its public shape (None: not public)."""

    name: str
    family: str
    teacher: str | None
    hours: int | None
    preset: str | None
    source: str


RELEASES = {
    release.name.lower(): release
    for release in [
        Release("ARMHuBERT-960h", "armhubert", "HuBERT Base", 960, "armhubert-960h", HUB_SOURCE),
        Release("ARMHuBERT-S-100h", "armhubert", "HuBERT Base", 100, "armhubert-s-100h", HUB_SOURCE),
        Release("ARMHuBERT-S-960h", "armhubert", "HuBERT Base", 960, "armhubert-s-960h", HUB_SOURCE),
        Release("ARMwavLM-S-100h", "armwavlm", "WavLM Base", 100, "armwavlm-s-100h", HUB_SOURCE),
        Release("ARMwavLM-S-960h", "armwavlm", "WavLM Base", 960, "armwavlm-s-960h", HUB_SOURCE),
        Release("MaskHuBERT-960h", "maskhubert", "HuBERT Base", 960, "maskhubert-960h", HUB_SOURCE),
        Release("STaRHuBERT", "starhubert", "HuBERT Base", 960, "starhubert", STAR_SOURCE),
        Release("STaRHuBERT-100h", "starhubert", "HuBERT Base", 100, "starhubert", STAR_SOURCE),
        # Shapes not public: the checkpoint's YAML is authoritative, so no shape check.
        Release("STaRHuBERT-L", "starhubert", "HuBERT Base", 960, None, STAR_SOURCE),
        Release("STaRHuBERT-S", "starhubert", None, None, None, STAR_SOURCE),
        Release("STaRHuBERT-XS", "starhubert", None, None, None, STAR_SOURCE),
    ]
}

# SUPERB as reported in the two papers (Recycle-and-Distill, STaR); blank = not reported.
SUPERB_COLUMNS = [
    ("params M", "params (M)"),
    ("MACs G", "MACs (G)"),
    ("overall", "overall ↑"),
    ("PR", "PR PER ↓"),
    ("ASR", "ASR WER ↓"),
    ("KS", "KS acc ↑"),
    ("QbE", "QbE MTWV ↑"),
    ("SID", "SID acc ↑"),
    ("ASV", "ASV EER ↓"),
    ("SD", "SD DER ↓"),
    ("IC", "IC acc ↑"),
    ("SF-F1", "SF F1 ↑"),
    ("SF-CER", "SF CER ↓"),
    ("ER", "ER acc ↑"),
]
_PAPER_TABLE = """
HuBERT Base      | 94.70 | 1669  | 80.8 | 5.41  | 6.42  | 96.30 | 0.0736 | 81.42 | 5.11 | 5.88 | 98.34 | 88.53 | 25.20 | 64.92
WavLM Base       | 94.70 |       | 81.9 | 4.84  | 6.21  | 96.79 | 0.0870 | 84.51 | 4.69 | 4.55 | 98.63 | 89.38 | 22.86 | 65.94
MaskHuBERT-960h  | 26.64 |       | 77.8 | 7.30  | 9.77  | 96.36 | 0.0664 | 62.83 | 5.38 | 6.79 | 97.05 | 87.31 | 27.10 | 62.37
ARMHuBERT-960h   | 26.45 |       | 78.1 | 7.72  | 9.96  | 96.88 | 0.0635 | 65.03 | 5.68 | 7.10 | 97.07 | 87.59 | 26.06 | 62.86
ARMHuBERT-S-960h | 22.39 | 449.4 | 77.5 | 8.63  | 10.82 | 96.82 | 0.0720 | 63.76 | 5.58 | 7.01 | 97.02 | 86.34 | 29.02 | 62.96
ARMwavLM-S-960h  | 22.39 |       | 78.9 | 7.42  | 10.03 | 97.01 | 0.0741 | 71.29 | 5.99 | 7.11 | 97.76 | 87.41 | 26.97 | 64.54
ARMHuBERT-S-100h | 22.39 | 449.4 | 76.8 | 9.17  | 11.83 | 96.01 | 0.0569 | 66.48 | 5.92 | 6.23 | 95.97 | 83.89 | 33.29 | 63.29
ARMwavLM-S-100h  | 22.39 |       | 77.0 | 8.33  | 11.37 | 96.30 | 0.0579 | 65.40 | 6.38 | 7.41 | 96.76 | 84.89 | 31.95 | 63.41
STaRHuBERT       | 22.31 | 463.5 | 79.5 | 8.16  | 9.35  | 96.27 | 0.0688 | 77.58 | 5.39 | 6.05 | 97.55 | 87.94 | 25.31 | 63.01
STaRHuBERT-L     | 26.63 | 511.9 | 79.8 | 7.97  | 8.91  | 96.56 | 0.0677 | 78.66 | 5.45 | 5.83 | 97.50 | 88.01 | 25.36 | 63.48
STaRHuBERT-100h  | 22.31 | 463.5 | 77.8 | 9.17  | 10.92 | 96.46 | 0.0626 | 72.26 | 5.66 | 5.97 | 97.21 | 84.89 | 30.77 | 61.22
"""
PAPER_RESULTS = {
    cells[0]: dict(zip((key for key, _ in SUPERB_COLUMNS), cells[1:]))
    for cells in ([cell.strip() for cell in line.split("|")] for line in _PAPER_TABLE.strip().splitlines())
}
# The STaR paper shows its smaller students only in a plot.
PLOT_READINGS = {
    "STaRHuBERT-S": "14.1 M parameters; ASR WER about 10.3, SID about 70.0, IC about 96.2 (read off a plot)",
    "STaRHuBERT-XS": "9.39 M parameters; ASR WER about 11.3, SID about 64.8, IC about 94.1 (read off a plot)",
}
MACS_NOTE = "as reported in the STaR paper, for roughly 225 s of audio in utterances of about 10 s"
COMPUTE_CLAIMS = {"ARMHuBERT-960h": "the paper: 28 % of HuBERT Base's parameters and 30 % of its MACs"}

# Fields that fix a model's shape (and so its parameter count); a release name must match them.
_SHAPE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "layer_reuses_attention_map",
    "projection_head_size",
    "do_stable_layer_norm",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
)


# `--release none`: the checkpoint is no release (a run of one's own): no detection, no published results.
NO_RELEASE = "none"


def paper_results(release: Release | None) -> dict[str, str] | None:
    """The release's row of the papers' SUPERB table (column key -> cell, "" = not reported), or None."""
    return PAPER_RESULTS.get(release.name) if release else None


def release_by_name(name: str) -> Release:
    """The release called `name` (any letter case); refuses an unknown name, listing the releases."""
    release = RELEASES.get(str(name).lower())
    if release is None:
        names = ", ".join(release.name for release in RELEASES.values())
        raise UserError(f"unknown release name {name!r}; the releases are {names}")
    return release


def _shape_differences(config, release):
    """Shape fields in which `config` differs from the release's public shape (empty if none is public)."""
    if release.preset is None:
        return []
    reference = ARMHubertConfig.from_preset(release.preset)
    return [
        f"{field} {getattr(config, field)!r} (release: {getattr(reference, field)!r})"
        for field in _SHAPE_FIELDS
        if getattr(config, field) != getattr(reference, field)
    ]


def check_release_shape(config: ARMHubertConfig, release: Release, what: str) -> None:
    """Refuse to call `what` (a checkpoint, described for the message) `release` unless it has its shape."""
    differences = _shape_differences(config, release)
    if differences:
        raise UserError(
            f"{what} does not have the shape of {release.name}: {'; '.join(differences[:3])}; "
            f"pass --release NAME with its real release, or --release {NO_RELEASE} if it is none"
        )


def detect_release(config: ARMHubertConfig, training: TrainingConfig) -> Release | None:
    """The one release whose public shape, family and training hours fit the checkpoint, else None."""
    family, hours = training.family, training.hours
    candidates = [
        release
        for release in RELEASES.values()
        if release.preset is not None
        and not _shape_differences(config, release)
        and family in ("", release.family)
        and hours in (None, release.hours)
    ]
    return candidates[0] if len(candidates) == 1 else None


def resolve_release(
    config: ARMHubertConfig,
    training: TrainingConfig,
    checkpoint_path: str | os.PathLike,
    name: str | None = None,
) -> Release | None:
    """The release a checkpoint is: `name` if given, else its file name if that is a release name, else detected.

    `name` "none" (`NO_RELEASE`, any case) says the checkpoint is no release: None, whatever its file is
    called. A named release must have the checkpoint's shape, so a card never shows another model's results.
    """
    if name is not None and name.lower() == NO_RELEASE:
        return None
    if name is not None:
        release = release_by_name(name)
        check_release_shape(config, release, f"checkpoint {Path(checkpoint_path).name} (--release {name})")
        return release
    release = RELEASES.get(Path(checkpoint_path).stem.lower())
    if release is not None:
        check_release_shape(config, release, f"checkpoint {Path(checkpoint_path).name}")
        return release
    return detect_release(config, training)


def guess_family(config: ARMHubertConfig, training: TrainingConfig) -> str:
    """The training config's family, else the one the structure implies (reuse: ARM, heads: Mask, none: STaR)."""
    if training.family:
        return training.family
    if any(config.layer_reuses_attention_map):
        return "armhubert"
    return "maskhubert" if config.has_projection_heads else "starhubert"
