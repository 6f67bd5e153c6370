"""A synthetic cohort on disk, as a PACS export would leave it, with its truth and outcomes beside it.

    DIR/studies/     DICOM files of every patient's post-implant study (CT series, RT Structure Set with the
                     target and a few organs at risk, an RT Plan for some) in a deliberately messy layout:
                     - PACS_EXPORT/<id>/<date>_<accession>/SE<n>/IM00001 (no extension),
                     - incoming/batch<k>/<hex>[.DCM|.dcm] (several patients mixed in one folder, one slice
                       copied twice),
                     - archive/<year>/<month>/<id>/study1/ct/part1|part2/... (one series split over two folders),
                     plus files that are not DICOM (README.txt, Thumbs.db, .DS_Store, export.log, notes);
    DIR/outcomes.csv patient_id,response,time_months,event,age (rows shuffled; ``orphan_outcomes`` extra rows of
                     patients with no study);
    DIR/truth.json   the cohort's spec, dose-response and hazard, and per patient the true D90, the implanted
                     seeds (post-implant CT frame), the strength, the outcome, the files and the expected status.

Broken studies (``CohortSpec.broken``, the last patients): ``truncated_ct`` (one slice cut to 60 % of its
bytes), ``no_target`` (structure set without the target), ``no_structures`` (no structure set at all).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .model import CohortSpec, SyntheticStudy, make_study

FORMAT = "simulators.cohort/truth"
OAR_NAMES = ("CarotidArtery_{side}", "JugularVein_{side}", "SpinalCord", "Trachea")
STYLES = ("pacs", "mixed", "deep")


@dataclass
class WrittenCohort:
    root: Path
    studies_dir: Path
    outcomes_path: Path
    truth_path: Path
    truth: dict

    def command_options(self) -> list[str]:
        """The ``navigator cohort`` options the studies without an RT Plan need."""
        o = self.truth["options_for_studies_without_plan"]
        return ["--seed-model", o["seed_model"], "--seed-sk-u", f"{o['seed_sk_u']:g}", "--rx-gy", f"{o['rx_gy']:g}"]


def _uid(spec: CohortSpec, *parts) -> str:
    from navigator.io.dicom import new_uid

    return new_uid("simulators.cohort/" + "/".join(str(p) for p in (spec.seed, *parts)))


def _study_date(index: int) -> str:
    return (_dt.date(2018, 1, 8) + _dt.timedelta(days=9 * index)).strftime("%Y%m%d")


def _render(spec: CohortSpec, s: SyntheticStudy):
    """The post-implant CT (Volume, own frame) with the patient's identity and its truth."""
    from simulators.phantoms import postimplant_scan

    scan = postimplant_scan(s.patient, s.seeds_pre_mm, s.axes_pre, motion=s.motion, slice_mm=spec.slice_mm,
                            length_mm=spec.n_slices * spec.slice_mm, matrix=(spec.matrix, spec.matrix),
                            pixel_mm=spec.pixel_mm, scanner=s.scanner)
    scan.patient_id = s.patient_id
    scan.patient_name = f"Cohort^{s.patient_id}"
    scan.study_uid = _uid(spec, s.index, "study")
    scan.series_uid = _uid(spec, s.index, "ct")
    scan.frame_of_reference_uid = _uid(spec, s.index, "frame")
    scan.meta.update({"StudyDate": _study_date(s.index), "StudyTime": "103000", "AccessionNumber": f"A{s.index + 1:05d}",
                      "StudyDescription": "CT neck post-implant", "series_description": "post-implant CT",
                      "series_number": "2"})
    return scan


def _contours(spec: CohortSpec, s: SyntheticStudy, scan) -> dict:
    """{name: polygons} of the target (named as the study spells it) and the organs at risk near it, drawn on
    the post-implant CT from the anatomy moved by the study's motion."""
    from navigator.anatomy.structures import mask_to_contours
    from simulators.phantoms.motion import Motion
    from simulators.phantoms.shapes import structure_occupancy
    from simulators.phantoms.writer import drop_collinear

    motion = Motion.coerce(s.motion)
    side = s.patient.options.get("node_side", "R")
    names = [(s.target_name, s.patient.target)] + [(n.format(side=side),) * 2 for n in OAR_NAMES]
    out = {}
    for written, name in names:
        if name not in s.patient.anatomy.scene.structures:
            continue
        mask = structure_occupancy(s.patient.anatomy.scene, name, scan, motion) >= 0.5
        if mask.any():
            out[written] = [drop_collinear(c) for c in mask_to_contours(mask, scan)]
    return out


def _plan(spec: CohortSpec, s: SyntheticStudy):
    """The RT Plan of the implanted seeds as loaded (pre-plan frame): model, strength, count, prescription."""
    from navigator.core.plan import Needle, Plan, PlannedSeed

    pre = s.patient.ct
    plan = Plan(frame_of_reference_uid=pre.frame_of_reference_uid, ct_series_uid=pre.series_uid, target="GTV",
                prescription_gy=spec.rx_gy, seed_model=spec.seed_model, seed_sk_u=s.sk_u)
    used = sorted(set(s.needle_of_seed))
    for n in used:
        entry, tip = s.needles[n]
        plan.needles.append(Needle(f"N{n + 1:02d}", entry, tip, hole=f"{chr(ord('A') + n // 6)}{2 * (n % 6) + 1}"))
    for k, (pos, n) in enumerate(zip(s.seeds_pre_mm, s.needle_of_seed)):
        plan.seeds.append(PlannedSeed(f"S{k + 1:03d}", f"N{n + 1:02d}", pos))
    return plan


