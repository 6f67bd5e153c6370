"""The synthetic cohort generator: reproducible patients, seeds spaced as real implants space them (so a seed
finder can tell them apart), the true D90 placed where the design says, the outcome files consistent with the
truth (tests/cohort/conftest.py's cohort)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from simulators.cohort import CohortSpec, make_study


def test_a_patient_is_reproducible_and_its_seeds_apart():
    spec = CohortSpec(patients=3, seed=9, n_slices=20, matrix=96)
    a, b = make_study(spec, 1), make_study(spec, 1)
    assert a.d90_gy == b.d90_gy and a.sk_u == b.sk_u and np.array_equal(a.seeds_pre_mm, b.seeds_pre_mm)
    assert make_study(spec, 2).d90_gy != a.d90_gy
    d = np.linalg.norm(a.seeds_pre_mm[:, None] - a.seeds_pre_mm[None], axis=2) + np.eye(len(a.seeds_pre_mm)) * 1e3
    assert d.min() >= min(spec.needle_pitch_mm, spec.seed_pitch_mm) - 1e-6
    assert a.seeds_designed >= len(a.seeds_pre_mm) >= 1
    lo, hi = spec.d90_range
    if a.has_plan and spec.sk_range_u[0] < a.sk_u < spec.sk_range_u[1]:
        assert a.d90_gy == pytest.approx(a.extra["d90_drawn_gy"], rel=1e-3)    # strength (4 decimals) gives it
    assert 0.3 * lo * spec.cutoff_d90_gy < a.d90_gy < 2 * hi * spec.cutoff_d90_gy


def test_outcomes_and_truth_agree(cohort):
    truth = cohort.truth
    rows = {r["patient_id"]: r for r in csv.DictReader(cohort.outcomes_path.open())}
    assert len(rows) == len(truth["patients"]) + truth["orphan_outcomes"]
    for p in truth["patients"]:
        r = rows[p["patient_id"]]
        assert int(r["response"]) == p["response"] and int(r["event"]) == p["event"]
        assert float(r["time_months"]) == pytest.approx(p["time_months"], abs=0.01)
        assert p["p_response"] == pytest.approx(1 / (1 + np.exp(-(p["d90_gy"] - 100.0) / 5.0)), abs=1e-3)
    assert [p["broken"] for p in truth["patients"]][-2:] == ["truncated_ct", "no_target"]
    assert cohort.command_options()[:2] == ["--seed-model", "6711"]
