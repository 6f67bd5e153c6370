"""Exactly-once seed delivery: the plan's seeds, needle by needle, deepest first, through an ``Applicator``.

For each needle: select its hole, wait for the applicator to be docked on it (or, rehearsing, dock it with
``SIM,DOCK`` at the needle's planned tip depth), then for each seed from the deepest out: retract to the
seed's depth, let the driver check its interlocks, ARM and RELEASE, and check the device's counter rose by
one. The ``SeedLedger`` gets an intent line before the RELEASE's first byte and an outcome line after it.

After a lost link the device is reconciled (STATUS, RECORD) before anything else: a release whose reply was
lost is found in the RECORD list and booked, never repeated. A device power cycle (its counter restarts at 0,
its RECORD list is gone) starts a new ledger epoch; a release in flight across it is settled by the
cartridge count, which is physical and survives, or else marked uncertain and delivery stops.

Depths: mm from the needle's ``entry_mm`` along the needle (plan.json), the SGP/1 ``depth_mm``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from navigator.delivery.applicator import (Applicator, ApplicatorError, CounterMismatchError, DeviceRefusedError, DeviceStatus,
                         DeviceUnreachable, InterlockRefused, LinkLostError, ReconcileRequiredError,
                         ReleaseRecord)
from navigator.errors import DeliveryError, PlanError
from navigator.delivery.ledger import SeedLedger
from navigator.core.plan import Plan
from navigator.core.template import is_hole_id

DEPTH_MATCH_MM = 0.05     # a RECORD matches a ledger line if the depths agree to the wire's 0.1 mm resolution
RETRACT_MIN_MM, RETRACT_MAX_MM = 0.5, 50.0
STOP_CODES = {"E_JAM": "the release jammed (no seed left); the device is in FAULT: clear the jam, RESET, resume",
              "E_ESTOP": "the emergency stop was pressed; release it, RESET the device, resume",
              "E_EMPTY": "the cartridge is empty; insert a new cartridge and resume"}


@dataclass(frozen=True)
class SeedTask:
    seed_id: str
    needle_id: str
    hole: str
    depth_mm: float        # release depth, rounded to the device's 0.1 mm
    tip_depth_mm: float    # the needle's planned tip depth (where SIM,DOCK puts it)


def delivery_tasks(plan: Plan) -> list[list[SeedTask]]:
    """The plan's seeds grouped by needle (plan order), each needle's deepest seed first. Raises ``PlanError``
    for a needle without a valid template hole or a seed that does not lie on its needle within reach."""
    groups = []
    for needle in plan.needles:
        seeds = plan.seeds_of(needle.id)
        if not seeds:
            continue
        if not is_hole_id(needle.hole):
            raise PlanError(f"needle {needle.id}: template hole {needle.hole!r} is not a hole id like C7; "
                            "the applicator needs the hole of every needle that carries seeds")
        tip = round(needle.length_mm, 1)
        tasks = []
        for s in seeds:
            depth = round(needle.depth_of(s.position_mm), 1)
            if not 0.0 < depth <= tip + 0.5:
                raise PlanError(f"seed {s.id}: depth {depth:.1f} mm along needle {needle.id} is outside the needle "
                                f"(0 to {tip:.1f} mm); re-plan the seed")
            tasks.append(SeedTask(s.id, needle.id, needle.hole, depth, tip))
        groups.append(tasks)
    return groups


class DeliveryStopped(DeliveryError):
    """Delivery cannot go on without the operator (jam, e-stop, empty cartridge, disagreement)."""


@dataclass
class DeliveryResult:
    planned: int
    ledger: SeedLedger
    device_released_total: int
    device_counter: int | None
    reconciled: bool
    stopped_reason: str | None = None
    power_cycles: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.stopped_reason is None and self.reconciled and len(self.ledger.released) == self.planned

    def to_json(self) -> dict:
        seeds = sorted(self.ledger.released.values(), key=lambda s: (s.epoch, s.device_index))
        return {
            "released": len(seeds),
            "device_released_total": self.device_released_total,
            "seeds": [{"seed_id": s.seed_id, "hole": s.hole, "depth_mm": s.depth_mm, "device_index": s.device_index,
                       "device_epoch": s.epoch, "how": s.how} for s in seeds],
            "reconciled": self.reconciled,
            # beyond the contract
            "planned": self.planned,
            "stopped_reason": self.stopped_reason,
            "uncertain_seeds": sorted(self.ledger.uncertain),
            "pending_seeds": sorted(self.ledger.pending),
            "device_power_cycles": self.power_cycles,
            "device_counter": self.device_counter,
            "ledger": str(self.ledger.path),
            "notes": self.notes,
        }


class Delivery:
    """One delivery run. ``journal(kind, data)`` (optional) records what happens; ``progress(text)`` tells
    the operator."""

    def __init__(self, plan: Plan, applicator: Applicator, ledger: SeedLedger,
                 journal: Callable[[str, dict], None] | None = None, simulate_operator: bool = False,
                 dock_timeout_s: float = 600.0, progress: Callable[[str], None] | None = None,
                 max_link_losses: int = 20, max_retries_per_step: int = 30):
        self.plan = plan
        self.tasks = delivery_tasks(plan)
        self.app = applicator
        self.ledger = ledger
        self.journal = journal or (lambda kind, data: None)
        self.simulate_operator = simulate_operator
        self.dock_timeout_s = dock_timeout_s
        self.progress = progress or (lambda text: None)
        self.max_link_losses = max_link_losses
        self.max_retries = max_retries_per_step
        self.power_cycles = 0
        self._records: dict[int, ReleaseRecord] = {}  # verified RECORDs of the current device epoch
        self._verified_upto = 0
        self._device_serial: str | None = None
        self._foreign_device = False  # the ledger belongs to another applicator: write nothing of this one
        self.notes: list[str] = []

    # --- the run ---------------------------------------------------------------------------------------------
    def run(self) -> DeliveryResult:
        planned = sum(len(t) for t in self.tasks)
        info = self.app.connect()  # DeviceUnreachable (bad URL) propagates: exit 2
        self.journal("delivery_started", {"planned_seeds": planned, "device": info.__dict__,
                                          "simulate_operator": self.simulate_operator})
        self.progress(f"connected to {info.model} {info.serial} (firmware {info.firmware}); {planned} seeds to go")
        self._device_serial = info.serial
        stopped = None
        try:
            known = {e.get("device_serial") for e in self.ledger.epochs} - {None}
            if known and info.serial not in known:
                self._foreign_device = True  # nothing of this device may be written into this ledger
                raise DeliveryStopped(f"the ledger {self.ledger.path} belongs to applicator {sorted(known)}, but "
                                      f"{info.serial} is connected; its counters cannot be reconciled with this "
                                      "ledger: connect that applicator, or start a new journal for this one")
            self._retrying("initial reconciliation", self._reconcile)
            for tasks in self.tasks:
                todo = [t for t in tasks if t.seed_id not in self.ledger.released]
                if not todo:
                    continue
                self.progress(f"needle {todo[0].needle_id} in hole {todo[0].hole}: {len(todo)} seeds")
                for t in todo:
                    self._retrying(f"seed {t.seed_id}", lambda t=t: self._deliver_seed(t))
                if self.simulate_operator:
                    self._retrying("undock", self.app.sim_undock)
        except DeliveryError as exc:  # DeliveryStopped, ApplicatorError, ledger trouble
            stopped = str(exc)
            self.journal("delivery_stopped", {"reason": stopped})
            self.progress(f"delivery stopped: {stopped}")
        total, counter, reconciled = self._final_check()
        result = DeliveryResult(planned, self.ledger, total, counter, reconciled, stopped, self.power_cycles,
                                self.notes)
        self.journal("delivery_finished", {k: v for k, v in result.to_json().items() if k != "seeds"})
        return result

    # --- one seed ----------------------------------------------------------------------------------------------
    def _deliver_seed(self, t: SeedTask) -> None:
        if t.seed_id in self.ledger.released:
            return
        if t.seed_id in self.ledger.uncertain:
            raise DeliveryStopped(f"seed {t.seed_id} may have left the applicator (uncertain in the ledger); "
                                  "image the patient before deciding to release it again")
        self._drain_events()
        if self.app.needs_reconcile or self.ledger.pending:
            self._reconcile()
        st = self.app.status()
        if st.released_total != self.ledger.expected_device_total():
            self._reconcile()  # a power cycle, or a release we did not book: settle it before anything else
            st = self.app.status()
        if t.seed_id in self.ledger.released:
            return
        st = self._make_ready(st, t)
        delta_t = round((st.depth_mm - t.depth_mm) * 10)  # tenths of mm
        if delta_t < -5:
            raise DeliveryStopped(f"needle {t.needle_id} in {t.hole} is at {st.depth_mm:.1f} mm, shallower than "
                                  f"seed {t.seed_id}'s depth {t.depth_mm:.1f} mm; advance the needle to "
                                  f"{t.tip_depth_mm:.1f} mm and resume")
        while delta_t >= 5:  # RETRACT takes 0.5 to 50.0 mm
            step_mm = min(delta_t, int(RETRACT_MAX_MM * 10)) / 10
            new_depth = self.app.retract(step_mm)
            delta_t = round((new_depth - t.depth_mm) * 10)
        self._release(t, st.seeds_left)

    def _make_ready(self, st: DeviceStatus, t: SeedTask) -> DeviceStatus:
        if st.state == "ESTOP":
            raise DeliveryStopped("the device is in ESTOP: release the emergency stop, RESET it, and resume")
        if st.state == "FAULT":
            raise DeliveryStopped("the device is in FAULT (jam or motor fault): clear it, RESET, and resume")
        if st.state == "SAFE":
            self.journal("device_enable", {"reason": "device in SAFE (power-up or watchdog)"})
            self.app.enable()
            st = self.app.status()
        if st.state == "ARMED" or st.selected_hole != t.hole:
            self.app.select(t.hole)  # also disarms a stale ARMED
            st = self.app.status()
        if st.docked_hole != t.hole:
            st = self._dock(t, st)
        return st

    def _dock(self, t: SeedTask, st: DeviceStatus) -> DeviceStatus:
        if self.simulate_operator:
            if st.docked_hole is not None:
                self.app.sim_undock()
            self.app.sim_dock(t.hole, t.tip_depth_mm)
            return self.app.status()
        self.progress(f"dock the applicator on needle {t.needle_id} in hole {t.hole} "
                      f"(planned tip depth {t.tip_depth_mm:.1f} mm)")
        deadline = time.monotonic() + self.dock_timeout_s
        while time.monotonic() < deadline:
            ev = self.app.next_event(min(0.5, max(0.01, deadline - time.monotonic())))
            if ev is None:
                continue
            if ev.name == "DOCKED" and ev.fields[:1] == (t.hole,) or ev.name == "GAP":
                st = self.app.status()
                if st.docked_hole == t.hole:
                    return st
            elif ev.name == "DOCKED":
                self.progress(f"docked on {ev.fields[0]}, but needle {t.needle_id} is in {t.hole}; re-dock")
        raise DeliveryStopped(f"the applicator was not docked on hole {t.hole} within {self.dock_timeout_s:.0f} s")

    def _release(self, t: SeedTask, seeds_left: int) -> None:
        def on_intent(seq: int, text: str) -> None:
            self.ledger.intent(t.seed_id, t.hole, t.depth_mm, seq, seeds_left)
            self.journal("seed_release_intent", {"seed_id": t.seed_id, "hole": t.hole, "depth_mm": t.depth_mm,
                                                 "seq": seq, "request": text})
        try:
            report = self.app.release_seed(t.hole, t.depth_mm, on_intent)
        except DeviceRefusedError as exc:
            if t.seed_id in self.ledger.pending:
                # An ER to a RELEASE is settled by reconciliation, not taken at its word: after a power cycle a
                # retransmitted RELEASE is refused although the first one released.
                self._reconcile()
            if exc.code in STOP_CODES:
                raise DeliveryStopped(f"seed {t.seed_id} at {t.hole}, {t.depth_mm:.1f} mm: "
                                      f"{STOP_CODES[exc.code]}") from None
            raise
        except CounterMismatchError:
            self._reconcile()
            raise
        self.ledger.mark_released(t.seed_id, report.hole, report.depth_mm, report.released_total)
        self.journal("seed_released", {"seed_id": t.seed_id, "hole": report.hole, "depth_mm": report.depth_mm,
                                       "device_index": report.released_total, "seeds_left": report.seeds_left})

    # --- reconciliation ----------------------------------------------------------------------------------------
    def _reconcile(self, depth: int = 0) -> None:
        """Bring the ledger and the device into agreement, or stop. Reads RECORD for every release of this
        power-up not verified before; progress survives a lost link (records since power-up never change)."""
        ledger = self.ledger
        st = self.app.status()
        if ledger.epoch is None:
            ledger.start_epoch(st.released_total, "first connection", seeds_left=st.seeds_left,
                               device_serial=self._device_serial)
            self._verified_upto = st.released_total
            self._records = {}
            self.app.reconcile(from_k=st.released_total + 1)  # nothing to compare yet; clears needs_reconcile
            self.journal("reconciliation", {"baseline": st.released_total, "state": st.state})
            return
        expected = ledger.expected_device_total()
        if st.released_total < expected or st.released_total < self._verified_upto:
            self._power_cycled(st, expected)
        for k in range(self._verified_upto + 1, st.released_total + 1):
            self._records[k] = self.app.record(k)
            self._verified_upto = k
        st = self.app.reconcile(from_k=st.released_total + 1).status  # STATUS again; clears needs_reconcile
        if st.released_total != self._verified_upto:
            if depth >= 3:
                raise DeliveryStopped(f"the device's counter keeps moving ({st.released_total}) while nothing "
                                      "is being released; stop and check the applicator")
            return self._reconcile(depth + 1)
        base = ledger.baseline
        mine = ledger.released_in_epoch()
        for k in range(base + 1, st.released_total + 1):
            r = self._records.get(k)
            i = k - base - 1
            if i < len(mine):
                s = mine[i]
                if s.device_index != k or r is None or r.hole != s.hole or abs(r.depth_mm - s.depth_mm) > DEPTH_MATCH_MM:
                    raise DeliveryStopped(f"ledger and device disagree at release {k}: ledger {s.seed_id} at "
                                          f"{s.hole} {s.depth_mm:.1f} mm, device RECORD {r}; stop and image")
                continue
            # the device counted a release the ledger has no outcome for: it must be a pending intent
            match = [sid for sid, it in ledger.pending.items()
                     if it["hole"] == r.hole and abs(float(it["depth_mm"]) - r.depth_mm) <= DEPTH_MATCH_MM]
            if len(match) != 1:
                raise DeliveryStopped(f"the device released a seed the ledger cannot account for (RECORD {k}: "
                                      f"{r.hole} at {r.depth_mm:.1f} mm); stop and image the patient")
            ledger.mark_released(match[0], r.hole, r.depth_mm, k, how="reconciled")
            self.journal("seed_released", {"seed_id": match[0], "hole": r.hole, "depth_mm": r.depth_mm,
                                           "device_index": k, "how": "reconciled from RECORD"})
        for sid, it in list(ledger.pending.items()):
            before = it.get("seeds_left")
            if before is not None and st.seeds_left == before - 1:
                # counter says no, cartridge says yes: the record was lost (power cycle at the wrong moment)
                self._settle_by_cartridge(sid, it, st)
                continue
            ledger.mark_not_released(sid, "reconciled: no RECORD and cartridge count unchanged")
            self.journal("seed_not_released", {"seed_id": sid, "reason": "reconciled"})
        self.journal("reconciliation", {"state": st.state, "released_total": st.released_total,
                                        "ledger_expected": ledger.expected_device_total(),
                                        "seeds_left": st.seeds_left})

    def _power_cycled(self, st: DeviceStatus, expected: int) -> None:
        self.power_cycles += 1
        self.journal("device_power_cycle", {"released_total": st.released_total, "ledger_expected": expected})
        self.progress(f"device counter {st.released_total} < ledger {expected}: device was power-cycled; "
                      "reconciling with the ledger and the cartridge count")
        for sid, it in list(self.ledger.pending.items()):
            before = it.get("seeds_left")
            if before is not None and st.seeds_left == before - 1:
                self._settle_by_cartridge(sid, it, st)
            elif before is not None and st.seeds_left == before:
                self.ledger.mark_not_released(sid, "power cycle; cartridge count unchanged")
            else:
                self.ledger.mark_uncertain(sid, f"power cycle; cartridge {st.seeds_left} left, {before} before")
                self.journal("seed_uncertain", {"seed_id": sid})
        self.ledger.start_epoch(0, "device power-cycled", counter_seen=st.released_total, ledger_expected=expected,
                                device_serial=self._device_serial)
        self._records = {}
        self._verified_upto = 0

    def _settle_by_cartridge(self, sid: str, intent: dict, st: DeviceStatus) -> None:
        index = self.ledger.expected_device_total() + 1
        self.ledger.mark_released(sid, intent["hole"], float(intent["depth_mm"]), index, how="cartridge_count")
        self.notes.append(f"seed {sid}: its RELEASE reply and RECORD were lost; booked as released because the "
                          f"cartridge count fell by one ({intent.get('seeds_left')} -> {st.seeds_left})")
        self.journal("seed_released", {"seed_id": sid, "hole": intent["hole"], "depth_mm": intent["depth_mm"],
                                       "device_index": index, "how": "cartridge count"})

    def _final_check(self) -> tuple[int, int | None, bool]:
        """Re-read STATUS and every RECORD of this power-up; (device_released_total, raw counter, reconciled)."""
        if self._foreign_device:
            return self._counted_total(None), None, False
        try:
            if self.ledger.epoch is not None:  # forget what was verified: read every RECORD of this power-up
                self._verified_upto = self.ledger.baseline
                self._records = {}
            self._retrying("final reconciliation", self._reconcile)
            st = self.app.status()
        except (DeliveryError, ApplicatorError) as exc:
            self.notes.append(f"final reconciliation failed: {exc}")
            return self._counted_total(None), None, False
        counted = self._counted_total(st.released_total)
        ledger_ok = not self.ledger.pending and not self.ledger.uncertain
        agree = counted == len(self.ledger.released) and st.released_total == self.ledger.expected_device_total()
        return counted, st.released_total, bool(ledger_ok and agree)

    def _counted_total(self, counter: int | None) -> int:
        """Seeds the device counted during this delivery: earlier power-ups as booked, this one from its
        counter."""
        ledger = self.ledger
        earlier = sum(1 for s in ledger.released.values() if s.epoch != ledger.epoch)
        now = (counter - ledger.baseline) if counter is not None else len(ledger.released_in_epoch())
        return earlier + now

    # --- plumbing ----------------------------------------------------------------------------------------------
    def _drain_events(self) -> None:
        while True:
            ev = self.app.next_event(0.0)
            if ev is None:
                return
            if ev.name == "GAP":
                self.journal("device_event_gap", {"expected_eid": ev.fields[0], "received_eid": ev.fields[1]})

    def _retrying(self, what: str, step: Callable[[], object]):
        """Run ``step``; after a lost link reconnect (the step then reconciles first); after a refusal that
        a fresh STATUS can fix (watchdog SAFE, operator undocked), try again."""
        link_losses = retries = 0
        while True:
            try:
                return step()
            except LinkLostError as exc:
                link_losses += 1
                self.journal("link_lost", {"during": what, "error": str(exc)})
                if link_losses > self.max_link_losses:
                    raise DeliveryStopped(f"{what}: link lost {link_losses} times in a row; check the cable "
                                          "and resume (the ledger keeps what left)") from None
                self._reconnect(what)
            except ReconcileRequiredError:
                retries += 1
            except InterlockRefused as exc:
                retries += 1
                self.journal("interlock", {"during": what, "error": str(exc)})
                if retries > 3:
                    raise DeliveryStopped(f"{what}: {exc}") from None
            except DeviceRefusedError as exc:
                if exc.code not in ("E_STATE", "E_NODOCK", "E_BUSY"):
                    raise DeliveryStopped(f"{what}: {exc}") from None
                retries += 1
            if retries > self.max_retries:
                raise DeliveryStopped(f"{what}: the device kept refusing; see the journal")

    def _reconnect(self, what: str) -> None:
        for attempt in range(5):
            try:
                self.app.reconnect()
                return
            except (DeviceUnreachable, ApplicatorError) as exc:
                self.journal("reconnect_failed", {"during": what, "error": str(exc)})
                time.sleep(0.2 * (attempt + 1))
        raise DeliveryStopped(f"{what}: cannot reconnect to the device; check the cable and resume")
