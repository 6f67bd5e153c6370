"""navigator.delivery.run / ledger / deliver command: exactly-once delivery against the simulated applicator."""

import ast
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

import simulators.applicator as sim
from navigator.cli import main as cli_main
from navigator.delivery.run import Delivery, delivery_tasks
from navigator.errors import PlanError
from navigator.session.journal import Journal
from navigator.delivery.ledger import SeedLedger
from navigator.core.plan import Needle, Plan, PlannedSeed
from navigator.wiring import open_applicator
from simulators.applicator import Faults, ManualClock, SimulatedApplicator

AXIS = np.array([0.0, 0.6, -0.8])


def make_plan(needles=2, seeds=3, tip_mm=60.0, spacing_mm=7.5) -> Plan:
    ns, ss = [], []
    for i in range(needles):
        entry = np.array([10.0 + 5 * i, -20.0, 30.0])
        ns.append(Needle(f"N{i + 1}", entry, entry + tip_mm * AXIS, f"C{i + 1}"))
        for j in range(seeds):  # listed shallow-first on purpose: delivery must go deepest first
            depth = tip_mm - 2.0 - spacing_mm * (seeds - 1 - j)
            ss.append(PlannedSeed(f"S{i + 1}.{j + 1}", f"N{i + 1}", entry + depth * AXIS))
    return Plan("1.2.3", "1.2.3.4", "GTV", 140.0, "6711", 0.5, ns, ss)


def run(tmp_path, name, dev=None, plan=None, journal=None, traffic=None, **faults):
    dev = dev or SimulatedApplicator(seeds=30, faults=Faults(**faults))
    sim.register_device(name, dev)
    app = open_applicator(f"sgpsim://{name}", traffic=traffic, timeout_scale=0.1)
    ledger = SeedLedger(tmp_path / f"{name}.ledger.jsonl")
    try:
        result = Delivery(plan or make_plan(), app, ledger, journal=journal, simulate_operator=True,
                          dock_timeout_s=2.0).run()
    finally:
        app.close()
        ledger.close()
    return dev, result


def truth(dev):
    return [(r.hole, r.depth_mm) for r in dev.truth]


def assert_exactly_once(dev, result):
    booked = Counter((s.hole, s.depth_mm) for s in result.ledger.released.values())
    actual = Counter(truth(dev))
    assert max(actual.values(), default=1) == 1, "a seed position was released twice"
    assert booked == actual, "ledger and ground truth disagree"


def test_wiring_gives_an_applicator():
    from navigator.delivery.applicator import Applicator
    app = open_applicator("sgpsim://")
    assert isinstance(app, Applicator)
    import navigator.delivery.run as d
    import navigator.delivery.applicator as a
    for module in (d, a):
        tree = ast.parse(open(module.__file__).read())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
            {al.name for n in ast.walk(tree) if isinstance(n, ast.Import) for al in n.names}
        assert not any(m and m.startswith(("device_drivers", "serial", "simulators")) for m in imported)


def test_tasks_deepest_first_and_plan_checks():
    tasks = delivery_tasks(make_plan())
    assert [t.seed_id for t in tasks[0]] == ["S1.3", "S1.2", "S1.1"]
    assert [t.depth_mm for t in tasks[0]] == [58.0, 50.5, 43.0] and tasks[0][0].tip_depth_mm == 60.0
    bad = make_plan()
    bad.needles[0].hole = None
    with pytest.raises(PlanError, match="hole"):
        delivery_tasks(bad)
    far = make_plan()
    far.seeds[0].position_mm = far.needles[0].entry_mm + 70.0 * AXIS
    with pytest.raises(PlanError, match="outside the needle"):
        delivery_tasks(far)


def test_normal_delivery(tmp_path):
    dev, result = run(tmp_path, "dl-normal")
    assert result.ok and result.reconciled and result.device_released_total == 6
    assert truth(dev) == [("C1", 58.0), ("C1", 50.5), ("C1", 43.0), ("C2", 58.0), ("C2", 50.5), ("C2", 43.0)]
    data = result.to_json()
    assert {"released", "device_released_total", "seeds", "reconciled"} <= set(data)
    assert [s["device_index"] for s in data["seeds"]] == [1, 2, 3, 4, 5, 6]
    assert dev.docked is None  # undocked after each needle
    assert_exactly_once(dev, result)


