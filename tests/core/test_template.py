"""Guide template geometry: hole ids, 5 mm pitch, hole <-> LPS, placement and serialisation."""

import numpy as np
import pytest

from navigator.errors import PlanError
from navigator.core.template import GuideTemplate, hole_id, parse_hole


def _oblique_template(**kw):
    # a template tilted in all three LPS axes, with a non-zero origin, so an axis mix-up fails loudly
    a, b = np.deg2rad(30.0), np.deg2rad(-20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = rz @ rx
    return GuideTemplate(origin_mm=[12.5, -40.0, 310.0], row_dir=m[:, 0], col_dir=m[:, 1], normal_lps=m[:, 2],
                         n_rows=13, n_cols=17, **kw)


def test_hole_ids_round_trip_and_format():
    assert hole_id(0, 0) == "A1"
    assert hole_id(2, 11) == "C12"
    assert hole_id(25, 98) == "Z99"
    for r in (0, 5, 25):
        for c in (0, 9, 98):
            assert parse_hole(hole_id(r, c)) == (r, c)
    assert parse_hole(" c7 ") == (2, 6)


@pytest.mark.parametrize("bad", ["", "A", "A0", "1A", "AA1", "A100", "A-1", "Ä1"])
def test_bad_hole_ids_are_refused(bad):
    with pytest.raises(PlanError):
        parse_hole(bad)


def test_pitch_and_directions_in_lps():
    t = _oblique_template()
    a1, a2, b1 = t.hole_to_lps("A1"), t.hole_to_lps("A2"), t.hole_to_lps("B1")
    assert np.allclose(a1, [12.5, -40.0, 310.0])
    assert np.linalg.norm(a2 - a1) == pytest.approx(5.0)
    assert np.linalg.norm(b1 - a1) == pytest.approx(5.0)
    assert np.allclose((a2 - a1) / 5.0, t.col_dir)
    assert np.allclose((b1 - a1) / 5.0, t.row_dir)
    # every hole lies in the template plane; needles run along the normal
    pts = np.array([t.hole_to_lps(h) for h in t.holes()])
    assert len(pts) == 13 * 17
    assert np.allclose((pts - a1) @ t.normal_lps, 0.0, atol=1e-9)
    p = t.needle_point("F9", 42.0)
    assert np.allclose(p - t.hole_to_lps("F9"), 42.0 * t.normal_lps)


def test_hole_outside_template_refused():
    t = _oblique_template()
    with pytest.raises(PlanError, match="outside"):
        t.hole_to_lps("N1")  # 14th row of a 13-row template
    with pytest.raises(PlanError):
        t.hole_to_lps("A18")


def test_nearest_hole_from_points_along_needles():
    t = _oblique_template()
    rng = np.random.default_rng(3)
    for h in ["A1", "C5", "M17", "G9"]:
        depth = rng.uniform(10, 120)
        off = rng.normal(size=3)
        off -= off.dot(t.normal_lps) * t.normal_lps
        off *= 1.2 / np.linalg.norm(off)  # 1.2 mm off the needle line, less than half the pitch
        got, dist = t.nearest_hole(t.needle_point(h, depth) + off)
        assert got == h
        assert dist == pytest.approx(1.2, abs=1e-9)
    rc = t.lps_to_rc(t.needle_point("D4", 33.0))
    assert np.allclose(rc, [3, 3, 33.0])


def test_axes_must_be_orthonormal():
    with pytest.raises(PlanError):
        GuideTemplate(origin_mm=[0, 0, 0], row_dir=[1, 0, 0], col_dir=[1, 1, 0], normal_lps=[0, 0, 1])
    with pytest.raises(PlanError):
        GuideTemplate(origin_mm=[0, 0, 0], row_dir=[1, 0, 0], col_dir=[0, 1, 0], normal_lps=[0, 0, 1], n_rows=27)


def test_covering_places_holes_over_the_box_and_turns_for_long_targets():
    n = np.array([0.0, 1.0, 0.0])  # anterior approach: needles go posterior (+y)
    t = GuideTemplate.covering(n, [0, 0, -1], (-20.0, -12.0), (22.0, 17.0), plane_mm=-95.0)
    assert np.allclose(t.normal_lps, n)
    pts = np.array([t.hole_to_lps(h) for h in t.holes()])
    assert np.allclose(pts[:, 1], -95.0)
    r, c = np.array([0, 0, -1.0]), np.cross(n, [0, 0, -1.0])
    assert (pts @ r).min() <= -20 and (pts @ r).max() >= 22
    assert (pts @ c).min() <= -12 and (pts @ c).max() >= 17
    # 170 mm long along the rows: more than 26 rows; the template turns so the long side gets the columns
    t2 = GuideTemplate.covering(n, [0, 0, -1], (-85.0, -20.0), (85.0, 25.0), plane_mm=-95.0)
    assert t2.n_rows <= 26 and t2.n_cols >= 35
    pts2 = np.array([t2.hole_to_lps(h) for h in t2.holes()])
    assert (pts2 @ r).min() <= -85 and (pts2 @ r).max() >= 85
    with pytest.raises(PlanError, match="template"):
        GuideTemplate.covering(n, [0, 0, -1], (-200.0, -200.0), (200.0, 200.0), plane_mm=0.0)


def test_dict_round_trip():
    t = _oblique_template(number=2, name="neck template")
    d = t.to_dict()
    assert d["pitch_mm"] == 5.0 and d["rows"] == 13 and d["cols"] == 17 and d["hole_ids"] == "A1..M17"
    t2 = GuideTemplate.from_dict(d)
    for h in ["A1", "M17", "G3"]:
        assert np.allclose(t2.hole_to_lps(h), t.hole_to_lps(h), atol=1e-3)
    assert t2.number == 2 and t2.name == "neck template"
    with pytest.raises(PlanError):
        GuideTemplate.from_dict({"rows": 3})
