"""SGP/1 host semantics: sequence numbers, retransmission, timeouts, watchdog, events, reconnection,
reconciliation and the release interlocks (spec sections 4, 5, 8).

One request is in flight at a time. A request keeps its ``seq`` and its exact bytes through all of its
retransmissions, so the device's exactly-once memory makes a retransmitted RELEASE safe. After the port drops
(or a request goes unanswered through all retransmissions) ``needs_reconcile`` is set and ARM/RELEASE are
refused until ``reconcile()`` has read STATUS and every RECORD.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

from . import codec
from .codec import (Cartridge, Event, Hello, ReleaseRecord, ReleaseReport, Reply, Request, Status, fmt_mm,
                    make_request)
from .errors import (ConnectError, CounterMismatch, DeviceRefused, InterlockError, LinkLost, ProtocolError,
                     ReconcileRequired)
from .framing import FrameDecoder
from .transport import LinkDown, Transport

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class LinkConfig:
    """Timing and retry knobs. Defaults are SGP/1's (section 8); ``scaled`` shrinks the timeouts for an
    instant simulator in tests."""

    reply_timeout_s: float = 0.250        # base wait for a reply
    retract_extra_s_per_mm: float = 0.020  # RETRACT: + 20 ms per mm of motion
    release_extra_s: float = 0.300         # RELEASE: + 300 ms for the stylet
    retransmissions: int = 5               # then LinkLost
    keepalive_s: float | None = 0.5        # PING when nothing was sent for this long (device watchdog: 2.0 s)
    tick_s: float = 0.05                   # reader-thread wake-up period
    depth_tolerance_mm: float = 0.5        # interlock: docked depth vs planned depth
    seq_start: int | None = None           # None: random, so a restarted host does not collide with the
                                           # device's memory of the previous host's last 32 requests

    def scaled(self, factor: float) -> "LinkConfig":
        return dataclasses.replace(self, reply_timeout_s=self.reply_timeout_s * factor,
                                   retract_extra_s_per_mm=self.retract_extra_s_per_mm * factor,
                                   release_extra_s=self.release_extra_s * factor)

    def timeout_for(self, request: Request) -> float:
        if request.verb == "RETRACT":
            return self.reply_timeout_s + self.retract_extra_s_per_mm * float(request.args[0])
        if request.verb == "RELEASE":
            return self.reply_timeout_s + self.release_extra_s
        return self.reply_timeout_s


@dataclass(frozen=True)
class EventGap:
    """Event ids jumped from ``expected_eid`` to ``received_eid``: events were missed. ``status`` is the
    STATUS the driver re-read when it handed the gap to the caller."""

    expected_eid: int
    received_eid: int
    status: Status | None = None


@dataclass(frozen=True)
class Reconciliation:
    status: Status
    records: tuple[ReleaseRecord, ...]  # RECORD 1..released_total since the device's power-up


@dataclass
class LinkStats:
    requests: int = 0
    retransmissions: int = 0
    timeouts: int = 0
    reconnects: int = 0
    link_lost: int = 0
    keepalives: int = 0
    stray_replies: int = 0
    event_gaps: int = 0
    seq_skips: int = 0


class SgpApplicator:
    """Host side of SGP/1 over a pyserial URL.

    ``traffic(kind, text)`` (optional) sees every command ("device_command", with ``#n`` for retransmission
    n), reply ("device_reply"), event ("device_event") and link change ("device_link"); it is called from the
    caller's thread, except events, which come from the reader thread. Keepalive PINGs are not reported.
    """

    def __init__(self, url: str, config: LinkConfig | None = None,
                 traffic: Callable[[str, str], None] | None = None):
        self.config = config or LinkConfig()
        self.url = url
        self.transport = Transport(url, self._on_bytes, self._on_tick, self._on_lost, self.config.tick_s)
        self._traffic = traffic or (lambda kind, text: None)
        self._decoder = FrameDecoder()
        self._cond = threading.Condition()
        self._req_lock = threading.Lock()
        self._awaiting: int | None = None
        self._reply: Reply | None = None
        self._seq = self.config.seq_start or (secrets.randbelow(codec.SEQ_MAX) + 1)
        self._last_write = time.monotonic()
        self._last_eid: int | None = None
        self.events: "queue.Queue[Event | EventGap]" = queue.Queue()
        self.needs_reconcile = False
        self.stats = LinkStats()
        self.hello_info: Hello | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------
    def connect(self) -> Hello:
        self.transport.open()
        self.hello_info = self.hello()
        return self.hello_info

    def close(self) -> None:
        self.transport.close()

    def reconnect(self) -> None:
        """Reopen the port. Always leaves ``needs_reconcile`` set: seeds may have left while we were away."""
        self.needs_reconcile = True
        self._last_eid = None  # events during the outage are gone; reconciliation covers them
        self._decoder = FrameDecoder()
        self.stats.reconnects += 1
        self._traffic("device_link", "reconnecting")
        self.transport.reopen()

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    # --- requests ------------------------------------------------------------------------------------------
    def hello(self) -> Hello:
        return codec.parse_hello(self._transact("HELLO"))

    def ping(self) -> None:
        self._transact("PING")

    def status(self) -> Status:
        return codec.parse_status(self._transact("STATUS"))

    def cartridge(self) -> Cartridge:
        return codec.parse_cartridge(self._transact("CART"))

    def enable(self) -> None:
        self._transact("ENABLE")

    def select(self, hole: str) -> None:
        codec.check_hole(hole)
        self._transact("SELECT", hole)

    def retract(self, mm: float) -> float:
        """Withdraw the docked needle by ``mm`` (0.5 to 50.0 mm); returns the new depth, mm."""
        text = fmt_mm(mm)
        if not codec.RETRACT_MIN_MM <= float(text) <= codec.RETRACT_MAX_MM:
            raise InterlockError(f"retract by {mm:.2f} mm refused: SGP/1 allows 0.5 to 50.0 mm per RETRACT")
        return codec.parse_depth(self._transact("RETRACT", text))

    def arm(self) -> None:
        self._refuse_if_unreconciled("ARM")
        self._transact("ARM")

    def release(self, on_intent: Callable[[int, str], None] | None = None) -> ReleaseReport:
        """RELEASE. ``on_intent(seq, request_text)`` runs before the first byte is sent (write the ledger
        there); if it raises, nothing is sent."""
        self._refuse_if_unreconciled("RELEASE")
        return codec.parse_release(self._transact("RELEASE", before_send=on_intent))

    def record(self, k: int) -> ReleaseRecord:
        rec = codec.parse_record(self._transact("RECORD", str(int(k))))
        if rec.k != k:
            raise ProtocolError(f"RECORD,{k} answered for k={rec.k}")
        return rec

    def estop(self) -> None:
        self._transact("ESTOP")

    def reset(self) -> None:
        self._transact("RESET")

    # simulator-only verbs (a real device answers ER,E_VERB)
    def sim_dock(self, hole: str, depth_mm: float) -> None:
        self._transact("SIM", "DOCK", codec.check_hole(hole), fmt_mm(depth_mm))

    def sim_undock(self) -> None:
        self._transact("SIM", "UNDOCK")

    def sim_estop(self, pressed: bool) -> None:
        self._transact("SIM", "ESTOP", "1" if pressed else "0")

    def sim_cartridge(self, cartridge_id: str, seeds: int) -> None:
        self._transact("SIM", "CARTRIDGE", cartridge_id, str(int(seeds)))

    # --- composite operations ------------------------------------------------------------------------------
    def reconcile(self, from_k: int = 1) -> Reconciliation:
        """STATUS, then RECORD ``from_k``..released_total (all of them by default); clears
        ``needs_reconcile``. The caller compares the result with its ledger before any further release.
        A caller that verified RECORD 1..k-1 earlier in the same power-up may pass ``from_k=k``: records
        since power-up never change, and on a noisy link re-reading thousands of them would itself fail."""
        st = self.status()
        records = tuple(self.record(k) for k in range(max(1, from_k), st.released_total + 1))
        after = self.status()
        if after.released_total != st.released_total:
            raise CounterMismatch(f"released_total changed during reconciliation "
                                  f"({st.released_total} -> {after.released_total}); reconcile again")
        self.needs_reconcile = False
        self._traffic("device_link", f"reconciled released_total={st.released_total}")
        return Reconciliation(after, records)

    def release_seed(self, hole: str, planned_depth_mm: float,
                     on_intent: Callable[[int, str], None] | None = None) -> ReleaseReport:
        """Check the interlocks on a fresh STATUS, then ARM and RELEASE one seed, and check that the device's
        ``released_total`` rose by exactly one.

        Interlocks (nothing is sent if one fails): link reconciled, state IDLE (or ARMED), the selected and the docked
        hole both ``hole``, docked depth within ``depth_tolerance_mm`` of ``planned_depth_mm``, seeds left.
        """
        self._refuse_if_unreconciled("ARM")
        st = self.status()
        tol = self.config.depth_tolerance_mm
        if st.state not in ("IDLE", "ARMED"):
            raise InterlockError(f"release at {hole} refused: device state is {st.state}, must be IDLE")
        if st.selected_hole != hole or st.docked_hole != hole:
            raise InterlockError(f"release at {hole} refused: selected hole {st.selected_hole or '-'}, docked "
                                 f"hole {st.docked_hole or '-'}; both must be {hole}")
        if abs(st.depth_mm - planned_depth_mm) > tol + 1e-9:
            raise InterlockError(f"release at {hole} refused: needle depth {st.depth_mm:.1f} mm, planned "
                                 f"{planned_depth_mm:.1f} mm; must agree within {tol} mm")
        if st.seeds_left <= 0:
            raise InterlockError(f"release at {hole} refused: cartridge empty (0 seeds left); insert a cartridge")
        if st.state == "IDLE":
            self.arm()
        # else: ARMED by our own ARM whose reply came after a reconnect; the checks above hold, so release
        report = self.release(on_intent)
        if report.released_total != st.released_total + 1:
            raise CounterMismatch(f"RELEASE at {hole}: released_total went {st.released_total} -> "
                                  f"{report.released_total}, expected +1; stop and reconcile")
        return report

    def next_event(self, timeout_s: float = 0.0) -> Event | EventGap | None:
        """The next event from the device, or ``None`` after ``timeout_s``. An ``EventGap`` comes with a
        freshly read STATUS."""
        try:
            item = self.events.get(timeout=timeout_s) if timeout_s > 0 else self.events.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, EventGap):
            return dataclasses.replace(item, status=self.status())
        return item

    # --- internals -----------------------------------------------------------------------------------------
    def _refuse_if_unreconciled(self, verb: str) -> None:
        if self.needs_reconcile:
            raise ReconcileRequired(f"{verb} refused: the link was lost since the last reconciliation; "
                                    "call reconcile() and compare with the ledger first")

    def _take_seq(self) -> int:
        seq = self._seq
        self._seq = 1 if seq >= codec.SEQ_MAX else seq + 1
        return seq

    def _transact(self, verb: str, *args: str, before_send=None) -> Reply:
        with self._req_lock:
            request = make_request(self._take_seq(), verb, *args)
            if before_send is not None:
                before_send(request.seq, request.text)
            reply, attempt = self._exchange(request)
            if not reply.ok and reply.code == "E_SEQ" and attempt == 0:
                # The device remembers this seq from another host session with other text: it executed
                # nothing. Skip past its 32-request memory and send the request as a new one.
                self.stats.seq_skips += 1
                self._seq = (self._seq + 32 - 1) % codec.SEQ_MAX + 1
                request = make_request(self._take_seq(), verb, *args)
                if before_send is not None:
                    before_send(request.seq, request.text)
                reply, attempt = self._exchange(request)
        if not reply.ok:
            raise DeviceRefused(request.text, reply.code or "", reply.detail)
        return reply

    def _exchange(self, request: Request) -> tuple[Reply, int]:
        data = request.encode()
        timeout = self.config.timeout_for(request)
        attempts = 1 + self.config.retransmissions
        self.stats.requests += 1
        with self._cond:
            self._awaiting, self._reply = request.seq, None
        try:
            for attempt in range(attempts):
                if not self.transport.connected:
                    try:
                        self.reconnect()
                    except ConnectError as exc:
                        log.warning("reconnect to %s failed: %s", self.url, exc)
                        time.sleep(timeout)  # back off by one reply timeout before the next attempt
                        continue
                self._traffic("device_command", request.text if attempt == 0 else f"{request.text} #{attempt}")
                if attempt:
                    self.stats.retransmissions += 1
                try:
                    self.transport.write(data)
                except LinkDown:
                    continue
                self._last_write = time.monotonic()
                deadline = self._last_write + timeout
                with self._cond:
                    while self._reply is None and self.transport.connected:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    reply = self._reply
                if reply is not None:
                    self._traffic("device_reply", reply.text)
                    return reply, attempt
                if self.transport.connected:
                    self.stats.timeouts += 1
            self.needs_reconcile = True
            self.stats.link_lost += 1
            self._traffic("device_link", f"lost: no reply to '{request.text}'")
            raise LinkLost(f"no reply from {self.url} to '{request.text}' after {attempts} attempts "
                           f"({timeout * 1000:.0f} ms each); reconnect and reconcile before releasing",
                           request.text)
        finally:
            with self._cond:
                self._awaiting = None

    # reader-thread callbacks
    def _on_bytes(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            msg = codec.decode(frame)
            if isinstance(msg, Reply):
                with self._cond:
                    if msg.seq == self._awaiting and self._reply is None:
                        self._reply = msg
                        self._cond.notify_all()
                    else:
                        self.stats.stray_replies += 1  # keepalive PING replies, late duplicates
            elif isinstance(msg, Event):
                self._on_event(msg)

    def _on_event(self, event: Event) -> None:
        last = self._last_eid
        if last is not None:
            expected = 1 if last >= codec.SEQ_MAX else last + 1
            if event.eid != expected:
                self.stats.event_gaps += 1
                self.events.put(EventGap(expected, event.eid))
        self._last_eid = event.eid
        self._traffic("device_event", event.text)
        self.events.put(event)

    def _on_tick(self) -> None:
        keepalive = self.config.keepalive_s
        if not keepalive or time.monotonic() - self._last_write < keepalive or not self.transport.connected:
            return
        if not self._req_lock.acquire(blocking=False):
            return  # a request is in flight: it feeds the watchdog itself
        try:
            request = make_request(self._take_seq(), "PING")
            self.transport.write(request.encode())
            self._last_write = time.monotonic()
            self.stats.keepalives += 1
        except LinkDown:
            pass
        finally:
            self._req_lock.release()

    def _on_lost(self, why: str) -> None:
        with self._cond:
            self._cond.notify_all()
