"""The real-teacher experiment: distil from Whisper tiny.en on synthesised speech, judge on real speech.

Two parts (scripts/distill_real_teacher.py runs them and writes `results.json`, `curve.png` and a
Markdown table):

- `scratch`: two from-scratch students of the release layout shrunk, with attention-map reuse (ARM)
  and without, equal size and steps, distilled from the teacher's encoder; per-layer L1 distance and
  cosine similarity to the paired teacher layer on the held-out real speech, before and after, and
  the distillation loss on real speech along the way (the learning curve);
- `mirror`: the teacher's own encoder with reuse in chosen layers (`student: mirror`), trained from
  the first reusing layer on; Whisper's unchanged decoder's WER on the real split before and after,
  the teacher's in the same run, parameters and encoder time.

Every run goes through the project's trainer (`armhubert.distill.run.distill`) with a bundled recipe
(conf/whisper-tiny-en-scratch.yaml, conf/whisper-tiny-en-mirror.yaml) and overrides.
"""

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from transformers import WhisperFeatureExtractor

from configuration_armhubert import SAMPLING_RATE

from ..deploy.timing import medians_taking_turns
from ..distill.models import build_student
from ..distill.run import distill
from ..resources import BUNDLED_CORPUS, BUNDLED_RECIPES
from ..speech.real_speech import Utterance, real_utterances
from .ctranslate2 import whisper_from_ctranslate2, whisper_tokenizer
from .encoders import WhisperTeacher
from .mirror import student_from_teacher
from .transcribe import student_encoder, transcribe, word_error_rate

TRAIN_SPLITS = ("train-clean-100", "dev-clean", "test-clean")  # the whole synthesised corpus: 60 utterances
REAL_SPLIT = "real"


def experiment_corpus(folder: Path) -> Path:
    """`folder/LibriSpeech`: the bundled synthesised splits (linked) and the real split in LibriSpeech layout."""
    root = folder / "LibriSpeech"
    root.mkdir(parents=True, exist_ok=True)
    for split in TRAIN_SPLITS:
        if not (root / split).exists():
            (root / split).symlink_to(BUNDLED_CORPUS / split, target_is_directory=True)
    real = root / REAL_SPLIT
    if not real.exists():
        for speaker, subset in ((9001, "librivox"), (9002, "cards")):
            chapter = real / str(speaker) / "1"
            chapter.mkdir(parents=True)
            lines = []
            for index, utterance in enumerate(real_utterances(subset)):
                name = f"{speaker}-1-{index:04d}"
                soundfile.write(chapter / f"{name}.flac", utterance.audio, SAMPLING_RATE, subtype="PCM_16")
                lines.append(f"{name} {utterance.text.upper()}")
            (chapter / f"{speaker}-1.trans.txt").write_text("\n".join(lines) + "\n")
    return folder


@torch.no_grad()
def layer_distances(student, teacher: WhisperTeacher, pairs: Sequence[int], utterances: Sequence[Utterance]):
    """Per student layer: (mean L1 distance, mean cosine similarity) to its paired teacher layer, over the real
    frames of `utterances` (one at a time, no padding); the student's projection heads when it has them."""
    l1, cosine = np.zeros(len(pairs)), np.zeros(len(pairs))
    frames = 0
    for utterance in utterances:
        audio = torch.as_tensor(utterance.audio)[None]
        mask = torch.ones_like(audio, dtype=torch.long)
        target = teacher.hidden_states(audio, mask)
        output = student(audio, output_hidden_states=True)
        states = output.projected_hidden_states or (*output.hidden_states[1:-1], output.last_hidden_state)
        count = min(states[0].shape[1], int(teacher.real_frames(torch.tensor([audio.shape[1]]))))
        for index, (state, layer) in enumerate(zip(states, pairs)):
            s, t = state[0, :count].float(), target[layer][0, :count].float()
            l1[index] += (s - t).abs().mean(-1).sum().item()
            cosine[index] += F.cosine_similarity(s, t, dim=-1).sum().item()
        frames += count
    return [round(v, 4) for v in l1 / frames], [round(v, 4) for v in cosine / frames]


