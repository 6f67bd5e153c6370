"""``navigator.cluster``: the runner on a real local Dask cluster (worker processes on 127.0.0.1)."""

from __future__ import annotations

import os
import socket

import pytest

from navigator.cluster import ClusterError, SerialRunner, open_cluster


def square_or_die(x: int) -> int:
    if x == 2:
        os._exit(1)  # the worker process dies, as one killed for memory does
    return x * x


def square_or_raise(x: int) -> int:
    if x == 2:
        raise ValueError("bad item")
    return x * x


def test_results_in_order_and_a_dead_worker_is_one_lost_task():
    seen = []
    with open_cluster(workers=2) as runner:
        assert runner.workers == 2
        out = runner.map(square_or_die, [1, 2, 3, 4], progress=lambda d, t: seen.append((d, t)),
                         on_error=lambda item, exc: ("lost", item, type(exc).__name__))
    assert out[0] == 1 and out[2] == 9 and out[3] == 16
    assert out[1][:2] == ("lost", 2) and out[1][2] == "KilledWorker"
    assert seen[-1] == (4, 4)


def test_serial_runner_reports_a_failing_item_the_same_way():
    out = SerialRunner().map(square_or_raise, [1, 2, 3], on_error=lambda item, exc: str(exc))
    assert out == [1, "bad item", 9]
    with pytest.raises(ValueError):
        SerialRunner().map(square_or_raise, [2])


def test_an_unreachable_scheduler_is_a_clear_error():
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClusterError, match="no Dask scheduler answered"):
        with open_cluster(scheduler=f"tcp://127.0.0.1:{port}", connect_timeout_s=2):
            pass
    with pytest.raises(ClusterError, match="tcp://HOST:PORT"):
        with open_cluster(scheduler="127.0.0.1"):
            pass
    with pytest.raises(ClusterError, match="one of them"):
        with open_cluster(workers=2, scheduler="tcp://127.0.0.1:1"):
            pass
