"""Needle deviation (tip error, lateral, depth, angle, tolerance), the D90 impact, and the advice wording.

Geometry is exact here (no image): a found needle is the planned one moved by a known error, in frames
with oblique axes so a sign or axis mix-up cannot hide.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from navigator.physics import tg43
from navigator.intraop.advice import HoleLocator, advise, direction_words
from navigator.intraop.deviation import DoseImpact, d90_gy, minimal_rotation, needle_deviation
from navigator.core.plan import Needle, Plan, PlannedSeed
from navigator.core.template import GuideTemplate


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _perp(u, a=(0.3, -0.7, 0.2)):
    w = np.cross(u, a)
    return w / np.linalg.norm(w)


ENTRY = np.array([12.0, -80.0, 33.0])
AXIS = _unit([0.2, 1.0, 0.35])
TIP = ENTRY + 70.0 * AXIS


def test_depth_sign_lateral_and_angle():
    w = _perp(AXIS)
    found_tip = TIP + 3.0 * AXIS + 1.5 * w  # 3 mm too deep, 1.5 mm sideways
    found_axis = minimal_rotation(AXIS, _unit(AXIS + 0.05 * w)) @ AXIS
    d = needle_deviation("N1", ENTRY, TIP, found_tip, found_axis, tolerance_mm=2.0)
    assert d.depth_mm == pytest.approx(3.0)
    assert d.lateral_mm == pytest.approx(1.5)
    assert d.tip_error_mm == pytest.approx(np.hypot(3.0, 1.5))
    assert d.angle_deg == pytest.approx(np.degrees(np.arctan(0.05)), abs=1e-9)
    np.testing.assert_allclose(d.lateral_vector_mm, 1.5 * w, atol=1e-12)
    assert not d.within_tolerance
    shallow = needle_deviation("N1", ENTRY, TIP, TIP - 1.0 * AXIS, AXIS)
    assert shallow.depth_mm == pytest.approx(-1.0) and shallow.within_tolerance
    j = shallow.to_json()
    for key in ("id", "found", "tip_mm", "planned_tip_mm", "tip_error_mm", "lateral_mm", "depth_mm", "angle_deg",
                "within_tolerance", "advice", "d90_change_gy"):
        assert key in j
    missing = needle_deviation("N2", ENTRY, TIP)
    assert not missing.found and not missing.within_tolerance
    assert missing.to_json()["tip_mm"] is None and missing.to_json()["tip_error_mm"] is None


@settings(max_examples=200, deadline=None)
@given(size=st.floats(0.0, 6.0), theta=st.floats(0, np.pi), phi=st.floats(0, 2 * np.pi))
def test_flagging_is_by_tip_error(size, theta, phi):
    """Every deviation of 2.5 mm or more is flagged, none under 1.5 mm is (tolerance 2 mm)."""
    e = size * np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
    d = needle_deviation("N", ENTRY, TIP, TIP + e, AXIS, tolerance_mm=2.0)
    assert d.tip_error_mm == pytest.approx(size, abs=1e-9)
    if size >= 2.5:
        assert not d.within_tolerance
    if size < 1.5:
        assert d.within_tolerance


def test_minimal_rotation():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = _unit(rng.normal(size=3)), _unit(rng.normal(size=3))
        r = minimal_rotation(a, b)
        np.testing.assert_allclose(r @ a, b, atol=1e-12)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(minimal_rotation(AXIS, -AXIS) @ AXIS, -AXIS, atol=1e-12)


def test_d90_of_samples():
    assert d90_gy(np.arange(1, 101, dtype=float)) == pytest.approx(10.9)
    assert np.isnan(d90_gy(np.array([])))


@pytest.fixture(scope="module")
def implant():
    """A 3 x 3 needle implant (10 mm apart) with 3 seeds each in a 20 mm sphere, a real TG-43 model."""
    model = tg43.load_seed_model("6711")
    u = np.array([0.0, 1.0, 0.0])
    needles, seeds = [], []
    for a in range(3):
        for b in range(3):
            tip = np.array([-10.0 + 10 * a, 15.0, -10.0 + 10 * b])
            entry = tip - 60.0 * u
            nid = f"N{3 * a + b + 1}"
            needles.append(Needle(nid, entry, tip, hole=f"{'ABC'[a]}{2 * b + 1}"))
            for k, depth in enumerate((-5.0, -12.0, -19.0)):
                seeds.append(PlannedSeed(f"S{len(seeds) + 1}", nid, tip + depth * u))
    g = np.arange(-14.0, 14.1, 2.0)
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    ctv = pts[np.linalg.norm(pts, axis=1) <= 14.0] + np.array([0.0, 3.0, 0.0])
    plan = Plan("1.2.3", "1.2.3.4", "GTV", 140.0, "6711", 0.6 * tg43.MCI_TO_U, needles, seeds)
    return plan, ctv, model


def test_dose_impact(implant):
    plan, ctv, model = implant
    impact = DoseImpact(ctv, plan.seed_positions_mm(), plan.seed_axes(), [s.needle_id for s in plan.seeds],
                        plan.seed_sk_u, model)
    n = plan.needle("N5")  # the central needle
    assert impact.planned_d90_gy > 50.0
    assert impact.d90_change_gy("N5", n.tip_mm, n.axis, n.tip_mm, n.axis) == pytest.approx(0.0, abs=1e-9)
    small = impact.d90_change_gy("N5", n.tip_mm, n.axis, n.tip_mm + [0.5, 0, 0], n.axis)
    large = impact.d90_change_gy("N5", n.tip_mm, n.axis, n.tip_mm + [0, 0, 0] + 15.0 * n.axis, n.axis)
    assert abs(small) < abs(large)
    assert large < 0  # seeds pushed 15 mm deep leave the CTV colder
    # the moved seeds keep their spacing and follow the found axis
    found_axis = _unit(n.axis + [0.1, 0, 0])
    pos, ax, sel = impact.moved_seeds("N5", n.tip_mm, n.axis, n.tip_mm + [1.0, 0, 0], found_axis)
    assert sel.sum() == 3
    np.testing.assert_allclose(np.linalg.norm(np.diff(pos, axis=0), axis=1), 7.0, atol=1e-9)
    np.testing.assert_allclose(ax, np.tile(found_axis, (3, 1)), atol=1e-12)
    moved_all = impact.all_moved_d90_gy({"N5": (n.tip_mm, n.axis, n.tip_mm + 15.0 * n.axis, n.axis)})
    assert moved_all == pytest.approx(impact.planned_d90_gy + large)


def test_advice_wording(implant):
    plan, _, _ = implant
    holes = HoleLocator(plan)  # no template in the plan: the lattice is fitted from the needles' holes
    assert holes.available
    n = plan.needle("N5")
    assert holes.nearest_hole(n.entry_mm) == "B3"
    ok = needle_deviation("N5", n.entry_mm, n.tip_mm, n.tip_mm + [0.5, 0, 0], n.axis)
    ok.d90_change_gy = -1.234
    assert advise(ok, holes, n.entry_mm, None, n.hole) == "accept (D90 -1.2 Gy)"
    deep = needle_deviation("N5", n.entry_mm, n.tip_mm, n.tip_mm + 3.4 * n.axis, n.axis)
    assert advise(deep, holes, n.entry_mm, None, n.hole).startswith("withdraw 3.5 mm")
    short = needle_deviation("N5", n.entry_mm, n.tip_mm, n.tip_mm - 2.6 * n.axis, n.axis)
    assert advise(short, holes, n.entry_mm, None, n.hole).startswith("advance 2.5 mm")
    # 6 mm toward patient left (+x): re-insert one hole to the right (-x: row A), angle reported
    side = needle_deviation("N5", n.entry_mm, n.tip_mm, n.tip_mm + [6.0, 0, 0], _unit(n.axis + [0.07, 0, 0]))
    text = advise(side, holes, n.entry_mm, side.lateral_vector_mm, n.hole)
    assert text.startswith("re-insert through hole A3"), text
    assert "patient right" in text and "angle 4.0°" in text
    small_side = needle_deviation("N5", n.entry_mm, n.tip_mm, n.tip_mm + [2.2, 0, 0], n.axis)
    assert "through the same hole B3" in advise(small_side, holes, n.entry_mm, small_side.lateral_vector_mm, n.hole)
    lost = needle_deviation("N5", n.entry_mm, n.tip_mm)
    assert advise(lost, holes, n.entry_mm, None, n.hole).startswith("not found") and "B3" in advise(lost, None,
                                                                                                  None, None, "B3")


def test_hole_locator_uses_the_plan_template():
    tpl = GuideTemplate(origin_mm=[0.0, -60.0, 0.0], row_dir=[1, 0, 0], col_dir=[0, 0, 1], normal_lps=[0, 1, 0],
                        n_rows=9, n_cols=9)
    plan = Plan("1", "2", "GTV", 140.0, "6711", 1.0, [], [], extra={"template": tpl.to_dict()})
    holes = HoleLocator(plan)
    assert holes.template is not None
    assert holes.nearest_hole([10.2, -60.0, 14.6]) == "C4"


def test_direction_words():
    assert direction_words([1.0, 0, 0]) == "patient left"
    assert direction_words([0, -2.0, 0]) == "anterior"
    assert direction_words([0, 1.0, -1.0]) in ("posterior and inferior", "inferior and posterior")
    assert direction_words([1.0, -1.0, 0.9]).count(" and ") == 1  # two directions at most