def test_jam_stops_delivery_and_stays_reconciled(tmp_path):
    dev, result = run(tmp_path, "dl-jam", jam_every=3)
    assert not result.ok and "jammed" in result.stopped_reason
    assert len(result.ledger.released) == 2 and result.reconciled
    assert "S1.1" in result.ledger.not_released and dev.state == "FAULT"
    assert_exactly_once(dev, result)


def test_estop_mid_needle(tmp_path):
    dev, result = run(tmp_path, "dl-estop", estop_at_release=2)
    assert "emergency stop" in result.stopped_reason and dev.state == "ESTOP"
    assert len(result.ledger.released) == 1 and result.reconciled and result.device_released_total == 1
    assert_exactly_once(dev, result)


def test_empty_cartridge(tmp_path):
    dev, result = run(tmp_path, "dl-empty", empty_cartridge=True)
    assert "cartridge empty" in result.stopped_reason and not result.ledger.released and not dev.truth


def test_watchdog_expiry_mid_delivery_is_recovered(tmp_path):
    dev = SimulatedApplicator(seeds=30, clock=ManualClock())
    kinds = []

    def journal(kind, data):
        kinds.append(kind)
        if kind == "seed_released" and kinds.count("seed_released") == 2:
            dev.clock.advance(2.5)   # the host went quiet for 2.5 s
            dev.poll()
    dev, result = run(tmp_path, "dl-watchdog", dev=dev, journal=journal)
    assert result.ok and "device_enable" in kinds
    assert_exactly_once(dev, result)


def test_reply_lost_after_release_no_second_seed(tmp_path):
    dev = SimulatedApplicator(seeds=30)
    dev.drop_replies_to["RELEASE"] = 1
    dev, result = run(tmp_path, "dl-lostreply", dev=dev)
    assert result.ok and len(dev.truth) == 6
    assert_exactly_once(dev, result)


def test_release_then_link_lost_is_booked_from_record(tmp_path):
    dev = SimulatedApplicator(seeds=30)
    state = {"armed": False}

    def traffic(kind, text):
        if kind == "device_command" and text.endswith(",RELEASE") and not state["armed"]:
            state["armed"] = True
            dev.drop_replies_to["RELEASE"] = 1     # it executes, its reply is lost,
        elif kind == "device_command" and text.endswith(",RELEASE #1"):
            dev.drop_requests = 5                  # and so are all retransmissions: LinkLost
    dev, result = run(tmp_path, "dl-linklost", dev=dev, traffic=traffic)
    assert result.ok and len(dev.truth) == 6
    assert [s.how for s in result.ledger.released.values()].count("reconciled") == 1
    assert_exactly_once(dev, result)


def test_power_cycle_mid_delivery_is_reconciled(tmp_path):
    dev, result = run(tmp_path, "dl-power", power_cycle_at_release=3)
    assert result.ok and result.power_cycles == 1 and result.reconciled
    assert result.device_released_total == 6 and dev.released_total == 3
    assert sorted({r.power_epoch for r in dev.truth}) == [0, 1]
    assert_exactly_once(dev, result)


def test_power_cycle_with_the_reply_lost_is_settled_by_cartridge_count(tmp_path):
    dev = SimulatedApplicator(seeds=30, faults=Faults(power_cycle_at_release=2))

    def journal(kind, data):
        if kind == "seed_released" and data.get("device_index") == 1:
            dev.drop_replies_to["RELEASE"] = 1   # the 2nd release's reply dies with the power
    dev, result = run(tmp_path, "dl-power-lost", dev=dev, journal=journal)
    assert result.ok and len(dev.truth) == 6
    assert [s.how for s in result.ledger.released.values()].count("cartridge_count") == 1
    assert_exactly_once(dev, result)


class Crash(BaseException):
    """The host process dies: nothing catches this."""