def _write_objects(spec: CohortSpec, s: SyntheticStudy, scan, stage: Path) -> dict:
    """CT, RT Structure Set and RT Plan of one study into ``stage``; {"ct": [paths], "rtstruct", "rtplan"}."""
    from navigator.io.dicom import (
        PatientInfo,
        write_ct_series,
        write_rtplan,
        write_rtstruct,
    )

    info = PatientInfo.from_volume(scan)
    ct_paths = write_ct_series(scan, stage / "ct", info, series_description="post-implant CT",
                               patient_position=scan.meta.get("patient_position", "HFS"),
                               slice_thickness_mm=spec.slice_mm, file_names="index", body_part="NECK",
                               series_number=2, uid_seed=f"simulators.cohort/{spec.seed}/{s.index}")
    out = {"ct": [Path(p) for p in ct_paths], "rtstruct": None, "rtplan": None}
    if s.broken != "no_structures":
        contours = _contours(spec, s, scan)
        if s.broken == "no_target":
            contours.pop(s.target_name, None)
        types = {s.target_name: "GTV"}
        out["rtstruct"] = Path(write_rtstruct(stage / "rs.dcm", scan, contours, info, roi_types=types,
                                              label="contours", series_description="post-implant contours",
                                              series_number=90,
                                              uid_seed=f"simulators.cohort/{spec.seed}/{s.index}/rs"))
    if s.has_plan:
        plan_info = PatientInfo(patient_id=info.patient_id, patient_name=info.patient_name, study_uid=info.study_uid,
                                study_date=info.study_date, study_time=info.study_time, accession=info.accession,
                                frame_of_reference_uid=s.patient.ct.frame_of_reference_uid, series_number=2)
        path, _ = write_rtplan(stage / "plan.dcm", _plan(spec, s), patient=plan_info,
                               reference_date=info.study_date, reference_time="090000", series_number=91,
                               label="implant", series_description="I-125 implant as loaded",
                               uid_seed=f"simulators.cohort/{spec.seed}/{s.index}/plan")
        out["rtplan"] = Path(path)
    return out


def _hex(rng) -> str:
    return "".join(rng.choice(list("0123456789ABCDEF"), size=12))


def _destinations(s: SyntheticStudy, style: str, objects: dict, studies: Path, rng) -> dict:
    """Where each file of the study goes in the export, by layout style."""
    pid, date = s.patient_id, _study_date(s.index)
    ct = objects["ct"]
    if style == "pacs":
        base = studies / "PACS_EXPORT" / pid / f"{date}_A{s.index + 1:05d}"
        dest = {p: base / "SE2" / f"IM{k + 1:05d}" for k, p in enumerate(ct)}
        rs, plan = base / "SE90" / "IM00001", base / "SE91" / "IM00001"
    elif style == "mixed":
        base = studies / "incoming" / f"batch{s.index % 2}"
        ext = str(rng.choice(["", ".DCM", ".dcm"]))
        dest = {p: base / f"{_hex(rng)}{ext}" for p in ct}
        rs, plan = base / f"{_hex(rng)}{ext}", base / f"{_hex(rng)}{ext}"
    else:
        base = studies / "archive" / date[:4] / date[4:6] / pid.lower() / "study1"
        half = len(ct) // 2
        dest = {p: base / "ct" / ("part1" if k < half else "part2") / f"{_hex(rng).lower()}.dcm"
                for k, p in enumerate(ct)}
        rs, plan = base / "RTSTRUCT" / f"RS.{_hex(rng)}.dcm", base / "plans" / "plan"
    if objects["rtstruct"] is not None:
        dest[objects["rtstruct"]] = rs
    if objects["rtplan"] is not None:
        dest[objects["rtplan"]] = plan
    return dest


def _junk(studies: Path, rng) -> list[str]:
    """Files a real export carries that are not DICOM."""
    items = {studies / "README.txt": b"PACS export, cohort re-analysis\n",
             studies / "incoming" / "Thumbs.db": rng.bytes(700),
             studies / "archive" / ".DS_Store": rng.bytes(300),
             studies / "PACS_EXPORT" / "export.log": b"exported 2024-03-01 by pacs-gw\n",
             studies / "archive" / "notes": b"patients re-checked by the physicist\n"}
    for path, data in items.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return [str(p.relative_to(studies)) for p in items]


