"""RT Structure Sets: the real IBSI GTVs, synthetic spheres written as RTSTRUCT with pydicom, masks, margins."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as MplPath
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from navigator.io.dicom import load_ct_series
from navigator.errors import StructureError
from navigator.core.volume import Volume, grid_volume
from navigator.anatomy.structures import expand_margin, mask_to_contours, mask_volume_cc, shrink_margin, structure_fraction, structure_mask
from navigator.core.structure import Structure, get_structure
from navigator.io.dicom import read_structure_set
from tests.conftest import IBSI  # ../shared beside the checkout (or $NAVIGATOR_SHARED)

DATA = IBSI
pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")


# --- helpers -------------------------------------------------------------------------------------------------
def _polygon_area_mm2(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)))


def _evenodd_area_mm2(polys: list[np.ndarray]) -> float:
    """Shoelace areas, signed by nesting depth (a polygon inside an odd number of others is a hole)."""
    total = 0.0
    for n, p in enumerate(polys):
        depth = sum(MplPath(q[:, :2]).contains_point(p[0, :2]) for m, q in enumerate(polys) if m != n)
        total += _polygon_area_mm2(p) * (-1 if depth % 2 else 1)
    return total


def _planes(structure: Structure) -> dict[float, list[np.ndarray]]:
    out: dict[float, list[np.ndarray]] = {}
    for c in structure.contours:
        out.setdefault(round(float(c[0, 2]), 2), []).append(c)
    return out


def _sphere_contours(center, radius_mm, plane_z, n_points=128) -> list[np.ndarray]:
    out = []
    t = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    for z in plane_z:
        d = z - center[2]
        if abs(d) < radius_mm:
            r = np.sqrt(radius_mm**2 - d**2)
            out.append(np.column_stack([center[0] + r * np.cos(t), center[1] + r * np.sin(t), np.full(n_points, z)]))
    return out


def _write_rtstruct(path: Path, rois: dict[str, list[np.ndarray]], for_uid: str, contour_image_uid=None) -> None:
    """A minimal but well-formed RT Structure Set written with pydicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientID = "SPHERE"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "test"
    ds.ReferencedFrameOfReferenceSequence = [Dataset()]
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = for_uid
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for num, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = num, for_uid, name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber, rc.ROIDisplayColor = num, [0, 255, 0]
        rc.ContourSequence = []
        for c in contours:
            item = Dataset()
            if contour_image_uid is not None:
                ref = Dataset()
                ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
                ref.ReferencedSOPInstanceUID = contour_image_uid
                item.ContourImageSequence = [ref]
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(c)
            item.ContourData = [f"{v:.4f}" for v in c.ravel()]
            rc.ContourSequence.append(item)
        ds.ROIContourSequence.append(rc)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber, obs.RTROIInterpretedType = num, num, "GTV"
        ds.RTROIObservationsSequence.append(obs)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module", params=["STS_001", "STS_004"])
def real(request):
    case = request.param
    ct = load_ct_series(DATA / case / "ct")
    gtv = read_structure_set(DATA / case / "RS.dcm", ct=ct)["GTV_Mass_CT"]
    return case, ct, gtv


# --- real structure sets -------------------------------------------------------------------------------------
def test_real_gtv_volume_matches_independent_shoelace_and_rasterisation(real):
    case, ct, gtv = real
    assert gtv.roi_type == "GTV" and gtv.color == (255, 0, 0)
    assert gtv.frame_of_reference_uid == ct.frame_of_reference_uid
    step = ct.spacing_mm[2]
    planes = _planes(gtv)
    shoelace_cc = sum(_evenodd_area_mm2(p) for p in planes.values()) * step / 1000.0

    mask = structure_mask(gtv, ct)
    frac = structure_fraction(gtv, ct)
    assert mask_volume_cc(mask, ct) == pytest.approx(shoelace_cc, rel=0.03)
    assert mask_volume_cc(frac, ct) == pytest.approx(shoelace_cc, rel=0.005)

    # separate rasterisation: matplotlib point-in-polygon, XOR over the plane's polygons, at CT voxel centres
    x, y, z = ct.axis_coords_mm()
    count = 0
    for zp, polys in planes.items():
        k = int(np.argmin(np.abs(z - zp)))
        assert abs(z[k] - zp) < 0.01  # README: every contour lies exactly on a CT slice
        pts = np.concatenate(polys)
        ii = np.nonzero((x >= pts[:, 0].min() - 1) & (x <= pts[:, 0].max() + 1))[0]
        jj = np.nonzero((y >= pts[:, 1].min() - 1) & (y <= pts[:, 1].max() + 1))[0]
        xx, yy = np.meshgrid(x[ii], y[jj])
        centres = np.column_stack([xx.ravel(), yy.ravel()])
        inside = np.zeros(len(centres), dtype=bool)
        for p in polys:
            inside ^= MplPath(p[:, :2]).contains_points(centres)
        count += int(inside.sum())
        assert int(mask[k].sum()) == int(mask[k][np.ix_(jj, ii)].sum())  # nothing outside the polygons' box
        assert abs(int(mask[k].sum()) - int(inside.sum())) <= max(2, 0.01 * inside.sum())
    assert int(mask.sum()) == pytest.approx(count, rel=0.003)


