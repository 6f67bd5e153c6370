"""The console's stop of a delivery (``navigator.live.delivery._Stoppable``) over the simulated applicator
(``sgpsim://``, in process): the seed in hand finishes, the next device step is refused, the run ends through
its own stop path with a reconciled ledger; started again it delivers the rest, no seed twice."""

from __future__ import annotations

import threading

from navigator.delivery.ledger import SeedLedger
from navigator.delivery.run import Delivery
from navigator.live.delivery import _Stoppable
from navigator.wiring import open_applicator


def _run(plan, ledger_path, stop: threading.Event, why: dict, stop_after: int | None, lines: list):
    released = []

    def journal(kind, data):
        lines.append((kind, data))
        if kind == "seed_released":
            released.append(data["seed_id"])
            if stop_after is not None and len(released) == stop_after:
                why.update(user="phil")
                stop.set()

    ledger = SeedLedger(ledger_path)
    app = open_applicator("sgpsim://?seeds=100&seed=3")
    try:
        result = Delivery(plan, _Stoppable(app, stop, why), ledger, journal=journal, simulate_operator=True).run()
    finally:
        app.close()
        ledger.close()
    return result, released


def test_stop_ends_the_run_cleanly_and_a_new_start_delivers_the_rest(case, tmp_path):
    plan = case["plan_obj"]
    lines: list = []
    stop, why = threading.Event(), {}
    result, first = _run(plan, tmp_path / "delivery.ledger.jsonl", stop, why, 4, lines)
    assert "stopped from the console by phil" in (result.stopped_reason or "")
    assert len(first) == 4 and not result.ok
    assert ("delivery_stopped" in [k for k, _ in lines])
    assert result.reconciled  # the closing STATUS/RECORD went through after the stop

    result2, second = _run(plan, tmp_path / "delivery.ledger.jsonl", threading.Event(), {}, None, [])
    assert result2.ok and not set(first) & set(second)
    assert sorted(first + second) == sorted(s.id for s in plan.seeds)
