"""The live procedure: the session state machine (``navigator.session``) driven by scans as they arrive and by
the decisions of the people at the console.

One worker thread takes each completed series off a queue, decides what it is for from the session's state
(pre-plan / reference / all / post-implant, or refused), journals that, runs the step and journals its result.
Decisions (accepting deviations, starting or stopping the delivery, approving a supplement, relabelling the
next scan, taking control) are journal lines with the user's name, written before they are acted on.

Resume: the journal is the memory. Started again on the same folder, the session replays it: series already
processed are not run again, a series received but not processed is queued again, series folders on disk that
were never handed over are watched again by the receiver, and every check and evaluation is found on disk.

Journal kinds written by the live service (beside the state machine's and the delivery's own):
``service_started`` / ``service_stopping`` / ``service_stopped``, ``preplan_loaded_from``, ``series_received``
(again, with ``"again": true``, when a processed series grows: it was not complete and is run again),
``series_processed`` (``result`` or ``error``), ``needle_check_written``, ``postimplant_written``,
``association_rejected``, ``login`` / ``login_failed``, ``decision`` (``user``, ``role``, ``action``, ...),
``live_delivery_finished``.

A reference scan holds only the reference needles: its check lists every planned needle (needles.json), but
only the needles found in it gate the transition; an "all" scan is gated by every planned needle.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from navigator.errors import InputError, NavigatorError, RegistrationError
from navigator.io import write_json
from navigator.live import steps
from navigator.live.receiver import IncomingSeries
from navigator.session.controller import Session, SessionStateError, State
from navigator.session.journal import Journal

log = logging.getLogger(__name__)

INTRAOP_STATES = (State.PREPLAN_LOADED, State.REGISTERED, State.REFERENCE_NEEDLES_CHECKED,
                  State.ALL_NEEDLES_CHECKED)
POST_STATES = (State.SEEDS_DELIVERED, State.POSTIMPLANT_EVALUATED, State.SUPPLEMENT_DELIVERED)


@dataclass
class LiveFacts:
    """What the journal says the live service did (rebuilt on resume, kept up to date live)."""

    preplan: dict | None = None
    series: dict[str, dict] = field(default_factory=dict)      # uid -> series_received data (+ "processed")
    checks: list[dict] = field(default_factory=list)           # needle_check_written data
    postimplants: list[dict] = field(default_factory=list)     # postimplant_written data
    next_scan: str | None = None
    supplements: list[dict] = field(default_factory=list)      # decision approve_supplement data
    deliveries: list[dict] = field(default_factory=list)       # delivery_finished data (+ name)
    last_error: dict | None = None

    def apply(self, kind: str, data: dict) -> None:
        if kind == "preplan_loaded_from":
            self.preplan = data
        elif kind == "series_received":
            self.series[data["series_uid"]] = {**data, "processed": False}
            if (data.get("modality") or "").upper() == "CT":
                self.next_scan = None  # a relabel applies to the next CT only
        elif kind == "series_processed" and data["series_uid"] in self.series:
            self.series[data["series_uid"]].update(processed=True, error=data.get("error"))
            self.last_error = data if data.get("error") else None  # a later scan done well clears the last problem
        elif kind == "needle_check_written":
            self.checks.append(data)
        elif kind == "postimplant_written":
            self.postimplants.append(data)
        elif kind == "decision" and data.get("action") == "relabel_next_scan":
            self.next_scan = data["scan"]
        elif kind == "decision" and data.get("action") == "approve_supplement":
            self.supplements.append(data)
        elif kind == "live_delivery_finished":
            self.deliveries.append(data)


class LiveSession:
    """The procedure in the room. Thread-safe: every journal line and state change goes through ``self.lock``."""

    def __init__(self, folder, plan_path=None, preplan_ct=None, device_url: str | None = None,
                 tolerance_mm: float = 2.0, simulate_operator: bool = False):
        self.dir = Path(folder)
        self.simulate_operator = simulate_operator
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device_url = device_url
        self.tolerance_mm = tolerance_mm
        self.lock = threading.RLock()
        self.session = Session.open(self.dir / "session.jsonl")
        self.facts = LiveFacts()
        for e in Journal.read(self.dir / "session.jsonl"):
            self.facts.apply(e["kind"], e["data"])
        self.queue: queue.Queue = queue.Queue()
        self.listeners: list[Callable[[], None]] = []
        self.receiver = None
        self.pre: steps.Preplan | None = None
        self.busy: str | None = None
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        from navigator.live.delivery import LiveDelivery

        self.delivery = LiveDelivery(self)
        self._open_preplan(plan_path, preplan_ct)

    # --- journal ---------------------------------------------------------------------------------------------
    def record(self, kind: str, data: dict) -> None:
        with self.lock:
            self.session.record(kind, data)
            self.facts.apply(kind, data)

    def decision(self, user, action: str, **data) -> None:
        """A person's decision: one journal line with the user's name and role, before it is acted on."""
        self.record("decision", {"user": user.name, "role": user.role, "action": action, **data})

    def changed(self) -> None:
        for fn in list(self.listeners):
            try:
                fn()
            except Exception:
                log.exception("change listener")

    @property
    def state(self) -> State:
        return self.session.state

    # --- the pre-plan ----------------------------------------------------------------------------------------
    def _open_preplan(self, plan_path, preplan_ct) -> None:
        if self.facts.preplan is not None:  # resumed: the journal names the pre-plan in use
            p = self.facts.preplan
            if plan_path and Path(plan_path).resolve() != Path(p["plan"]).resolve():
                raise InputError(f"--plan {plan_path}: this session ({self.dir}) already runs on the pre-plan "
                                 f"{p['plan']}; start a new --session folder for another plan")
            self.pre = steps.load_preplan(p["plan"], p["preplan_ct"], p.get("structures"))
            return
        if plan_path is None and preplan_ct is None:
            return  # the pre-plan will come by DICOM
        if plan_path is None or preplan_ct is None:
            raise InputError("give both --plan plan.json and --preplan-ct DIR (or neither, and send the pre-plan "
                             "by DICOM)")
        self._adopt_preplan(steps.load_preplan(plan_path, preplan_ct), "command line")

    def _adopt_preplan(self, pre: steps.Preplan, source: str) -> None:
        with self.lock:
            if self.state != State.NEW:
                raise SessionStateError(f"the session is in state '{self.state.value}'; a pre-plan can only be "
                                        "loaded into a new session: start a new --session folder")
            self.record("preplan_loaded_from", {**pre.to_json(), "source": source})
            self.session.load_preplan(str(pre.plan_path), {"seeds": len(pre.plan.seeds),
                                                           "needles": len(pre.plan.needles)})
            self.pre = pre
        self.changed()

    # --- series in --------------------------------------------------------------------------------------------
    def series_complete(self, s: IncomingSeries) -> None:
        """Called by the receiver's watcher: queue the series for the worker."""
        self.queue.put(s.to_json())

    def association_rejected(self, data: dict) -> None:
        self.record("association_rejected", data)
        self.changed()

    def known_series(self) -> set[str]:
        return set(self.facts.series)

    def start(self) -> None:
        """Queue what a previous run received but did not process; start the worker."""
        for uid, rec in self.facts.series.items():
            if not rec["processed"]:
                self.queue.put({**rec, "requeued": True})
        self._worker = threading.Thread(target=self._work, name="live-worker", daemon=True)
        self._worker.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """The series in hand is finished (up to ``timeout_s``); queued ones stay journaled for the next start."""
        self._stopping.set()
        self.queue.put(None)
        self.delivery.stop_for_shutdown(timeout_s)
        if self._worker is not None:
            self._worker.join(timeout=timeout_s)

    def _warm_up(self) -> None:
        """Import the step modules and load the compiled dose kernels once, before the first scan needs them."""
        import importlib

        for name in ("navigator.intraop.check", "navigator.postimplant.pipeline", "navigator.report.pages",
                     "navigator.io.dicom"):
            importlib.import_module(name)
        if self.pre is not None and self.pre.plan.seeds:
            from navigator.physics import tg43
            from navigator.physics.dose import dose_at_points

            plan = self.pre.plan
            dose_at_points(plan.seed_positions_mm()[:2] + 5.0, plan.seed_positions_mm(), plan.seed_axes(),
                           plan.seed_sk_u, tg43.load_seed_model(plan.seed_model))
            if self.pre.structures:
                self.pre.masks()  # the post-implant evaluation's pre-plan masks, made while nobody waits

    def _work(self) -> None:
        try:
            self._warm_up()
        except Exception:  # the first scan then pays for it; nothing is lost
            log.exception("warm-up")
        while True:
            item = self.queue.get()
            if item is None or self._stopping.is_set():
                return
            try:
                self._handle(item)
            except Exception as exc:  # a bug must not stop the service: journal it, go on with the next
                log.error("internal error on series %s:\n%s", item.get("series_uid"), traceback.format_exc())
                self.record("series_processed", {"series_uid": item.get("series_uid"),
                                                 "error": f"internal error ({type(exc).__name__}: {exc}); "
                                                          "a bug: report it with the service log"})
            finally:
                self.busy = None
                self.changed()

    def _handle(self, item: dict) -> None:
        uid = item["series_uid"]
        rec = self.facts.series.get(uid)
        if rec is None:
            purpose, reason = self._purpose(item)
            self.record("series_received", {k: item.get(k) for k in (
                "series_uid", "modality", "instances", "patient_id", "study_uid", "frame_of_reference_uid",
                "calling_ae", "received_at", "folder")} | {"purpose": purpose, "reason": reason})
            rec = self.facts.series[uid]
        elif rec["processed"]:
            # more instances came after it was handed over (a pause longer than the quiet period): it was not
            # complete, so it is run again, for what it was first taken for
            self.record("series_received", {**{k: v for k, v in rec.items() if k not in ("processed", "error")},
                                            "instances": item.get("instances"), "again": True})
            rec = self.facts.series[uid]
        self.changed()
        self.busy = f"{rec['purpose']} series {uid}"
        try:
            result = self._run(rec)
        except (NavigatorError, OSError) as exc:
            self.record("series_processed", {"series_uid": uid, "purpose": rec["purpose"], "error": str(exc)})
            return
        self.record("series_processed", {"series_uid": uid, "purpose": rec["purpose"], "result": result})

    def _purpose(self, item: dict) -> tuple[str, str | None]:
        """What a completed series is for, from the session's state (and the operator's relabel)."""
        modality = (item.get("modality") or "").upper()
        expected = self.pre.patient_id if self.pre is not None else self._first_patient()
        pid = (item.get("patient_id") or "").strip()
        if expected and pid and pid != expected:
            return "refused", (f"patient id {pid!r} is not this session's patient {expected!r}; the series is "
                               "kept on disk but not used: send the scan of the right patient")
        if modality != "CT" or self.state == State.NEW:
            return "preplan", None
        if self.state == State.CLOSED:
            return "refused", "the session is closed; start a new --session folder"
        if self.facts.next_scan:
            return self.facts.next_scan, None
        if self.state in (State.PREPLAN_LOADED, State.REGISTERED):
            return "reference", None
        if self.state in INTRAOP_STATES:
            return "all", None
        return "postimplant", None

    def _first_patient(self) -> str:
        return next((r.get("patient_id") or "" for r in self.facts.series.values()
                     if r.get("purpose") == "preplan" and r.get("patient_id")), "")

    def _run(self, rec: dict) -> dict:
        purpose, folder = rec["purpose"], Path(rec["folder"])
        if purpose == "refused":
            return {"refused": rec.get("reason")}
        if purpose == "preplan":
            return self._preplan_series(rec)
        if self.pre is None:
            raise InputError("no pre-plan is loaded: start with --plan and --preplan-ct, or send the RT Plan, its "
                             "CT and RT Structure Set first")
        if purpose in ("reference", "all"):
            return self._needle_check(rec, purpose, folder)
        return self._postimplant(rec, folder)

    # --- the steps -------------------------------------------------------------------------------------------
    def _preplan_series(self, rec: dict) -> dict:
        """A pre-plan object by DICOM; once an RT Plan, the CT it lies on and a structure set are here, the
        pre-plan is loaded (plan.json written to ``DIR/preplan/``)."""
        if self.state != State.NEW:
            return {"note": f"{rec['modality']} series stored; the pre-plan is already loaded, not used"}
        plans = [r for r in self.facts.series.values() if r.get("modality") == "RTPLAN" and r["purpose"] == "preplan"]
        if not plans:
            return {"note": "stored; waiting for the RT Plan of the pre-plan"}
        from navigator.io.dicom import read_rtplan

        rtplan = next(Path(plans[-1]["folder"]).glob("*.dcm"))
        plan = read_rtplan(rtplan)
        ct = next((r for r in self.facts.series.values() if r.get("modality") == "CT" and r["purpose"] == "preplan"
                   and r.get("frame_of_reference_uid") == plan.frame_of_reference_uid), None)
        rs = next((r for r in self.facts.series.values() if r.get("modality") == "RTSTRUCT"
                   and r["purpose"] == "preplan"), None)
        if ct is None or rs is None:
            return {"note": "RT Plan here; waiting for " + " and ".join(
                w for w, r in (("the CT it references", ct), ("the RT Structure Set", rs)) if r is None)}
        out = self.dir / "preplan"
        out.mkdir(parents=True, exist_ok=True)
        plan.save(out / "plan.json")
        self._adopt_preplan(steps.load_preplan(out / "plan.json", ct["folder"], next(Path(rs["folder"]).glob("*.dcm"))),
                            "DICOM")
        return {"preplan": str(out / "plan.json")}

    def _needle_check(self, rec: dict, scan: str, folder: Path) -> dict:
        n = len(self.facts.checks) + 1
        out = self.dir / "checks" / str(n)
        try:
            data, ct = steps.needle_check(self.pre, folder, out, self.tolerance_mm)
        except RegistrationError as exc:
            raise InputError(f"registration refused ({exc}); rescan the patient") from None
        with self.lock:
            if self.state == State.PREPLAN_LOADED:
                self.session.accept_registration(data["registration"])
            # a reference scan holds only the reference needles: those not inserted yet do not block it
            gate = [x for x in data["needles"] if x["found"]] if scan == "reference" else data["needles"]
            self.session.needle_check(scan, gate)
            self.record("needle_check_written", {"n": n, "series_uid": rec["series_uid"], "scan": scan,
                                                 "dir": str(out), "out_of_tolerance": data["out_of_tolerance"],
                                                 "not_found": data["not_found"]})
            self._advance(scan)
        self.changed()
        _background(steps.needles_html, self.pre, data, ct, out)
        return {"check": n, "scan": scan, "out_of_tolerance": data["out_of_tolerance"]}

    def _advance(self, scan: str) -> None:
        """The transition a passed (or fully accepted) check allows, if the session has not made it yet."""
        checks = self.session.facts.needle_checks
        if not checks or checks[-1].scan != scan or not checks[-1].passed:
            return
        before = (State.REGISTERED,) if scan == "reference" else (State.REGISTERED, State.REFERENCE_NEEDLES_CHECKED)
        if self.state in before:
            self.session.needles_checked(scan)

    def _postimplant(self, rec: dict, folder: Path) -> dict:
        n = len(self.facts.postimplants) + 1
        out = self.dir / "postimplant" / str(n)
        released = len(self.session.facts.released_seed_ids)
        result, res, post = steps.postimplant(self.pre, folder, out, released or None)
        summary = steps.postimplant_summary(result)
        with self.lock:
            self.record("postimplant_written", {"n": n, "series_uid": rec["series_uid"], "dir": str(out),
                                                "summary": summary})
            if self.state in (State.SEEDS_DELIVERED, State.SUPPLEMENT_DELIVERED):
                self.session.postimplant_evaluated(summary)
        self.changed()
        _background(steps.postimplant_html, res, post, out)
        return {"postimplant": n, **summary}

    # --- decisions -----------------------------------------------------------------------------------------
    def accept(self, user, needle_ids: list[str], reason: str) -> dict:
        if not isinstance(reason, str) or not reason.strip():
            raise InputError("give a reason for accepting the deviations (\"reason\": text)")
        if not needle_ids or not all(isinstance(x, str) for x in needle_ids):
            raise InputError("give the needles to accept (\"needle_ids\": [\"N01\", ...])")
        with self.lock:
            checks = self.session.facts.needle_checks
            if not checks or not self.facts.checks:
                raise SessionStateError("no needle check yet: nothing to accept")
            last = checks[-1]
            pending = [x for x in last.out_of_tolerance if x not in last.accepted]
            wrong = [x for x in needle_ids if x not in pending]
            if wrong:
                raise SessionStateError(f"needles {', '.join(wrong)} are not out of tolerance (and not yet accepted) "
                                        f"in the latest check; pending: {', '.join(pending) or 'none'}")
            self.decision(user, "accept_deviations", needle_ids=list(needle_ids), reason=reason.strip(),
                          check=self.facts.checks[-1]["n"])
            for nid in needle_ids:
                self.session.operator_override(nid, f"{reason.strip()} (accepted by {user.name})")
            self._advance(last.scan)
        self.changed()
        return {"accepted": list(needle_ids), "state": self.state.value}

    def relabel_next_scan(self, user, scan: str) -> dict:
        if scan not in ("reference", "all", "postimplant"):
            raise InputError(f"scan {scan!r}: give \"reference\", \"all\" or \"postimplant\"")
        self.decision(user, "relabel_next_scan", scan=scan)
        self.changed()
        return {"next_scan": scan}

    def approve_supplement(self, user) -> dict:
        with self.lock:
            if self.state != State.POSTIMPLANT_EVALUATED or not self.facts.postimplants:
                raise SessionStateError(f"no post-implant evaluation to act on (state '{self.state.value}'); "
                                        "take the post-implant scan first")
            latest = self.facts.postimplants[-1]
            if any(s["postimplant"] == latest["n"] for s in self.facts.supplements):
                raise SessionStateError(f"the supplement of post-implant evaluation {latest['n']} is already approved")
            import json

            result = json.loads((Path(latest["dir"]) / "postimplant.json").read_text())
            name = f"supplement_{len(self.facts.supplements) + 1}"
            plan = steps.supplement_plan(self.pre, result, name)
            if plan is None:
                raise SessionStateError("the latest evaluation proposes no supplementary seeds; nothing to approve")
            path = steps.deliverable(plan, self.dir / name)
            self.decision(user, "approve_supplement", postimplant=latest["n"], name=name, plan=str(path),
                          seeds=len(plan.seeds))
        self.changed()
        return {"approved": name, "seeds": len(plan.seeds), "plan": str(path)}

    # --- views ---------------------------------------------------------------------------------------------------
    def next_step(self) -> str:
        if self.delivery.running:
            return "delivery in progress: watch the applicator; stop it from the console if needed"
        if self.busy:
            return f"working on the {self.busy}"
        pending = self._pending()
        if pending:
            return (f"needles {', '.join(pending)} are out of tolerance: correct them and rescan, or a physicist "
                    "accepts each deviation with a reason")
        s = self.state
        return {
            State.NEW: "send the pre-plan (RT Plan with its CT and RT Structure Set), or restart with --plan and "
                       "--preplan-ct",
            State.PREPLAN_LOADED: "insert the reference needles and scan",
            State.REGISTERED: "insert the reference needles and scan",
            State.REFERENCE_NEEDLES_CHECKED: "insert all needles and scan",
            State.ALL_NEEDLES_CHECKED: "start the seed delivery",
            State.SEEDS_DELIVERED: "take the post-implant scan",
            State.POSTIMPLANT_EVALUATED: ("review the post-implant evaluation; approve and deliver the supplementary "
                                          "seeds, or close" if not self._supplement_pending()
                                          else "deliver the approved supplementary seeds"),
            State.SUPPLEMENT_DELIVERED: "take the post-implant scan",
            State.CLOSED: "the session is closed",
        }[s]

    def _pending(self) -> list[str]:
        checks = self.session.facts.needle_checks
        if not checks or self.state not in INTRAOP_STATES:
            return []
        return [x for x in checks[-1].out_of_tolerance if x not in checks[-1].accepted]

    def _supplement_pending(self) -> dict | None:
        done = {d.get("name") for d in self.facts.deliveries if d.get("ok")}
        return next((s for s in self.facts.supplements if s["name"] not in done), None)

    def session_json(self) -> dict:
        return {"state": self.state.value, "next_step": self.next_step(),
                "patient_id": (self.pre.patient_id or None) if self.pre else (self._first_patient() or None),
                "prescription_gy": float(self.pre.plan.prescription_gy) if self.pre else None,
                "busy": self.busy, "last_error": self.facts.last_error,
                "checks": len(self.facts.checks), "postimplants": len(self.facts.postimplants)}

    def series_list(self) -> list[dict]:
        with self.lock:  # the worker adds series while the API reads
            return self._series_rows()

    def _series_rows(self) -> list[dict]:
        rows = [{"series_uid": r["series_uid"], "modality": r.get("modality"), "instances": r.get("instances"),
                 "complete": True, "purpose": r["purpose"], "received_at": r.get("received_at"),
                 "processed": r["processed"], "reason": r.get("reason"), "error": r.get("error")}
                for r in self.facts.series.values()]
        if self.receiver is not None:
            known = set(self.facts.series)
            rows += [{"series_uid": s.series_uid, "modality": s.modality, "instances": s.instances,
                      "complete": s.complete, "purpose": None, "received_at": s.received_at, "processed": False,
                      "reason": None, "error": None}
                     for s in self.receiver.in_progress() if s.series_uid not in known]
        return rows

    def latest_check(self) -> dict | None:
        if not self.facts.checks:
            return None
        import json

        with self.lock:
            c = self.facts.checks[-1]
        data = json.loads((Path(c["dir"]) / "needles.json").read_text())
        accepted = [a for a in (self.session.facts.needle_checks[-1].accepted
                                if self.session.facts.needle_checks else [])]
        return {**data, "scan": c["scan"], "series_uid": c["series_uid"], "check": c["n"], "accepted": accepted}

    def latest_postimplant(self) -> dict | None:
        if not self.facts.postimplants:
            return None
        import json

        p = self.facts.postimplants[-1]
        return {**json.loads((Path(p["dir"]) / "postimplant.json").read_text()), "postimplant": p["n"],
                "series_uid": p["series_uid"]}

    def write_status(self) -> None:
        write_json(self.dir / "status.json", self.session_json())


_pages: queue.Queue = queue.Queue()


def _draw_pages() -> None:
    while True:
        fn, args = _pages.get()
        fn(*args)


def _background(fn, *args) -> None:
    """Pictures are drawn beside the worker, so the next scan's step does not wait for them: one long-lived
    thread, one page after the other (a new thread per page would hold several CTs at once under load and
    give the allocator a new arena each time)."""
    global _page_thread
    if _page_thread is None or not _page_thread.is_alive():
        _page_thread = threading.Thread(target=_draw_pages, daemon=True, name="pages")
        _page_thread.start()
    _pages.put((fn, args))


_page_thread: threading.Thread | None = None
