#!/usr/bin/env python3
"""Synthesise a tiny, deterministic speech corpus in LibriSpeech layout.

The audio is English text-to-speech from espeak-ng (NOT real LibriSpeech).
Four synthetic "speakers" (distinct espeak voices, pitch and speed) each read
sentences in three splits, so the same speakers appear in every split and
speaker-ID classification can be demonstrated alongside ASR. ``--corpus digits``
makes the CTC demo's corpus instead (``data/digits``): the same speakers read
sequences of 3 to 5 digits, none in two splits.

Output layout (LibriSpeech's native one)::

    <output-dir>/LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac
    <output-dir>/LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

Requirements: the ``espeak-ng`` binary (``apt-get install espeak-ng``) and this
repository installed (``pip install -e .``: audio is read by ``armhubert.speech.audio``).

Usage::

    python scripts/make_corpus.py --output_dir data [--seed 0] [--overwrite]
    python scripts/make_corpus.py --corpus digits --output_dir data/digits [--seed 0] [--overwrite]
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from armhubert.cli import CommandParser, UserError, run_main
from armhubert.files.atomic import staged_folder
from armhubert.speech.audio import read_audio
from configuration_armhubert import SAMPLING_RATE

PROG = "make_corpus.py"
CORPUS_NAME = "LibriSpeech"

# (split name, utterances per speaker, chapter-id base). Chapter ids are
# base + speaker index, so every (speaker, split) pair has its own chapter,
# as in LibriSpeech where a chapter belongs to exactly one speaker.
SPLITS = [
    ("train-clean-100", 10, 100),
    ("dev-clean", 3, 200),
    ("test-clean", 2, 300),
]


@dataclass(frozen=True)
class Speaker:
    speaker_id: int
    voice: str  # espeak-ng language voice + "+variant"
    pitch: int  # espeak -p, 0..99 (50 is the default)
    speed: int  # espeak -s, words per minute (175 is the default)


# Different accents, sexes, pitches and rates so the speakers are separable.
SPEAKERS = [
    Speaker(1001, "en-us+m3", pitch=35, speed=160),
    Speaker(1002, "en-gb+f2", pitch=60, speed=170),
    Speaker(1003, "en-gb-scotland+m7", pitch=45, speed=150),
    Speaker(1004, "en-us+f4", pitch=75, speed=180),
]

# 60 sentences = 4 speakers x (10 + 3 + 2). Plain words only so the
# upper-cased transcript matches LibriSpeech's alphabet (letters, ', space).
SENTENCES = [
    "The old man walked slowly down the narrow path to the river",
    "She opened the window and let the cool morning air into the room",
    "We should leave early if we want to catch the first train",
    "A small bird was singing on the branch outside my window",
    "He poured a cup of tea and sat down by the fire",
    "The children laughed as the puppy chased its own tail",
    "Please remember to lock the door when you go out",
    "The library closes at six o'clock on Saturday evenings",
    "They built a little wooden boat during the long summer",
    "The farmer counted his sheep before the storm arrived",
    "My sister plays the piano every afternoon after school",
    "It was raining so hard that nobody wanted to go outside",
    "The captain looked at the map and shook his head",
    "I can't find my keys anywhere in this house",
    "Fresh bread from the bakery smells wonderful in the morning",
    "The mountain road was steep and covered with loose stones",
    "Our teacher told us a story about a clever fox",
    "The baby finally fell asleep after a long day",
    "He wrote a letter to his friend who lived far away",
    "The market was crowded with people buying fruit and flowers",
    "She painted the kitchen walls a bright shade of yellow",
    "The lamp on the desk flickered and then went out",
    "We watched the sun set behind the distant hills",
    "The doctor said he would feel better in a few days",
    "Two horses stood quietly in the green field by the barn",
    "The soup was too hot so we waited a few minutes",
    "They walked along the beach collecting shells and stones",
    "The clock in the hall struck midnight as we arrived",
    "Nobody knew where the strange letter had come from",
    "He carried the heavy box up three flights of stairs",
    "The garden was full of roses and tall sunflowers",
    "I'd like to visit the museum before it closes today",
    "The ship sailed out of the harbour early in the morning",
    "Her grandmother taught her how to bake apple pie",
    "The dog barked loudly when the stranger knocked on the door",
    "We planted a young oak tree in the corner of the yard",
    "The snow fell silently all through the winter night",
    "He couldn't remember the name of the little village",
    "The train was late because of the heavy fog",
    "She kept her grandfather's watch in a small silver box",
    "The students listened carefully to the new lesson",
    "A cold wind blew across the empty parking lot",
    "The cat slept all day on the warm kitchen floor",
    "They shared a simple meal of bread cheese and apples",
    "The bridge over the river was built a hundred years ago",
    "He found an old photograph hidden inside the book",
    "The forest was dark and quiet after the rain",
    "We'll meet at the station at half past nine",
    "The musician tuned his guitar before the concert began",
    "A bright red kite danced high above the park",
    "The baker wakes up before dawn to light the ovens",
    "She answered every question without any hesitation",
    "The river flooded the fields after a week of rain",
    "He spent the whole evening reading by candlelight",
    "The postman brought a parcel wrapped in brown paper",
    "Our neighbours are moving to a town by the sea",
    "The moon was full and the sky was clear and cold",
    "It's easier to learn a language when you're young",
    "The fisherman mended his nets on the quiet shore",
    "Everyone clapped when the little girl finished her song",
]

# The digits corpus (the CTC demo's): sequences of spoken digits, a TIDIGITS-like task. Ten words,
# each heard about 47 times in training, so a 0.1 M-parameter model learns to recognise them in
# minutes on a CPU, which the 60-sentence corpus (about 400 different words, most heard once) cannot teach.
DIGITS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
DIGIT_SPLITS = [
    ("train-clean-100", 30, 100),
    ("dev-clean", 10, 200),
    ("test-clean", 5, 300),
]
DIGITS_PER_UTTERANCE = (3, 5)  # inclusive range: 1-2 s of speech each

TRANSCRIPT_RE = re.compile(r"^[A-Z']+( [A-Z']+)*$")


def check_espeak() -> str:
    """The espeak-ng path; refused (a UserError) when it is not on PATH, saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("'espeak-ng' not found on PATH; install it with 'apt-get install espeak-ng' and re-run.")
    return exe


