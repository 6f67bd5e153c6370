"""CT series import on the real IBSI STS DICOM (README table) and on damaged copies of it (every refusal)."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from navigator.io.dicom import list_series, load_ct_series
from navigator.errors import DicomSeriesError, InputError
from tests.conftest import IBSI  # ../shared beside the checkout (or $NAVIGATOR_SHARED)

DATA = IBSI

# From shared/data/ibsi-sts-ct/README.md: slices, rows, cols, pixel mm, step mm, z range mm, position.
README = {
    "STS_001": (59, 202, 198, 0.9766, 3.27, (-881.32, -691.66), "HFS"),
    "STS_004": (85, 183, 173, 0.9766, 3.27, (590.14, 864.82), "FFS"),
}

# The real files break VR length rules (README: Study ID > 16 characters); pydicom warns on access.
pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")


def _read(p: Path, **kw) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(p, **kw)


def _files_by_z(case: str) -> list[Path]:
    files = sorted((DATA / case / "ct").glob("*.dcm"))
    z = [float(_read(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    return [files[i] for i in np.argsort(z)]


def _copy(case: str, dst: Path, n: int = 8, start: int = 20, names=None) -> list[Path]:
    """Copy ``n`` consecutive slices (by z) of a real series into ``dst``; returns the copies in z order."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for m, f in enumerate(_files_by_z(case)[start:start + n]):
        p = dst / (names[m] if names else f.name)
        shutil.copyfile(f, p)
        out.append(p)
    return out


def _edit(p: Path, **changes) -> None:
    ds = _read(p)
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(p)


def _refused(path, pattern: str, **kw) -> str:
    with pytest.raises(DicomSeriesError) as info:
        load_ct_series(path, **kw)
    msg = str(info.value)
    assert re.search(pattern, msg, re.S), msg
    return msg


# --- the real series ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(README))
def real(request):
    case = request.param
    return case, load_ct_series(DATA / case / "ct")


def test_real_series_geometry_matches_readme_and_first_file(real):
    case, vol = real
    n, rows, cols, pixel, step, (z0, z1), position = README[case]
    assert vol.array.shape == (n, rows, cols) and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.spacing_mm, [pixel, pixel, step], atol=1e-4)
    assert vol.meta["patient_position"] == position
    z = vol.axis_coords_mm()[2]
    np.testing.assert_allclose([z[0], z[-1]], [z0, z1], atol=0.01)

    files = _files_by_z(case)
    first = _read(files[0], stop_before_pixels=True)
    iop = np.array(first.ImageOrientationPatient, float)
    np.testing.assert_allclose(vol.origin_mm, np.array(first.ImagePositionPatient, float), atol=1e-6)
    np.testing.assert_allclose(vol.direction[:, 0], iop[:3], atol=1e-9)
    np.testing.assert_allclose(vol.direction[:, 1], iop[3:], atol=1e-9)
    np.testing.assert_allclose(vol.direction[:, 2], np.cross(iop[:3], iop[3:]), atol=1e-9)
    # every slice file's position is where the volume puts its k index
    for k in (0, n // 2, n - 1):
        ds = _read(files[k], stop_before_pixels=True)
        np.testing.assert_allclose(vol.ijk_to_lps([0, 0, k]), np.array(ds.ImagePositionPatient, float), atol=1e-3)
        assert vol.meta["sop_instance_uids"][k] == ds.SOPInstanceUID

    # identity and the study/patient tags needed for derived RT objects
    assert vol.frame_of_reference_uid == first.FrameOfReferenceUID
    assert vol.series_uid == first.SeriesInstanceUID and vol.study_uid == first.StudyInstanceUID
    assert vol.patient_id == case and vol.patient_name == case
    assert vol.meta["modality"] == "CT"
    assert vol.meta["slice_thickness_mm"] == pytest.approx(3.27, abs=1e-6)
    for kw in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
               "ReferringPhysicianName"):
        assert vol.meta[kw] == str(first.get(kw, ""))
    assert vol.meta["PatientSex"] in ("M", "F") and len(vol.meta["StudyDate"]) == 8


def test_real_series_pixels_match_simpleitk(real):
    """Independent reader: SimpleITK's ImageSeriesReader (GDCM) on the same folder."""
    case, vol = real
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(DATA / case / "ct")))
    img = reader.Execute()
    np.testing.assert_allclose(img.GetOrigin(), vol.origin_mm, atol=1e-3)
    np.testing.assert_allclose(img.GetSpacing(), vol.spacing_mm, atol=1e-3)
    np.testing.assert_allclose(np.array(img.GetDirection()).reshape(3, 3), vol.direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).astype(np.float32), vol.array)
    assert vol.array.min() == -1000.0  # README: stored values are HU, minimum -1000


