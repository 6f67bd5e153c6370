"""``navigator replan`` end to end on a synthetic patient written as real DICOM (issue #15).

The pre-plan is ``navigator plan``'s own (plan.json, RTPLAN.dcm, RTSTRUCT.dcm with the CTV). The needle check
(needles.json, as ``navigator needles`` writes it) is built from known truth: a known patient motion between the
scans (the registration), the most loaded needle not found, the others tilted, shifted and inserted too shallow
or deep. Checked independently of the re-plan: ``navigator dose`` on the revised seeds (CSV) reaches the
prescription where the pre-plan loading as placed does not; every seed lies on a needle where it was found,
between its entry and tip; the revised RT Plan passes dciodvfy, reads back with the RT Plan importer and
references the original; ``navigator deliver`` takes the revision; bad inputs exit 2 with --out untouched.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from navigator.cli import main
from navigator.core.plan import Plan
from navigator.core.transform import RigidTransform
from tests.conftest import dciodvfy

RX = 120.0
CONTRACT_KEYS = ("metrics_preplan", "metrics_as_placed", "metrics_replan", "seeds", "seeds_moved", "needles_used",
                 "seconds")
METRIC_KEYS = ("ctv_cc", "D90_gy", "D100_gy", "V90_pct", "V100_pct", "V150_pct", "V200_pct", "HI", "oars")


def _check(plan: Plan, lost: set, motion: RigidTransform, seed: int = 6) -> tuple[dict, dict]:
    """(needles.json, truth {id: (tip, axis)} in the pre-plan frame): tilted about the entry, shifted across,
    too deep or too shallow; ``lost`` not found; seen through ``motion`` (pre-plan -> intraop)."""
    rng = np.random.default_rng(seed)
    truth, needles = {}, []
    for n in plan.needles:
        u = n.axis
        e1 = np.cross(u, [0.0, 0.0, 1.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(u, e1)
        tilt = np.radians(rng.normal(0, 1.5, 2))
        axis = (u + tilt[0] * e1 + tilt[1] * e2) / np.linalg.norm(u + tilt[0] * e1 + tilt[1] * e2)
        tip = n.entry_mm + rng.normal(0, 1.2) * e1 + rng.normal(0, 1.2) * e2 + (n.length_mm + rng.normal(-1, 2)) * axis
        found = n.id not in lost
        if found:
            truth[n.id] = (tip, axis)
        needles.append({"id": n.id, "found": found, "planned_tip_mm": motion.apply(n.tip_mm).tolist(),
                        "tip_mm": motion.apply(tip).tolist() if found else None,
                        "axis": motion.rotate(axis).tolist() if found else None, "within_tolerance": False,
                        "tip_error_mm": None})
    check = {"registration": {"fixed_to_moving": motion.to_list(), "metric": -0.5, "converged": True,
                              "estimated_error_mm": 0.3, "seconds": 1.0,
                              "fixed_frame_of_reference_uid": plan.frame_of_reference_uid},
             "tolerance_mm": 2.0, "needles": needles}
    return check, truth


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from simulators.phantoms.cases import make_patient
    from simulators.phantoms.motion import random_rigid
    from simulators.phantoms.writer import write_patient

    root = tmp_path_factory.mktemp("replan_case")
    patient = make_patient("neck", 11, matrix=(170, 170), n_slices=40)
    written = write_patient(patient, root / "case")
    rc = main(["plan", "--ct", str(written.ct_dir), "--structures", str(written.rtstruct_path), "--target", "GTV",
               "--rx-gy", str(RX), "--seed-model", "6711", "--seed-activity-mci", "0.5", "--out", str(root / "plan")])
    assert rc == 0
    plan = Plan.load(root / "plan" / "plan.json")
    motion = RigidTransform(random_rigid(np.random.default_rng(3), 8.0, 4.0, center_mm=patient.node_center_mm))
    lost = {max(plan.needles, key=lambda n: (len(plan.seeds_of(n.id)), n.id)).id}
    check, truth = _check(plan, lost, motion)
    (root / "needles.json").write_text(json.dumps(check))
    return {"root": root, "ct": written.ct_dir, "plan": plan, "plan_json": root / "plan" / "plan.json",
            "needles_json": root / "needles.json", "check": check, "truth": truth, "lost": lost, "motion": motion}


def _args(case, out, **over) -> list[str]:
    a = {"--plan": case["plan_json"], "--needles": case["needles_json"], "--preplan-ct": case["ct"], "--out": out}
    a.update(over)
    return ["replan"] + [str(v) for kv in a.items() for v in kv if v is not None]


@pytest.fixture(scope="module")
def replanned(case):
    out = case["root"] / "replan"
    rc = main(_args(case, out))
    return rc, out, json.loads((out / "replan.json").read_text()), Plan.load(out / "plan.json")


def _dose_d90(case, seeds_mm, axes, out: Path) -> float:
    """CTV D90 by `navigator dose` (the independent dose check) of seeds given as a CSV, on the pre-plan CT."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "seeds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x_mm", "y_mm", "z_mm", "ux", "uy", "uz"])
        w.writerows(np.hstack([seeds_mm, axes]).tolist())
    rc = main(["dose", "--seeds", str(out / "seeds.csv"), "--model", "6711", "--seed-sk-u", repr(case["plan"].seed_sk_u),
               "--ct", str(case["ct"]), "--structures", str(case["root"] / "plan" / "RTSTRUCT.dcm"),
               "--target", "CTV", "--rx-gy", str(RX), "--oar", "SpinalCord", "--out", str(out)])
    assert rc == 0
    return json.loads((out / "dose.json").read_text())["metrics"]["D90_gy"]


