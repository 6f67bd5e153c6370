"""device_drivers.applicator: the host semantics against the simulated device (in-process and over TCP)."""

import subprocess
import sys

import pytest

import simulators.applicator as sim
from device_drivers import (ConnectError, CounterMismatch, EventGap, InterlockError, LinkConfig, LinkLost,
                            ReconcileRequired, SgpApplicator, codec)
from simulators.applicator import SimulatedApplicator

FAST = LinkConfig(seq_start=1, keepalive_s=None).scaled(0.1)  # 25 ms reply timeout: the device is instant


def connected(name, dev=None, config=FAST, traffic=None):
    dev = dev or SimulatedApplicator(seeds=10)
    dev.wire_log = []
    sim.register_device(name, dev)
    drv = SgpApplicator(f"sgpsim://{name}", config, traffic)
    drv.connect()
    return dev, drv


def sent(dev, verb):
    """Request frames carrying ``verb`` that reached the device, in order."""
    out = []
    for d, b in dev.wire_log:
        if d == "in":
            out += [line + b"\n" for line in b.split(b"\n") if b"," + verb.encode() + b"*" in line]
    return out


def docked(drv, dev, hole="C7", depth=62.0):
    drv.enable()
    drv.select(hole)
    dev.dock(hole, depth)
    assert drv.next_event(2.0).name == "DOCKED"


def test_timeouts_follow_the_spec_and_scale():
    c = LinkConfig()
    assert c.timeout_for(codec.make_request(1, "STATUS")) == pytest.approx(0.250)
    assert c.timeout_for(codec.make_request(1, "RETRACT", "10.0")) == pytest.approx(0.450)
    assert c.timeout_for(codec.make_request(1, "RELEASE")) == pytest.approx(0.550)
    assert c.retransmissions == 5
    assert c.scaled(0.1).timeout_for(codec.make_request(1, "RELEASE")) == pytest.approx(0.055)


def test_lost_requests_are_retransmitted_with_identical_bytes():
    dev, drv = connected("drv-retx")
    try:
        dev.drop_requests = 2
        assert drv.status().state == "SAFE"
        frames = sent(dev, "STATUS")
        assert len(frames) == 3 and len(set(frames)) == 1
        assert drv.stats.retransmissions == 2
    finally:
        drv.close()


def test_reply_lost_after_release_gives_no_second_seed():
    dev, drv = connected("drv-lostreply")
    try:
        docked(drv, dev)
        drv.arm()
        dev.drop_replies_to["RELEASE"] = 1
        report = drv.release()
        assert report == codec.ReleaseReport(1, 9, 62.0, "C7")
        assert len(dev.truth) == 1 and dev.released_total == 1
        frames = sent(dev, "RELEASE")
        assert len(frames) == 2 and frames[0] == frames[1]
    finally:
        drv.close()


def test_link_lost_after_five_retransmissions_then_reconcile_before_release():
    dev, drv = connected("drv-lost")
    try:
        docked(drv, dev)
        dev.drop_requests = 1000
        with pytest.raises(LinkLost):
            drv.ping()
        assert len(sent(dev, "PING")) == 6
        assert drv.needs_reconcile
        dev.drop_requests = 0
        with pytest.raises(ReconcileRequired):
            drv.arm()
        with pytest.raises(ReconcileRequired):
            drv.release_seed("C7", 62.0)
        assert not sent(dev, "ARM")
        rec = drv.reconcile()
        assert rec.status.released_total == 0 and rec.records == ()
        drv.release_seed("C7", 62.0)
        assert drv.reconcile().records == (codec.ReleaseRecord(1, "C7", 62.0, dev.truth[0].uptime_ms),)
    finally:
        drv.close()


def test_sequence_numbers_wrap_from_65535_to_1():
    dev, drv = connected("drv-wrap", config=LinkConfig(seq_start=65535, keepalive_s=None).scaled(0.1))
    try:
        drv.ping()
        drv.ping()
        seqs = [int(b[1:].split(b",")[0]) for d, b in dev.wire_log if d == "in"]
        assert seqs == [65535, 1, 2]  # HELLO, PING, PING
    finally:
        drv.close()


def test_seq_remembered_from_another_host_is_skipped():
    dev = SimulatedApplicator()
    sim.register_device("drv-eseq", dev)
    old = SgpApplicator("sgpsim://drv-eseq", LinkConfig(seq_start=1, keepalive_s=None).scaled(0.1))
    old.connect()   # seq 1: HELLO
    old.ping()      # seq 2: PING
    old.close()
    drv = SgpApplicator("sgpsim://drv-eseq", LinkConfig(seq_start=2, keepalive_s=None).scaled(0.1))
    try:
        drv.connect()  # "2,HELLO" meets the remembered "2,PING": E_SEQ, so the driver moves past the memory
        assert drv.stats.seq_skips == 1
        assert drv.status().state == "SAFE"
    finally:
        drv.close()


def test_event_gap_is_reported_with_a_fresh_status():
    dev, drv = connected("drv-gap")
    try:
        docked(drv, dev)
        dev.eid += 1          # an event the host never sees
        dev.undock()
        gap = drv.next_event(2.0)
        assert isinstance(gap, EventGap) and (gap.expected_eid, gap.received_eid) == (2, 3)
        assert gap.status.docked_hole is None
        assert drv.next_event(2.0).name == "UNDOCKED"
    finally:
        drv.close()