def test_crash_between_release_and_ledger_outcome_resumes_without_a_second_seed(tmp_path):
    dev = SimulatedApplicator(seeds=30)
    sim.register_device("dl-crash", dev)
    plan = make_plan()

    def traffic(kind, text):
        if kind == "device_reply" and text.count(",") == 5 and text.split(",")[2] == "3":
            raise Crash()  # the 3rd RELEASE's reply arrived; the host dies before booking it
    app = open_applicator("sgpsim://dl-crash", traffic=traffic, timeout_scale=0.1)
    ledger = SeedLedger(tmp_path / "dl-crash.ledger.jsonl")
    with pytest.raises(Crash):
        Delivery(plan, app, ledger, simulate_operator=True).run()
    app.close()
    ledger.close()
    reloaded = SeedLedger(tmp_path / "dl-crash.ledger.jsonl")
    assert len(reloaded.released) == 2 and list(reloaded.pending) == ["S1.1"]
    reloaded.close()
    dev, result = run(tmp_path, "dl-crash", dev=dev, plan=plan)
    assert result.ok and result.ledger.released["S1.1"].how == "reconciled"
    assert_exactly_once(dev, result)


def write_plan(tmp_path) -> str:
    p = tmp_path / "plan.json"
    make_plan().save(p)
    return str(p)


def test_cli_deliver_writes_delivery_json_beside_the_journal(tmp_path, capsys):
    journal = tmp_path / "run" / "session.jsonl"
    rc = cli_main(["deliver", "--plan", write_plan(tmp_path), "--device", "sgpsim://?seeds=20",
                   "--journal", str(journal), "--simulate-operator"])
    assert rc == 0
    data = json.loads((journal.parent / "delivery.json").read_text())
    assert data["released"] == 6 and data["device_released_total"] == 6 and data["reconciled"] is True
    assert set(data["seeds"][0]) >= {"seed_id", "hole", "depth_mm", "device_index"}
    kinds = Counter(e["kind"] for e in Journal.read(journal))
    assert kinds["seed_release_intent"] == 6 and kinds["seed_released"] == 6
    assert kinds["device_command"] > 20 and kinds["device_reply"] > 20
    assert (journal.parent / "session.ledger.jsonl").exists()
    assert "delivered 6 of 6" in capsys.readouterr().out


def test_cli_exit_codes(tmp_path, capsys):
    plan = write_plan(tmp_path)
    j = str(tmp_path / "s.jsonl")
    assert cli_main(["deliver", "--plan", str(tmp_path / "none.json"), "--device", "sgpsim://", "--journal", j]) == 2
    assert cli_main(["deliver", "--plan", plan, "--device", "nope://x", "--journal", j]) == 2
    assert "not usable" in capsys.readouterr().err
    rc = cli_main(["deliver", "--plan", plan, "--device", "sgpsim://?jam_every=2", "--journal",
                   str(tmp_path / "jam" / "s.jsonl"), "--simulate-operator"])
    assert rc == 1
    data = json.loads((tmp_path / "jam" / "delivery.json").read_text())
    assert data["released"] == 1 and data["reconciled"] is True and "jammed" in data["stopped_reason"]


@pytest.mark.timeout(120)
def test_cli_against_a_separate_process_simulator(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "simulators.applicator", "--listen", "127.0.0.1:0",
                             "--seeds", "20", "--disconnect-every", "25"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[1]
        out = subprocess.run([sys.executable, "-m", "navigator.cli", "deliver", "--plan", write_plan(tmp_path),
                              "--device", url, "--journal", str(tmp_path / "session.jsonl"),
                              "--simulate-operator", "--json"], capture_output=True, text=True, timeout=100)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["released"] == data["device_released_total"] == 6 and data["reconciled"]
    finally:
        proc.kill()
        proc.wait(10)


def test_a_ledger_is_not_reconciled_against_another_applicator(tmp_path):
    run(tmp_path, "dl-serial", plan=make_plan(needles=1, seeds=1))
    other = SimulatedApplicator(seeds=30, serial="SN0002")
    dev, result = run(tmp_path, "dl-serial", dev=other)
    assert "belongs to applicator ['SN0001']" in result.stopped_reason and not other.truth
    assert not result.reconciled and len(result.ledger.epochs) == 1  # the other device left no trace in it
