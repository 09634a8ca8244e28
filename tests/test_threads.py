"""Thread choice of the training and demo scripts (`armhubert.threads`): the cores left free by the load,
the user's OMP_NUM_THREADS kept, one line saying which, and torch's count given back after a command."""

import pytest
import torch

from armhubert import threads
from armhubert.cli import run_main


@pytest.mark.parametrize(
    "cores, load, expected", [(2, 0.1, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 5.0, 1), (4, 1.2, 3), (1, 0.0, 1)]
)
def test_free_cores_leave_the_load_its_cores_and_keep_at_least_one(cores, load, expected):
    assert threads.free_cores(cores, load) == expected


def test_a_busy_machine_gets_one_thread_and_one_line_saying_why(monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.5, 2.0, 1.0))
    before = torch.get_num_threads()

    def command(argv):
        torch.set_num_threads(2)  # as torch starts on a 2-core machine
        assert threads.use_machine_threads("demo.py") == 1 and torch.get_num_threads() == 1

    assert run_main("demo.py", command, []) == 0
    assert capsys.readouterr().out == "demo.py: 1 CPU thread (2 cores, load 2.50; set OMP_NUM_THREADS=N to choose)\n"
    assert torch.get_num_threads() == before  # the caller's count again


def test_the_users_choice_is_kept(monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    before = torch.get_num_threads()
    assert threads.use_machine_threads("demo.py") == before
    assert capsys.readouterr().out.strip().endswith("(OMP_NUM_THREADS=3)")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(threads, "available_cores", lambda: 64)
    assert threads.machine_threads()[0] == before  # never more than torch's own count (a caller's lower choice)
