"""Progress shown on a terminal, quiet when the output goes to a file or a pipe.

Progress bars are drawn on stderr. On a terminal they redraw one line; written to a log file or a pipe
every redraw becomes a line of its own (a 30-step distillation once printed about 180). So:

- `quiet_when_piped()` (called by `armhubert.cli.run_main` for every command) turns off the bars of
  `datasets`, `huggingface_hub` and `transformers` when stderr is not a terminal;
- the Trainer-based commands set `disable_tqdm` in that case (`armhubert.training.guarded_trainer`):
  the Trainer then prints one line per log (loss, evaluation) instead of redrawing its bar;
- `progress(iterable, ...)` is the bar for this project's own long loops (tensors of a conversion,
  blocks of a checksum, batches of an evaluation), and `stages(names, ...)` the bar of a command made
  of a few long steps (an ONNX export); both are tqdm bars with `disable=None`, drawn only on a terminal.
"""

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

Item = TypeVar("Item")


def on_terminal() -> bool:
    """Whether progress bars would be seen as bars: stderr (where they are drawn) is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def quiet_when_piped() -> None:
    """Turn off the libraries' progress bars when stderr is not a terminal (nothing changes on one).

    The environment variables cover libraries imported later (and child processes such as data-loader
    workers); the calls cover those already imported. A user's own setting of the variables wins.
    """
    if on_terminal():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def progress(
    iterable: Iterable[Item], total: int | None = None, description: str = "", unit: str = "it"
) -> Iterator[Item]:
    """`iterable` with a progress bar on a terminal (tqdm's `disable=None`: no bar when stderr is not one)."""
    from tqdm.auto import tqdm

    yield from tqdm(iterable, total=total, desc=description, unit=unit, leave=False, dynamic_ncols=True, disable=None)


@contextmanager
def stages(names: Sequence[str], description: str = "") -> Iterator[Callable[[str], None]]:
    """A bar over the named stages of a command, on a terminal; yields `begin(name)` to call as each starts.

        with stages(["export", "parity check", "timing"], "ONNX") as begin:
            begin("export"); ...
            begin("parity check"); ...

    Off a terminal nothing is drawn (the command's own result lines say what happened).
    """
    from tqdm.auto import tqdm

    bar_format = "{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}{postfix}"  # stages take minutes: no rate
    bar = tqdm(total=len(names), desc=description, bar_format=bar_format, leave=False, dynamic_ncols=True, disable=None)
    started = []

    def begin(name: str) -> None:
        if started:
            bar.update(1)
        started.append(name)
        bar.set_postfix_str(name)

    try:
        yield begin
        bar.update(len(names) - bar.n)
    finally:
        bar.close()