def test_real_contour_image_references_match_nothing_but_contours_are_placed(real):
    case, ct, gtv = real
    ds = pydicom.dcmread(DATA / case / "RS.dcm")
    refs = {c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in ds.ROIContourSequence[0].ContourSequence}
    assert not refs & set(ct.meta["sop_instance_uids"])
    mask = structure_mask(gtv, ct)
    z = ct.axis_coords_mm()[2]
    k_contoured = sorted({int(np.argmin(np.abs(z - zp))) for zp in _planes(gtv)})
    assert sorted(np.nonzero(mask.any(axis=(1, 2)))[0].tolist()) == k_contoured


def test_frame_of_reference_mismatch_is_refused(real):
    case, ct, gtv = real
    other = replace(ct, frame_of_reference_uid="1.2.3.4")
    with pytest.raises(StructureError, match=r"frame of reference .* but the CT series .* is in 1\.2\.3\.4"):
        read_structure_set(DATA / case / "RS.dcm", ct=other)
    with pytest.raises(StructureError, match=r"frame of reference"):
        structure_mask(gtv, other)


def test_feet_first_grid_gives_the_same_voxels(real):
    """The same CT stored feet-first with a mirrored row cosine (direction diag(-1, 1, -1)), as dicom_ct loads it."""
    case, ct, gtv = real
    ni, nj, nk = ct.shape_ijk
    ffs = Volume(
        array=ct.array[::-1, :, ::-1].copy(),
        origin_mm=ct.ijk_to_lps([ni - 1, 0, nk - 1]),
        spacing_mm=ct.spacing_mm,
        direction=np.diag([-1.0, 1.0, -1.0]),
        frame_of_reference_uid=ct.frame_of_reference_uid,
    )
    ref = structure_mask(gtv, ct)
    m = structure_mask(gtv, ffs)
    np.testing.assert_array_equal(m[::-1, :, ::-1], ref)
    np.testing.assert_allclose(structure_fraction(gtv, ffs)[::-1, :, ::-1], structure_fraction(gtv, ct), atol=1e-6)


def test_mirrored_feet_first_dicom_series_with_its_rtstruct(tmp_path):
    """STS_004 rewritten as a feet-first scanner stores it (row cosine -x, columns mirrored), loaded by dicom_ct:
    the GTV covers the same LPS voxel centres and the same HU as on the original series."""
    ref_ct = load_ct_series(DATA / "STS_004" / "ct")
    for f in sorted((DATA / "STS_004" / "ct").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [ipp[0] + (int(ds.Columns) - 1) * float(ds.PixelSpacing[1]), ipp[1], ipp[2]]
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).astype("<i2").tobytes()
        ds.save_as(tmp_path / f.name)
    ct = load_ct_series(tmp_path)
    np.testing.assert_allclose(ct.direction, np.diag([-1.0, 1.0, -1.0]), atol=1e-12)
    gtv = read_structure_set(DATA / "STS_004" / "RS.dcm", ct=ct)["GTV_Mass_CT"]
    m, m_ref = structure_mask(gtv, ct), structure_mask(gtv, ref_ct)
    a = ct.voxel_centers_lps(m)
    b = ref_ct.voxel_centers_lps(m_ref)
    assert len(a) == len(b) > 1000
    np.testing.assert_allclose(a[np.lexsort(a.T)], b[np.lexsort(b.T)], atol=1e-3)
    assert np.sort(ct.array[m]).tolist() == np.sort(ref_ct.array[m_ref]).tolist()