def to_transcript(sentence: str) -> str:
    """Upper-case a sentence into a LibriSpeech-style transcript."""
    text = sentence.upper()
    if not TRANSCRIPT_RE.match(text):
        raise ValueError(f"sentence has characters outside [A-Z' ]: {sentence!r}")
    return text


def synthesise(exe: str, text: str, voice: str, pitch: int, speed: int, tmp_wav: Path) -> np.ndarray:
    """Run espeak-ng and return float32 mono audio at SAMPLING_RATE (soxr "HQ" resampling)."""
    # -w writes a WAV with a correct header (--stdout leaves sizes unset).
    subprocess.run(
        [exe, "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(tmp_wav), "--", text],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return read_audio(tmp_wav, target_rate=SAMPLING_RATE)


def plan_utterances(seed: int) -> Iterator[tuple[str, Speaker, int, int, str, int, int]]:
    """Yield (split, speaker, chapter, utt_index, sentence, pitch, speed).

    The seed shuffles which sentence goes to which speaker/split and adds a
    small per-utterance pitch/speed jitter; everything else is fixed.
    """
    rng = random.Random(seed)
    sentences = SENTENCES[:]
    rng.shuffle(sentences)
    pool = iter(sentences)
    for split, per_speaker, chapter_base in SPLITS:
        for idx, spk in enumerate(SPEAKERS):
            chapter = chapter_base + idx + 1
            for utt in range(per_speaker):
                pitch = spk.pitch + rng.randint(-4, 4)
                speed = spk.speed + rng.randint(-8, 8)
                yield split, spk, chapter, utt, next(pool), pitch, speed


def plan_digit_utterances(seed: int) -> Iterator[tuple[str, Speaker, int, int, str, int, int]]:
    """`plan_utterances` for the digits corpus: random digit sequences, none of them in two splits.

    No evaluation sequence is a training sequence, so the evaluation measures recognition of the
    words in new orders, not recall of whole utterances.
    """
    rng = random.Random(seed)
    used: set[str] = set()
    for split, per_speaker, chapter_base in DIGIT_SPLITS:
        for idx, spk in enumerate(SPEAKERS):
            chapter = chapter_base + idx + 1
            for utt in range(per_speaker):
                sentence = ""
                while not sentence or sentence in used:
                    sentence = " ".join(rng.choice(DIGITS) for _ in range(rng.randint(*DIGITS_PER_UTTERANCE)))
                used.add(sentence)
                pitch = spk.pitch + rng.randint(-4, 4)
                speed = spk.speed + rng.randint(-8, 8)
                yield split, spk, chapter, utt, sentence, pitch, speed


def build_corpus(root: Path, seed: int, exe: str, corpus: str = "sentences") -> tuple[int, float]:
    """Write every split of `corpus` ("sentences" or "digits") under ``root``; return (n_utterances, seconds)."""
    transcripts: dict[Path, list[str]] = {}
    n_utts, total_sec = 0, 0.0
    plan = plan_digit_utterances if corpus == "digits" else plan_utterances
    with tempfile.TemporaryDirectory() as scratch:
        tmp_wav = Path(scratch) / "utt.wav"
        for split, spk, chapter, utt, sentence, pitch, speed in plan(seed):
            chapter_dir = root / split / str(spk.speaker_id) / str(chapter)
            chapter_dir.mkdir(parents=True, exist_ok=True)
            utt_id = f"{spk.speaker_id}-{chapter}-{utt:04d}"
            audio = synthesise(exe, sentence, spk.voice, pitch, speed, tmp_wav)
            sf.write(chapter_dir / f"{utt_id}.flac", audio, SAMPLING_RATE, format="FLAC", subtype="PCM_16")
            trans_path = chapter_dir / f"{spk.speaker_id}-{chapter}.trans.txt"
            transcripts.setdefault(trans_path, []).append(f"{utt_id} {to_transcript(sentence)}")
            n_utts += 1
            total_sec += len(audio) / SAMPLING_RATE
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return n_utts, total_sec


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output_dir", type=Path, default=Path("data"), help="directory that will contain LibriSpeech/ (default: data)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for sentence assignment and prosody jitter (default: 0)"
    )
    parser.add_argument(
        "--corpus",
        choices=("sentences", "digits"),
        default="sentences",
        help="sentences: the bundled 60-sentence corpus (default); digits: 180 spoken digit sequences "
        "(120 / 40 / 20), the CTC demo's",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing <output-dir>/LibriSpeech")
    return parser.parse_args(argv)


def previous_corpus_problem(folder: Path) -> str | None:
    """None if `folder` holds only this script's split folders (what --overwrite may replace), else why not."""
    names = {split for split, _, _ in SPLITS}  # the digits corpus has the same split names
    foreign = sorted(entry.name for entry in folder.iterdir() if entry.name not in names or not entry.is_dir())
    return f"it holds {', '.join(foreign[:3])}, which make_corpus.py did not write" if foreign else None


def make_corpus(argv: Sequence[str] | None = None) -> None:
    """Synthesise the corpus into a staging folder that replaces <output-dir>/LibriSpeech when complete."""
    args = parse_args(argv)
    exe = check_espeak()
    target = args.output_dir / CORPUS_NAME
    # Built beside the target (same filesystem) and renamed into place: never half-written.
    with staged_folder(target, overwrite=args.overwrite, problem=previous_corpus_problem) as staging:
        n_utts, total_sec = build_corpus(staging, args.seed, exe, args.corpus)
    print(f"wrote {n_utts} utterances ({total_sec / 60:.1f} min) to {target}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, make_corpus, argv)
