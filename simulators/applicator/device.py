"""The simulated applicator and guide template: SGP/1's device side (spec sections 4-7, 9).

``SimulatedApplicator`` is the whole device behind a byte pipe: ``receive(bytes)`` takes what the host sent,
``take_output()`` returns what the device has to send by now, ``poll()`` runs its timers (watchdog, disarm).
The carrier (the pyserial URL handler or the TCP server) moves the bytes. Operator hands are methods
(``dock``, ``undock``, ``move_needle``, ``press_estop``...) and the SIM verbs. ``truth`` keeps where every
seed really went, across power cycles, so tests and a synthetic post-implant CT can check the host.

Depths are kept in integer tenths of a millimetre: the wire carries one decimal and a float sum would drift.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .faults import FaultInjector, Faults
from .wire import WireReader, frame

WATCHDOG_S = 2.0
DISARM_S = 10.0
MEMORY = 32
_HOLE = re.compile(r"^[A-Z][0-9]{1,2}$")
_NUM = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_SEQ = re.compile(r"^[0-9]{1,5}$")


class RealClock:
    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told: for timer tests without waiting."""

    def __init__(self, start: float = 0.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass(frozen=True)
class TrueRelease:
    """A seed that really left the applicator."""

    lifetime_index: int   # 1-based over the simulator's whole life
    power_epoch: int      # 0 before the first power cycle
    k: int                # the device's RECORD index in that epoch
    hole: str
    depth_mm: float
    uptime_ms: int


class _Refuse(Exception):
    def __init__(self, code: str, detail: str | None = None):
        self.fields = code if detail is None else f"{code},{detail}"


def _tenths(text: str) -> int:
    if not _NUM.match(text):
        raise _Refuse("E_SYNTAX")
    return int(round(float(text) * 10))


def _mm(tenths: int) -> str:
    return f"{tenths // 10}.{tenths % 10}" if tenths >= 0 else "-" + _mm(-tenths)


class SimulatedApplicator:
    def __init__(self, seeds: int = 60, rng: int | np.random.Generator | None = 0, clock=None,
                 faults: Faults | None = None, realtime: bool = False, watchdog_s: float = WATCHDOG_S,
                 disarm_s: float = DISARM_S, model: str = "SGP-SIM", serial: str = "SN0001",
                 firmware: str = "1.0", cartridge_id: str = "CART0001", seed_model: str = "6711",
                 activity_mbq: float = 14.8, calibration_date: str = "20261101"):
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.clock = clock or RealClock()
        self.faults = faults or Faults()
        self.inject = FaultInjector(self.faults, self.rng)
        self.realtime = realtime
        self.watchdog_s, self.disarm_s = watchdog_s, disarm_s
        self.identity = (model, serial, firmware)
        self.cartridge = [cartridge_id, seed_model, f"{activity_mbq:.1f}", calibration_date]
        self.seeds_left = 0 if self.faults.empty_cartridge else int(seeds)
        self.lock = threading.RLock()
        # physical world: survives power cycles
        self.docked: str | None = None
        self.depth_t = 0                  # tenths of mm
        self.estop_button = False
        self.truth: list[TrueRelease] = []
        self.power_epoch = 0
        self.release_attempts = 0
        self.frames_received = 0          # valid request frames (for disconnect_every)
        self.requests_executed = 0
        self.disconnect_pending = False
        self._out: list[tuple[float, bytes]] = []
        # scripted faults for tests: lose the next N requests / the first reply to the next N requests of a verb
        self.drop_requests = 0
        self.drop_replies_to: dict[str, int] = {}
        self.wire_log: list[tuple[str, bytes]] | None = None  # set to [] to record ("in"/"out", bytes)
        self._power_up()

    # --- power -------------------------------------------------------------------------------------------
    def _power_up(self) -> None:
        now = self.clock.now()
        self.state = "ESTOP" if self.estop_button else "SAFE"
        self.selected: str | None = None
        self.released_total = 0
        self.records: list[tuple[str, int, int]] = []  # (hole, depth tenths, uptime_ms)
        self.memory: "OrderedDict[int, tuple[str, bytes]]" = OrderedDict()
        self.eid = 0
        self.powered_at = now
        self.last_request_at = now
        self.armed_at = now
        self.depth_reported_t = self.depth_t
        self.depth_reported_at = now - 1.0
        self._reader = WireReader()

    def power_cycle(self) -> None:
        """Power off and on: state SAFE, counters and memory since power-up gone; the cartridge, the docked
        needle and the ground truth stay (they are physical)."""
        with self.lock:
            self._out.clear()
            self.power_epoch += 1
            self._power_up()

    # --- operator's hands ----------------------------------------------------------------------------------
    def dock(self, hole: str, depth_mm: float) -> None:
        with self.lock:
            if self.docked is not None:
                self.undock()
            self.docked, self.depth_t = hole, int(round(depth_mm * 10))
            self.depth_reported_t = self.depth_t
            self._event(f"DOCKED,{hole},{_mm(self.depth_t)}")

    def undock(self) -> None:
        with self.lock:
            if self.docked is None:
                return
            hole, self.docked = self.docked, None
            if self.state == "ARMED":
                self._disarm("UNDOCK")
            self._event(f"UNDOCKED,{hole}")

    def move_needle(self, depth_mm: float) -> None:
        """The operator pushes or pulls the docked needle; DEPTH events per spec section 7."""
        with self.lock:
            self.depth_t = int(round(depth_mm * 10))
            now = self.clock.now()
            if self.state == "ARMED":
                self._disarm("MOTION")
            if abs(self.depth_t - self.depth_reported_t) >= 5 and now - self.depth_reported_at >= 0.1:
                self.depth_reported_t, self.depth_reported_at = self.depth_t, now
                self._event(f"DEPTH,{_mm(self.depth_t)}")

    def press_estop(self) -> None:
        with self.lock:
            self.estop_button = True
            self.state = "ESTOP"
            self._event("ESTOP")

    def release_estop(self) -> None:
        with self.lock:
            if self.estop_button:
                self.estop_button = False
                self._event("ESTOP_RELEASED")

    def insert_cartridge(self, cartridge_id: str, seeds: int) -> None:
        with self.lock:
            self.cartridge[0], self.seeds_left = cartridge_id, int(seeds)
            self._event(f"CARTRIDGE,{cartridge_id},{int(seeds)}")

    # --- the byte pipe -------------------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        with self.lock:
            if self.wire_log is not None:
                self.wire_log.append(("in", bytes(data)))
            self.poll()
            for start, body in self._reader.feed(self.inject.corrupt(data)):
                if start != "$":
                    continue  # the device only listens to requests
                if self.drop_requests > 0:
                    self.drop_requests -= 1
                    continue
                if self.inject.lose():
                    continue  # lost on the way in: no reply, the host retransmits
                before = self.frames_received
                self._request(body)
                n = self.faults.disconnect_every
                if n and self.frames_received != before and self.frames_received % n == 0:
                    self._out.clear()  # the reply to this frame is lost with the link,
                    self.disconnect_pending = True
                    break  # and so is anything after it in this chunk

    def poll(self) -> None:
        """Run the timers: watchdog (IDLE/ARMED, 2.0 s without a valid request) and disarm (10.0 s)."""
        with self.lock:
            now = self.clock.now()
            if self.state in ("IDLE", "ARMED") and now - self.last_request_at > self.watchdog_s:
                self.state = "SAFE"
                self._event("WATCHDOG")
            if self.state == "ARMED" and now - self.armed_at > self.disarm_s:
                self._disarm("TIMEOUT")

    def take_output(self) -> bytes:
        """Bytes due by now (all of them unless ``realtime`` or a reply delay holds some back)."""
        with self.lock:
            now = self.clock.now()
            due = [b for t, b in self._out if t <= now]
            self._out = [(t, b) for t, b in self._out if t > now]
            data = b"".join(due)
            if data and self.wire_log is not None:
                self.wire_log.append(("out", data))
            return data

    def drop_output(self) -> None:
        """Forget what was queued for a link that is gone (bytes sent into a dead link are lost)."""
        with self.lock:
            self._out.clear()

    def next_due(self) -> float | None:
        with self.lock:
            return min((t for t, _ in self._out), default=None)

    def take_disconnect(self) -> bool:
        with self.lock:
            pending, self.disconnect_pending = self.disconnect_pending, False
            return pending

    # --- internals ------------------------------------------------------------------------------------------
    def _send(self, data: bytes, delay_s: float = 0.0) -> None:
        if self.inject.lose():
            return
        self._out.append((self.clock.now() + delay_s, self.inject.corrupt(data)))

    def _event(self, body: str) -> None:
        self.eid = 1 if self.eid >= 65535 else self.eid + 1
        self._send(frame("!", f"{self.eid},{body}"))

    def _disarm(self, reason: str) -> None:
        self.state = "IDLE"
        self._event(f"DISARMED,{reason}")

    def _request(self, body: str) -> None:
        fields = body.split(",")
        if not _SEQ.match(fields[0]) or not 1 <= int(fields[0]) <= 65535 or len(fields) < 2:
            return  # no seq to answer to: discarded like a bad frame
        seq = int(fields[0])
        self.frames_received += 1
        self.last_request_at = self.clock.now()  # any valid request feeds the watchdog
        remembered = self.memory.get(seq)
        if remembered is not None:
            text, reply = remembered
            if text == body:
                self._send(reply, self.faults.reply_delay_s)  # same reply again, not executed again
            else:
                self._send(frame("#", f"{seq},ER,E_SEQ"), self.faults.reply_delay_s)
            return
        self._pending_events: list = []  # event bodies, or operator actions (SIM verbs)
        duration = 0.01 if self.realtime else 0.0
        try:
            fields_ok, duration = self._execute(fields[1], fields[2:], duration)
            reply = frame("#", f"{seq},OK" + (f",{fields_ok}" if fields_ok else ""))
        except _Refuse as refusal:
            reply = frame("#", f"{seq},ER,{refusal.fields}")
        self.requests_executed += 1
        self.memory[seq] = (body, reply)
        while len(self.memory) > MEMORY:
            self.memory.popitem(last=False)
        if self.drop_replies_to.get(fields[1], 0) > 0:
            self.drop_replies_to[fields[1]] -= 1  # executed, but the reply is lost on the way out
        else:
            self._send(reply, duration + self.faults.reply_delay_s)
        for ev in self._pending_events:  # events caused by the request follow its reply
            ev() if callable(ev) else self._event(ev)
        self._after_request()

    def _after_request(self) -> None:
        n = self.faults.power_cycle_at_release
        if n and len(self.truth) == n and getattr(self, "_power_cycled_for", 0) != n:
            self._power_cycled_for = n
            keep = list(self._out)  # the reply to the release is on the wire already
            self.power_cycle()
            self._out = keep

    def _allowed(self, *states: str) -> None:
        if self.state not in states:
            raise _Refuse("E_STATE", self.state)

    def _execute(self, verb: str, args: list[str], duration: float) -> tuple[str, float]:
        handler = getattr(self, f"_do_{verb.lower()}", None) if verb.isalpha() and verb.isupper() else None
        if handler is None:
            raise _Refuse("E_VERB")
        return handler(args), duration if verb not in ("RETRACT", "RELEASE") else self._motion_s(verb, args)

    def _motion_s(self, verb: str, args: list[str]) -> float:
        if not self.realtime:
            return 0.0
        return 0.15 if verb == "RELEASE" else 0.01 + 0.015 * float(args[0] if args else 0)

    @staticmethod
    def _nargs(args: list[str], n: int) -> None:
        if len(args) != n:
            raise _Refuse("E_SYNTAX")

    def _do_hello(self, args):
        self._nargs(args, 0)
        return ",".join(self.identity) + ",SGP/1"

    def _do_ping(self, args):
        self._nargs(args, 0)
        return ""

    def _do_status(self, args):
        self._nargs(args, 0)
        depth = self.depth_t if self.docked else 0
        return (f"{self.state},{self.selected or '-'},{self.docked or '-'},{_mm(depth)},"
                f"{self.seeds_left},{self.released_total}")

    def _do_cart(self, args):
        self._nargs(args, 0)
        return ",".join(self.cartridge) + f",{self.seeds_left}"

    def _do_enable(self, args):
        self._nargs(args, 0)
        self._allowed("SAFE")
        self.state = "IDLE"
        return ""

    def _do_select(self, args):
        self._nargs(args, 1)
        if not _HOLE.match(args[0]):
            raise _Refuse("E_SYNTAX")
        self._allowed("IDLE", "ARMED")
        if self.state == "ARMED":
            self.state = "IDLE"
            self._pending_events.append("DISARMED,MOTION")
        self.selected = args[0]
        return args[0]

    def _do_retract(self, args):
        self._nargs(args, 1)
        mm_t = _tenths(args[0])
        self._allowed("IDLE", "ARMED")
        if not 5 <= mm_t <= 500:
            raise _Refuse("E_ARG")
        if self.docked is None:
            raise _Refuse("E_NODOCK")
        if mm_t > self.depth_t:
            raise _Refuse("E_ARG")  # would pull the needle out past the template plane
        if self.state == "ARMED":
            self.state = "IDLE"
            self._pending_events.append("DISARMED,MOTION")
        self.depth_t -= mm_t
        self.depth_reported_t = self.depth_t  # commanded motion is reported in the reply, not by DEPTH
        return _mm(self.depth_t)

    def _do_arm(self, args):
        self._nargs(args, 0)
        self._allowed("IDLE")
        if self.selected is None or self.docked != self.selected:
            raise _Refuse("E_NODOCK")
        if self.seeds_left <= 0:
            raise _Refuse("E_EMPTY")
        self.state = "ARMED"
        self.armed_at = self.clock.now()
        return ""

    def _do_release(self, args):
        self._nargs(args, 0)
        self._allowed("ARMED")
        self.release_attempts += 1
        f = self.faults
        if f.estop_at_release and self.release_attempts == f.estop_at_release:
            self.estop_button = True
            self.state = "ESTOP"
            self._pending_events.append("ESTOP")
            raise _Refuse("E_ESTOP")
        if f.jam_every and self.release_attempts % f.jam_every == 0:
            self.state = "FAULT"
            self._pending_events += [f"JAM,{self.docked}", "DISARMED,FAULT"]
            raise _Refuse("E_JAM")
        if self.seeds_left <= 0:
            self.state = "IDLE"
            raise _Refuse("E_EMPTY")
        self.seeds_left -= 1
        self.released_total += 1
        uptime_ms = int((self.clock.now() - self.powered_at) * 1000)
        self.records.append((self.docked, self.depth_t, uptime_ms))
        self.truth.append(TrueRelease(len(self.truth) + 1, self.power_epoch, self.released_total, self.docked,
                                      self.depth_t / 10, uptime_ms))
        self.state = "IDLE"
        return f"{self.released_total},{self.seeds_left},{_mm(self.depth_t)},{self.docked}"

    def _do_record(self, args):
        self._nargs(args, 1)
        if not args[0].isdigit():
            raise _Refuse("E_SYNTAX")
        k = int(args[0])
        if not 1 <= k <= self.released_total:
            raise _Refuse("E_ARG")
        hole, depth_t, uptime_ms = self.records[k - 1]
        return f"{k},{hole},{_mm(depth_t)},{uptime_ms}"

    def _do_estop(self, args):
        self._nargs(args, 0)
        self.state = "ESTOP"
        return ""

    def _do_reset(self, args):
        self._nargs(args, 0)
        self._allowed("FAULT", "ESTOP")
        if self.estop_button:
            raise _Refuse("E_ESTOP", "BUTTON")
        self.state = "SAFE"
        return ""

    def _do_sim(self, args):
        if not args:
            raise _Refuse("E_SYNTAX")
        op, rest = args[0], args[1:]
        if op == "DOCK":
            self._nargs(rest, 2)
            if not _HOLE.match(rest[0]):
                raise _Refuse("E_SYNTAX")
            depth_t = _tenths(rest[1])
            if depth_t > 3000:
                raise _Refuse("E_ARG")
            self._defer(lambda: self.dock(rest[0], depth_t / 10))
        elif op == "UNDOCK":
            self._nargs(rest, 0)
            self._defer(self.undock)
        elif op == "ESTOP":
            self._nargs(rest, 1)
            if rest[0] not in ("0", "1"):
                raise _Refuse("E_ARG")
            self._defer(self.press_estop if rest[0] == "1" else self.release_estop)
        elif op == "CARTRIDGE":
            self._nargs(rest, 2)
            if not rest[1].isdigit() or not rest[0] or not rest[0].isalnum():
                raise _Refuse("E_SYNTAX")
            self._defer(lambda: self.insert_cartridge(rest[0], int(rest[1])))
        else:
            raise _Refuse("E_VERB")
        return ""

    def _defer(self, action) -> None:
        """Operator actions run after the reply is queued, so their events follow it on the wire."""
        self._pending_events.append(action)