def test_real_gtv_on_a_finer_dose_grid(real):
    case, ct, gtv = real
    lo, hi = gtv.bounds_mm()
    grid = grid_volume(lo - 3.0, hi + 3.0, 1.0, frame_of_reference_uid=ct.frame_of_reference_uid)
    v_ct = mask_volume_cc(structure_fraction(gtv, ct), ct)
    assert mask_volume_cc(structure_fraction(gtv, grid), grid) == pytest.approx(v_ct, rel=0.005)
    assert mask_volume_cc(structure_mask(gtv, grid), grid) == pytest.approx(v_ct, rel=0.01)


def test_ctv_margin_and_contours_round_trip(real):
    case, ct, gtv = real
    gtv_mask = structure_mask(gtv, ct)
    ctv = expand_margin(gtv_mask, ct, 5.0)
    assert (ctv & gtv_mask).sum() == gtv_mask.sum() and ctv.sum() > gtv_mask.sum()
    polys = mask_to_contours(ctv, ct)
    z = ct.axis_coords_mm()[2]
    for p in polys:
        assert p.shape[1] == 3 and len(p) >= 3 and not np.allclose(p[0], p[-1])
        assert np.min(np.abs(z - p[0, 2])) < 1e-6 and np.ptp(p[:, 2]) < 1e-9
    back = structure_mask(Structure("CTV", 2, polys, frame_of_reference_uid=ct.frame_of_reference_uid), ct)
    np.testing.assert_array_equal(back, ctv)


# --- synthetic spheres as RTSTRUCT ---------------------------------------------------------------------------
@pytest.mark.parametrize("volume_cc", [1.0, 3.0, 10.0])
def test_sphere_rtstruct_round_trip(tmp_path, volume_cc):
    """Contours on 2 mm planes (fine CT), grid 0.8 x 0.8 x 2 mm with a non-zero origin; bogus image refs."""
    r = (3 * volume_cc * 1000 / (4 * np.pi)) ** (1 / 3)
    for_uid = generate_uid()
    grid = Volume(np.zeros((30, 80, 80), np.float32), origin_mm=[12.3, -97.1, 40.5], spacing_mm=[0.8, 0.8, 2.0],
                  frame_of_reference_uid=for_uid)
    center = grid.ijk_to_lps([39.3, 40.6, 14.7])
    contours = _sphere_contours(center, r, grid.axis_coords_mm()[2])
    _write_rtstruct(tmp_path / "RS.dcm", {"sphere": contours}, for_uid, contour_image_uid="1.2.3.999")
    s = read_structure_set(tmp_path / "RS.dcm")["sphere"]
    assert len(s.contours) == len(contours) and s.color == (0, 255, 0)
    slab_cc = sum(_polygon_area_mm2(c) for c in contours) * 2.0 / 1000
    v = mask_volume_cc(structure_fraction(s, grid), grid)
    assert v == pytest.approx(slab_cc, rel=0.002)  # in-plane supersampling vs the exact polygon areas
    assert v == pytest.approx(volume_cc, rel=0.02)  # and the drawn sphere vs the analytic sphere
    m = structure_mask(s, grid)
    centroid = grid.voxel_centers_lps(m).mean(axis=0)
    np.testing.assert_allclose(centroid, center, atol=0.25)


@pytest.mark.parametrize("volume_cc", [1.0, 10.0])
def test_fraction_on_coarse_dose_grid_stays_within_2_percent(volume_cc):
    """1 mm contour planes on a 2.5 mm isotropic grid: the binary mask is off by several %, the fraction is not."""
    r = (3 * volume_cc * 1000 / (4 * np.pi)) ** (1 / 3)
    rng = np.random.default_rng(7)
    for _ in range(4):
        center = rng.uniform(-1, 1, 3)
        s = Structure("sphere", 1, _sphere_contours(center, r, np.arange(-20, 20.01, 1.0) + 0.37))
        grid = Volume(np.zeros((17, 17, 17), np.float32), origin_mm=rng.uniform(-21, -20, 3), spacing_mm=[2.5] * 3)
        assert mask_volume_cc(structure_fraction(s, grid), grid) == pytest.approx(volume_cc, rel=0.02)