def _distill(recipe: str, teacher_path: str, corpus: Path, run: Path, steps: int, overrides: list[str]):
    """The project's trainer on conf/whisper-tiny-en-<recipe>.yaml with this experiment's teacher, data and run."""
    common = [f"teacher={teacher_path}", f"data_source={corpus}", f"output_dir={run}", f"max_steps={steps}"]
    return distill(BUNDLED_RECIPES / f"whisper-tiny-en-{recipe}.yaml", common + overrides)


def _real_curve(trainer) -> list[tuple[int, float]]:
    return [
        (entry["step"], round(entry["eval_loss"], 4)) for entry in trainer.state.log_history if "eval_loss" in entry
    ]


def _parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def run_scratch(teacher_path: str, corpus: Path, output: Path, steps: int, eval_steps: int, seed: int = 0) -> dict:
    """ARM (reuse in layers 2 and 4) and no-reuse students of equal size, equal steps, from scratch."""
    results = {}
    # Equal size: the no-reuse twin gives the Q and K that reuse saves back as a narrower feed-forward
    # (1,698,912 vs 1,698,528 parameters), as MaskHuBERT (FFN 640) vs ARMHuBERT (FFN 864) in the papers.
    for name, reuse, ffn in (("arm", [False, True, False, True], 384), ("no_reuse", [False] * 4, 288)):
        overrides = [
            f"student_config.layer_reuses_attention_map={reuse}",
            f"student_config.intermediate_size={ffn}",
            f"eval_steps={eval_steps}",
            f"seed={seed}",
        ]
        trainer = _distill("scratch", teacher_path, corpus, output / f"scratch-{name}", steps, overrides)
        student = trainer.accelerator.unwrap_model(trainer.model).eval()
        before = _fresh_student_distances(trainer, seed)
        after = layer_distances(student, trainer.teacher, trainer.teacher_layers, real_utterances())
        results[name] = {
            "parameters": _parameters(student),
            "before": {"l1": before[0], "cosine": before[1]},
            "after": {"l1": after[0], "cosine": after[1]},
            "real_speech_loss": _real_curve(trainer),
        }
    return results


def _fresh_student_distances(trainer, seed: int):
    """The distances of the same student at initialisation (rebuilt from its config with the run's seed)."""
    fresh = build_student(trainer.distill_args, trainer.teacher.config, seed).eval()
    return layer_distances(fresh, trainer.teacher, trainer.teacher_layers, real_utterances())


def _wer(model, tokenizer, utterances, encoder=None) -> tuple[float, list[str]]:
    hypotheses = transcribe(model, tokenizer, [u.audio for u in utterances], encoder=encoder)
    return round(word_error_rate([u.text for u in utterances], hypotheses), 4), hypotheses


