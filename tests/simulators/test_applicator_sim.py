"""simulators.applicator: the device side of SGP/1, driven with raw frames (no host driver)."""

import subprocess
import sys

import pytest
import serial
from hypothesis import given, settings, strategies as st

import simulators.applicator as sim
from device_drivers.framing import FrameDecoder, encode_frame
from simulators.applicator import Faults, ManualClock, SimulatedApplicator
from simulators.applicator.wire import WireReader, crc_ccitt, frame


class Bench:
    """Sends requests to a device and reads back what it says, with the driver's framing (the other side)."""

    def __init__(self, dev: SimulatedApplicator):
        self.dev = dev
        self.seq = 0
        self.dec = FrameDecoder()

    def raw(self, data: bytes) -> list[str]:
        self.dev.receive(data)
        return [f.start + f.body for f in self.dec.feed(self.dev.take_output())]

    def req(self, body: str, seq: int | None = None) -> list[str]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return self.raw(encode_frame("$", [str(seq)] + body.split(",")).raw)

    def ok(self, body: str) -> str:
        out = self.req(body)
        assert out and out[0].startswith(f"#{self.seq},OK"), out
        return out[0]


def armed_device(**kw) -> tuple[SimulatedApplicator, Bench]:
    dev = SimulatedApplicator(seeds=kw.pop("seeds", 10), clock=kw.pop("clock", ManualClock()), **kw)
    b = Bench(dev)
    b.ok("ENABLE")
    b.ok("SELECT,B3")
    dev.dock("B3", 40.0)
    b.dev.take_output()
    b.ok("ARM")
    return dev, b


def test_own_parser_crc_and_reader():
    assert crc_ccitt(b"123456789") == 0x29B1
    assert frame("$", "1,HELLO") == b"$1,HELLO*7613\r\n"
    r = WireReader()
    assert r.feed(b"\x00$1,HEL") == []
    assert r.feed(b"LO*7613\r\n#9,OK*0000\r\n") == [("$", "1,HELLO")]
    assert r.dropped == 1


def test_states_and_refusals():
    dev = SimulatedApplicator(seeds=2, clock=ManualClock())
    b = Bench(dev)
    assert b.req("ARM")[0] == "#1,ER,E_STATE,SAFE"
    assert b.req("SELECT,C7")[0] == "#2,ER,E_STATE,SAFE"
    b.ok("ENABLE")
    assert b.req("ENABLE")[0] == "#4,ER,E_STATE,IDLE"
    assert b.req("SELECT,c7")[0] == "#5,ER,E_SYNTAX"
    assert b.req("FIRE")[0] == "#6,ER,E_VERB"
    b.ok("SELECT,C7")
    assert b.req("ARM")[0] == "#8,ER,E_NODOCK"
    assert b.req("RETRACT,1.0")[0] == "#9,ER,E_NODOCK"
    dev.dock("C7", 30.0)
    dev.take_output()
    assert b.req("RETRACT,0.4")[0].startswith("#10,ER,E_ARG")
    assert b.req("RETRACT,50.1")[0].startswith("#11,ER,E_ARG")
    assert b.req("RETRACT,x")[0].startswith("#12,ER,E_SYNTAX")
    assert b.req("RECORD,1")[0] == "#13,ER,E_ARG"
    assert b.ok("STATUS") == "#14,OK,IDLE,C7,C7,30.0,2,0"
    assert b.req("RESET")[0] == "#15,ER,E_STATE,IDLE"


def test_release_counts_records_and_empties():
    dev, b = armed_device(seeds=1)
    assert b.ok("RELEASE") == f"#{b.seq},OK,1,0,40.0,B3"
    assert b.ok("RECORD,1").startswith(f"#{b.seq},OK,1,B3,40.0,")
    assert b.req("ARM")[0] == f"#{b.seq},ER,E_EMPTY"
    assert b.req("RELEASE")[0] == f"#{b.seq},ER,E_STATE,IDLE"
    assert len(dev.truth) == 1


def test_exactly_once_memory():
    dev, b = armed_device()
    first = b.req("RELEASE")
    again = b.req("RELEASE", seq=b.seq)        # retransmission: same text, same reply, no second seed
    assert first == again and dev.released_total == 1
    assert b.req("PING", seq=b.seq) == [f"#{b.seq},ER,E_SEQ"]   # same seq, other text
    assert dev.released_total == 1
    seq_release = b.seq
    for _ in range(32):
        b.ok("PING")                              # push the RELEASE out of the 32-request memory
    assert b.req("RELEASE", seq=seq_release)[0] == f"#{seq_release},ER,E_STATE,IDLE"
    assert dev.released_total == 1


def test_watchdog_and_disarm_timers_on_a_manual_clock():
    clock = ManualClock()
    dev, b = armed_device(clock=clock)
    clock.advance(1.9)
    b.ok("PING")                                  # feeds the watchdog; disarm timer keeps running
    clock.advance(1.9)
    b.ok("PING")
    clock.advance(1.9)
    b.ok("PING")
    clock.advance(4.5)                            # 10.2 s armed without RELEASE; watchdog 4.5 s > 2.0 s
    dev.poll()
    events = [f.body for f in b.dec.feed(dev.take_output())]
    assert events[0].endswith(",WATCHDOG") and dev.state == "SAFE"
    dev2, b2 = armed_device(clock=ManualClock())
    seen = []
    for _ in range(6):                            # fed every 1.8 s, but 10.8 s armed without RELEASE
        dev2.clock.advance(1.8)
        seen += b2.req("PING")
    assert dev2.state == "IDLE"
    assert [e for e in seen if e.startswith("!")] == [f"!{dev2.eid},DISARMED,TIMEOUT"]