def test_missing_contour_image_sequence_and_frame_check(tmp_path):
    for_uid = generate_uid()
    contours = _sphere_contours([0, 0, 0], 8.0, np.arange(-10, 10.1, 2.0))
    _write_rtstruct(tmp_path / "RS.dcm", {"a": contours, "b": contours[:2]}, for_uid, contour_image_uid=None)
    ss = read_structure_set(tmp_path)  # a folder with exactly one RTSTRUCT
    assert set(ss) == {"a", "b"} and ss["a"].roi_type == "GTV"
    ct = Volume(np.zeros((12, 30, 30), np.float32), [-12, -12, -11], [0.8, 0.8, 2.0], frame_of_reference_uid="9.9")
    with pytest.raises(StructureError, match=r"frame of reference"):
        read_structure_set(tmp_path / "RS.dcm", ct=ct)
    assert get_structure(ss, "A") is ss["a"]
    with pytest.raises(StructureError, match=r"no structure named 'GTV'.*holds: a, b"):
        get_structure(ss, "GTV")


# --- rasteriser rules ----------------------------------------------------------------------------------------
def _square(x0, y0, x1, y1, z):
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], float)


def test_even_odd_holes_and_islands():
    grid = Volume(np.zeros((3, 60, 60), np.float32), origin_mm=[-30, -30, -2], spacing_mm=[1.0, 1.0, 2.0])
    ring = [_square(-20.2, -20.2, 0.2, 0.2, 0.0), _square(-10.2, -10.2, -4.8, -4.8, 0.0)]
    island = _square(10.1, 10.1, 15.1, 20.1, 0.0)
    s = Structure("ring", 1, ring + [island])
    m = structure_mask(s, grid)
    assert m[0].sum() == 0 and m[2].sum() == 0
    x, y, _ = grid.axis_coords_mm()
    xx, yy = np.meshgrid(x, y)
    outer = (xx > -20.2) & (xx < 0.2) & (yy > -20.2) & (yy < 0.2)
    hole = (xx > -10.2) & (xx < -4.8) & (yy > -10.2) & (yy < -4.8)
    isl = (xx > 10.1) & (xx < 15.1) & (yy > 10.1) & (yy < 20.1)
    np.testing.assert_array_equal(m[1], (outer & ~hole) | isl)
    f = structure_fraction(s, grid, supersample=8)
    area = 20.4**2 - 5.4**2 + 5.0 * 10.0
    assert f.sum() * 1.0 == pytest.approx(area, rel=0.01)


def test_contour_between_slices_goes_to_the_nearest_slice():
    grid = Volume(np.zeros((5, 20, 20), np.float32), origin_mm=[-10, -10, 0.0], spacing_mm=[1.0, 1.0, 2.0])
    for z, k in ((2.7, 1), (3.3, 2), (-0.9, 0), (8.9, 4)):
        m = structure_mask(Structure("s", 1, [_square(-5, -5, 5, 5, z)]), grid)
        assert np.nonzero(m.any(axis=(1, 2)))[0].tolist() == [k]
    m = structure_mask(Structure("s", 1, [_square(-5, -5, 5, 5, 9.5)]), grid)
    assert not m.any()  # beyond half a spacing from the last slice


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([-1.0, 1.0, -1.0])])
def test_axes_are_not_mixed_up_on_anisotropic_offset_grids(direction):
    """An ellipsoid with different semi-axes in x, y, z: any swapped or mirrored axis moves or reshapes it."""
    a = np.array([12.0, 7.0, 9.0])
    c = np.array([31.4, -57.2, 112.6])
    spacing = np.array([0.7, 1.1, 2.0])
    shape_ijk = np.array([60, 30, 16])
    ext = direction @ (spacing * (shape_ijk - 1))
    origin = c - 0.5 * ext + np.array([0.3, -0.4, 0.5])
    grid = Volume(np.zeros(shape_ijk[::-1], np.float32), origin, spacing, direction)
    planes = np.arange(c[2] - 12, c[2] + 12, 1.0) + 0.25
    contours = []
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    for z in planes:
        q = 1 - ((z - c[2]) / a[2]) ** 2
        if q > 0:
            contours.append(np.column_stack([c[0] + a[0] * np.sqrt(q) * np.cos(t), c[1] + a[1] * np.sqrt(q) * np.sin(t),
                                             np.full(len(t), z)]))
    s = Structure("ellipsoid", 1, contours)
    pts = grid.voxel_centers_lps(structure_mask(s, grid))
    np.testing.assert_allclose(pts.mean(axis=0), c, atol=0.3)
    np.testing.assert_allclose(np.ptp(pts, axis=0) / 2, a, atol=1.0 + spacing.max() / 2)
    vol = mask_volume_cc(structure_fraction(s, grid), grid)
    assert vol == pytest.approx(4 / 3 * np.pi * a.prod() / 1000, rel=0.02)


