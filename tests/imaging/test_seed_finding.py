"""Seed finding on synthetic post-implant scans rendered by the phantom scanner (partial volume over the
slice, blur, blooming, metal streaks, noise, 12-bit clipping) with known seeds, touching clusters included.

Tolerances: the centre goal is 0.5 mm. With thin slices every centre must be within it. With 5 mm slices and
the phantom's box slice profile, a seed lying inside one slice gives the same image wherever it sits in that
slice, so z is known only to within +-(5 - 0.8)/2 mm: there the in-plane error is held to 0.5 mm and z to
half a slice.
"""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from navigator.errors import InputError
from navigator.core.volume import Volume
from navigator.imaging.seed_finding import SeedFindingSettings, find_seeds
from simulators.phantoms import ScannerModel, render_seeds


def _background(shape_kji, spacing, origin, rng, direction=None):
    arr = (40.0 + rng.normal(0.0, 12.0, shape_kji)).astype(np.float32)
    return Volume(arr, origin, spacing, direction=np.eye(3) if direction is None else direction,
                  frame_of_reference_uid="1.2.826.0.1.3680043.2.1125.1", series_uid="1.2.3.4", patient_id="P1",
                  meta={"slice_thickness_mm": float(spacing[2])})


def _implant(rng, centre, n_needles=14, per=6, pitch=10.0, step=6.5, direction=(0.25, 0.9, 0.35)):
    """Seeds on parallel needles (6.5 mm apart along each), plus clusters: end-to-end pairs (4.6 mm apart),
    side-by-side pairs (0.9 mm apart) and a triple, all touching after the blur."""
    d = np.asarray(direction, float)
    d /= np.linalg.norm(d)
    u = np.cross(d, [0, 0, 1.0])
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    pos, axes = [], []
    g = int(np.ceil(np.sqrt(n_needles)))
    for q in range(n_needles):
        base = centre + ((q // g) - g / 2) * pitch * u + ((q % g) - g / 2) * pitch * v
        for s in range(per):
            pos.append(base + (s - per / 2) * step * d + rng.normal(0, 0.3, 3))
            axes.append(d)
    lone = [centre + 40 * u + k * 12 * v for k in range(-3, 4)]
    clusters = []
    for k, c in enumerate(lone):
        if k < 3:      # end to end along the needle
            clusters.append([(c - 2.3 * d, d), (c + 2.3 * d, d)])
        elif k < 5:    # side by side
            clusters.append([(c - 0.45 * u, d), (c + 0.45 * u, d)])
        else:          # a triple: two end to end and one beside them
            clusters.append([(c - 2.3 * d, d), (c + 2.3 * d, d), (c + 0.9 * u, d)])
    for cl in clusters:
        for p, a in cl:
            pos.append(p)
            axes.append(a)
    return np.array(pos), np.array(axes)


def _match(truth, found):
    d = np.linalg.norm(truth[:, None, :] - found[None, :, :], axis=2)
    r, c = linear_sum_assignment(d)
    return r, c, d[r, c]


@pytest.fixture(scope="module")
def thin_scan():
    rng = np.random.default_rng(11)
    centre = np.array([-20.0, 35.0, -140.0])
    pos, axes = _implant(rng, centre)
    assert len(pos) == 100
    ct = _background((64, 160, 150), (0.8, 0.7, 1.25), centre - np.array([60.0, 56.0, 40.0]), rng)
    return render_seeds(ct, pos, axes, rng, ScannerModel()), pos, axes


def test_thin_slices_all_seeds_found_within_half_a_millimetre(thin_scan):
    scan, pos, axes = thin_scan
    res = find_seeds(scan, expected=len(pos), planned_mm=pos, planned_axes=axes)
    assert len(res.seeds) == len(pos)           # >= 99.5 % found and <= 1 false per 100: exact here
    r, c, err = _match(pos, res.positions_mm)
    assert (err < 0.5).all(), f"centre errors: max {err.max():.2f} mm"
    assert err.mean() < 0.25
    cos = np.abs((axes[r] * res.axes[c]).sum(1))
    assert np.median(np.degrees(np.arccos(np.clip(cos, 0, 1)))) < 10.0
    assert res.migrated == [] and res.missing == 0 and res.unmatched_planned == []
    # the touching clusters were split into the right number of seeds
    blob_sizes = np.bincount([s.blob for s in res.seeds])
    assert (blob_sizes >= 2).sum() >= 7


def test_a_ledger_count_above_the_seeds_in_the_scan_leaves_them_missing_and_splits_no_single_seed():
    """Five seeds of the ledger are not in the scan (lost, or outside it), and four single seeds carry about 1.4
    seeds' worth of excess intensity (as clipped seeds at some angles to the slices do in the bench's neck phantom:
    singles from 0.8 to 1.5). The expected count must not split those singles into pairs 1 mm apart to reach the
    ledger: the five are reported missing and every seed found is a real one."""
    from simulators.phantoms.scanner import add_metal
    from simulators.phantoms.seeds import SEED_HU, seed_occupancy

    rng = np.random.default_rng(21)
    centre = np.array([-20.0, 35.0, -140.0])
    d = np.array([0.25, 0.9, 0.35]) / np.linalg.norm([0.25, 0.9, 0.35])
    pos = np.array([centre + np.array([(q // 4 - 1.5) * 12.0, (q % 4 - 1.5) * 12.0, 0.0]) + (k - 1.5) * 7.0 * d
                    for q in range(16) for k in range(4)])        # 16 needles, 4 seeds 7 mm apart on each
    axes = np.repeat(d[None], len(pos), axis=0)
    heavy, gone = np.zeros(len(pos), bool), np.zeros(len(pos), bool)
    heavy[[5, 22, 39, 56]] = True
    gone[[1, 18, 35, 48, 61]] = True                             # one seed from each of five needles
    ct = _background((56, 170, 170), (0.5, 0.5, 1.0), centre - np.array([42.0, 42.0, 28.0]), rng)
    light, bright = seed_occupancy(ct, pos[~gone & ~heavy], axes[~gone & ~heavy]), seed_occupancy(ct, pos[heavy],
                                                                                                   axes[heavy])
    scan = ct.with_array(add_metal(ct, (light + 1.9 * bright) * np.float32(SEED_HU), light + bright, rng,
                                   ScannerModel()).astype(np.float32))
    res = find_seeds(scan, expected=len(pos), planned_mm=pos, planned_axes=axes)
    found = res.positions_mm
    nearest = np.sort(np.linalg.norm(found[:, None] - found[None], axis=2), axis=1)[:, 1]
    assert nearest.min() > 5.0, f"two seeds found {nearest.min():.1f} mm apart: a single seed split in two"
    assert len(res.seeds) == (~gone).sum() and res.missing == 5, res.warnings
    _, _, err = _match(pos[~gone], found)
    assert err.max() < 0.5
    assert any("expected" in w for w in res.warnings)


def test_without_prior_the_count_comes_from_the_image(thin_scan):
    scan, pos, _ = thin_scan
    res = find_seeds(scan)
    assert len(res.seeds) == len(pos)
    _, _, err = _match(pos, res.positions_mm)
    assert err.max() < 0.5


def test_five_mm_slices_count_and_in_plane_position():
    rng = np.random.default_rng(12)
    centre = np.array([10.0, -5.0, 60.0])
    pos, axes = _implant(rng, centre, n_needles=9, per=5, direction=(0.9, 0.3, 0.3))
    ct = _background((24, 130, 140), (0.8, 0.8, 5.0), centre - np.array([56.0, 52.0, 60.0]), rng)
    scan = render_seeds(ct, pos, axes, rng, ScannerModel())
    res = find_seeds(scan, expected=len(pos), planned_mm=pos, planned_axes=axes)
    assert len(res.seeds) == len(pos)
    r, c, err = _match(pos, res.positions_mm)
    dxy = np.linalg.norm((res.positions_mm[c] - pos[r])[:, :2], axis=1)
    dz = np.abs(res.positions_mm[c, 2] - pos[r, 2])
    assert np.percentile(dxy, 90) < 0.5 and np.median(dxy) < 0.3
    assert np.percentile(dz, 90) < 2.6          # half a 5 mm slice: the box profile's own limit


def test_seeds_along_thick_slices_take_the_needle_axis():
    rng = np.random.default_rng(13)
    centre = np.array([0.0, 0.0, 0.0])
    d = np.array([0.05, 0.02, 1.0]) / np.linalg.norm([0.05, 0.02, 1.0])
    pos = np.array([centre + np.array([x, y, 0.0]) for x in (-12, 0, 12) for y in (-12, 12)])
    axes = np.repeat(d[None], len(pos), axis=0)
    ct = _background((16, 80, 80), (0.8, 0.8, 5.0), centre - np.array([32.0, 32.0, 40.0]), rng)
    scan = render_seeds(ct, pos, axes, rng, ScannerModel())
    res = find_seeds(scan, expected=len(pos), planned_mm=pos, planned_axes=axes)
    assert len(res.seeds) == len(pos)
    assert all(s.axis_source == "needle" for s in res.seeds)
    assert np.allclose(np.abs(res.axes @ d), 1.0, atol=1e-6)


def test_oblique_feet_first_volume_reports_lps(thin_scan):
    """Flip the volume's i and k axes (feet-first-like direction): the seeds must come out at the same LPS."""
    scan, pos, _ = thin_scan
    flipped = Volume(scan.array[::-1, :, ::-1].copy(),
                     scan.ijk_to_lps(np.array(scan.shape_ijk) * [1, 0, 1] - [1, 0, 1]),
                     scan.spacing_mm, direction=np.diag([-1.0, 1.0, -1.0]), meta=dict(scan.meta))
    res = find_seeds(flipped, expected=len(pos))
    _, _, err = _match(pos, res.positions_mm)
    assert len(res.seeds) == len(pos) and err.max() < 0.5


def test_migrated_and_missing_seeds_are_reported(thin_scan):
    scan, pos, axes = thin_scan
    planned = pos.copy()
    planned[97:100] += np.array([0.0, 0.0, 30.0])   # the plan had the lone triple 30 mm away: it migrated
    res = find_seeds(scan, expected=len(planned) + 1, planned_mm=planned, planned_axes=axes)
    assert res.missing == 1                        # one more released than found
    assert len(res.migrated) == 3 and all(m["distance_to_plan_mm"] > 10 for m in res.migrated)
    assert set(res.unmatched_planned) == {97, 98, 99}
    assert any("migration" in w for w in res.warnings)


def test_scan_without_seeds_is_refused():
    rng = np.random.default_rng(14)
    ct = _background((10, 40, 40), (0.8, 0.8, 2.0), (0, 0, 0), rng)
    with pytest.raises(InputError, match="no seed"):
        find_seeds(ct, expected=20)


def test_far_more_blobs_than_expected_is_a_warning(thin_scan):
    scan, pos, _ = thin_scan
    res = find_seeds(scan, expected=30)
    assert len(res.seeds) >= 90
    assert any("far more than delivered" in w for w in res.warnings)


def test_bone_is_not_counted_as_seeds():
    rng = np.random.default_rng(15)
    ct = _background((30, 90, 90), (0.8, 0.8, 1.25), (-36.0, -36.0, -18.0), rng)
    ct.array[:, 70:84, 10:80] = 1100.0             # a slab of cortical bone
    pos = np.array([[-10.0, -10.0, 0.0], [10.0, -10.0, 2.0], [0.0, 5.0, -3.0]])
    scan = render_seeds(ct, pos, [1.0, 0.2, 0.1], rng, ScannerModel(streaks=False))
    res = find_seeds(scan, expected=3, settings=SeedFindingSettings())
    assert len(res.seeds) == 3
    _, _, err = _match(pos, res.positions_mm)
    assert err.max() < 0.5


def test_five_mm_slices_neighbouring_needles_in_one_blob_keep_their_slices():
    """Needles 10 mm apart along an oblique direction fuse across 5 mm slices into one blob whose seeds share
    an in-plane footprint off-centre; the slice-profile z fit must fit them jointly and not slide a seed onto
    its neighbour's slice. Detection as in bench/bench_seed_finding.py: < 1.5 mm in plane, <= T/2 + 0.5 mm in z
    (the box profile's own limit). Before the joint fit was widened: 91 of 100 here."""
    rng = np.random.default_rng(21)
    centre = np.array([-20.0, 35.0, -140.0])
    pos, axes = _implant(rng, centre)
    ct = _background((18, 160, 150), (0.8, 0.7, 5.0), centre - np.array([60.0, 56.0, 45.0]), rng)
    scan = render_seeds(ct, pos, axes, rng, ScannerModel())
    res = find_seeds(scan, expected=len(pos), planned_mm=pos + rng.normal(0, 2.0, pos.shape), planned_axes=axes)
    assert len(res.seeds) == len(pos)
    r, c, _ = _match(pos, res.positions_mm)
    dd = res.positions_mm[c] - pos[r]
    ok = (np.linalg.norm(dd[:, :2], axis=1) < 1.5) & (np.abs(dd[:, 2]) <= 5.0 / 2 + 0.5)
    assert ok.sum() >= 99, f"{ok.sum()} of {len(pos)} seeds found"


@pytest.mark.parametrize("scanner", ["vendor_b", "vendor_d"])
def test_a_cluster_of_seeds_among_bone_on_thick_slices(scanner):
    """Crossing needles leave all 8 seeds in one cluster; on 5 mm slices their peaks (600-1200 HU) are no
    brighter than the vertebrae. The blobs near the planned seeds measure one seed (issue #12: the finder took
    8 pieces of bone instead, 0 of 8 seeds found)."""
    from simulators.phantoms import (NeedleErrorModel, draw_needles, make_patient, needle_layout, postimplant_scan,
                                     seeds_along)

    patient = make_patient("neck", 3, matrix=(200, 200), n_slices=44)
    rng = np.random.default_rng(7)
    planned_needles = needle_layout(patient, "crossing", 4)
    placed = [(d.entry_mm, d.tip_mm) for d in draw_needles(planned_needles, NeedleErrorModel(), rng)]
    seeds, axes = seeds_along(patient, placed, 2)
    planned, planned_axes = seeds_along(patient, planned_needles, 2)   # where the plan put them
    post = postimplant_scan(patient, seeds, axes, np.eye(4), rng=rng, slice_mm=5.0, length_mm=80.0,
                            scanner=scanner, pixel_mm=1.0 if scanner == "vendor_d" else 0.9, matrix=(120, 120))
    truth = np.array(post.meta["truth"]["seeds_mm"])
    res = find_seeds(post, expected=len(truth), planned_mm=planned, planned_axes=planned_axes)
    from scipy.optimize import linear_sum_assignment

    assert len(res.seeds) == len(truth)
    d = np.linalg.norm(res.positions_mm[:, None] - truth[None], axis=2)
    rows, cols = linear_sum_assignment(d)
    diff = res.positions_mm[rows] - truth[cols]
    # in the slice plane to within a seed's width; through the 5 mm slices, where two seeds 3 mm apart share a
    # slice, to within one slice (the bench reports this z as not resolvable: RMS 1.2 mm at best)
    assert np.linalg.norm(diff[:, :2], axis=1).max() < 1.5, diff
    assert np.abs(diff[:, 2]).max() < 5.0, diff


def test_a_wire_beside_the_seeds_is_named_not_counted():
    """A bright object of many seeds' worth of metal (a wire, a clip chain) is left out with a warning; the
    seeds beside it are found (it once raised: blobs were compared with ==, which numpy arrays refuse)."""
    rng = np.random.default_rng(21)
    centre = np.array([0.0, 0.0, 0.0])
    pos = np.array([centre + [x, y, 0.0] for x in (-10, 0, 10) for y in (-10, 10)])
    axes = np.repeat(np.array([[0.0, 0.0, 1.0]]), len(pos), axis=0)
    ct = _background((30, 80, 80), (0.8, 0.8, 1.25), centre - np.array([32.0, 32.0, 18.0]), rng)
    scan = render_seeds(ct, pos, axes, rng, ScannerModel())
    k0, j0, i0 = 8, 60, 10
    scan.array[k0:k0 + 14, j0:j0 + 2, i0:i0 + 50] = 3071.0   # a wire 40 mm long, 1.6 mm thick
    res = find_seeds(scan, expected=len(pos))
    _, _, err = _match(pos, res.positions_mm)
    assert len(res.seeds) == len(pos) and err.max() < 0.6
    assert any("not counted as seeds" in w for w in res.warnings)
