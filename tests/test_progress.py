"""What a command prints: progress bars only on a terminal, quickstart speed from warm calls."""

import sys

import pytest
import torch
from helpers import load_script
from transformers import TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from armhubert import progress

quickstart = load_script("quickstart")


class _Stream:
    def __init__(self, terminal):
        self.terminal, self.text = terminal, ""

    def isatty(self):
        return self.terminal

    def write(self, text):
        self.text += text

    def flush(self):
        pass


@pytest.fixture
def stderr_is(monkeypatch):
    """stderr replaced by a stream that says whether it is a terminal."""

    def use(terminal):
        stream = _Stream(terminal)
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return use


def test_progress_is_drawn_on_a_terminal_only(stderr_is):
    stream = stderr_is(False)
    assert list(progress.progress(range(3), total=3, description="tensors")) == [0, 1, 2]
    assert stream.text == ""
    stream = stderr_is(True)
    assert list(progress.progress(range(3), total=3, description="tensors")) == [0, 1, 2]
    assert "tensors" in stream.text


def test_library_bars_are_turned_off_when_piped(stderr_is, monkeypatch, progress_bars):
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as transformers_logging

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    stderr_is(True)
    progress.quiet_when_piped()
    assert transformers_logging.is_progress_bar_enabled()
    stderr_is(False)
    progress.quiet_when_piped()
    assert not transformers_logging.is_progress_bar_enabled()
    assert not datasets.is_progress_bar_enabled()
    assert hub.are_progress_bars_disabled()


def test_trainer_prints_one_line_per_log_when_piped(stderr_is, tmp_path):
    """Off a terminal the guarded Trainer sets `disable_tqdm`, so transformers prints each log as a line
    (PrinterCallback) instead of redrawing a bar; on a terminal the bar stays."""
    from armhubert.training.guarded_trainer import GuardedTrainer

    model = torch.nn.Linear(2, 2)
    stderr_is(True)
    trainer = GuardedTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    kinds = {type(callback) for callback in trainer.callback_handler.callbacks}
    assert ProgressCallback in kinds and PrinterCallback not in kinds
    stderr_is(False)
    trainer = GuardedTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    kinds = {type(callback) for callback in trainer.callback_handler.callbacks}
    assert ProgressCallback not in kinds and PrinterCallback in kinds


class _Clocked(torch.nn.Module):
    """A model whose calls take the given times on a fake clock."""

    def __init__(self, clock, durations):
        super().__init__()
        self.clock, self.durations = clock, list(durations)

    def forward(self, *args, **kwargs):
        self.clock[0] += self.durations.pop(0)


def test_quickstart_reports_the_median_of_warm_calls(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(quickstart.time, "perf_counter", lambda: clock[0])
    model = _Clocked(clock, [0.2, 0.1, 0.9])
    batch = type("Batch", (), {"input_values": None, "attention_mask": None})()
    assert quickstart.warm_latency(model, batch, repeats=3) == pytest.approx(0.2)
    assert model.durations == []


def test_quickstart_prints_shapes_and_warm_timing(tmp_path, converted_tiny, capsys):
    converted_tiny.save_pretrained(tmp_path / "model")
    argv = ["--model", str(tmp_path / "model"), "--num-utterances", "2", "--repeats", "2"]
    assert quickstart.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 utterances from dev-clean" in out and "median of 2 warm calls" in out
    assert quickstart.main(["--repeats", "0"]) == 2
    assert capsys.readouterr().err.strip() == "quickstart.py: error: --repeats must be an integer >= 1, got 0"


def test_stages_bar_names_each_stage_on_a_terminal_only(stderr_is):
    stream = stderr_is(False)
    with progress.stages(["export", "parity check"], "ONNX") as begin:
        begin("export")
        begin("parity check")
    assert stream.text == ""
    stream = stderr_is(True)
    with progress.stages(["export", "parity check"], "ONNX") as begin:
        begin("export")
        begin("parity check")
    assert "ONNX: 0/2" in stream.text and "1/2" in stream.text and "parity check" in stream.text


def test_conversion_shows_its_progress_per_tensor_on_a_terminal(stderr_is, tmp_path):
    from helpers import TINY_CKPT

    from armhubert.convert.cards import file_sha256
    from armhubert.convert.original import convert

    stream = stderr_is(True)
    convert(TINY_CKPT)
    file_sha256(TINY_CKPT)
    assert all(what in stream.text for what in ("checking the student", "reading the student", "checksum"))
    stream = stderr_is(False)
    convert(TINY_CKPT)
    assert stream.text == ""