def test_refuses_oblique_grid_and_non_axial_contour():
    rot = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    grid = Volume(np.zeros((4, 10, 10), np.float32), [0, 0, 0], [1, 1, 1], rot)
    s = Structure("s", 1, [_square(1, 1, 5, 5, 1.0)])
    with pytest.raises(StructureError, match=r"not axis-aligned"):
        structure_mask(s, grid)
    tilted = np.array([[0, 0, 0], [5, 0, 0], [5, 5, 1.0]])
    with pytest.raises(StructureError, match=r"contour 0 is not on an axial plane \(z from 0\.00 to 1\.00 mm\)"):
        structure_mask(Structure("t", 1, [tilted]), replace(grid, direction=np.eye(3)))
    assert not structure_mask(Structure("empty", 3, []), replace(grid, direction=np.eye(3))).any()
    with pytest.raises(StructureError, match=r"contour 0 has shape \(2, 3\)"):
        Structure("bad", 4, [[[0, 0, 0], [1, 0, 0]]])


# --- margins -------------------------------------------------------------------------------------------------
def test_margin_on_anisotropic_voxels_gives_the_analytic_radius():
    spacing = np.array([0.8, 0.8, 2.5])  # (i, j, k)
    grid = Volume(np.zeros((31, 101, 101), np.float32), origin_mm=[-40, -40, -37.5], spacing_mm=spacing)
    c = grid.ijk_to_lps([50, 50, 15])  # (0, 0, 0)
    r, margin = 10.0, 5.0
    pts = grid.voxel_centers_lps()
    d = np.linalg.norm(pts - c, axis=1).reshape(grid.array.shape)
    gtv = d <= r
    ctv = expand_margin(gtv, grid, margin)
    big = r + margin
    # along each axis (both signs), the boundary (midpoint between last inside and first outside voxel) lies
    # within half a voxel of the analytic radius
    for axis, sp in zip(range(3), spacing):
        for sign in (1, -1):
            n = np.arange(0, 40)
            ijk = np.tile([50, 50, 15], (len(n), 1))
            ijk[:, axis] += sign * n
            ok = (ijk[:, axis] >= 0) & (ijk[:, axis] < grid.shape_ijk[axis])
            inside = ctv[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]]
            last = int(np.nonzero(inside)[0].max())
            assert not inside[last + 1:].any()
            assert abs((last + 0.5) * sp - big) <= sp / 2 + 1e-9
    half_vox = 0.5 * spacing.min()
    r_equiv = (3 * mask_volume_cc(ctv, grid) * 1000 / (4 * np.pi)) ** (1 / 3)
    assert abs(r_equiv - big) <= half_vox  # measured: +0.2 mm (a centre-to-centre EDT gives -0.36 mm)
    assert not ctv[d > big + 0.5 * spacing.max()].any()
    assert ctv[d <= big].mean() > 0.99  # (nearly) nothing of the true CTV is missed
    centre = expand_margin(gtv, grid, margin, rule="centre")
    assert not centre[d > big + 1e-6].any() and centre.sum() < ctv.sum()  # the plain dilation never overshoots
    r_centre = (3 * mask_volume_cc(centre, grid) * 1000 / (4 * np.pi)) ** (1 / 3)
    assert abs(r_centre - big) <= half_vox
    shrunk = shrink_margin(ctv, grid, margin)
    assert abs((3 * mask_volume_cc(shrunk, grid) * 1000 / (4 * np.pi)) ** (1 / 3) - r) <= 0.5 * spacing.max()


def test_margin_beyond_the_grid_is_refused():
    grid = Volume(np.zeros((10, 20, 20), np.float32), origin_mm=[0, 0, 0], spacing_mm=[1.0, 1.0, 2.0])
    m = np.zeros(grid.array.shape, bool)
    m[1:3, 8:12, 8:12] = True  # 2 mm above the first slice centre
    with pytest.raises(StructureError, match=r"5 mm margin .* beyond the grid \(k below 0;"):
        expand_margin(m, grid, 5.0)
    assert expand_margin(m, grid, 2.0).sum() > m.sum()