def test_slice_order_comes_from_positions_not_file_names(tmp_path):
    names = [f"{c}.dcm" for c in "hgfedcba"]  # names sort opposite to z
    _copy("STS_001", tmp_path, names=names)
    vol = load_ct_series(tmp_path)
    ref = _files_by_z("STS_001")[20:28]
    for k, f in enumerate(ref):
        ds = _read(f)
        np.testing.assert_array_equal(vol.array[k], ds.pixel_array.astype(np.float32))
    assert vol.meta["source_files"][0].endswith("h.dcm")
    assert vol.spacing_mm[2] == pytest.approx(3.27, abs=1e-4)


def test_feet_first_with_mirrored_orientation(tmp_path):
    """A feet-first scanner writes the row cosine as -x; the same anatomy must land at the same LPS points."""
    files = _copy("STS_004", tmp_path)
    ref = load_ct_series(tmp_path)
    for p in files:
        ds = _read(p)
        cols = int(ds.Columns)
        dx = float(ds.PixelSpacing[1])
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [ipp[0] + (cols - 1) * dx, ipp[1], ipp[2]]
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).astype("<i2").tobytes()
        ds.save_as(p)
    vol = load_ct_series(tmp_path)
    # normal = (-x) x (+y) = -z: k runs head-to-feet along increasing projection (decreasing z)
    np.testing.assert_allclose(vol.direction, np.diag([-1.0, 1.0, -1.0]), atol=1e-12)
    assert vol.axis_coords_mm()[2][0] == pytest.approx(ref.axis_coords_mm()[2][-1], abs=1e-6)
    # sample both volumes at the same LPS points: identical HU
    rng = np.random.default_rng(4)
    ijk = np.column_stack([rng.integers(0, s, 50) for s in ref.shape_ijk])
    pts = ref.ijk_to_lps(ijk)
    ijk2 = np.rint(vol.lps_to_ijk(pts)).astype(int)
    np.testing.assert_allclose(vol.ijk_to_lps(ijk2), pts, atol=1e-3)
    np.testing.assert_array_equal(vol.array[ijk2[:, 2], ijk2[:, 1], ijk2[:, 0]],
                                  ref.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]])


@pytest.mark.parametrize("slope", [1.0, 0.5])
def test_unsigned_pixels_with_rescale(tmp_path, slope):
    files = _copy("STS_001", tmp_path, n=4)
    ref = load_ct_series(tmp_path)
    for p in files:
        ds = _read(p)
        hu = ds.pixel_array.astype(np.int32)
        stored = np.rint((hu + 1024) / slope).astype("<u2")
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = f"{slope:g}"
        ds.PixelData = stored.tobytes()
        for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if tag in ds:
                del ds[tag]
        ds.save_as(p)
    vol = load_ct_series(tmp_path)
    np.testing.assert_allclose(vol.array, ref.array, atol=0.5 * slope)
    assert vol.array.min() == -1000.0


def test_folder_with_ct_and_rtstruct_loads_the_ct(tmp_path):
    _copy("STS_001", tmp_path, n=3)
    shutil.copyfile(DATA / "STS_001" / "RS.dcm", tmp_path / "RS.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM")
    infos = list_series(tmp_path)
    assert sorted(s.modality for s in infos) == ["CT", "RTSTRUCT"]
    ct_info = next(s for s in infos if s.modality == "CT")
    assert ct_info.n_files == 3 and ct_info.description == "IBSI_1_STS_001_CT_image"
    assert load_ct_series(tmp_path).array.shape[0] == 3


# --- refusals ------------------------------------------------------------------------------------------------
def test_refuses_missing_folder_file_and_empty_folder(tmp_path):
    msg = _refused(tmp_path / "nope", r"does not exist")
    assert "nope" in msg
    f = tmp_path / "x.dcm"
    f.write_bytes(b"")
    _refused(f, r"is a file, not a folder")
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", r"holds no DICOM files")
    assert issubclass(DicomSeriesError, InputError)


def test_refuses_missing_slice(tmp_path):
    files = _copy("STS_001", tmp_path)
    files[3].unlink()
    _refused(tmp_path, r"missing slices.*3\.270 mm.*1 missing between -809\.38 and -802\.84 mm.*complete series")


def test_refuses_non_uniform_spacing(tmp_path):
    files = _copy("STS_001", tmp_path)
    for p in files[4:]:
        ds = _read(p)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        _edit(p, ImagePositionPatient=[x, y, z + 0.6])
    _refused(tmp_path, r"non-uniform slice spacing.*3\.27.*3\.87 mm.*uniform spacing")


def test_refuses_duplicate_positions(tmp_path):
    files = _copy("STS_001", tmp_path, n=4)
    dup = tmp_path / "dup.dcm"
    shutil.copyfile(files[1], dup)
    _edit(dup, SOPInstanceUID=generate_uid())
    _refused(tmp_path, r"duplicate slice position.*dup\.dcm")


