"""The GPU check's DDP smoke step: one DistributedDataParallel training step, weights equal across ranks."""

import queue
import socket
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_armhubert import ARMHubertModel

from .rows import guarded, padded_batch
from .scales import Scale, student_config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, backend: str, port: int, tiny: bool, results) -> None:
    """One process of the DDP smoke step: forward, backward, optimiser step; weights must agree across ranks."""
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        figures = _ddp_step(rank, device, tiny)
        if rank == 0:
            results.put(figures)
    finally:
        # The DDP wrapper (its Reducer holds the process group) is gone with _ddp_step's frame: destroying the
        # group while a Reducer still refers to it can leave gloo's destructor joining a thread for ever.
        dist.destroy_process_group()


def _ddp_step(rank: int, device: torch.device, tiny: bool) -> dict[str, float]:
    """Forward, backward and optimiser step of a DDP-wrapped student; the largest weight difference across ranks."""
    torch.manual_seed(0)
    model = ARMHubertModel(student_config("armhubert-960h", tiny)).to(device).train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
    optimiser = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    inputs, mask = padded_batch(2, 2.0, device, seed=rank)  # each rank its own data
    output = ddp(inputs, attention_mask=mask, output_hidden_states=True)
    loss = sum(state.float().square().mean() for state in output.projected_hidden_states)
    loss.backward()
    optimiser.step()
    flat = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    spread = flat.clone()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    difference = (spread - flat).abs().max()
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    return dict(loss=float(loss.detach()), max_weight_difference=float(difference))


def ddp_smoke(scale: Scale, device: torch.device) -> dict[str, Any]:
    """One DDP step: NCCL with 2 processes on 2+ GPUs, 1-process NCCL on one; 1-process gloo on a CPU.

    One process runs here (no start-up of new interpreters); two are spawned.
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    world_size = min(2, torch.cuda.device_count()) if device.type == "cuda" else 1

    def measure():
        if world_size == 1:
            results = queue.SimpleQueue()
            _ddp_worker(0, 1, backend, _free_port(), scale.tiny, results)
        else:
            results = mp.get_context("spawn").SimpleQueue()
            arguments = (world_size, backend, _free_port(), scale.tiny, results)
            mp.start_processes(_ddp_worker, args=arguments, nprocs=world_size, start_method="spawn")
        figures = results.get()
        figures["passed"] = figures["max_weight_difference"] == 0.0
        return figures

    return guarded("distillation", f"ddp {backend} x{world_size}", measure)
