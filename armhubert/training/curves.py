"""Loss curves of a training run, drawn from the Trainer's `log_history` (matplotlib, no display needed).

Distillation and fine-tuning write `loss.png` beside the saved model (`armhubert.training.guarded_trainer.
save_trained_model`): the training loss at every logging step and the evaluation loss at every
evaluation, against the optimiser step, and, when the evaluation reports other figures (WER, CER,
accuracy, distillation loss parts), those in a second panel. Also usable on its own:

    from armhubert.training.curves import plot_training_curves
    plot_training_curves(trainer.state.log_history, "loss.png")
"""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..files.atomic import atomic_output_file

FILE_NAME = "loss.png"
# Evaluation entries that are bookkeeping, not results (timing, counters).
_NOT_RESULTS = ("_runtime", "_per_second", "_unreadable_files")
# What the evaluation results are, for the legend (others keep their name).
MEANINGS = {
    "wer": "WER (word error rate)",
    "cer": "CER (character error rate)",
    "accuracy": "accuracy",
    "hint": "hint: distance to the teacher, layers before the last",
    "rec": "rec: distance to the teacher, last layer",
    "hint_masked": "hint, masked frames",
    "hint_unmasked": "hint, unmasked frames",
    "rec_masked": "rec, masked frames",
    "rec_unmasked": "rec, unmasked frames",
}


def curve_points(log_history: Sequence[Mapping]) -> dict[str, list[tuple[int, float]]]:
    """{name: [(step, value), ...]} of what is worth drawing, in logging order.

    "training loss" from the `loss` entries, "evaluation loss" from `eval_loss`, and every other
    numeric `eval_*` result under its name without the prefix (`wer`, `accuracy`, `hint`, ...).
    Non-finite values (an overflowing fp16 step) are left out: they would hide the rest of the curve.
    """
    curves: dict[str, list[tuple[int, float]]] = {}

    def add(name, step, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            curves.setdefault(name, []).append((int(step), float(value)))

    for entry in log_history:
        step = entry.get("step", 0)
        if "loss" in entry:
            add("training loss", step, entry["loss"])
        for key, value in entry.items():
            if key == "eval_loss":
                add("evaluation loss", step, value)
            elif key.startswith("eval_") and not key.endswith(_NOT_RESULTS) and key != "eval_epoch":
                add(key.removeprefix("eval_"), step, value)
    return curves


def plot_training_curves(log_history: Sequence[Mapping], path: str | Path, title: str | None = None) -> Path | None:
    """Draw the losses (and other evaluation results) of `log_history` into the PNG file `path`.

    Returns `path`, or None (and writes nothing) when no loss was logged, e.g. a run shorter than
    `logging_steps` without evaluation. The file is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    curves = curve_points(log_history)
    losses = {name: curves.pop(name) for name in ("training loss", "evaluation loss") if name in curves}
    if not losses:
        return None
    panels = [losses] + ([curves] if curves else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), squeeze=False)
    for axis, panel, label in zip(axes[0], panels, ("loss", "evaluation result (see legend)")):
        for name, points in panel.items():
            _draw(axis, MEANINGS.get(name, name), points)
        axis.set(xlabel="optimiser step", ylabel=label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    with atomic_output_file(path) as staging:
        figure.savefig(staging, format="png", dpi=80)
    plt.close(figure)
    return path


def _draw(axis, label: str, points: Sequence[tuple[int, float]]) -> None:
    """A curve of `points`; one point is a marker whose legend gives its value, not a curve."""
    steps, values = zip(*points)
    if len(points) == 1:
        axis.plot(
            steps, values, linestyle="none", marker="D", label=f"{label}: {values[0]:.4g} (one value, step {steps[0]})"
        )
    else:
        axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)


def save_loss_curves(log_history: Sequence[Mapping], folder: str | Path, title: str | None = None) -> Path | None:
    """`plot_training_curves` into `folder/loss.png`, saying on stdout where it is (or why there is none).

    Called once a trained model is saved. Without matplotlib the model is kept and a line says how to
    get the plot; nothing logged, nothing drawn.
    """
    try:
        path = plot_training_curves(log_history, Path(folder) / FILE_NAME, title)
    except ImportError:
        print(f"no {FILE_NAME}: drawing the loss curves needs matplotlib (pip install matplotlib)")
        return None
    if path is not None:
        print(f"loss curves: {path}")
    return path
