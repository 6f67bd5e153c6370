"""Short soak (the long one is bench/bench_soak.py): a large delivery over a hostile link, checked against the
simulator's ground truth. 1 % byte corruption, 2 % frame loss, a disconnect every 400 frames."""

import importlib.util

import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("bench_soak", REPO / "bench" / "bench_soak.py")
bench_soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_soak)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_soak_exactly_once_over_a_hostile_link(tmp_path):
    r = bench_soak.run_soak(requests=1000, corrupt_rate=0.01, loss_rate=0.02, disconnect_every=400, seed=7,
                            workdir=tmp_path)
    assert r["stopped"] is None, r
    assert r["released_twice"] == 0
    assert r["unaccounted"] == 0
    assert r["released_ledger"] == r["device_released_total"] == r["true_releases"] == r["planned"]
    assert r["reconciled"]
    assert r["requests"] >= 1000
    assert r["retransmissions"] > 0 and r["reconnects"] >= 2 and r["bytes_corrupted"] > 0  # the link was hostile