def test_disarm_on_motion_select_and_undock_sends_events():
    dev, b = armed_device()
    out = b.req("RETRACT,1.0")
    assert out[0].endswith("OK,39.0") and out[1].endswith("DISARMED,MOTION") and dev.state == "IDLE"
    b.ok("ARM")
    dev.undock()
    evs = [f.body for f in b.dec.feed(dev.take_output())]
    assert [e.split(",", 1)[1] for e in evs] == ["DISARMED,UNDOCK", "UNDOCKED,B3"]
    eids = [int(e.split(",")[0]) for e in evs]
    assert eids[1] == eids[0] + 1


def test_jam_fault_and_reset():
    dev, b = armed_device(faults=Faults(jam_every=1))
    out = b.req("RELEASE")
    assert out[0] == f"#{b.seq},ER,E_JAM" and out[1].endswith("JAM,B3") and dev.state == "FAULT"
    assert dev.released_total == 0 and dev.seeds_left == 10
    b.ok("RESET")
    assert dev.state == "SAFE"


def test_estop_at_release_and_reset_needs_the_button_released():
    dev, b = armed_device(faults=Faults(estop_at_release=1))
    out = b.req("RELEASE")
    assert out[0] == f"#{b.seq},ER,E_ESTOP" and dev.state == "ESTOP" and not dev.truth
    assert b.req("RESET")[0] == f"#{b.seq},ER,E_ESTOP,BUTTON"
    b.ok("SIM,ESTOP,0")
    b.ok("RESET")
    assert dev.state == "SAFE"


def test_empty_cartridge_fault_and_new_cartridge():
    dev = SimulatedApplicator(seeds=60, faults=Faults(empty_cartridge=True), clock=ManualClock())
    b = Bench(dev)
    assert b.ok("CART").endswith(",0")
    out = b.req("SIM,CARTRIDGE,CART2,5")
    assert out[0] == f"#{b.seq},OK" and out[1].endswith("CARTRIDGE,CART2,5")
    assert b.ok("CART") == f"#{b.seq},OK,CART2,6711,14.8,20261101,5"


def test_power_cycle_keeps_physics_and_forgets_counters():
    dev, b = armed_device()
    b.ok("RELEASE")
    dev.power_cycle()
    assert b.ok("STATUS") == f"#{b.seq},OK,SAFE,-,B3,40.0,9,0"
    assert len(dev.truth) == 1 and dev.truth[0].power_epoch == 0


def test_sim_verbs_dock_and_undock():
    dev = SimulatedApplicator(clock=ManualClock())
    b = Bench(dev)
    out = b.req("SIM,DOCK,H12,55.5")
    assert out == ["#1,OK", "!1,DOCKED,H12,55.5"]
    assert b.req("SIM,UNDOCK") == ["#2,OK", "!2,UNDOCKED,H12"]
    assert b.req("SIM,DOCK,H12") == ["#3,ER,E_SYNTAX"]
    assert b.req("SIM,FLY") == ["#4,ER,E_VERB"]


def test_operator_depth_events_are_rate_limited():
    clock = ManualClock()
    dev = SimulatedApplicator(clock=clock)
    dev.dock("A1", 30.0)
    dev.move_needle(30.3)
    dev.move_needle(31.0)
    clock.advance(0.05)
    dev.move_needle(32.0)   # within 0.1 s of the last DEPTH: not reported
    clock.advance(0.1)
    dev.move_needle(33.0)
    bodies = [f.body for f in FrameDecoder().feed(dev.take_output())]
    assert bodies == ["1,DOCKED,A1,30.0", "2,DEPTH,31.0", "3,DEPTH,33.0"]


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_device_nor_release(data):
    dev, b = armed_device()
    dev.receive(data)
    dev.take_output()
    assert dev.released_total == 0 and not dev.truth


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 100), st.integers(1, 255))
def test_a_corrupted_release_never_releases(pos, flip):
    dev, b = armed_device()
    raw = bytearray(frame("$", "77,RELEASE"))
    raw[pos % len(raw)] ^= flip
    dev.receive(bytes(raw))
    assert dev.released_total == 0


def test_url_handler_shares_named_devices_and_survives_reopen():
    port = serial.serial_for_url("sgpsim://shared1?seeds=7&disconnect_every=2", timeout=0.5)
    dev = sim.DEVICES["shared1"]
    assert port.device is dev and dev.seeds_left == 7
    port.write(frame("$", "1,ENABLE"))
    assert port.read(100).startswith(b"#1,OK")
    port.write(frame("$", "2,PING"))                   # the 2nd frame drops the link; its reply is lost
    with pytest.raises(serial.SerialException):
        port.read(1)
    port.close()
    port.open()
    port.write(frame("$", "3,STATUS"))
    assert port.read(100).startswith(b"#3,OK,IDLE,")   # state intact across the reconnect
    port.close()


def test_url_handler_rejects_unknown_faults():
    with pytest.raises(serial.SerialException):
        serial.serial_for_url("sgpsim://?jam_evry=3")


@pytest.mark.timeout(60)
def test_separate_process_prints_listening_and_serves_socket_url():
    proc = subprocess.Popen([sys.executable, "-m", "simulators.applicator", "--listen", "127.0.0.1:0",
                             "--seeds", "5", "--jam-every", "3"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("LISTENING socket://127.0.0.1:")
        port = serial.serial_for_url(line.split()[1], timeout=2.0)
        port.write(frame("$", "1,CART"))
        assert port.read_until(b"\n") == frame("#", "1,OK,CART0001,6711,14.8,20261101,5")
        port.close()
    finally:
        proc.kill()
        proc.wait(10)
