"""The CPU thread count of the training and demo scripts: as many as the machine has cores free.

PyTorch starts one thread per core, and its OpenMP threads spin while they wait for each other. On a
machine that other programs keep busy that collapses: 60 steps of the CTC demo on a 2-core machine at
load 6-14 took 81 s with one thread, 300 s with two spinning threads and 83 s with two threads under
`OMP_WAIT_POLICY=PASSIVE` (one run each, taking turns). The scripts therefore use the
cores left free by the load at start (the 1-minute load average), at least one and never more than
torch's own count, unless the user chose: `OMP_NUM_THREADS=N` is kept, and so is a lower
`torch.set_num_threads` made before calling a script's `main` from Python.

    use_machine_threads("finetune_ctc.py")   # prints one line: what it chose and how to override

`armhubert.cli.run_main` gives torch its thread count back when the command returns.
"""

import os

import torch

OVERRIDE = "OMP_NUM_THREADS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def free_cores(cores: int, load: float) -> int:
    """Cores left free by `load` (runnable processes, the 1-minute average), at least 1, at most `cores`."""
    return max(1, min(cores, round(cores - load)))


def machine_threads() -> tuple[int, str]:
    """(threads, why): the user's OMP_NUM_THREADS when set, else the cores left free by the load at start."""
    if os.environ.get(OVERRIDE, "").strip():
        return torch.get_num_threads(), f"{OVERRIDE}={os.environ[OVERRIDE].strip()}"
    cores, load = available_cores(), os.getloadavg()[0]
    threads = min(free_cores(cores, load), torch.get_num_threads())
    return threads, f"{cores} cores, load {load:.2f}; set {OVERRIDE}=N to choose"


def use_machine_threads(prog: str) -> int:
    """Set torch's thread count for this machine and say so in one line; returns the count."""
    threads, why = machine_threads()
    torch.set_num_threads(threads)
    print(f"{prog}: {threads} CPU thread{'s' if threads > 1 else ''} ({why})")
    return threads
