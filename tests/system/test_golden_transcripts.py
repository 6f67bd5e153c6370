"""The worked exchange of SGP/1 section 10, byte for byte, on each end alone and on both together."""

import queue
import socket
import threading

import simulators.applicator as sim
from device_drivers import LinkConfig, SgpApplicator, codec
from simulators.applicator import ManualClock, SimulatedApplicator

# (who, bytes): host requests, device replies/events, and the operator docking between requests 3 and 4
TRANSCRIPT = [
    ("host", b"$1,HELLO*7613\r\n"), ("device", b"#1,OK,SGP-SIM,SN0001,1.0,SGP/1*B538\r\n"),
    ("host", b"$2,ENABLE*082D\r\n"), ("device", b"#2,OK*52BB\r\n"),
    ("host", b"$3,SELECT,C7*19A6\r\n"), ("device", b"#3,OK,C7*A7B4\r\n"),
    ("operator", ("C7", 62.0)), ("device", b"!1,DOCKED,C7,62.0*4685\r\n"),
    ("host", b"$4,RETRACT,4.0*9470\r\n"), ("device", b"#4,OK,58.0*887A\r\n"),
    ("host", b"$5,ARM*9DE0\r\n"), ("device", b"#5,OK*0396\r\n"),
    ("host", b"$6,RELEASE*5EC8\r\n"), ("device", b"#6,OK,1,59,58.0,C7*7F92\r\n"),
]
HOST_BYTES = b"".join(b for who, b in TRANSCRIPT if who == "host")
DEVICE_BYTES = b"".join(b for who, b in TRANSCRIPT if who == "device")


def test_simulator_reproduces_the_device_side():
    dev = SimulatedApplicator(seeds=60, clock=ManualClock())
    pending = b""
    for who, item in TRANSCRIPT:
        if who == "host":
            assert dev.take_output() == pending
            dev.receive(item)
            pending = b""
        elif who == "operator":
            assert dev.take_output() == pending
            dev.dock(*item)
            pending = b""
        else:
            pending += item
    assert dev.take_output() == pending
    assert dev.released_total == 1 and dev.truth[0].hole == "C7" and dev.truth[0].depth_mm == 58.0


def test_driver_codec_reproduces_the_host_side():
    requests = [codec.make_request(1, "HELLO"), codec.make_request(2, "ENABLE"),
                codec.make_request(3, "SELECT", "C7"), codec.make_request(4, "RETRACT", codec.fmt_mm(4.0)),
                codec.make_request(5, "ARM"), codec.make_request(6, "RELEASE")]
    assert b"".join(r.encode() for r in requests) == HOST_BYTES


def _scripted_device(server: socket.socket, errors: "queue.Queue[str]", done: threading.Event,
                     dock_now: threading.Event) -> None:
    """A device that is nothing but the transcript: it expects each host frame and answers the spec's bytes."""
    conn, _ = server.accept()
    conn.settimeout(5.0)
    buf = b""
    try:
        for i, (who, item) in enumerate(TRANSCRIPT):
            if who == "host":
                while b"\n" not in buf:
                    chunk = conn.recv(256)
                    if not chunk:
                        raise ConnectionError("host closed")
                    buf += chunk
                line, buf = buf.split(b"\n", 1)
                line += b"\n"
                if line != item:
                    errors.put(f"step {i}: host sent {line!r}, transcript says {item!r}")
                    return
            elif who == "operator":
                dock_now.wait(5.0)
            else:
                conn.sendall(item)
    except OSError as exc:
        errors.put(f"scripted device: {exc}")
    finally:
        done.set()
        conn.close()


def test_driver_reproduces_the_host_side_against_the_transcript_alone():
    server = socket.create_server(("127.0.0.1", 0))
    errors: "queue.Queue[str]" = queue.Queue()
    done, dock_now = threading.Event(), threading.Event()
    t = threading.Thread(target=_scripted_device, args=(server, errors, done, dock_now), daemon=True)
    t.start()
    drv = SgpApplicator(f"socket://127.0.0.1:{server.getsockname()[1]}", LinkConfig(seq_start=1, keepalive_s=None))
    try:
        assert drv.connect() == codec.Hello("SGP-SIM", "SN0001", "1.0", "SGP/1")
        drv.enable()
        drv.select("C7")
        dock_now.set()
        ev = drv.next_event(timeout_s=5.0)
        assert (ev.eid, ev.name, ev.fields) == (1, "DOCKED", ("C7", "62.0"))
        assert drv.retract(4.0) == 58.0
        drv.arm()
        assert drv.release() == codec.ReleaseReport(1, 59, 58.0, "C7")
        assert done.wait(5.0)
    finally:
        drv.close()
        server.close()
    assert errors.empty(), errors.get()
    assert drv.stats.retransmissions == 0


def test_both_ends_together_put_exactly_the_transcript_on_the_wire():
    dev = SimulatedApplicator(seeds=60)
    dev.wire_log = []
    sim.register_device("golden", dev)
    drv = SgpApplicator("sgpsim://golden", LinkConfig(seq_start=1, keepalive_s=None))
    try:
        drv.connect()
        drv.enable()
        drv.select("C7")
        dev.dock("C7", 62.0)
        assert drv.next_event(timeout_s=5.0).name == "DOCKED"
        drv.retract(4.0)
        drv.arm()
        drv.release()
    finally:
        drv.close()
    assert b"".join(b for d, b in dev.wire_log if d == "in") == HOST_BYTES
    assert b"".join(b for d, b in dev.wire_log if d == "out") == DEVICE_BYTES