def _encoder_seconds(whisper, students: dict, audio: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds of one 30 s window through each encoder, taking turns (log-mel included for all)."""
    extractor = WhisperFeatureExtractor(feature_size=whisper.config.num_mel_bins)
    encoder = whisper.get_encoder()
    batch = torch.as_tensor(audio)[None]

    def teacher_run():
        return encoder(extractor([audio], sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features)

    runs = {"teacher": teacher_run} | {name: (lambda s=s: s(batch)) for name, s in students.items()}
    with torch.no_grad():
        return {name: round(seconds, 4) for name, seconds in medians_taking_turns(runs, repeats).items()}


def run_mirror(
    teacher_path: str, corpus: Path, output: Path, reuse_sets: Sequence[Sequence[int]], steps: int, repeats: int = 5
) -> dict:
    """Whisper tiny.en's encoder with reuse in each of `reuse_sets`, before and after distillation."""
    whisper, tokenizer = whisper_from_ctranslate2(teacher_path), whisper_tokenizer(teacher_path)
    utterances = real_utterances()
    teacher_wer, teacher_text = _wer(whisper, tokenizer, utterances)
    results = {"teacher": {"wer": teacher_wer, "text": teacher_text, "parameters": _parameters(whisper.get_encoder())}}
    trained = {}
    for layers in reuse_sets:
        name = "reuse-" + "-".join(str(layer) for layer in layers)
        untrained = student_from_teacher(whisper, layers)
        before, _ = _wer(whisper, tokenizer, utterances, student_encoder(untrained))
        overrides = [
            f"reuse_layers={list(layers)}",
            f"trainable_layers={list(range(min(layers), whisper.config.encoder_layers + 1))}",
        ]
        trainer = _distill("mirror", teacher_path, corpus, output / f"mirror-{name}", steps, overrides)
        student = trainer.accelerator.unwrap_model(trainer.model).eval()
        after, text = _wer(whisper, tokenizer, utterances, student_encoder(student))
        trained[name] = student
        results[name] = {
            "reuse_layers": list(layers),
            "parameters": _parameters(student),
            "wer_before": before,
            "wer_after": after,
            "wer_after_over_teacher": round(after / teacher_wer, 2) if teacher_wer else math.inf,
            "text": text,
            "train_loss": [(e["step"], round(e["loss"], 4)) for e in trainer.state.log_history if "loss" in e],
        }
    seconds = _encoder_seconds(whisper, trained, utterances[0].audio, repeats)
    for name, value in seconds.items():
        results[name]["encoder_seconds"] = value
    return results


def save_results(results: dict, output: Path) -> None:
    (output / "results.json").write_text(json.dumps(results, indent=1))


def plot_curves(results: dict, path: Path) -> None:
    """curve.png: the scratch students' distillation loss on real speech by step, and each mirror's training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, run in results.get("scratch", {}).items():
        steps, losses = zip(*run["real_speech_loss"]) if run["real_speech_loss"] else ((), ())
        axes[0].plot(steps, losses, marker="o", label={"arm": "ARM (reuse in 2, 4)", "no_reuse": "no reuse"}[name])
    axes[0].set(
        title="From scratch: loss on held-out real speech", xlabel="training step", ylabel="L1 loss (real split)"
    )
    for name, run in results.get("mirror", {}).items():
        if name != "teacher" and run.get("train_loss"):
            steps, losses = zip(*run["train_loss"])
            layers = ", ".join(map(str, run["reuse_layers"]))
            axes[1].plot(steps, losses, label=f"Whisper tiny.en, reuse in {layers}")
    axes[1].set(title="Compressed Whisper: training loss", xlabel="training step", ylabel="L1 loss (synthetic speech)")
    for axis in axes:
        if axis.lines:
            axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown_table(results: dict) -> str:
    """The README's tables: the compressed encoders' WER and cost, and the scratch students' distances."""
    lines = []
    mirror = results.get("mirror")
    if mirror:
        teacher = mirror["teacher"]
        lines += [
            "| encoder | parameters | WER before | WER after | after / teacher | encoder s per 30 s window |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| Whisper tiny.en (teacher) | {teacher['parameters']:,} | {teacher['wer']:.3f} | - | 1.00 | "
            f"{teacher.get('encoder_seconds', float('nan')):.3f} |",
        ]
        for name, run in mirror.items():
            if name != "teacher":
                lines.append(
                    f"| reuse in layer(s) {', '.join(map(str, run['reuse_layers']))} | {run['parameters']:,} | "
                    f"{run['wer_before']:.3f} | {run['wer_after']:.3f} | {run['wer_after_over_teacher']:.2f} | "
                    f"{run.get('encoder_seconds', float('nan')):.3f} |"
                )
        lines.append("")
    scratch = results.get("scratch")
    if scratch:
        lines += [
            "| student | parameters | L1 per layer, before -> after | cosine per layer, before -> after |",
            "| --- | --- | --- | --- |",
        ]
        for name, run in scratch.items():
            l1 = ", ".join(f"{b:.3f}->{a:.3f}" for b, a in zip(run["before"]["l1"], run["after"]["l1"]))
            cos = ", ".join(f"{b:.2f}->{a:.2f}" for b, a in zip(run["before"]["cosine"], run["after"]["cosine"]))
            lines.append(f"| {name} | {run['parameters']:,} | {l1} | {cos} |")
    return "\n".join(lines)