def test_refuses_gantry_tilt(tmp_path):
    """Tilted acquisition: orientation tilted 15 deg about x, slice origins still stepping along z."""
    files = _copy("STS_001", tmp_path)
    a = np.radians(15.0)
    for p in files:
        _edit(p, ImageOrientationPatient=[1, 0, 0, 0, float(np.cos(a)), float(np.sin(a))], GantryDetectorTilt="15")
    _refused(tmp_path, r"not stacked along their normal.*mm in-plane.*15(\.00)? deg.*gantry")


def test_refuses_sheared_stack(tmp_path):
    files = _copy("STS_001", tmp_path)
    for m, p in enumerate(files):
        ds = _read(p)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        _edit(p, ImagePositionPatient=[x + 0.5 * m, y, z])
    _refused(tmp_path, r"shifted 3\.50 mm in-plane")


def test_refuses_non_orthogonal_orientation(tmp_path):
    files = _copy("STS_001", tmp_path, n=3)
    for p in files:
        _edit(p, ImageOrientationPatient=[1, 0, 0, 0.2, 0.98, 0])
    _refused(tmp_path, r"not two perpendicular unit vectors.*dot 0\.2")


def test_refuses_mr_series(tmp_path):
    files = _copy("STS_001", tmp_path, n=3)
    for p in files:
        _edit(p, Modality="MR")
    _refused(tmp_path, r"no CT series.*MR\s+3 files.*needs a CT")
    uid = _read(files[0]).SeriesInstanceUID
    _refused(tmp_path, r"modality MR, not CT", series_uid=uid)


def test_refuses_truncated_files(tmp_path):
    files = _copy("STS_001", tmp_path, n=4)
    raw = files[2].read_bytes()
    files[2].write_bytes(raw[:-1000])
    _refused(tmp_path, rf"{files[2].name}: pixel data has 78992 bytes but .* needs 79992 bytes.*truncated")
    files[2].write_bytes(raw[:2000])  # cut inside the header: geometry tags lost
    _refused(tmp_path, rf"{files[2].name}: required CT attribute\(s\) FrameOfReferenceUID.*missing.*truncated")
    files[2].write_bytes(raw)
    ds = _read(files[2])
    del ds.PixelData
    ds.save_as(files[2])
    _refused(tmp_path, rf"{files[2].name}: no PixelData")
    files[2].write_bytes(raw[:100])  # not even the DICM prefix
    _refused(tmp_path, rf"{files[2].name}: not a readable DICOM file")


def test_refuses_mismatched_rows_and_pixel_spacing(tmp_path):
    files = _copy("STS_001", tmp_path, n=4)
    _edit(files[2], Rows=201)
    _refused(tmp_path, r"number of rows differs between slices.*202.*201")
    _edit(files[2], Rows=202, PixelSpacing=[0.9, 0.9])
    _refused(tmp_path, r"pixel spacing differs between slices.*0\.9766.*\[0\.9, 0\.9\] mm in 000022")


def test_two_series_in_one_folder(tmp_path):
    _copy("STS_001", tmp_path, n=3)
    _copy("STS_004", tmp_path, n=4, names=[f"b{m}.dcm" for m in range(4)])
    uid4 = _read(tmp_path / "b0.dcm").SeriesInstanceUID
    msg = _refused(tmp_path, r"2 CT series in one folder.*series_uid")
    assert uid4 in msg and "4 files" in msg and "IBSI_1_STS_004_CT_image" in msg and "3 files" in msg
    vol = load_ct_series(tmp_path, series_uid=uid4)
    assert vol.array.shape == (4, 183, 173) and vol.meta["patient_position"] == "FFS"
    _refused(tmp_path, r"no series with SeriesInstanceUID 1\.2\.3.*choose one", series_uid="1.2.3")


def test_refuses_junk_file_multiframe_and_mixed_frames(tmp_path):
    files = _copy("STS_001", tmp_path, n=3)
    junk = tmp_path / "scanner_notes"
    junk.write_bytes(b"these are not DICOM bytes" * 20)
    _refused(tmp_path, r"scanner_notes: not a readable DICOM file.*remove it")
    junk.unlink()
    _edit(files[1], FrameOfReferenceUID=generate_uid())
    _refused(tmp_path, r"mixes 2 FrameOfReferenceUIDs")
    _edit(files[1], FrameOfReferenceUID=_read(files[0]).FrameOfReferenceUID, NumberOfFrames=2)
    _refused(tmp_path, r"multi-frame \(Enhanced CT\) file")
    _edit(files[1], NumberOfFrames=1)
    assert load_ct_series(tmp_path).array.shape == (3, 202, 198)
