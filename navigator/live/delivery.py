"""Seed delivery from the console: ``navigator.delivery.Delivery`` over ``--device`` in a background thread.

Exactly-once is the delivery module's job (ledger before every RELEASE, reconciliation after a lost link);
here: which plan to deliver (after the needle checks the approved re-plan, else the pre-plan; an approved
supplement after a post-implant evaluation), the journal (every device line and seed through the session), the
state transition when the run is reconciled, and a clean stop: the operator's stop lets the seed in hand finish,
then refuses the next device step, so the run ends through its own stop path and the ledger stays whole.

Live dosimetry: after each released seed the session's projection (``LiveSession.projection``: the seeds
released where the delivered plan put them, plus the rest as planned, on the pre-plan's CTV points) is brought
up to date; a ``live_dosimetry`` journal line is written when a needle's last seed is out, and when the run
stops or ends.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from navigator.core.plan import Plan
from navigator.delivery.run import DeliveryStopped, delivery_tasks
from navigator.errors import InputError
from navigator.io import write_json
from navigator.session.controller import SessionStateError, State

log = logging.getLogger(__name__)


class _Stoppable:
    """The applicator, refusing the next motion, release or wait for docking once a stop was asked for (once:
    the run's own closing checks, STATUS and RECORD, then go through)."""

    _GUARDED = ("select", "retract", "release_seed", "sim_dock", "enable", "next_event")

    def __init__(self, app, stop: threading.Event, why: dict):
        self._app, self._stop, self._why = app, stop, why
        self._raised = False

    def __getattr__(self, name):
        attr = getattr(self._app, name)
        if name in self._GUARDED:
            def guarded(*a, **kw):
                if self._stop.is_set() and not self._raised:
                    self._raised = True
                    raise DeliveryStopped(f"stopped from the console by {self._why.get('user', 'the service')}; "
                                          "the ledger says what left the applicator; start again to resume")
                return attr(*a, **kw)
            return guarded
        return attr


class LiveDelivery:
    def __init__(self, live):
        self.live = live
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._why: dict = {}
        self.name: str | None = None
        self.plan: Plan | None = None
        self.ledger = None
        self.device: dict = {}

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _what(self) -> tuple[str, Path, str]:
        """(name, plan path, transition) of what may be delivered now: after the needle checks the approved
        re-plan (``LiveSession.plan_in_force``), else the pre-plan; an approved supplement after an evaluation."""
        live = self.live
        if live.state == State.ALL_NEEDLES_CHECKED:
            name, path, _ = live.plan_in_force()
            return name, path, "seeds_delivered"
        sup = live._supplement_pending()
        if live.state == State.POSTIMPLANT_EVALUATED and sup is not None:
            return sup["name"], Path(sup["plan"]), "supplement_delivered"
        raise SessionStateError(f"nothing to deliver in state '{live.state.value}': the needles must be checked "
                                "(or a supplement approved) first")

    def start(self, user) -> dict:
        live = self.live
        if not live.device_url:
            raise InputError("no applicator: restart `navigator serve` with --device URL (e.g. /dev/ttyUSB0 or "
                             "socket://HOST:PORT)")
        with live.lock:
            if self.running:
                raise SessionStateError(f"the delivery '{self.name}' is already running")
            name, plan_path, transition = self._what()
            plan = Plan.load(plan_path)
            if transition == "seeds_delivered":  # the pre-plan or a revision: written where its ledger lies
                from navigator.live.steps import deliverable

                plan_path = deliverable(plan, live.dir / name)
            delivery_tasks(plan)  # plan problems are bad input, before the device is touched
            live.decision(user, "start_delivery", name=name, plan=str(plan_path), device=live.device_url)
            self._stop.clear()
            self._why = {}
            self.name, self.plan = name, plan
            self.thread = threading.Thread(target=self._run, args=(name, plan, transition), daemon=True,
                                           name="live-delivery")
            self.thread.start()
        live.changed()
        return {"started": name, "planned": len(plan.seeds)}

    def stop(self, user) -> dict:
        if not self.running:
            raise SessionStateError("no delivery is running")
        self.live.decision(user, "stop_delivery", name=self.name)
        self._why.update(user=user.name)  # in place: the running applicator wrapper holds this dict
        self._stop.set()
        return {"stopping": self.name}

    def stop_for_shutdown(self, timeout_s: float) -> None:
        if self.running:
            self._why.update(user="the service (shutting down)")
            self._stop.set()
            self.thread.join(timeout=timeout_s)

    def _run(self, name: str, plan: Plan, transition: str) -> None:
        from navigator.delivery.ledger import SeedLedger
        from navigator.delivery.run import Delivery
        from navigator.wiring import open_applicator

        live = self.live
        url = live.device_url
        self.ledger = SeedLedger(live.dir / f"{name}.ledger.jsonl")
        try:
            app = open_applicator(url, traffic=lambda kind, text: live.record(kind, {"text": text}))
            self.device = {"url": url, "state": "connecting"}
            try:
                result = Delivery(plan, _Stoppable(app, self._stop, self._why), self.ledger,
                                  journal=self._journal, simulate_operator=live.simulate_operator or url.lower().startswith("sgpsim"),
                                  progress=lambda text: self.device.update(last=text)).run()
            finally:
                app.close()
            data = result.to_json()
            write_json(live.dir / name / "delivery.json", data)
            live.record("live_delivery_finished", {"name": name, "ok": result.ok, "released": data["released"],
                                                   "reconciled": data["reconciled"],
                                                   "stopped_reason": data["stopped_reason"]})
            self._dosimetry(None, "stopped" if not result.ok else "finished")
            if result.ok:
                with live.lock:
                    getattr(live.session, transition)(data)
        except Exception as exc:  # noqa: BLE001 (device unreachable, ledger trouble: journaled, shown)
            live.record("live_delivery_finished", {"name": name, "ok": False, "error": str(exc)})
        finally:
            self.device["state"] = "idle"
            self.ledger.close()
            live.changed()

    def _journal(self, kind: str, data: dict) -> None:
        if kind == "delivery_started":
            self.device.update(data.get("device") or {}, state="delivering")
        self.live.record(kind, data)
        if kind == "seed_released" and self.plan is not None:
            needle = next((s.needle_id for s in self.plan.seeds if s.id == data.get("seed_id")), None)
            released = set(self.live.session.facts.released_seed_ids)
            if needle is not None and all(s.id in released for s in self.plan.seeds if s.needle_id == needle):
                self._dosimetry(needle, "needle done")

    def _dosimetry(self, needle_id: str | None, at: str) -> None:
        """One ``live_dosimetry`` journal line: the projection now (never stops a delivery: a failure is logged)."""
        try:
            p = self.live.projection()
        except Exception:  # the dose of a projection must not take the delivery with it
            log.exception("live dosimetry")
            return
        if p is None:
            return
        released = set(self.live.session.facts.released_seed_ids)
        on_needle = sum(1 for s in self.plan.seeds if s.needle_id == needle_id and s.id in released) \
            if needle_id and self.plan is not None else None
        self.live.record("live_dosimetry", {
            "name": self.name, "needle_id": needle_id, "at": at, "needle_seeds_released": on_needle,
            "seeds_released": p["released"], "remaining": p["remaining"], "D90_gy": p["D90_gy"],
            "V100_pct": p["V100_pct"], "D90_released_gy": p["D90_released_gy"],
            "V100_released_pct": p["V100_released_pct"], "prescription_gy": p["prescription_gy"],
            "below_rx": p["below_rx"]})

    def to_json(self) -> dict:
        """delivery.json's keys (of the run in hand, or the last one) + planned, running, device."""
        live = self.live
        running = self.running  # once: the run may end while this answer is put together
        name = self.name or (live.facts.deliveries[-1]["name"] if live.facts.deliveries else "delivery")
        path = live.dir / name / "delivery.json"
        if running or not path.exists():
            ledger = self.ledger
            seeds = [] if ledger is None else [
                {"seed_id": s.seed_id, "hole": s.hole, "depth_mm": s.depth_mm, "device_index": s.device_index,
                 "device_epoch": s.epoch, "how": s.how} for s in list(ledger.released.values())]
            data = {"released": len(seeds), "device_released_total": None, "seeds": seeds, "reconciled": False}
        else:
            data = json.loads(path.read_text())
        plan = self.plan if running or self.name else self._next_plan()
        try:
            projected = live.projection()
        except Exception:  # the delivery's view must come whatever the dose code says
            log.exception("projection")
            projected = None
        return {**data, "name": name, "planned": len(plan.seeds) if plan else 0, "running": running,
                "device": {"url": live.device_url, **self.device}, "projected": projected}

    def _next_plan(self) -> Plan | None:
        """The plan a start would deliver now (or the pre-plan when nothing can be delivered)."""
        live = self.live
        try:
            return live.plan_at(self._what()[1])
        except Exception:  # noqa: BLE001 (nothing deliverable now: the pre-plan's count is shown)
            return live.pre.plan if live.pre else None
