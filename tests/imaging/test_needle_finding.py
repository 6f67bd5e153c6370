"""Needle finding in synthetic intraop CTs (simulators.phantoms): 18G steel needles with placement errors,
partial volume, PSF blur, blooming, metal streaks and the scanner's 3071 HU clip; truth in scan coordinates.

The planned needles are mapped into the scan with the phantom's exact motion, so these tests measure the
finding alone (registration has its own tests). Tip accuracy goal (issue #6): <= 0.7 mm.
"""

from __future__ import annotations

import numpy as np
import pytest

from navigator.imaging.needle_finding import NeedleFindingSettings, find_needles
from simulators.phantoms.cases import demo_implant, intraop_scan, make_patient
from simulators.phantoms.motion import apply_4x4, random_rigid, rotation_matrix
from simulators.phantoms.needles import NeedleErrorModel, draw_needles

TIP_GOAL_MM = 0.7


@pytest.fixture(scope="module")
def world():
    patient = make_patient("neck", 5, matrix=(170, 170), n_slices=40)
    needles, seeds, axes = demo_implant(patient, n_needles=20, spacing_mm=10.0)
    rng = np.random.default_rng(55)
    motion = random_rigid(rng, 12.0, 6.0, center_mm=patient.node_center_mm)
    draws = draw_needles(needles, NeedleErrorModel(), rng)
    actual = [(d.entry_mm, d.tip_mm) for d in draws]
    planned = [(f"N{k + 1:02d}", apply_4x4(motion, e), apply_4x4(motion, t)) for k, (e, t) in enumerate(needles)]
    return dict(patient=patient, needles=needles, seeds=seeds, axes=axes, motion=motion, actual=actual,
                planned=planned)


def _scan(world, needles, slice_mm=2.5, seed=0, **kw):
    return intraop_scan(world["patient"], needles, world["motion"], rng=np.random.default_rng(seed),
                        slice_mm=slice_mm, length_mm=70.0, **kw)


def _errors(search, truth_mm):
    """(3D tip errors, in-plane part, through-slice part) of every found needle against the scan's truth."""
    out = []
    for m, (e, t) in zip(search.matches, truth_mm):
        assert m.found is not None, f"{m.needle_id} not found"
        err = m.found.tip_mm - np.asarray(t)
        out.append((np.linalg.norm(err), np.linalg.norm(err[:2]), abs(err[2])))
    return np.array(out)


def test_tips_within_goal_on_thin_slices(world):
    scan = _scan(world, world["actual"], slice_mm=1.25, seed=1)
    res = find_needles(scan, world["planned"])
    err = _errors(res, scan.meta["truth"]["needles_mm"])
    assert len(res.unexpected) == 0
    assert err[:, 0].max() <= TIP_GOAL_MM, err[:, 0]
    assert not any(m.far_off_track for m in res.matches)


def test_tips_on_thick_slices(world):
    """2.5 mm slices: in the axial plane the goal holds; through the slice, a needle lying inside one slice
    leaves no trace of where in it (the box slice profile and the 3071 HU clip erase it), so that
    component is bounded by half a slice. This is physics, not the finder: rescan with thin slices."""
    scan = _scan(world, world["actual"], slice_mm=2.5, seed=2)
    res = find_needles(scan, world["planned"])
    err = _errors(res, scan.meta["truth"]["needles_mm"])
    assert err[:, 1].max() <= TIP_GOAL_MM, err[:, 1]
    assert err[:, 2].max() <= 0.5 * 2.5, err[:, 2]
    assert err[:, 0].mean() <= TIP_GOAL_MM
    assert res.seconds < 5.0  # a generous bound; bench/bench_needles.py measures it


def test_missing_needle_is_not_found_and_not_given_its_neighbour(world):
    # N08 sits inside the 5 x 4 lattice: neighbours 10 mm away on every side
    k = 7
    scan = _scan(world, [n for i, n in enumerate(world["actual"]) if i != k], seed=3)
    res = find_needles(scan, world["planned"])
    by_id = {m.needle_id: m for m in res.matches}
    assert by_id["N08"].found is None
    truth = scan.meta["truth"]["needles_mm"]
    others = [m for m in res.matches if m.needle_id != "N08"]
    for m, (_, t) in zip(others, truth):
        assert m.found is not None
        assert np.linalg.norm(m.found.tip_mm - np.asarray(t)) < 1.5, m.needle_id  # its own needle, not N08's
    assert res.unexpected == []


def test_needle_far_off_track_is_found_and_flagged_and_stray_metal_reported(world):
    """An edge needle tilted 12 degrees outward (its tip ~10 mm off track, away from the neighbours), seeds
    already in the scan (short metal, not needles), and a needle that is not in the plan."""
    actual = list(world["actual"])
    e, t = (np.asarray(v, float) for v in actual[0])
    planned_dirs = np.array([p[2] - p[1] for p in world["planned"]])
    centre = np.mean([n[1] for n in world["needles"]], axis=0)
    out = np.cross(t - e, [0, 0, 1.0])
    out *= np.sign(np.dot(out, np.asarray(world["needles"][0][1]) - centre)) / np.linalg.norm(out)
    axis = np.cross(t - e, out)
    rot = rotation_matrix(axis, 12.0)
    t_far = e + rot @ (t - e)
    if np.dot(t_far - t, out) < 0:
        t_far = e + rotation_matrix(axis, -12.0) @ (t - e)
    actual[0] = (e, t_far)
    scan = _scan(world, actual, seed=4, seeds_mm=world["seeds"][:6], seed_axes=world["axes"][:6])
    planned = world["planned"][:-1]  # the last needle is in the scan but not in this plan
    res = find_needles(scan, planned)
    assert len(planned_dirs) == 20
    m0 = res.matches[0]
    truth = scan.meta["truth"]["needles_mm"]
    assert m0.found is not None and m0.far_off_track
    assert np.linalg.norm(m0.found.tip_mm - np.asarray(truth[0][1])) < 1.5
    assert all(m.found is not None and not m.far_off_track for m in res.matches[1:])
    assert len(res.unexpected) == 1
    assert np.linalg.norm(res.unexpected[0].tip_mm - np.asarray(truth[-1][1])) < 1.5


def test_nothing_in_the_scan_finds_nothing(world):
    scan = _scan(world, [], seed=5)
    res = find_needles(scan, world["planned"], NeedleFindingSettings())
    assert all(m.found is None for m in res.matches)
    assert res.unexpected == []
