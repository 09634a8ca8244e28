"""Several processes on one corpus: those `accelerate launch` (or torchrun) started each take every N-th shard.

Every process plans the same shards (`armhubert.features.plan`) and encodes its share on its own
device; they meet at barriers before the output folder is written and before the index is built.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..cli import UserError
from .plan import ShardPlan


@dataclass
class Processes:
    """This process's place among those `accelerate launch` / torchrun started (one: index 0 of 1)."""

    index: int = 0
    count: int = 1
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def take(self, shards: Sequence[ShardPlan]) -> list[ShardPlan]:
        """This process's share: every `count`-th shard, from the `index`-th."""
        return [shard for shard in shards if shard.index % self.count == self.index]


def current_processes(device: str) -> tuple[Processes, torch.device]:
    """The accelerate process state and the device to run on (`auto`: this process's accelerator, else CPU)."""
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    if device == "auto":
        chosen = state.device
    else:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise UserError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return Processes(state.process_index, state.num_processes, state.wait_for_everyone), chosen