def test_replan_reaches_the_prescription_by_an_independent_dose_check(case, replanned):
    rc, _, data, rev = replanned
    from navigator.planning.as_found import carried_loading, needles_as_found

    as_placed = carried_loading(case["plan"], needles_as_found(case["plan"], case["check"]))
    d90_as_placed = _dose_d90(case, as_placed.seed_positions_mm(), as_placed.seed_axes(), case["root"] / "d_as")
    d90_replan = _dose_d90(case, rev.seed_positions_mm(), rev.seed_axes(), case["root"] / "d_re")
    print(f"navigator dose D90: as placed {d90_as_placed:.1f} Gy, re-plan {d90_replan:.1f} Gy "
          f"(re-plan's own: {data['metrics_as_placed']['D90_gy']:.1f}, {data['metrics_replan']['D90_gy']:.1f} Gy; "
          f"{data['seconds']:.2f} s)")
    assert d90_as_placed < RX <= d90_replan
    assert abs(d90_replan - data["metrics_replan"]["D90_gy"]) < 3.0
    assert rc == (0 if data["checks"]["all_ok"] else 3)


def test_replan_json_and_the_revision_keep_the_contract(case, replanned):
    _, out, data, rev = replanned
    for key in CONTRACT_KEYS:
        assert key in data, key
    for key in ("metrics_preplan", "metrics_as_placed", "metrics_replan"):
        assert all(k in data[key] for k in METRIC_KEYS), key
    assert data["seeds"] == len(rev.seeds) <= len(case["plan"].seeds)
    assert 0 <= data["seeds_moved"] <= data["seeds"]
    assert data["needles_used"] == [n.id for n in case["plan"].needles if n.id not in case["lost"]]
    assert data["seconds"] > 0
    from navigator.io.dicom import sop_instance_uid_of

    raw = json.loads((out / "plan.json").read_text())
    assert raw["revision"] == 1
    assert raw["based_on_sop_instance_uid"] == sop_instance_uid_of(case["root"] / "plan" / "RTPLAN.dcm")
    for key in ("frame_of_reference_uid", "ct_series_uid", "target", "prescription_gy", "seed_model", "seed_sk_u",
                "needles", "seeds", "metrics"):
        assert key in raw, key
    assert raw["metrics"]["D90_gy"] == pytest.approx(data["metrics_replan"]["D90_gy"])
    html = (out / "replan.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "as placed" in html and "re-plan" in html


def test_every_seed_on_a_needle_where_it_was_found(case, replanned):
    _, _, _, rev = replanned
    assert {n.id for n in rev.needles} == set(case["truth"])
    for n in rev.needles:
        tip, axis = case["truth"][n.id]
        assert np.linalg.norm(n.tip_mm - tip) < 0.01 and np.dot(n.axis, axis) > 1 - 1e-6  # where it was found
        assert n.hole == case["plan"].needle(n.id).hole
        for s in rev.seeds_of(n.id):
            d = n.depth_of(s.position_mm)
            # on the true needle line (not only on the plan's idea of it), between entry and tip
            off = np.linalg.norm(np.cross(s.position_mm - tip, axis))
            assert off <= 0.5 and 0.0 < d <= n.length_mm, (s.id, off, d)


def test_revised_rtplan_conforms_reads_back_and_references_the_original(case, replanned):
    from navigator.io.dicom import read_rtplan, sop_instance_uid_of

    _, out, _, rev = replanned
    errors, _ = dciodvfy(out / "RTPLAN.dcm")
    assert not errors, errors
    back = read_rtplan(out / "RTPLAN.dcm", rev.frame_of_reference_uid)
    original = sop_instance_uid_of(case["root"] / "plan" / "RTPLAN.dcm")
    assert back.extra["referenced_rtplans"] == [{"sop_instance_uid": original, "relationship": "PREDECESSOR"}]
    assert back.extra["revision"] == 1 and back.extra["based_on_sop_instance_uid"] == original
    assert [s.id for s in back.seeds] == [s.id for s in rev.seeds]
    assert np.abs(back.seed_positions_mm() - rev.seed_positions_mm()).max() < 0.01
    assert sorted(n.id for n in back.needles) == sorted(n.id for n in rev.needles)  # those without seeds too
    for b in rev.needles:
        a = back.needle(b.id)
        assert a.hole == b.hole
        assert np.linalg.norm(a.entry_mm - b.entry_mm) < 0.01 and np.linalg.norm(a.tip_mm - b.tip_mm) < 0.01


def test_deliver_takes_the_revision(case, replanned, tmp_path):
    _, out, _, rev = replanned
    journal = tmp_path / "run" / "session.jsonl"
    rc = main(["deliver", "--plan", str(out / "plan.json"), "--device", "sgpsim://?seeds=60", "--journal",
               str(journal), "--simulate-operator"])
    assert rc == 0
    delivered = json.loads((journal.parent / "delivery.json").read_text())
    assert delivered["released"] == len(rev.seeds) and delivered["reconciled"]
    depth = {s.id: rev.needle(s.needle_id).depth_of(s.position_mm) for s in rev.seeds}
    for s in delivered["seeds"]:
        assert abs(s["depth_mm"] - depth[s["seed_id"]]) <= 0.05  # the depth from the hole, as the device got it


@pytest.mark.parametrize("problem", ["another_plan", "none_found", "partial_check", "not_json", "other_frame",
                                     "no_structures", "no_rtplan", "max_seeds_0"])
def test_bad_inputs_exit_2_and_leave_out_untouched(case, tmp_path, capsys, problem):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("an earlier run")
    over = {}
    check = json.loads(json.dumps(case["check"]))
    if problem == "another_plan":
        for n in check["needles"]:
            n["planned_tip_mm"] = (np.asarray(n["planned_tip_mm"]) + [3.0, -2.0, 0.0]).tolist()
    elif problem == "none_found":
        for n in check["needles"]:
            n.update(found=False, tip_mm=None, axis=None)
    elif problem == "partial_check":
        check["needles"] = check["needles"][:4]
    if problem in ("another_plan", "none_found", "partial_check"):
        (tmp_path / "needles.json").write_text(json.dumps(check))
        over["--needles"] = tmp_path / "needles.json"
    elif problem == "not_json":
        (tmp_path / "needles.json").write_text("{ not json")
        over["--needles"] = tmp_path / "needles.json"
    elif problem == "other_frame":
        d = json.loads(case["plan_json"].read_text())
        d["frame_of_reference_uid"] = "1.2.826.0.1.3680043.9.9999.1"
        (tmp_path / "plan.json").write_text(json.dumps(d))
        shutil.copy(case["root"] / "plan" / "RTPLAN.dcm", tmp_path / "RTPLAN.dcm")
        over["--plan"] = tmp_path / "plan.json"
    elif problem in ("no_structures", "no_rtplan"):
        shutil.copy(case["plan_json"], tmp_path / "plan.json")
        keep = "RTPLAN.dcm" if problem == "no_structures" else "RTSTRUCT.dcm"
        shutil.copy(case["root"] / "plan" / keep, tmp_path / keep)
        over["--plan"] = tmp_path / "plan.json"
    elif problem == "max_seeds_0":
        over["--max-seeds"] = 0
    rc = main(_args(case, out, **over))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    expect = {"another_plan": "another plan", "none_found": "none of the plan's", "partial_check": "all needles",
              "not_json": "not JSON", "other_frame": "frame of reference", "no_structures": "CTV",
              "no_rtplan": "RT Plan not found", "max_seeds_0": "--max-seeds"}[problem]
    assert expect in err, err
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]
    assert not list(tmp_path.glob(".out.partial-*"))