def test_interlocks_refuse_before_any_byte_of_arm():
    dev, drv = connected("drv-interlock")
    try:
        drv.enable()
        drv.select("C7")
        with pytest.raises(InterlockError, match="docked"):
            drv.release_seed("C7", 62.0)
        dev.dock("D4", 62.0)
        with pytest.raises(InterlockError, match="docked hole D4"):
            drv.release_seed("C7", 62.0)
        dev.dock("C7", 62.0)
        with pytest.raises(InterlockError, match="within 0.5 mm"):
            drv.release_seed("C7", 61.4)
        assert not sent(dev, "ARM") and not dev.truth
        assert drv.release_seed("C7", 61.6).released_total == 1
        with pytest.raises(InterlockError):
            drv.retract(0.2)
    finally:
        drv.close()


def test_counter_must_rise_by_exactly_one():
    holder = {}

    def traffic(kind, text):
        if kind == "device_command" and text.endswith(",RELEASE"):
            holder["dev"].released_total += 1   # a release nobody asked for, just before ours

    dev = SimulatedApplicator()
    holder["dev"] = dev
    dev, drv = connected("drv-counter", dev=dev, traffic=traffic)
    try:
        docked(drv, dev)
        with pytest.raises(CounterMismatch):
            drv.release_seed("C7", 62.0)
    finally:
        drv.close()


def test_keepalive_feeds_the_watchdog():
    fed = SimulatedApplicator(watchdog_s=0.3)
    fed_dev, fed_drv = connected("drv-fed", dev=fed, config=LinkConfig(seq_start=1, keepalive_s=0.05))
    starved = SimulatedApplicator(watchdog_s=0.3)
    st_dev, st_drv = connected("drv-starved", dev=starved, config=LinkConfig(seq_start=1, keepalive_s=None))
    try:
        fed_drv.enable()
        st_drv.enable()
        ev = st_drv.next_event(3.0)
        assert ev is not None and ev.name == "WATCHDOG" and starved.state == "SAFE"
        assert fed_drv.next_event(0.5) is None and fed.state == "IDLE"
        assert fed_drv.stats.keepalives > 0
    finally:
        fed_drv.close()
        st_drv.close()


def test_connect_errors_are_clear():
    with pytest.raises(ConnectError, match="not usable"):
        SgpApplicator("nope://x").connect()
    with pytest.raises(ConnectError, match="cannot open"):
        SgpApplicator("socket://127.0.0.1:1").connect()


@pytest.mark.timeout(120)
def test_separate_process_simulator_over_socket_with_disconnects():
    proc = subprocess.Popen([sys.executable, "-m", "simulators.applicator", "--listen", "127.0.0.1:0",
                             "--seeds", "20", "--disconnect-every", "11"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[1]
        drv = SgpApplicator(url, LinkConfig(keepalive_s=0.5))
        try:
            drv.connect()
            drv.enable()
            drv.select("E5")
            drv.sim_dock("E5", 50.0)
            released = 0
            for depth in (50.0, 45.0, 40.0, 35.0):
                if depth < 50.0:
                    drv.retract(5.0)
                if drv.needs_reconcile:
                    rec = drv.reconcile()
                    assert rec.status.released_total == released  # the device kept its state across reconnects
                    assert [r.depth_mm for r in rec.records] == [50.0, 45.0, 40.0][:released]
                for _attempt in range(30):
                    try:
                        drv.release_seed("E5", depth)
                        break
                    except (ReconcileRequired, LinkLost):
                        rec = drv.reconcile()
                        if rec.status.released_total == released + 1:
                            break  # the release happened; its reply was lost with the link
                    except InterlockError:
                        drv.select("E5")
                else:
                    pytest.fail(f"no progress at depth {depth} mm")
                released += 1
            rec = drv.reconcile()
            assert rec.status.released_total == 4
            assert [r.depth_mm for r in rec.records] == [50.0, 45.0, 40.0, 35.0]
            assert drv.stats.reconnects >= 3
        finally:
            drv.close()
    finally:
        proc.kill()
        proc.wait(10)


def test_real_timing_on_request_stays_within_the_spec_timeouts():
    dev = SimulatedApplicator(realtime=True)
    dev, drv = connected("drv-realtime", dev=dev, config=LinkConfig(seq_start=1))
    try:
        docked(drv, dev, depth=60.0)
        import time as _t
        t0 = _t.perf_counter()
        drv.retract(10.0)                      # 10 ms + 15 ms/mm in the simulator
        assert _t.perf_counter() - t0 >= 0.15
        drv.release_seed("C7", 50.0)           # 150 ms stylet
        assert drv.stats.retransmissions == 0 and len(dev.truth) == 1
    finally:
        drv.close()


def test_late_replies_cause_retransmission_but_one_execution():
    dev = SimulatedApplicator(faults=sim.Faults(reply_delay_s=0.3))   # longer than the 250 ms base timeout
    dev, drv = connected("drv-late", dev=dev, config=LinkConfig(seq_start=1, keepalive_s=None))
    try:
        docked(drv, dev)
        assert drv.stats.retransmissions >= 3  # HELLO, ENABLE, SELECT each waited past 250 ms once
        drv.release_seed("C7", 62.0)
        assert len(dev.truth) == 1 and dev.requests_executed == 6  # HELLO ENABLE SELECT STATUS ARM RELEASE
    finally:
        drv.close()