def _outcomes_csv(spec: CohortSpec, studies: list[SyntheticStudy], rng) -> str:
    rows = [[s.patient_id, s.response, f"{s.time_months:.2f}", s.event, int(rng.integers(38, 82))] for s in studies]
    for j in range(spec.orphan_outcomes):
        rows.append([f"COH{int(spec.seed):02d}-9{j + 1:02d}", int(rng.integers(0, 2)),
                     f"{rng.uniform(3, 40):.2f}", int(rng.integers(0, 2)), int(rng.integers(38, 82))])
    rows = [rows[k] for k in rng.permutation(len(rows))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", "response", "time_months", "event", "age"])
    w.writerows(rows)
    return buf.getvalue()


def write_cohort(spec: CohortSpec, out_dir, progress=None) -> WrittenCohort:
    """Make and write the cohort ``spec`` under ``out_dir`` (see the module docstring). ``progress(i, n)``
    after each patient."""
    out = Path(out_dir)
    studies_dir = out / "studies"
    stage_root = out / ".staging"
    studies_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(spec.seed), 99])
    first_broken = spec.patients - len(spec.broken)
    made, patients = [], []
    duplicated = False
    for i in range(spec.patients):
        s = make_study(spec, i)
        s.broken = spec.broken[i - first_broken] if i >= first_broken else None
        scan = _render(spec, s)
        stage = stage_root / f"{i:04d}"
        objects = _write_objects(spec, s, scan, stage)
        style = STYLES[int(rng.integers(0, len(STYLES)))]
        dest = _destinations(s, style, objects, studies_dir, rng)
        for src, dst in dest.items():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
        if style == "mixed" and not duplicated:     # the same slice exported twice under another name
            copy = studies_dir / "incoming" / "resent" / f"{_hex(rng)}.dcm"
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dest[objects["ct"][0]], copy)
            duplicated = True
        if s.broken == "truncated_ct":
            victim = dest[objects["ct"][len(objects["ct"]) // 2]]
            data = victim.read_bytes()
            victim.write_bytes(data[: int(0.6 * len(data))])
        shutil.rmtree(stage, ignore_errors=True)
        truth = scan.meta["truth"]
        patients.append({
            "patient_id": s.patient_id, "study_uid": scan.study_uid, "ct_series_uid": scan.series_uid,
            "frame_of_reference_uid": scan.frame_of_reference_uid, "study_date": _study_date(i),
            "layout": style, "has_rt_plan": s.has_plan, "seed_model": spec.seed_model, "sk_u": s.sk_u,
            "rx_gy": spec.rx_gy, "seeds_designed": s.seeds_designed, "seeds_implanted": len(s.seeds_pre_mm),
            "seeds_missing": s.seeds_designed - len(s.seeds_pre_mm), "d90_gy": round(s.d90_gy, 4),
            "p_response": round(s.p_response, 4), "response": s.response, "time_months": s.time_months,
            "event": s.event, "scanner": s.scanner, "target_name": s.target_name, "broken": s.broken,
            "expected_status": "ok" if s.broken is None else "error",
            "seeds_mm": np.round(np.asarray(truth["seeds_mm"]), 4).tolist(),
            "seed_axes": np.round(np.asarray(truth["seed_axes"]), 6).tolist(),
            "preplan_to_scan": np.asarray(s.motion).tolist(), **s.extra,
            "files": {k: ([str(dest[p].relative_to(studies_dir)) for p in v] if k == "ct" else
                          (str(dest[v].relative_to(studies_dir)) if v is not None else None))
                      for k, v in objects.items()},
        })
        made.append(s)
        if progress:
            progress(i + 1, spec.patients)
    shutil.rmtree(stage_root, ignore_errors=True)
    junk = _junk(studies_dir, rng)
    outcomes = out / "outcomes.csv"
    outcomes.write_text(_outcomes_csv(spec, made, rng))
    truth = {
        "format": FORMAT, "version": 1, "spec": spec.to_dict(),
        "cutoff_d90_gy": spec.cutoff_d90_gy,
        "response_model": {"kind": "logistic", "p": "1 / (1 + exp(-(D90_gy - cutoff_d90_gy) / width_gy))",
                           "cutoff_d90_gy": spec.cutoff_d90_gy, "width_gy": spec.response_width_gy},
        "hazard_model": {"kind": "exponential", "baseline_per_month": spec.baseline_hazard_per_month,
                         "hazard_ratio_below_cutoff": spec.hazard_ratio_below,
                         "censoring_uniform_months": list(spec.follow_up_months)},
        "options_for_studies_without_plan": {"seed_model": spec.seed_model, "seed_sk_u": spec.default_sk_u,
                                             "rx_gy": spec.rx_gy},
        "d90_method": "analytic node occupancy on a fine grid, TG-43 2D reference (dose_at_points) of the true "
                      f"seeds, {spec.truth_grid_mm:g} mm",
        "patients": patients, "orphan_outcomes": spec.orphan_outcomes, "junk_files": junk,
    }
    truth_path = out / "truth.json"
    truth_path.write_text(json.dumps(truth, indent=1))
    return WrittenCohort(out, studies_dir, outcomes, truth_path, truth)


def load_truth(path) -> dict:
    d = json.loads(Path(path).read_text())
    if d.get("format") != FORMAT:
        raise ValueError(f"{path}: not a cohort truth file (format {d.get('format')!r}, expected {FORMAT!r})")
    return d