def test_rehearsal_delivers_the_revision_when_it_helps(case, tmp_path):
    """The rehearsal's re-plan step (navigator/rehearsal/driver.py) on these needles: the real command, its
    revision chosen because its predicted D90 beats the loading as placed; the report shows the four columns."""
    from navigator.rehearsal.driver import Rehearsal, RehearsalOptions
    from navigator.report.pages.rehearsal import metrics_table, replan_section

    r = Rehearsal(RehearsalOptions(out=tmp_path / "rehearsal"))
    shutil.copytree(case["root"] / "plan", r.out / "plan")
    r.case = {"ct_dir": str(case["ct"])}
    r.plan_obj = Plan.load(r.out / "plan" / "plan.json")
    scan = tmp_path / "scan"
    scan.mkdir()
    shutil.copy(case["needles_json"], scan / "needles.json")
    step = r.replan(r.out / "plan" / "plan.json", {"all": [{"dir": str(scan)}]})
    assert step["used"] is True and step["d90_gain_gy"] >= 1.0 and "revision is delivered" in step["reason"]
    assert Path(step["plan_json"]) == r.out / "replan" / "plan.json"
    assert step["metrics_replan"]["D90_gy"] > step["metrics_as_placed"]["D90_gy"]
    result = {"preplan_metrics": r.plan_obj.metrics, "postimplant_metrics": step["metrics_replan"],
              "final_metrics": step["metrics_replan"], "seeds_planned": step["seeds"], "seeds_released": step["seeds"],
              "supplementary_seeds": 0, "replan": step}
    table = metrics_table(result)
    assert "re-plan (delivered)" in table and table.count("<th>") == 5
    section = replan_section(result, json.loads((r.out / "replan" / "replan.json").read_text()))
    assert "revision is delivered" in section and "as placed" in section
