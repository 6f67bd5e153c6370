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
``live_delivery_finished``, ``replan_written`` / ``replan_failed``, ``live_dosimetry``.

The re-plan (issue #15): an operator or physicist runs it on the latest check of all needles (``decision``
``run_replan``, then ``replan_written`` with the files of ``DIR/replan/<n>/``); a physicist approves it
(``decision`` ``approve_replan``, which also accepts the check's remaining deviations: the re-plan uses the
needles where they are); from then on the intraop delivery delivers that revision. A delivery stopped with seeds
left can be re-planned for what is left: the seeds released stay where they are and count in the dose, the
revision holds only the seeds still to deliver and is delivered under its own name and ledger
(``delivery_r<n>``). Seed ids are never used twice in a session: a revision approved after a delivery started
names its seeds ``R<n>-S<nnn>``.

A reference scan holds only the reference needles: its check lists every planned needle (needles.json), but
only the needles found in it gate the transition; an "all" scan is gated by every planned needle.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    replans: list[dict] = field(default_factory=list)          # replan_written data
    approvals: list[dict] = field(default_factory=list)        # decision approve_replan data
    started: list[dict] = field(default_factory=list)          # decision start_delivery data

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
        elif kind == "replan_written":
            self.replans.append(data)
        elif kind == "decision" and data.get("action") == "approve_replan":
            self.approvals.append(data)
        elif kind == "decision" and data.get("action") == "start_delivery":
            self.started.append(data)


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
        self.warm = False  # the worker's warm-up is done: a scan now pays only for its own step
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._replanning = threading.Lock()
        self._plans: dict[str, object] = {}     # plan.json path -> Plan (delivered and approved plans never change)
        self._doses: steps.SeedDoses | None = None
        self._early: tuple[tuple, tuple] | None = None  # (what it was computed on, the step's result): see _start_early
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

    def series_settled(self, s: IncomingSeries) -> None:
        """Called by the receiver when the association that carried ``s`` is released: the worker may start the
        series' step early (``_start_early``); the series is still processed, and journaled, only once complete."""
        self.queue.put({**s.to_json(), "early": True})

    def association_rejected(self, data: dict) -> None:
        self.record("association_rejected", data)
        self.changed()

    def known_series(self) -> set[str]:
        return set(self.facts.series)

    def start(self) -> None:
        """Queue what a previous run received but did not process; start the worker."""
        for rec in self.facts.series.values():
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
                     "navigator.io.dicom", "navigator.planning.replan", "navigator.planning.as_found"):
            importlib.import_module(name)
        if self.pre is not None and self.pre.plan.seeds:
            from navigator.physics import tg43
            from navigator.physics.dose import dose_at_points

            plan = self.pre.plan
            dose_at_points(plan.seed_positions_mm()[:2] + 5.0, plan.seed_positions_mm(), plan.seed_axes(),
                           plan.seed_sk_u, tg43.load_seed_model(plan.seed_model))
            if self.pre.structures:
                from navigator.postimplant.pipeline import prepare_needle_field

                ctv, oars = self.pre.masks()  # the post-implant evaluation's pre-plan masks, made while nobody waits
                prepare_needle_field(self.pre.ct, ctv, oars, self.pre.field_cache)

    def _work(self) -> None:
        try:
            self._warm_up()
        except Exception:  # the first scan then pays for it; nothing is lost
            log.exception("warm-up")
        self.warm = True
        self.changed()
        while True:
            item = self.queue.get()
            if item is None or self._stopping.is_set():
                return
            try:
                self._handle(item)
            except Exception as exc:  # noqa: BLE001 (a bug must not stop the service: journal it, go on)
                log.error("internal error on series %s:\n%s", item.get("series_uid"), traceback.format_exc())
                self.record("series_processed", {"series_uid": item.get("series_uid"),
                                                 "error": f"internal error ({type(exc).__name__}: {exc}); "
                                                          "a bug: report it with the service log"})
            finally:
                self.busy = None
                self.changed()

    def _handle(self, item: dict) -> None:
        if item.get("early"):
            self._start_early(item)
            return
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

    # --- early start: the step's computation between the sender's release and the end of the quiet period -----
    def _early_key(self, uid: str, folder: Path, purpose: str) -> tuple:
        """What an early result depends on: the series' files on disk, what it is for, the pre-plan and (for a
        post-implant scan) the seeds released."""
        files = len(list(folder.glob("*.dcm")))
        released = len(self.session.facts.released_seed_ids) if purpose == "postimplant" else None
        return uid, files, purpose, id(self.pre), released

    def _start_early(self, item: dict) -> None:
        """Compute the needle check or post-implant evaluation of a series its sender has finished sending, before
        the quiet period declares it complete. Nothing is journaled or written: the result is kept in memory and
        used by ``_needle_check``/``_postimplant`` only if the series, its purpose and the session's inputs are
        unchanged when it completes (``_early_key``); otherwise it is computed again. A failure here is dropped:
        the run on completion meets it again and reports it."""
        uid = item["series_uid"]
        rec = self.facts.series.get(uid)
        if self.pre is None or (rec is not None and rec["processed"]) or (item.get("modality") or "").upper() != "CT":
            return
        purpose, _ = self._purpose(item)
        if purpose not in ("reference", "all", "postimplant"):
            return
        folder = Path(item["folder"])
        key = self._early_key(uid, folder, purpose)
        self._early = None
        self.busy = f"{purpose} series {uid} (started before its quiet period ended)"
        try:
            if purpose == "postimplant":
                released = key[-1]
                result = steps.postimplant(self.pre, folder, released or None)
            else:
                result = steps.needle_check(self.pre, folder, self.tolerance_mm)
        except Exception as exc:  # noqa: BLE001 (the run on completion reports it)
            log.info("early start of series %s dropped: %s", uid, exc)
            return
        self._early = (key, result)

    def _take_early(self, uid: str, folder: Path, purpose: str) -> tuple | None:
        """The early result for this series if it was computed on exactly what is here now (else None)."""
        early, self._early = self._early, None
        if early is not None and early[0] == self._early_key(uid, folder, purpose):
            return early[1]
        return None

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
            early = self._take_early(rec["series_uid"], folder, scan)
            data, ct = early or steps.needle_check(self.pre, folder, self.tolerance_mm)
        except RegistrationError as exc:
            raise InputError(f"registration refused ({exc}); rescan the patient") from None
        steps.write_needle_check(data, out)
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
        return {"check": n, "scan": scan, "out_of_tolerance": data["out_of_tolerance"], "started_early": bool(early)}

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
        early = self._take_early(rec["series_uid"], folder, "postimplant")
        res, post = early or steps.postimplant(self.pre, folder, released or None)
        steps.write_postimplant(res, post, out)
        summary = steps.postimplant_summary(res.result)
        with self.lock:
            self.record("postimplant_written", {"n": n, "series_uid": rec["series_uid"], "dir": str(out),
                                                "summary": summary})
            if self.state in (State.SEEDS_DELIVERED, State.SUPPLEMENT_DELIVERED):
                self.session.postimplant_evaluated(summary)
        self.changed()
        _background(steps.postimplant_html, res, post, out)
        return {"postimplant": n, **summary, "started_early": bool(early)}

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

    # --- the re-plan -------------------------------------------------------------------------------------------
    def replan(self, user) -> dict:
        """Re-plan on the latest check of all needles (``steps.replan``: what ``navigator replan`` does), written to
        ``DIR/replan/<n>/``; after a delivery stopped with seeds left, only what is left, the released seeds kept
        in the dose. replan.json's keys + ``"replan": n``. SessionStateError (409) when there is no check of all
        needles, a delivery is running, or the seeds are delivered."""
        if not self._replanning.acquire(blocking=False):
            raise SessionStateError("a re-plan is already running; its answer comes in a few seconds")
        try:
            with self.lock:
                check, fixed, budget = self._replan_inputs()
                n = len(self.facts.replans) + 1
                started = len(self.facts.started)
                original = self._revised_rtplan()
                self.decision(user, "run_replan", replan=n, check=check["n"], released=len(fixed))
            out = self.dir / "replan" / str(n)
            try:
                data, res = steps.replan(self.pre, Path(check["dir"]) / "needles.json", out, n, fixed, budget,
                                         original, seed_prefix=f"R{n}-" if started else None)
            except Exception as exc:  # journaled either way: bad input (400) or a bug (500)
                self.record("replan_failed", {"n": n, "user": user.name, "check": check["n"],
                                              "error": f"{type(exc).__name__}: {exc}"})
                self.changed()
                raise
            with self.lock:
                moved = self._replan_moved(check, fixed, started)
                if moved:
                    self.record("replan_failed", {"n": n, "user": user.name, "check": check["n"], "error": moved})
                    raise SessionStateError(f"{moved} while re-planning; run the re-plan again")
                self.record("replan_written", {
                    "n": n, "user": user.name, "check": check["n"], "dir": str(out), "plan": str(out / "plan.json"),
                    "revision": data.get("revision"), "seeds": data["seeds"],
                    "released_seed_ids": [f["seed_id"] for f in fixed], "goals_met": bool(data["checks"]["all_ok"]),
                    "D90_gy": {k: round(float(data[f"metrics_{k}"]["D90_gy"]), 2)
                               for k in ("preplan", "as_placed", "replan")},
                    "seconds": data["seconds"]})
        finally:
            self._replanning.release()
        self.changed()
        _background(steps.replan_html, res, data, out)
        return {**data, "replan": n}

    def _replan_inputs(self) -> tuple[dict, list[dict], int]:
        """(the check, the seeds released, the seeds left in the cartridge) of a re-plan now, or why not."""
        if self.pre is None:
            raise SessionStateError("no pre-plan loaded yet: send the RT Plan with its CT and RT Structure Set, or "
                                    "start with --plan and --preplan-ct")
        if self.delivery.running:
            raise SessionStateError(f"the delivery '{self.delivery.name}' is running: stop it first; the re-plan then "
                                    "covers the seeds that are left")
        if self.state not in INTRAOP_STATES:
            raise SessionStateError(f"no re-plan in state '{self.state.value}': the seeds are delivered; take the "
                                    "post-implant scan (its evaluation proposes supplementary seeds)")
        check = self.facts.checks[-1] if self.facts.checks else None
        if check is None or check["scan"] != "all":
            raise SessionStateError("no check of all needles yet: insert all needles and scan; the re-plan keeps each "
                                    "needle where the check of all needles found it")
        released = list(self.session.facts.released_seed_ids)
        if released:
            last = self.facts.deliveries[-1] if self.facts.deliveries else {}
            if not last.get("reconciled"):
                raise SessionStateError("the last delivery is not reconciled (ledger, device counter and RECORD list "
                                        "disagree): start it again to reconcile (or image the patient) before "
                                        "re-planning what is left")
        known = self.started_seeds()
        unknown = [sid for sid in released if sid not in known]
        if unknown:
            raise SessionStateError(f"released seeds {', '.join(unknown)} are in no delivered plan of the pre-plan's "
                                    "frame; the re-plan cannot place them: review the journal with a physicist")
        fixed = [{"seed_id": sid, **known[sid]} for sid in released]
        return check, fixed, max(1, len(self.pre.plan.seeds) - len(released))

    def _replan_moved(self, check: dict, fixed: list[dict], started: int) -> str | None:
        """What changed under a re-plan while it ran (a scan, a delivery), or None."""
        if self.facts.checks[-1]["n"] != check["n"]:
            return f"needle check {self.facts.checks[-1]['n']} arrived"
        if self.delivery.running or len(self.facts.started) != started:
            return "a delivery started"
        if list(self.session.facts.released_seed_ids) != [f["seed_id"] for f in fixed]:
            return "seeds were released"
        return None

    def _revised_rtplan(self) -> dict | None:
        """The RT Plan a new revision revises: the approved revision's, else the pre-plan's (RTPLAN.dcm beside its
        plan.json, else the RT Plan it came in by DICOM); None when there is none."""
        cands = [Path(a["plan"]).parent / "RTPLAN.dcm" for a in reversed(self.facts.approvals)]
        cands.append(Path(self.pre.plan_path).parent / "RTPLAN.dcm")
        for r in reversed(list(self.facts.series.values())):
            if r.get("modality") == "RTPLAN" and r.get("purpose") == "preplan":
                cands += sorted(Path(r["folder"]).glob("*.dcm"))
        return steps.rtplan_of(self.pre, cands)

    def approve_replan(self, user) -> dict:
        """A physicist approves the latest re-plan for delivery: journaled with the user; the check's deviations not
        yet accepted are accepted with it (the re-plan puts the seeds where the needles are)."""
        with self.lock:
            if not self.facts.replans:
                raise SessionStateError("no re-plan to approve: run the re-plan first (POST /api/replan)")
            rp = self.facts.replans[-1]
            n = rp["n"]
            if any(a["replan"] == n for a in self.facts.approvals):
                raise SessionStateError(f"re-plan {n} is already approved; start the delivery")
            if self.delivery.running:
                raise SessionStateError(f"the delivery '{self.delivery.name}' is running: stop it first")
            if self.state not in INTRAOP_STATES:
                raise SessionStateError(f"re-plan {n} cannot be approved in state '{self.state.value}': the seeds are "
                                        "delivered")
            latest = self.facts.checks[-1]
            if rp["check"] != latest["n"]:
                raise SessionStateError(f"re-plan {n} was made on needle check {rp['check']}, but check {latest['n']} "
                                        "is newer: re-plan on it (POST /api/replan) and approve that")
            released = list(self.session.facts.released_seed_ids)
            if released != list(rp.get("released_seed_ids") or []):
                raise SessionStateError(f"seeds were released since re-plan {n} was made ({len(released)} now, "
                                        f"{len(rp.get('released_seed_ids') or [])} then): re-plan what is left again")
            name = "delivery" if not self.facts.started else f"delivery_r{n}"
            pending = self._pending()
            self.decision(user, "approve_replan", replan=n, check=rp["check"], plan=rp["plan"], name=name,
                          seeds=rp["seeds"], goals_met=rp.get("goals_met"), accepts=pending)
            for nid in pending:
                self.session.operator_override(nid, f"re-planned on the needles as found: re-plan {n} approved by "
                                                    f"{user.name}")
            self._advance(latest["scan"])
        self.changed()
        return {"approved": n, "name": name, "plan": rp["plan"], "seeds": rp["seeds"], "accepted": pending,
                "state": self.state.value}

    def plan_in_force(self) -> tuple[str, Path, dict | None]:
        """(delivery name, plan path, approval or None) of the intraop delivery: the latest approved re-plan, else
        the pre-plan. SessionStateError when the approved re-plan is of an older check than the latest."""
        if not self.facts.approvals:
            return "delivery", Path(self.pre.plan_path), None
        ap = self.facts.approvals[-1]
        latest = self.facts.checks[-1]["n"] if self.facts.checks else None
        if ap["check"] != latest:
            raise SessionStateError(f"re-plan {ap['replan']} was approved on needle check {ap['check']}, but check "
                                    f"{latest} is newer: re-plan on it (POST /api/replan) and have a physicist "
                                    "approve it")
        return ap["name"], Path(ap["plan"]), ap

    def latest_replan(self) -> dict | None:
        """replan.json of the latest re-plan + ``replan``, ``check``, ``approved``, ``approved_by``, ``current``
        (still of the latest check and of the seeds released), ``revision_plan`` (its plan.json)."""
        with self.lock:
            if not self.facts.replans:
                return None
            rp = self.facts.replans[-1]
            ap = next((a for a in self.facts.approvals if a["replan"] == rp["n"]), None)
            current = (self.facts.checks[-1]["n"] == rp["check"]
                       and list(self.session.facts.released_seed_ids) == list(rp.get("released_seed_ids") or []))
        data = steps.read_json(Path(rp["dir"]) / "replan.json")
        return {**data, "replan": rp["n"], "check": rp["check"], "revision_plan": rp["plan"], "made_by": rp.get("user"),
                "approved": ap is not None, "approved_by": ap["user"] if ap else None,
                "delivery_name": ap["name"] if ap else None, "current": current,
                "prescription_gy": float(self.pre.plan.prescription_gy) if self.pre else None,
                "html": (Path(rp["dir"]) / "replan.html").is_file()}

    # --- live dosimetry --------------------------------------------------------------------------------------
    def plan_at(self, path) -> object:
        """The plan.json at ``path``, read once (delivered and approved plans are never rewritten otherwise)."""
        from navigator.core.plan import Plan

        key = str(Path(path).resolve())
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = Plan.load(path, "plan")
        return plan

    def started_seeds(self) -> dict[str, dict]:
        """seed id -> {"needle_id", "position_mm", "axis"} of every plan a delivery was started on in the
        pre-plan's frame (the position where the ledger knows the seed went)."""
        out: dict[str, dict] = {}
        for d in self.facts.started:
            try:
                plan = self.plan_at(d["plan"])
            except NavigatorError:
                continue
            if plan.frame_of_reference_uid != self.pre.plan.frame_of_reference_uid:
                continue  # a supplement: another frame
            for s, axis in zip(plan.seeds, plan.seed_axes()):
                out.setdefault(s.id, {"needle_id": s.needle_id, "position_mm": [float(v) for v in s.position_mm],
                                      "axis": [float(v) for v in axis]})
        return out

    def projection(self) -> dict | None:
        """The CTV dose of the seeds released so far (where the delivered plan put them) plus those of the plan in
        force still to go, on the pre-plan's CTV points: ``D90_gy``, ``V100_pct`` (if the rest go as planned),
        ``D90_released_gy``, ``V100_released_pct`` (the released seeds alone), ``released``, ``remaining``,
        ``below_rx``, ``stopped_with_seeds_left``, ``replan_offered``. None before a pre-plan, once a post-implant
        evaluation has measured the dose, or when nothing is planned or released in the pre-plan's frame."""
        if self.pre is None or self.state in (State.POSTIMPLANT_EVALUATED, State.SUPPLEMENT_DELIVERED, State.CLOSED):
            return None
        if self._doses is None:
            self._doses = steps.SeedDoses(self.pre)
        doses = self._doses
        if not len(doses.points_mm):
            return None
        with self.lock:
            known = self.started_seeds()
            released = [sid for sid in self.session.facts.released_seed_ids if sid in known]
            name, plan = None, None
            if self.state in INTRAOP_STATES:
                try:
                    name, path, _ = self.plan_in_force()
                    plan = self.plan_at(path)
                except NavigatorError:
                    plan = None
            running = self.delivery.running
        if plan is not None and plan.frame_of_reference_uid != self.pre.plan.frame_of_reference_uid:
            plan = None
        covered = None  # an approved re-plan made for exactly the seeds released so far: what is left is re-planned
        if self.facts.approvals and self.facts.replans:
            ap = self.facts.approvals[-1]
            rp = next((r for r in self.facts.replans if r["n"] == ap["replan"]), {})
            if released and list(rp.get("released_seed_ids") or []) == released:
                covered = ap["replan"]
        done = set(released)
        rest = [] if plan is None else [(s.position_mm, a) for s, a in zip(plan.seeds, plan.seed_axes())
                                        if s.id not in done]
        if plan is None and not released:
            return None
        now = [(known[sid]["position_mm"], known[sid]["axis"]) for sid in released]
        m, m_now = doses.metrics(now + rest), doses.metrics(now)
        rx = doses.rx_gy
        below = m["D90_gy"] is not None and m["D90_gy"] < rx
        short = bool(not running and released and rest)
        return {"D90_gy": m["D90_gy"], "V100_pct": m["V100_pct"], "released": len(released), "remaining": len(rest),
                "D90_released_gy": m_now["D90_gy"], "V100_released_pct": m_now["V100_pct"], "prescription_gy": rx,
                "plan": name, "below_rx": bool(below), "stopped_with_seeds_left": short, "rest_replan_approved": covered,
                "replan_offered": bool((below or short) and self.state in INTRAOP_STATES and not running
                                       and covered is None),
                "ctv_points": len(doses.points_mm), "ctv_source": doses.source}

    # --- views ---------------------------------------------------------------------------------------------------
    def next_step(self) -> str:
        if self.delivery.running:
            return "delivery in progress: watch the applicator; stop it from the console if needed"
        if self.busy:
            return f"working on the {self.busy}"
        pending = self._pending()
        waiting = self._replan_waiting()
        if pending:
            tail = (f", or approves re-plan {waiting['n']} on the needles as found" if waiting else
                    ", or re-plan on the needles as found (Re-plan)" if self._all_checked() else "")
            return (f"needles {', '.join(pending)} are out of tolerance: correct them and rescan, or a physicist "
                    f"accepts each deviation with a reason{tail}")
        s = self.state
        if s == State.ALL_NEEDLES_CHECKED:
            return self._delivery_step(waiting)
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

    def _all_checked(self) -> bool:
        return bool(self.facts.checks) and self.facts.checks[-1]["scan"] == "all"

    def _replan_waiting(self) -> dict | None:
        """The latest re-plan when it waits for a physicist's approval (of the latest check, nothing released
        since), else None."""
        if not self.facts.replans or self.state not in INTRAOP_STATES:
            return None
        rp = self.facts.replans[-1]
        if any(a["replan"] == rp["n"] for a in self.facts.approvals) or rp["check"] != self.facts.checks[-1]["n"]:
            return None
        if list(self.session.facts.released_seed_ids) != list(rp.get("released_seed_ids") or []):
            return None
        return rp

    def _delivery_step(self, waiting: dict | None) -> str:
        """The next step once the needles are checked: deliver (the approved re-plan), or, after a delivery that
        stopped with seeds left or a projection below the prescription, resume or re-plan what is left."""
        if self.facts.started:
            try:
                p = self.projection()
            except Exception:  # the words must come whatever the dose code says
                log.exception("projection")
                p = None
            if p and p["replan_offered"] and not waiting:
                rx = p["prescription_gy"]
                if p["below_rx"]:
                    return (f"projected CTV D90 {p['D90_gy']:.1f} Gy is below Rx {rx:.1f} Gy: re-plan what is left "
                            "(Re-plan) for a physicist to approve")
                return (f"delivery stopped with {p['remaining']} seeds left: start it again for the rest, or re-plan "
                        "what is left (Re-plan)")
        if waiting:
            d90 = (waiting.get("D90_gy") or {}).get("replan", float("nan"))
            return (f"re-plan {waiting['n']} is ready (CTV D90 {d90:.1f} Gy): a physicist approves it, or start the "
                    "delivery without it")
        try:
            _, _, ap = self.plan_in_force()
        except SessionStateError as exc:
            return str(exc)
        return f"start the seed delivery of re-plan {ap['replan']}" if ap else "start the seed delivery"

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
                "busy": self.busy, "warm": self.warm, "last_error": self.facts.last_error,
                "checks": len(self.facts.checks), "postimplants": len(self.facts.postimplants),
                "replans": len(self.facts.replans),
                "replan_approved": self.facts.approvals[-1]["replan"] if self.facts.approvals else None}

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
