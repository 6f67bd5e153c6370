"""The full rehearsal: a whole simulated procedure on a synthetic patient (``navigator rehearse``).

Pre-plan -> reference needles (insert, scan, register, check, correct)* -> all needles (same loop) -> re-plan
on the needles as found (``navigator replan``; the revision is delivered when its predicted D90 beats the
pre-plan loading's as placed) -> seed delivery through the applicator over a real byte stream -> post-implant
scan and evaluation -> supplementary seeds (plan, deliver, rescan)* -> report.

Two worlds meet here and are kept apart:
- the *simulated world* (``world.py``, on ``simulators.phantoms``): where the needles and seeds really are, in
  the patient's anatomy, which is the pre-plan CT's frame (``preplan`` LPS). Only the operator model, the
  scanner and the simulated applicator see it.
- the *navigator's view* (this module): what the product measures from the DICOM it is given (scans written to
  disk and read back), exactly as in the CT suite, through its own commands.

Every step is journaled through ``navigator.session.controller.Session``; each step's random draws come from a generator
seeded by (``--seed``, step name), so a resumed rehearsal (after SIGKILL) redraws the same world and skips
what the journal says is done. Delivery resumes from its seed ledger after reconciling the device.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from navigator.errors import InputError
from navigator.core.plan import Plan
from navigator.io import write_json
from navigator.rehearsal.world import OperatorModel, SimulatedApplicator, SimulatedWorld, alive
from navigator.session.controller import Session, State

DEFAULT_RX_GY = 120.0
DEFAULT_ACTIVITY_MCI = 0.5
DEFAULT_MODEL = "6711"


@dataclass
class RehearsalOptions:
    out: Path
    case: str = "neck"
    seed: int = 0
    device_url: str | None = None
    rx_gy: float = DEFAULT_RX_GY
    seed_model: str = DEFAULT_MODEL
    activity_mci: float = DEFAULT_ACTIVITY_MCI
    tolerance_mm: float = 2.0
    # Needle placement error of a trained operator through a template (per axis, 1 SD); corrections after
    # advice are more careful.
    # (1 SD per axis: ~1.8 mm RMS tip error on a 6 cm needle, so about a third of first insertions need a
    # correction, as in CT-guided series).
    lateral_sd_mm: float = 0.8
    depth_sd_mm: float = 1.0
    angle_sd_deg: float = 0.7
    correction_scale: float = 0.35
    max_needle_rounds: int = 3
    reference_needles: int = 3
    seed_drop_sd_mm: float = 0.7   # where a released seed settles along the track, vs the planned depth
    max_supplement_rounds: int = 2
    # Rehearse an abandoned needle (bleeding, a vessel in the way): the operator leaves out this many of the
    # needles carrying the most seeds, which leaves a cold region for the supplementary-seed loop.
    skip_needles: int = 0
    # The re-plan on the needles as found is delivered when its predicted CTV D90 beats the pre-plan's loading
    # as placed on them by at least this much (a smaller gain is not worth a changed loading) and it keeps
    # every OAR under its limit.
    replan_min_gain_gy: float = 1.0
    # the pre-plan's robustness preview: samples of the site's published placement errors
    robustness_samples: int = 300
    progress: object = None


class RehearsalStepFailed(InputError):
    """A step of the rehearsal could not be done (its own command said why)."""


class Rehearsal:
    def __init__(self, opts: RehearsalOptions):
        self.o = opts
        self.out = Path(opts.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.session = Session.open(self.out / "session.jsonl")
        self.timings: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self._say = opts.progress or (lambda msg: None)
        self.world = SimulatedWorld(opts.case, opts.seed, self.out, OperatorModel(
            lateral_sd_mm=opts.lateral_sd_mm, depth_sd_mm=opts.depth_sd_mm, angle_sd_deg=opts.angle_sd_deg,
            correction_scale=opts.correction_scale, seed_drop_sd_mm=opts.seed_drop_sd_mm))
        self.device = SimulatedApplicator(opts.seed)

    # --- helpers -------------------------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        self._say(msg)

    def _timed(self, name: str, fn):
        t = time.perf_counter()
        result = fn()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t
        return result

    def _done(self, name: str):
        return self.session.step_done(name)

    # --- step runner ---------------------------------------------------------------------------------------
    def step(self, name: str, fn):
        """Run ``fn() -> dict`` once: a journaled result means the step was done (resume skips it)."""
        done = self._done(name)
        if done is not None:
            return done
        self.say(f"{name} ...")
        t = time.perf_counter()
        result = fn()
        result = dict(result)
        result["seconds"] = round(time.perf_counter() - t, 3)
        self.session.complete_step(name, result)
        self.timings[name] = result["seconds"]
        return result

    # --- 1. the patient and the pre-plan ---------------------------------------------------------------------
    def make_plan(self, case: dict) -> dict:
        """`navigator plan` on the case's DICOM, exactly as a physicist would run it."""
        out = self.out / "plan"
        rc = self.navigator("plan", "--ct", case["ct_dir"], "--structures", case["rtstruct"], "--target", "GTV",
                            "--rx-gy", self.o.rx_gy, "--seed-model", self.o.seed_model,
                            "--seed-activity-mci", self.o.activity_mci, "--out", out, ok=(0, 3))
        plan = json.loads((out / "plan.json").read_text())
        return {"plan_json": str(out / "plan.json"), "seeds": len(plan["seeds"]), "needles": len(plan["needles"]),
                "metrics": plan["metrics"], "goals_met": rc == 0}

    def navigator(self, command: str, *args, ok=(0,)) -> int:
        """Run a `navigator` command in this process (the product's own entry point, its JSON on disk)."""
        import contextlib
        import io

        from navigator.cli import main

        argv = [command, *(str(a) for a in args)]
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
        if rc not in ok:
            raise RehearsalStepFailed(f"`navigator {' '.join(argv)}` exited {rc}; see its message above")
        return rc

    def _sk_u(self) -> float:
        from navigator.physics.tg43 import sk_u_from

        return sk_u_from(activity_mci=self.o.activity_mci)

    # --- 2-3. needles: insert, scan, register, check, correct ------------------------------------------------
    def needle_loop(self, plan: Plan, scan: str, needle_ids: list[str], actual: dict) -> tuple[dict, list[dict]]:
        """Scan -> check -> correct until every needle of ``needle_ids`` is within tolerance (or accepted)."""
        rounds = []
        to_redraw = [i for i in needle_ids if i not in actual]
        for rnd in range(1, self.o.max_needle_rounds + 1):
            name = f"needles_{scan}_{rnd}"

            def do_round(rnd=rnd, to_redraw=tuple(to_redraw), actual=dict(actual)):
                now = self.world.needle_draws(plan, scan, rnd, actual, list(to_redraw))
                world = {i: now[i] for i in needle_ids}
                checked = self.check_scan(plan, name, world)
                return {"actual": now, "needles": checked["needles"], "registration": checked["registration"],
                        "dir": checked["dir"]}

            result = self.step(name, do_round)
            actual = result["actual"]
            rounds.append(result)
            if self.session.state == State.PREPLAN_LOADED:
                self.session.accept_registration(result["registration"])
            check = self._journal_check(scan, rnd, result["needles"])
            out = [n["id"] for n in result["needles"] if not n["within_tolerance"]]
            self.say(f"{scan} needles, round {rnd}: {len(result['needles'])} checked, {len(out)} out of tolerance")
            if not out:
                break
            if rnd == self.o.max_needle_rounds:
                self.accept_deviations(scan, [nid for nid in out if nid not in check.accepted],
                                       f"accepted after {rnd} insertions (rehearsal operator)")
                break
            to_redraw = out  # the operator re-inserts what the advice says, more carefully
        # Only the transition this scan has not made yet: a run resumed after the reference needles were
        # checked goes through the (journaled) reference loop again and must not re-enter that state.
        before = (State.REGISTERED,) if scan == "reference" else (State.REGISTERED, State.REFERENCE_NEEDLES_CHECKED)
        if self.session.state in before:
            self.session.needles_checked(scan)
        return actual, rounds

    def accept_deviations(self, scan: str, needle_ids: list[str], reason: str) -> None:
        """The physicist accepts the deviations of needles still out of tolerance after the last round."""
        for nid in needle_ids:
            self.session.operator_override(nid, reason)

    def _journal_check(self, scan: str, rnd: int, needles: list[dict]):
        """Journal the needle check once (a resumed run finds it in the facts)."""
        key = f"check_journaled_{scan}_{rnd}"
        if self._done(key) is None:
            check = self.session.needle_check(scan, needles)
            self.session.complete_step(key, {})
            return check
        checks = [c for c in self.session.facts.needle_checks if c.scan == scan]
        return checks[-1]

    def check_scan(self, plan: Plan, name: str, world_needles: dict, max_scans: int = 3) -> dict:
        """Render the intraop CT with the real needles, write it as DICOM, and check it with `navigator needles`.

        When the navigator refuses the scan's registration (its own error estimate too large), the operator
        rescans, as in the CT suite: up to ``max_scans`` scans, each journaled."""
        for attempt in range(1, max_scans + 1):
            scan_dir = self.out / "intraop" / (name if attempt == 1 else f"{name}_rescan{attempt - 1}")
            ct_dir = self.world.intraop_scan(name, attempt, world_needles, scan_dir)
            # Only the needles inserted so far are looked for; each one's D90 change is judged against the
            # whole planned implant (the seeds it will join), not against the few needles already in.
            rc = self.navigator("needles", "--plan", self.out / "plan" / "plan.json",
                                "--needles", ",".join(world_needles), "--preplan-ct", self.case["ct_dir"],
                                "--ct", ct_dir, "--structures", self.out / "plan" / "RTSTRUCT.dcm",
                                "--tolerance-mm", self.o.tolerance_mm, "--out", scan_dir, ok=(0, 2, 3))
            if rc != 2:
                break
            refused = scan_dir / "registration.json"
            if not refused.exists() or attempt == max_scans:
                raise RehearsalStepFailed(f"`navigator needles` refused the scan {scan_dir} (exit 2); see its "
                                          "message above")
            self.session.record("rescan", {"scan": name, "attempt": attempt,
                                           "reason": "registration refused",
                                           "registration": json.loads(refused.read_text())})
            self.say(f"{name}: registration refused, the operator rescans")
        result = json.loads((scan_dir / "needles.json").read_text())
        return {"needles": result["needles"], "registration": result["registration"], "dir": str(scan_dir)}

    # --- 4. seed delivery -------------------------------------------------------------------------------------
    def device_url(self) -> str:
        """The applicator: ``--device`` if given, else the simulator as a separate process over TCP (started
        once per rehearsal folder and journaled, so a resumed rehearsal finds the same device)."""
        if self.o.device_url:
            return self.o.device_url
        started = self._done("device_started")
        if started is not None and alive(started["pid"]):
            return started["url"]
        url, pid = self.device.start()
        if started is not None:
            self.session.record("device_restarted", {"url": url, "pid": pid})
            self.session.undo_step("device_started", "the simulated applicator it started is no longer running")
        self.session.complete_step("device_started", {"url": url, "pid": pid})
        return url

    def deliver(self, plan_path: Path, name: str) -> dict:
        from navigator.delivery.run import Delivery
        from navigator.delivery.ledger import SeedLedger
        from navigator.wiring import open_applicator

        plan = Plan.load(plan_path)
        url = self.device_url()
        journal = self.session.journal
        ledger = SeedLedger(self.out / f"{name}.ledger.jsonl")
        app = open_applicator(url, traffic=lambda kind, text: journal.append(kind, {"text": text}))
        try:
            result = Delivery(plan, app, ledger, journal=journal.append, simulate_operator=True,
                              progress=self.say).run()
        finally:
            app.close()
            ledger.close()
        data = result.to_json()

        (self.out / name).mkdir(exist_ok=True)
        write_json(self.out / name / "delivery.json", data)
        if not result.ok:
            from navigator.errors import DeliveryError

            raise DeliveryError(f"{name}: delivery stopped ({result.stopped_reason or 'not reconciled'}); "
                                f"the ledger {ledger.path} says what left the applicator; resume to continue")
        return data

    # --- 3b. re-plan on the needles as found ----------------------------------------------------------------
    def replan(self, plan_path: Path, needle_rounds: dict) -> dict:
        """The re-plan on the last all-needles check; whether its revision is to be delivered, and why."""
        rc, data, revision = self.run_replan(plan_path, Path(needle_rounds["all"][-1]["dir"]))
        base = {"exit_code": rc, "seeds_preplan": len(self.plan_obj.seeds)}
        if data is None:
            return {**base, "used": False, "reason": "the navigator refused to re-plan (exit 2); the pre-plan is "
                                                      "delivered as placed"}
        gain = float(data["metrics_replan"]["D90_gy"] - data["metrics_as_placed"]["D90_gy"])
        oars_ok = all(v.get("ok", True) for k, v in data["checks"].items() if k.startswith("oar "))
        why_not = ("an OAR limit would be exceeded" if not oars_ok else
                   f"a gain under {self.o.replan_min_gain_gy:g} Gy" if gain < self.o.replan_min_gain_gy else None)
        used = why_not is None
        if used:
            self.approve_replan()
        reason = (f"predicted CTV D90 {data['metrics_replan']['D90_gy']:.1f} Gy against "
                  f"{data['metrics_as_placed']['D90_gy']:.1f} Gy for the pre-plan loading as placed ({gain:+.1f} Gy); "
                  + ("the revision is delivered" if used else f"the pre-plan is delivered as placed: {why_not}"))
        return {**base, "used": used, "reason": reason, "plan_json": str(revision),
                "d90_gain_gy": round(gain, 3), "metrics_as_placed": data["metrics_as_placed"],
                "metrics_replan": data["metrics_replan"], "seeds": data["seeds"], "seeds_moved": data["seeds_moved"],
                "needles_used": data["needles_used"], "needles_dropped": data.get("needles_dropped", []),
                "replan_seconds": data["seconds"], "goals_met": rc == 0}

    def run_replan(self, plan_path: Path, check_dir: Path) -> tuple[int, dict | None, Path]:
        """`navigator replan` on the check in ``check_dir``: (exit code, replan.json or None when refused, the
        revision's plan.json)."""
        out = self.out / "replan"
        rc = self.navigator("replan", "--plan", plan_path, "--needles", check_dir / "needles.json",
                            "--preplan-ct", self.case["ct_dir"], "--structures", self.out / "plan" / "RTSTRUCT.dcm",
                            "--out", out, ok=(0, 2, 3))
        data = None if rc == 2 else json.loads((out / "replan.json").read_text())
        return rc, data, out / "plan.json"

    def approve_replan(self) -> None:
        """The physicist approves the revision for delivery (here: it is the plan file delivered)."""
        self.session.record("replan_approved", {"by": "rehearsal physicist"})

    def delivery_plan(self, plan_path: Path) -> Path:
        """The plan to deliver: the pre-plan, less any needles the operator abandons (``skip_needles``), with
        an ``X<n>`` label for each needle placed without the template (``hole`` null, e.g. the planner's single
        needles), as the supplementary needles get: the applicator needs a hole id for every needle."""
        freehand = [n.id for n in Plan.load(plan_path).needles if not n.hole]
        if self.o.skip_needles <= 0 and not freehand:
            return plan_path
        path = self.out / "delivery" / "plan_delivered.json"
        if path.exists():
            return path
        plan = Plan.load(plan_path)
        used = {n.hole for n in plan.needles if n.hole}
        labels = (f"X{k}" for k in range(1, 100) if f"X{k}" not in used)
        for n in plan.needles:
            if not n.hole:
                n.hole = next(labels)
        plan.extra["freehand_needles"] = {n.id: n.hole for n in plan.needles if n.id in freehand}
        count = {n.id: len(plan.seeds_of(n.id)) for n in plan.needles}
        dropped = sorted(count, key=lambda i: (-count[i], i))[: self.o.skip_needles]
        if dropped:
            self.session.record("operator_abandons_needles", {"needles": dropped,
                                                              "seeds": sum(count[i] for i in dropped)})
        plan.needles = [n for n in plan.needles if n.id not in dropped]
        plan.seeds = [s for s in plan.seeds if s.needle_id not in dropped]
        plan.extra["abandoned_needles"] = dropped
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, plan.to_dict())
        return path

    # --- 5. post-implant scan and evaluation ---------------------------------------------------------------
    def postimplant(self, name: str, seeds_world: np.ndarray, axes_world: np.ndarray, plan_path: Path) -> dict:
        """Render the post-implant CT with the seeds where they really are; the navigator evaluates it against
        the plan delivered (the pre-plan or its revision), with the pre-plan's structures (CTV, OARs)."""
        scan_dir = self.out / name
        ct_dir = self.world.postimplant_scan(name, seeds_world, axes_world, scan_dir)
        self.navigator("postimplant", "--plan", plan_path, "--preplan-ct", self.case["ct_dir"], "--ct", ct_dir,
                       "--structures", self.out / "plan" / "RTSTRUCT.dcm",
                       "--expected-seeds", len(seeds_world), "--out", scan_dir)
        result = json.loads((scan_dir / "postimplant.json").read_text())
        return {"dir": str(scan_dir), "result": _summary_of_postimplant(result), "truth_seeds": len(seeds_world)}

    # --- 6. supplementary seeds ----------------------------------------------------------------------------
    def supplement_plan(self, name: str, post: dict, post_plan_frame: str) -> Plan | None:
        """The proposal as a deliverable plan (``postimplant.supplement.supplementary_plan``)."""
        from navigator.postimplant.supplement import supplementary_plan

        return supplementary_plan(self.plan_obj, post["result"]["supplementary"]["seeds"], name, post_plan_frame)

    # --- the whole procedure -------------------------------------------------------------------------------
    def run(self) -> dict:
        plan_path = self.preplan()
        self.robust = self.step("robustness", self.robustness_preview)
        actual, needle_rounds = self.needles(self.plan_obj)
        self.replanned = self.step("replan", lambda: self.replan(plan_path, needle_rounds))
        if self.replanned.get("used"):
            plan_path = Path(self.replanned["plan_json"])  # the approved revision is delivered and evaluated
        delivered = Plan.load(plan_path)
        delivery = self.step("delivery", lambda: self.deliver(self.delivery_plan(plan_path), "delivery"))
        if self.session.state == State.ALL_NEEDLES_CHECKED:
            self.session.seeds_delivered(delivery)
        seeds_world, axes_world = self.world.seeds_released(delivered, actual, delivery, "delivery")
        first_post = self.step("postimplant_1", lambda: self.postimplant("postimplant_1", seeds_world, axes_world,
                                                                          plan_path))
        if self.session.state == State.SEEDS_DELIVERED:
            self.session.postimplant_evaluated(first_post["result"]["summary"])
        post, supplementary = self.supplements(first_post, seeds_world, axes_world, plan_path)
        result = self.summary(first_post, post, delivery, supplementary, needle_rounds)
        if self.session.state != State.CLOSED:
            self.session.close({k: result[k] for k in ("final_metrics", "seeds_released", "supplementary_seeds")})
        self.stop_device()
        return result

    def robustness_preview(self) -> dict:
        """1b. What the pre-plan's D90 would be with the placement errors of the published series for this site
        (``navigator robustness``'s Monte Carlo, in this process), to set beside what actually happened."""
        from navigator.io.dicom import read_structure_set
        from navigator.planning.robustness import SITE_PRESETS, ErrorModel, ctv_sample_points, robustness_preview

        structures = read_structure_set(self.out / "plan" / "RTSTRUCT.dcm")
        ctv = structures.get("CTV")
        if ctv is None:
            return {"skipped": "the pre-plan's RTSTRUCT has no CTV"}
        model = ErrorModel.for_site(self.o.case if self.o.case in SITE_PRESETS else None)
        points = ctv_sample_points(ctv, 1.0, self.plan_obj.frame_of_reference_uid)
        r = robustness_preview(self.plan_obj, points, model, samples=self.o.robustness_samples, seed=self.o.seed,
                               sensitivity=False)
        keep = ("samples", "error_model", "D90_gy", "V100_pct", "pass_rate", "nominal", "d90_samples_gy", "seconds")
        return {k: r[k] for k in keep if k in r}

    def preplan(self) -> Path:
        """1. The case's DICOM and `navigator plan` on it; the plan loaded into the session."""
        self.case = self.step("case", self.world.write_case)
        plan_summary = self.step("plan", lambda: self.make_plan(self.case))
        plan_path = Path(plan_summary["plan_json"])
        self.plan_obj = Plan.load(plan_path)
        if self.session.state == State.NEW:
            self.session.load_preplan(str(plan_path), {k: plan_summary.get(k) for k in ("seeds", "needles")})
        return plan_path

    def needles(self, plan: Plan) -> tuple[dict, dict]:
        """2-3. Reference needles (those closest to the target's centre), then all needles."""
        centre = plan.seed_positions_mm().mean(axis=0)
        by_dist = sorted(plan.needles, key=lambda n: np.linalg.norm(
            (n.tip_mm - centre) - np.dot(n.tip_mm - centre, n.axis) * n.axis))
        ref_ids = [n.id for n in by_dist[: self.o.reference_needles]]
        actual, ref_rounds = self.needle_loop(plan, "reference", ref_ids, {})
        actual, all_rounds = self.needle_loop(plan, "all", [n.id for n in plan.needles], actual)
        return actual, {"reference": ref_rounds, "all": all_rounds}

    def supplements(self, post: dict, seeds_world, axes_world, plan_path: Path) -> tuple[dict, int]:
        """6. Supplementary seeds (plan, deliver, rescan) until D90 >= Rx or nothing more is proposed."""
        supplementary = 0
        for rnd in range(1, self.o.max_supplement_rounds + 1):
            post_name = f"postimplant_{rnd}"
            res = post["result"]
            if res["metrics"]["D90_gy"] >= self.o.rx_gy or not res["supplementary"]["seeds"]:
                break
            splan = self.supplement_plan(f"supplement_{rnd}", post, self.world.scan_frame_of_reference(post_name))
            splan_path = self.out / f"supplement_{rnd}" / "plan.json"
            splan_path.parent.mkdir(exist_ok=True)
            if not splan_path.exists():
                splan.save(splan_path)
            sdelivery = self.step(f"supplement_{rnd}", lambda: self.deliver(splan_path, f"supplement_{rnd}"))
            if self.session.state == State.POSTIMPLANT_EVALUATED:
                self.session.supplement_delivered(sdelivery)
            supplementary += sdelivery["released"]
            extra, extra_axes = self.world.supplementary_seeds(post_name, splan, sdelivery)
            seeds_world = np.vstack([seeds_world, extra])
            axes_world = np.vstack([axes_world, extra_axes])
            next_name = f"postimplant_{rnd + 1}"
            post = self.step(next_name, lambda: self.postimplant(next_name, seeds_world, axes_world, plan_path))
            if self.session.state == State.SUPPLEMENT_DELIVERED:
                self.session.postimplant_evaluated(post["result"]["summary"])
        return post, supplementary

    def summary(self, first_post: dict, post: dict, delivery: dict, supplementary: int, needle_rounds: dict) -> dict:
        """rehearsal.json (cli-contract.md) and what it adds."""
        result = {
            "case": self.o.case, "seed": self.o.seed, "prescription_gy": self.o.rx_gy,
            "preplan_metrics": self.plan_obj.metrics,
            "postimplant_metrics": first_post["result"]["metrics"],
            "final_metrics": post["result"]["metrics"],
            # the plan delivered: the pre-plan, or its revision on the needles as found
            "seeds_planned": len(Plan.load(self._delivered_plan_path()).seeds),
            "seeds_released": delivery["released"],
            "supplementary_seeds": supplementary,
            "device_released_total": self._device_total(),
            "needle_scans": [{"needles": len(r["needles"]),
                              "out_of_tolerance": sum(not n["within_tolerance"] for n in r["needles"]),
                              "scan": name, "round": i + 1}
                             for name, rounds in needle_rounds.items() for i, r in enumerate(rounds)],
            "seconds": None,
            # beyond the contract
            "seeds_found_postimplant": first_post["result"]["found"],
            "timings_s": {k: v.get("seconds") for k, v in self.session.facts.steps_done.items()
                          if isinstance(v, dict) and "seconds" in v},
            "out": str(self.out),
            "replan": dict(getattr(self, "replanned", None) or {}),  # the re-plan step: used or not, and why
            # the pre-plan's robustness preview (placement errors of the site's published series) beside what
            # happened: where the delivered D90 fell in the predicted distribution
            "robustness": self._robustness_vs_actual(post["result"]["metrics"]),
        }
        result["seconds"] = round(sum(v for v in result["timings_s"].values() if v), 1)
        return result

    def _robustness_vs_actual(self, final_metrics: dict) -> dict:
        robust = getattr(self, "robust", None) or {}
        r = {k: v for k, v in robust.items() if k not in ("d90_samples_gy", "seconds")}
        samples, d90 = robust.get("d90_samples_gy"), final_metrics.get("D90_gy")
        if samples and d90 is not None:
            r["final_D90_gy"] = d90
            r["final_D90_percentile"] = round(100.0 * float(np.mean(np.asarray(samples) <= d90)), 1)
        return r

    def _delivered_plan_path(self) -> Path:
        rp = getattr(self, "replanned", None) or {}
        return Path(rp["plan_json"]) if rp.get("used") else self.out / "plan" / "plan.json"

    def _device_total(self) -> int | None:
        """The applicator's own released counter (since its power-up) after the last delivery."""
        totals = []
        for name in ["delivery"] + [f"supplement_{r}" for r in range(1, self.o.max_supplement_rounds + 1)]:
            d = self._done(name)
            if d is not None:
                counter = d.get("device_counter")
                totals.append(counter if counter is not None else d["device_released_total"])
        return max(totals) if totals else None

    def stop_device(self) -> None:
        started = self._done("device_started")
        self.device.stop(started["pid"] if started is not None and self.o.device_url is None else None)


def _summary_of_postimplant(result: dict) -> dict:
    """The parts of postimplant.json the rehearsal keeps in its journal."""
    return {"metrics": result["metrics"], "found": len(result["seeds"]),
            "expected": result.get("expected_seeds"),
            "cold_spots": result.get("cold_spots", [])[:5],
            "supplementary": result.get("supplementary", {"seeds": [], "predicted_metrics": None}),
            "summary": {"found": len(result["seeds"]), "D90_gy": result["metrics"].get("D90_gy"),
                        "V100_pct": result["metrics"].get("V100_pct")},
            "warnings": result.get("warnings", [])}
