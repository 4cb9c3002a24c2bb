"""fork_map (models/parallel.py): input order, the serial results, errors that name what happened."""

import os

import pytest

from models import parallel, progress
from models.parallel import WorkerDied, fork_map


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def test_results_come_back_in_input_order_from_other_processes():
    out = list(fork_map(_pid_and_square, range(7), workers=2))
    assert [sq for _, sq in out] == [x * x for x in range(7)]
    assert {pid for pid, _ in out} - {os.getpid()}  # the pool did run them elsewhere
    assert parallel._WORK is None  # nothing left behind for the next call


def test_one_worker_or_a_gpu_device_runs_here():
    for kwargs in ({"workers": 1}, {"workers": 2, "device": "cuda"}):
        out = list(fork_map(_pid_and_square, [1, 2, 3], **kwargs))
        assert out == [(os.getpid(), 1), (os.getpid(), 4), (os.getpid(), 9)]


def test_closures_reach_the_workers_and_a_nested_call_stays_in_its_worker():
    offset = 10

    def inner(x):
        return [pid for pid, _ in fork_map(_pid_and_square, [x, x + 1], workers=2)], os.getpid(), x + offset

    out = list(fork_map(inner, [1, 2], workers=2))
    assert [x for _, _, x in out] == [11, 12]
    for nested_pids, pid, _ in out:
        assert nested_pids == [pid, pid]


def test_workers_draw_no_bars():
    def hidden(_):
        return progress.bar(range(3), desc="inner").disable

    assert list(fork_map(hidden, [0, 1], workers=2)) == [True, True]


def test_an_exception_in_a_piece_is_raised_here():
    def fail_on_two(x):
        if x == 2:
            raise ValueError(f"bad piece {x}")
        return x

    with pytest.raises(ValueError, match="bad piece 2"):
        list(fork_map(fail_on_two, [0, 1, 2, 3], workers=2))
    assert parallel._WORK is None


def test_a_worker_that_dies_is_named():
    def die(x):
        if x == 1:
            os._exit(9)  # what the out-of-memory killer leaves behind
        return x

    with pytest.raises(WorkerDied, match=r"worker process died.*workers: 1"):
        list(fork_map(die, [0, 1, 2], workers=2))
