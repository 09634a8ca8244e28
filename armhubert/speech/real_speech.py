"""The bundled real-speech split (`data/real/`): ten real recordings with transcripts, held out from training.

Five LibriVox read-speech utterances and five short command utterances from CMU PocketSphinx's test
data (BSD-2, notice in `data/real/LICENSE`). Used to measure what a teacher or a distilled student
does on real speech; the synthesised corpus (`data/LibriSpeech`) is for training.
"""

import csv
from dataclasses import dataclass

import numpy as np

from ..resources import bundled_folder
from .audio import read_audio

REAL_SPLIT = bundled_folder("data") / "real"
SUBSETS = ("librivox", "cards")


@dataclass(frozen=True)
class Utterance:
    """One recording: `audio` float32 (time,) at 16 kHz, `text` lower case without punctuation."""

    id: str
    subset: str
    audio: np.ndarray
    text: str


def real_utterances(subset: str | None = None) -> list[Utterance]:
    """The bundled real utterances in file order, all of them or one subset ("librivox" or "cards")."""
    if subset is not None and subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    with open(REAL_SPLIT / "transcripts.tsv", newline="", encoding="utf-8") as table:
        rows = list(csv.DictReader(table, delimiter="\t"))
    return [
        Utterance(row["id"], row["subset"], read_audio(REAL_SPLIT / f"{row['id']}.flac"), row["text"])
        for row in rows
        if subset is None or row["subset"] == subset
    ]
