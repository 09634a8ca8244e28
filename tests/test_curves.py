"""Loss curves (`armhubert.training.curves`): what is drawn from a Trainer's log history, and the loss.png that
every trained folder gets."""

import builtins
import math

import matplotlib.image
import numpy as np
import pytest
from helpers import load_script

from armhubert.resources import BUNDLED_CORPUS
from armhubert.training import curves

PNG = b"\x89PNG\r\n\x1a\n"
HISTORY = [
    {"loss": 4.0, "grad_norm": 1.0, "learning_rate": 1e-3, "epoch": 0.5, "step": 5},
    {"loss": 3.0, "epoch": 1.0, "step": 10},
    {"eval_loss": 3.5, "eval_wer": 1.0, "eval_runtime": 2.0, "eval_samples_per_second": 6.0, "step": 10},
    {"loss": float("nan"), "step": 15},  # an overflowing fp16 step: left out
    {"loss": 2.0, "step": 20},
    {"eval_loss": 2.5, "eval_wer": 0.8, "eval_unreadable_files": 0, "epoch": 2.0, "step": 20},
    {"train_runtime": 30.0, "train_loss": 3.0, "step": 20},
]


def test_curve_points_keep_losses_and_results_not_bookkeeping():
    points = curves.curve_points(HISTORY)
    assert points == {
        "training loss": [(5, 4.0), (10, 3.0), (20, 2.0)],
        "evaluation loss": [(10, 3.5), (20, 2.5)],
        "wer": [(10, 1.0), (20, 0.8)],
    }


def test_plot_writes_a_png_with_a_panel_per_kind(tmp_path):
    with_results = curves.plot_training_curves(HISTORY, tmp_path / "a.png", title="run")
    losses_only = curves.plot_training_curves(HISTORY[:2], tmp_path / "b.png")
    assert with_results.read_bytes()[:8] == PNG and losses_only.read_bytes()[:8] == PNG
    # Two panels side by side are twice as wide as one.
    widths = [matplotlib.image.imread(path).shape[1] for path in (with_results, losses_only)]
    assert widths[0] == pytest.approx(2 * widths[1], rel=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporary file left


def test_legends_say_what_is_drawn_and_one_value_is_a_marker_not_a_curve():
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    curves._draw(axis, curves.MEANINGS["hint"], [(10, 3.0)])
    curves._draw(axis, curves.MEANINGS["rec"], [(5, 2.0), (10, 1.0)])
    single, curve = axis.get_lines()
    plt.close(figure)
    assert single.get_linestyle() == "None" and single.get_label().endswith(": 3 (one value, step 10)")
    assert curve.get_linestyle() == "-" and list(curve.get_xdata()) == [5, 10]
    assert "layers before the last" in single.get_label() and "last layer" in curve.get_label()


def test_nothing_logged_draws_nothing(tmp_path, capsys):
    history = [{"train_runtime": 1.0, "train_loss": math.inf, "step": 3}]
    assert curves.save_loss_curves(history, tmp_path) is None
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().out == ""


def test_without_matplotlib_the_model_is_kept_and_a_line_says_why(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert curves.save_loss_curves(HISTORY, tmp_path) is None
    assert "needs matplotlib (pip install matplotlib)" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_a_fine_tuned_folder_holds_its_loss_curves(tmp_path, capsys, tiny_model_dir):
    """save_trained_model (shared by fine-tuning and distillation) draws loss.png beside the model."""
    encoder = tiny_model_dir
    out = tmp_path / "sid"
    argv = ["--model_name_or_path", str(encoder), "--output_dir", str(out), "--use_cpu", "--report_to", "none"]
    argv += ["--train_dir", str(BUNDLED_CORPUS / "train-clean-100"), "--eval_dir", str(BUNDLED_CORPUS / "dev-clean")]
    argv += ["--max_steps", "4", "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "2"]
    argv += ["--save_strategy", "no", "--per_device_train_batch_size", "4", "--crop_seconds", "1"]
    result = load_script("finetune_classification").run(argv)
    assert f"loss curves: {out / 'loss.png'}" in capsys.readouterr().out
    image = matplotlib.image.imread(out / "loss.png")
    assert image.shape[0] > 100 and np.ptp(image[..., :3]) > 0.5  # a drawn figure, not a blank one
    points = curves.curve_points(result["log_history"])
    # Evaluated at steps 2 and 4; the final evaluation is the one logged at step 4, not a second run.
    assert len(points["training loss"]) == 4 and len(points["evaluation loss"]) == 2
    assert "accuracy" in points
