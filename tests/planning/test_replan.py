"""Intraoperative re-planning (issue #15) on a synthetic neck patient: a real pre-plan (``make_plan``), needles
placed with known errors (two not found, the others shifted, tilted and inserted too shallow or deep) and seen
through a known patient motion, as ``navigator needles`` reports them.

Checked against the truth and against tools independent of the re-plan: the needles mapped back equal the true
needles; the pre-plan's loading carried on them misses the prescription and the re-plan reaches it (D90 by the
reference TG-43 point dose at the CTV's voxel centres); every seed on a found needle between its entry and tip,
>= 5 mm apart, >= 10 mm below the skin (the phantom's own BODY mask), within the cartridge and the OAR limits;
checks of another plan, partial checks and checks without a found needle are refused.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from navigator.anatomy.structures import mask_to_contours
from navigator.core.structure import Structure
from navigator.core.transform import RigidTransform
from navigator.errors import InputError
from navigator.physics import tg43
from navigator.physics.dose import dose_at_points
from navigator.planning.as_found import carried_loading, needles_as_found
from navigator.planning.exchange import ExchangeOptions, exchange_loading
from navigator.planning.optimize import PointPenalties
from navigator.planning.pipeline import make_plan
from navigator.planning.replan import ReplanOptions, replan
from navigator.planning.replan_field import ReplanAnatomy

RX = 120.0


@pytest.fixture(scope="module")
def case():
    from simulators.phantoms.cases import make_patient
    from simulators.phantoms.motion import random_rigid

    p = make_patient("neck", 11, matrix=(170, 170), n_slices=40)
    res = make_plan(p.ct, p.structures, "GTV", None, RX, "6711", tg43.sk_u_from(activity_mci=0.5))
    plan = res.plan
    ct = p.ct

    def structure(name, mask):
        return Structure(name, 1, mask_to_contours(mask, ct), frame_of_reference_uid=ct.frame_of_reference_uid)

    limits = {n: v["D0.1cc_gy"] for n, v in plan.extra["oar_limits"].items()}
    anatomy = ReplanAnatomy(ct=ct, ctv=structure("CTV", res.ctv_mask),
                            oars={n: structure(n, p.structures[n]) for n in limits}, oar_limits_gy=limits,
                            body=structure("BODY", p.structures["BODY"]), ctv_source="test")
    motion = RigidTransform(random_rigid(np.random.default_rng(3), 8.0, 4.0, center_mm=p.node_center_mm))
    return {"patient": p, "plan": plan, "res": res, "anatomy": anatomy, "motion": motion}


def _true_needles(plan, lost: set, seed: int = 5):
    """Where the needles really are (pre-plan frame): tilted about the entry, shifted across, too deep or too
    shallow; ``lost`` ids are not found. {id: (tip, axis)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in plan.needles:
        if n.id in lost:
            continue
        u = n.axis
        e1 = np.cross(u, [0.0, 0.0, 1.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(u, e1)
        tilt = np.radians(rng.normal(0, 1.5, 2))
        axis = u + tilt[0] * e1 + tilt[1] * e2
        axis /= np.linalg.norm(axis)
        shift = rng.normal(0, 1.2) * e1 + rng.normal(0, 1.2) * e2
        depth = n.length_mm + rng.normal(-1.0, 2.0)
        out[n.id] = (n.entry_mm + shift + depth * axis, axis)
    return out


def _check(plan, truth: dict, motion: RigidTransform, finder_sd_mm: float = 0.0) -> dict:
    """needles.json as `navigator needles` writes it: intraop coordinates, the registration pre-plan -> intraop."""
    rng = np.random.default_rng(7)
    needles = []
    for n in plan.needles:
        found = n.id in truth
        tip, axis = truth.get(n.id, (None, None))
        needles.append({"id": n.id, "found": found, "planned_tip_mm": motion.apply(n.tip_mm).tolist(),
                        "tip_mm": (motion.apply(tip) + rng.normal(0, finder_sd_mm, 3)).tolist() if found else None,
                        "axis": motion.rotate(axis).tolist() if found else None, "within_tolerance": False})
    return {"registration": {"fixed_to_moving": motion.to_list(), "metric": -0.5, "converged": True,
                             "fixed_frame_of_reference_uid": plan.frame_of_reference_uid},
            "tolerance_mm": 2.0, "needles": needles}


def _most_loaded(plan, k: int) -> set:
    return {n.id for n in sorted(plan.needles, key=lambda n: (-len(plan.seeds_of(n.id)), n.id))[:k]}


@pytest.fixture(scope="module")
def severe(case):
    """The most loaded needle not found, the others off: the pre-plan loading as placed misses Rx."""
    plan = case["plan"]
    truth = _true_needles(plan, _most_loaded(plan, 1), seed=6)
    found = needles_as_found(plan, _check(plan, truth, case["motion"]))
    return truth, found, replan(plan, found, case["anatomy"])


def test_needles_map_back_through_the_registration(case, severe):
    plan = case["plan"]
    truth, found, _ = severe
    assert sorted(found.dropped) == sorted(_most_loaded(plan, 1))
    assert found.ids == [n.id for n in plan.needles if n.id in truth]  # the plan's order, ids kept
    normal = np.asarray(plan.extra["template"]["normal_lps"], float)
    for n in found.needles:
        tip, axis = truth[n.id]
        planned = plan.needle(n.id)
        assert np.linalg.norm(n.tip_mm - tip) < 1e-4 and np.allclose(n.axis, axis, atol=1e-6)  # JSON: 8 digits
        assert n.hole == planned.hole
        # the entry is where the needle crosses the template plane: depth 0 of the applicator
        assert abs(np.dot(n.entry_mm - planned.entry_mm, normal)) < 1e-4
        assert np.linalg.norm(n.entry_mm - planned.entry_mm) < 6.0


def test_replan_reaches_the_prescription_the_loading_as_placed_misses(case, severe):
    plan, anatomy = case["plan"], case["anatomy"]
    _, found, r = severe
    assert r.metrics_as_placed["D90_gy"] < RX <= r.metrics_replan["D90_gy"]
    # independent: the reference TG-43 point dose (tg43 evaluated seed by seed) at the CTV's voxel centres
    ct = case["patient"].ct
    pts = ct.voxel_centers_lps(case["res"].ctv_mask)
    model = tg43.load_seed_model(plan.seed_model)
    for p, expect_ok in ((carried_loading(plan, found), False), (r.plan, True)):
        d90 = float(np.percentile(dose_at_points(pts, p.seed_positions_mm(), p.seed_axes(), p.seed_sk_u, model), 10))
        assert (d90 >= RX) == expect_ok, d90
    assert r.checks["D90_ge_rx"]["ok"] and all(v["ok"] for k, v in r.checks.items() if k.startswith("oar "))
    assert len(r.plan.seeds) <= len(plan.seeds) == r.max_seeds
    assert r.plan.extra["revision"] == 1
    assert r.to_json()["needles_used"] == found.ids
    print(f"D90 pre-plan {r.metrics_preplan['D90_gy']:.1f}, as placed {r.metrics_as_placed['D90_gy']:.1f}, "
          f"re-plan {r.metrics_replan['D90_gy']:.1f} Gy; {r.seconds:.2f} s")
    del anatomy


def test_every_seed_on_a_found_needle_spaced_and_deep_enough(case, severe):
    _, found, r = severe
    p = case["patient"]
    rev = r.plan
    by_id = {n.id: n for n in found.needles}
    assert {n.id for n in rev.needles} == set(by_id)
    for n in rev.needles:
        seeds = rev.seeds_of(n.id)
        depths = np.array([n.depth_of(s.position_mm) for s in seeds])
        for s, d in zip(seeds, depths):
            assert np.linalg.norm(s.position_mm - n.point_at_depth(d)) <= 0.5   # on the needle as found
            assert 0.0 < d <= n.length_mm - 5.0 + 1e-6                         # the deepest 5 mm short of the tip
        assert np.all(np.abs(np.diff(depths)) >= 5.0 - 1e-6)
        assert [s.id for s in seeds] == sorted(s.id for s in seeds)            # delivery order: deepest first
    # >= 10 mm below the skin, by the phantom's own body mask (an independent distance transform)
    body = p.structures["BODY"]
    sp = p.ct.spacing_mm[::-1]
    depth = ndimage.distance_transform_edt(np.pad(body, 1, constant_values=False), sampling=sp)[1:-1, 1:-1, 1:-1]
    ijk = np.rint(p.ct.lps_to_ijk(rev.seed_positions_mm())).astype(int)
    assert depth[ijk[:, 2], ijk[:, 1], ijk[:, 0]].min() >= 10.0 - 0.5 * sp.max()
    # no seed in an OAR
    for name in case["anatomy"].oars:
        assert not p.structures[name][ijk[:, 2], ijk[:, 1], ijk[:, 0]].any(), name


def test_a_smaller_cartridge_is_held(case, severe):
    plan = case["plan"]
    _, found, _ = severe
    r = replan(plan, found, case["anatomy"], ReplanOptions(max_seeds=30))
    assert len(r.plan.seeds) <= 30 and r.checks["seeds_within_cartridge"]["ok"]


def test_needles_as_planned_keep_the_plan(case):
    """Needles exactly where planned: the loading as placed is the pre-plan's, and the re-plan keeps the
    prescription (it may trade a little D90 for hot spots, but not below Rx)."""
    plan = case["plan"]
    truth = {n.id: (n.tip_mm, n.axis) for n in plan.needles}
    found = needles_as_found(plan, _check(plan, truth, case["motion"]))
    assert not found.dropped
    as_placed = carried_loading(plan, found)
    assert np.abs(as_placed.seed_positions_mm() - plan.seed_positions_mm()).max() < 1e-4  # JSON: 8 digits
    r = replan(plan, found, case["anatomy"])
    assert abs(r.metrics_as_placed["D90_gy"] - r.metrics_preplan["D90_gy"]) < 0.05
    assert r.metrics_replan["D90_gy"] >= RX and r.checks["all_ok"], r.checks


def test_checks_of_another_plan_or_without_needles_are_refused(case):
    plan, motion = case["plan"], case["motion"]
    truth = {n.id: (n.tip_mm, n.axis) for n in plan.needles}
    good = _check(plan, truth, motion)
    other = _check(plan, truth, motion)
    other["needles"][3]["planned_tip_mm"] = (np.asarray(other["needles"][3]["planned_tip_mm"]) + 4.0).tolist()
    with pytest.raises(InputError, match="another plan"):
        needles_as_found(plan, other)
    renamed = _check(plan, truth, motion)
    renamed["needles"][0]["id"] = "Z99"
    with pytest.raises(InputError, match="does not have"):
        needles_as_found(plan, renamed)
    partial = dict(good, needles=good["needles"][:5])
    with pytest.raises(InputError, match="all needles"):
        needles_as_found(plan, partial)
    with pytest.raises(InputError, match="frame of reference"):
        needles_as_found(plan, dict(good, registration=dict(good["registration"],
                                                            fixed_frame_of_reference_uid="1.2.3")))
    none = _check(plan, {}, motion)
    with pytest.raises(InputError, match="none of the plan's"):
        needles_as_found(plan, none)


def test_exchange_keeps_the_budget_and_the_spacing():
    """A small problem solved by brute force: the exchange search stays within the budget and the spacing and
    ends no worse than where it started; with one seed to place it finds the best place."""
    rng = np.random.default_rng(0)
    n, m = 12, 200
    a = rng.uniform(0.0, 40.0, (n, m)).astype(np.float32)
    pen = PointPenalties.uniform(m, under=60.0, w_step=1.0, w_under=2.0, over1=150.0, w_over1=0.3, weight=1.0 / m)
    needle = np.repeat(np.arange(3), 4)
    depth = np.tile(np.arange(4) * 2.5, 3)
    conflicts = (needle[:, None] == needle[None, :]) & (np.abs(depth[:, None] - depth[None, :]) < 5.0 - 1e-6)
    pos = np.column_stack([needle * 5.0, np.zeros(n), depth])
    x0 = np.zeros(n, bool)
    x0[[0, 1, 4, 5, 8]] = True  # too close on two needles, over a budget of 3
    res = exchange_loading(a, pen, conflicts, x0, 3, pos, ExchangeOptions(seed_cost=0.0))
    x = res.loading
    assert x.sum() <= 3 and not np.any(conflicts[np.ix_(x, x)] & ~np.eye(n, dtype=bool)[np.ix_(x, x)])

    def f(sel):
        d = a[list(sel)].sum(0) if sel else np.zeros(m)
        return float(np.sum(pen.w_step * (d < pen.under) + pen.w_under * np.maximum(pen.under - d, 0) / pen.under
                            + pen.w_over1 * np.maximum(d - pen.over1, 0) / pen.over1))

    one = exchange_loading(a, pen, conflicts, np.eye(n, dtype=bool)[0], 1, pos, ExchangeOptions(seed_cost=0.0))
    best = min(range(n), key=lambda j: f([j]))
    assert f(list(np.nonzero(one.loading)[0])) == pytest.approx(f([best]))
    feasible = [c for k in range(1, 4) for c in itertools.combinations(range(n), k)
                if not any(conflicts[i, j] for i, j in itertools.combinations(c, 2))]
    assert f(list(np.nonzero(x)[0])) <= min(f(c) for c in feasible) * 1.25  # near the optimum
