"""``navigator cohort`` end to end on a synthetic cohort with a known dose-response (tests/cohort/conftest.py):
a real 2-worker local Dask cluster recovers each study's delivered D90 (against the truth and against an
independent dose of the true seeds on the study's own contours) and the cut-off within its confidence
interval; broken studies are reported and the rest analysed; 1 worker, 2 workers and an existing cluster
(``dask scheduler`` + ``dask worker`` started here as processes on 127.0.0.1) give the same numbers; a bad
outcomes CSV exits 2 with a clear message before any cluster starts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from navigator.cli import main
from tests.conftest import external_dask_cluster

VOLATILE = {"seconds", "workers", "study_seconds_total", "discovery"}


def _args(cohort, out, *more) -> list[str]:
    return ["cohort", "--studies", str(cohort.studies_dir), "--outcomes", str(cohort.outcomes_path),
            *cohort.command_options(), "--bootstrap", "400", "--seed", "7", "--out", str(out), *more]


def _stable(result: dict) -> dict:
    """cohort.json without what may differ between runs (timings, the worker count, discovery time)."""
    out = {k: v for k, v in result.items() if k not in VOLATILE}
    out["studies"] = [{k: v for k, v in s.items() if k != "seconds"} for s in result["studies"]]
    return out


@pytest.fixture(scope="module")
def two_workers(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "out"
    rc = main(_args(cohort, out, "--workers", "2"))
    return rc, out


def _d90_of_true_seeds(cohort, patient: dict) -> float:
    """Independent check: TG-43 of the true seeds (truth.json) on the target of the study's own structure set,
    on a 0.5 mm grid (not the command's seeds, grid or code path)."""
    from navigator.anatomy.structures import structure_fraction
    from navigator.core.structure import get_structure
    from navigator.core.volume import grid_volume
    from navigator.io.dicom import load_ct_files, read_structure_set
    from navigator.physics import dvh, tg43
    from navigator.physics.dose import dose_on_grid

    ct = load_ct_files([cohort.studies_dir / f for f in patient["files"]["ct"]])
    target = get_structure(read_structure_set(cohort.studies_dir / patient["files"]["rtstruct"], ct=ct), "GTV")
    local = (np.concatenate(target.contours) - ct.origin_mm) @ ct.direction
    grid = grid_volume(local.min(0) - 8.0, local.max(0) + 8.0, 0.5, like=ct)
    dose = dose_on_grid(grid, np.array(patient["seeds_mm"]), np.array(patient["seed_axes"]), patient["sk_u"],
                        tg43.load_seed_model(patient["seed_model"]))
    return dvh.DVH.from_dose(dose, structure_fraction(target, grid), grid.voxel_volume_cc).d_pct(90.0)


def test_two_workers_recover_each_d90_and_the_cutoff(cohort, two_workers):
    rc, out = two_workers
    assert rc == 0
    r = json.loads((out / "cohort.json").read_text())
    assert r["workers"] == 2 and set(r) >= {"studies", "analysis", "workers", "seconds"}
    truth = cohort.truth
    by_uid = {s["study_uid"]: s for s in r["studies"]}
    assert len(r["studies"]) == len(truth["patients"]) == 10
    errors, seed_errors = [], []
    for p in truth["patients"]:
        s = by_uid[p["study_uid"]]
        assert s["patient_id"] == p["patient_id"]
        if p["broken"] == "truncated_ct":
            assert s["status"].startswith("error: ") and "truncated" in s["status"], s["status"]
            continue
        if p["broken"] == "no_target":
            assert s["status"].startswith("error: ") and "no structure named 'GTV'" in s["status"], s["status"]
            continue
        assert s["status"] == "ok", s["status"]
        assert s["seeds_found"] == p["seeds_implanted"]
        assert s["seed_data_from"] == ("RT Plan" if p["has_rt_plan"] else "options")
        assert s["seed_sk_u"] == pytest.approx(p["sk_u"], rel=1e-6)
        d90 = s["metrics"]["D90_gy"]
        errors.append(d90 / p["d90_gy"] - 1.0)
        seed_errors.append(d90 / _d90_of_true_seeds(cohort, p) - 1.0)
        assert set(s["metrics"]) >= {"ctv_cc", "D90_gy", "D100_gy", "V90_pct", "V100_pct", "V150_pct", "V200_pct",
                                     "HI", "oars"}
        assert s["metrics"]["oars"], "organs at risk near the node are evaluated"
    errors, seed_errors = np.abs(errors), np.abs(seed_errors)
    assert errors.max() < 0.06 and errors.mean() < 0.025, errors       # vs the analytic truth
    assert seed_errors.max() < 0.05 and seed_errors.mean() < 0.02, seed_errors   # vs the true seeds, same contours

    a = r["analysis"]
    assert a["endpoint"] == "response" and a["n"] == 8
    lo, hi = a["youden_cutoff_ci95_gy"]
    assert lo <= truth["cutoff_d90_gy"] <= hi and lo <= a["youden_cutoff_d90_gy"] <= hi
    assert a["roc_auc"] >= 0.9 and 0 <= a["sensitivity"] <= 1 and 0 <= a["specificity"] <= 1
    assert a["km"] is not None and len(a["km"]["groups"]) == 2 and a["km"]["logrank"] is not None
    assert a["cox"] is not None and a["cox"]["d90_per_10gy"] is not None
    assert set(a["metrics_roc"]) >= {"D100_gy", "V100_pct", "V150_pct"}
    text = " ".join(r["warnings"])
    assert "COH04-901" in text and "have no study" in text and "could not be analysed" in text

    rows = list(csv.DictReader((out / "cohort.csv").open()))
    assert len(rows) == 10 and sum(row["status"] == "ok" for row in rows) == 8
    assert sum(row["in_analysis"] == "1" for row in rows) == 8
    page = (out / "cohort.html").read_text()
    assert page.count("<img") == 3 and "Youden" in page and "truncated" in page


def test_one_worker_gives_the_same_numbers(cohort, two_workers, tmp_path):
    _, out2 = two_workers
    out1 = tmp_path / "one"
    assert main(_args(cohort, out1, "--workers", "1")) == 0
    one, two = (json.loads((o / "cohort.json").read_text()) for o in (out1, out2))
    assert one["workers"] == 1 and two["workers"] == 2
    assert _stable(one) == _stable(two)
    assert (out1 / "cohort.csv").read_text() == (out2 / "cohort.csv").read_text()


def test_existing_cluster_through_scheduler_gives_the_same_numbers(cohort, two_workers, tmp_path):
    _, out2 = two_workers
    with external_dask_cluster() as address:
        out = tmp_path / "scheduler"
        rc = main(_args(cohort, out, "--scheduler", address))
    assert rc == 0
    there, two = (json.loads((o / "cohort.json").read_text()) for o in (out, out2))
    assert there["workers"] == 1
    assert _stable(there) == _stable(two)


@pytest.mark.parametrize("text, says", [
    ("patient_id,outcome\nA,1\n", "lacks column(s) response"),
    ("patient_id,response\nCOH04-001,2\n", "response holds '2'; give 0 or 1"),
    ("patient_id,response,time_months\nCOH04-001,1,3\n", "time_months without event"),
    ("patient_id,response\nCOH04-001,1\nCOH04-001,0\n", "again (first on line 2)"),
])
def test_bad_outcomes_exit_2_before_any_cluster(cohort, tmp_path, capsys, text, says):
    bad = tmp_path / "outcomes.csv"
    bad.write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    (out / "cohort.json").write_text("{}")
    args = _args(cohort, out)
    args[args.index("--outcomes") + 1] = str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err and str(bad) in err and "Traceback" not in err
    assert (out / "cohort.json").read_text() == "{}"          # --out untouched


def test_no_study_and_no_seed_data_exit_2(cohort, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("nothing here")
    args = _args(cohort, tmp_path / "out")
    args[args.index("--studies") + 1] = str(empty)
    assert main(args) == 2
    assert "no DICOM study found" in capsys.readouterr().err
    args = _args(cohort, tmp_path / "out2")
    i = args.index("--seed-sk-u")
    del args[i:i + 2]
    assert main(args) == 2
    assert "--seed-model and the seed strength" in capsys.readouterr().err
