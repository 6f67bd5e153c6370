"""CT series, RT Structure Set and RT Dose export: IOD conformance (dciodvfy) and geometry round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from navigator.io.dicom import (PatientInfo, new_uid, read_rtdose, write_ct_series, write_rtdose,
                                   write_rtstruct)
from navigator.errors import InputError
from navigator.core.volume import Volume, grid_volume
from tests.conftest import dciodvfy  # the one dicom3tools IOD check
from tests.io.dicom_checks import errors_not_in_source

SPACING = (0.8, 0.75, 2.5)  # i, j, k: every axis different, so a swap fails loudly
ORIGIN = (-31.2, 17.6, 84.0)
FEET_FIRST = np.diag([1.0, 1.0, -1.0])  # k runs towards the feet (descending z)


def make_ct(shape=(12, 40, 32), direction=FEET_FIRST) -> Volume:
    k, j, i = np.indices(shape)
    hu = -1000.0 + 3.3 * i + 7.1 * j + 40.0 * k  # each voxel distinct along every axis
    hu[(k - 6) ** 2 + (j - 20) ** 2 + (i - 16) ** 2 < 9] = 900.0
    meta = {"PatientSex": "female", "PatientBirthDate": "19580312", "StudyDate": "20261120", "StudyTime": "081500",
            "StudyID": "42", "AccessionNumber": "ACC7", "ReferringPhysicianName": "Who^Doctor"}
    return Volume(hu.astype(np.float32), ORIGIN, SPACING, direction, patient_id="PAT-1", patient_name="Müller^Anna",
                  meta=meta)


@pytest.fixture
def ct_written(tmp_path):
    ct = make_ct()
    patient = PatientInfo.from_volume(ct)
    paths = write_ct_series(ct, tmp_path / "ct", patient, patient_position="FFS", series_description="test CT")
    return ct, patient, paths


def test_new_uid_is_valid_and_deterministic_from_a_seed():
    a, b = new_uid(), new_uid()
    assert a != b and len(a) <= 64
    assert new_uid("case-1") == new_uid("case-1") != new_uid("case-2")
    assert pydicom.uid.UID(new_uid("x")).is_valid


def test_uid_seed_makes_a_series_reproducible(tmp_path):
    runs = []
    for run in ("a", "b"):
        ct = make_ct(shape=(3, 6, 5))
        ct.study_uid, ct.frame_of_reference_uid = "1.2.3.4", "1.2.3.5"
        write_ct_series(ct, tmp_path / run, uid_seed="case-7/seed-3")
        runs.append((ct.series_uid, ct.meta["sop_instance_uids"]))
    assert runs[0] == runs[1] and len(set(runs[0][1])) == 3
    other = make_ct(shape=(3, 6, 5))
    write_ct_series(other, tmp_path / "c", uid_seed="case-7/seed-4")
    assert other.series_uid != runs[0][0] and not set(other.meta["sop_instance_uids"]) & set(runs[0][1])


def test_patient_info_from_volume_reads_identity_and_meta():
    ct = make_ct()
    ct.study_uid = "1.2.3.4"
    ct.frame_of_reference_uid = "1.2.3.5"
    p = PatientInfo.from_volume(ct)
    assert (p.patient_id, p.patient_name, p.sex, p.birth_date) == ("PAT-1", "Müller^Anna", "F", "19580312")
    assert (p.study_uid, p.frame_of_reference_uid, p.study_date, p.study_time) == ("1.2.3.4", "1.2.3.5",
                                                                                  "20261120", "081500")
    assert (p.study_id, p.accession, p.referring_physician) == ("42", "ACC7", "Who^Doctor")
    empty = PatientInfo()
    assert empty.study_uid and empty.frame_of_reference_uid and len(empty.study_date) == 8


def test_ct_series_passes_dciodvfy(ct_written):
    _, _, paths = ct_written
    for p in paths:
        errors, warnings = dciodvfy(p)
        assert errors == [], (p, errors)
        assert warnings == [], (p, warnings)


def test_ct_series_geometry_and_hu_with_pydicom(ct_written):
    ct, patient, paths = ct_written
    assert len(paths) == ct.array.shape[0]
    uids = ct.meta["sop_instance_uids"]
    assert len(set(uids)) == len(uids)
    # names are SOP UIDs, so directory order is not k order (importers must sort)
    assert [p.stem for p in paths] == uids
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPInstanceUID == uids[k] and ds.InstanceNumber == k + 1
        assert ds.SeriesInstanceUID == ct.series_uid and ds.StudyInstanceUID == patient.study_uid
        assert ds.FrameOfReferenceUID == ct.frame_of_reference_uid == patient.frame_of_reference_uid
        assert ds.PatientPosition == "FFS" and str(ds.PatientName) == "Müller^Anna"
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], ct.ijk_to_lps([0, 0, k]), atol=1e-5)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0], atol=1e-9)
        # PixelSpacing is (row spacing = step along j, column spacing = step along i)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [SPACING[1], SPACING[0]])
        assert float(ds.SliceThickness) == SPACING[2]
        assert float(ds.SliceLocation) == pytest.approx(ct.ijk_to_lps([0, 0, k])[2], abs=1e-5)
        assert (ds.Rows, ds.Columns) == ct.array.shape[1:]
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(hu, np.rint(ct.array[k]), atol=0)


def test_ct_series_reads_back_in_simpleitk_at_the_same_lps_points(ct_written):
    ct, _, paths = ct_written
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(paths[0].parent)))
    back = Volume.from_sitk(reader.Execute())
    np.testing.assert_allclose(sorted(back.spacing_mm), sorted(SPACING), atol=1e-6)
    np.testing.assert_allclose(back.spacing_mm[:2], SPACING[:2], atol=1e-6)
    # Every voxel centre of ours lands on a voxel centre of SimpleITK's with the same HU.
    kk, jj, ii = np.meshgrid(*[np.arange(0, n, 3) for n in ct.array.shape], indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    lps = ct.ijk_to_lps(ijk)
    theirs = back.lps_to_ijk(lps)
    np.testing.assert_allclose(theirs, np.rint(theirs), atol=1e-4)
    t = np.rint(theirs).astype(int)
    np.testing.assert_allclose(back.array[t[:, 2], t[:, 1], t[:, 0]], np.rint(ct.array[kk, jj, ii].ravel()))


@pytest.mark.parametrize("metal_hu, slope_above_1", [(60000.0, False), (90000.0, True)])
def test_ct_hu_range_beyond_int16_uses_rescale(tmp_path, metal_hu, slope_above_1):
    ct = make_ct(shape=(3, 8, 6), direction=np.eye(3))
    ct.array[1, 4, 3] = metal_hu  # a metal artefact beyond int16
    ct.array[0, 0, 0] = -1024.0
    paths = write_ct_series(ct, tmp_path / "ct", file_names="index")
    assert paths[0].name == "CT_0001.dcm"
    back = []
    for p in paths:
        ds = pydicom.dcmread(p)
        assert (float(ds.RescaleSlope) > 1) == slope_above_1 and float(ds.RescaleIntercept) != 0
        back.append(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
        assert dciodvfy(p)[0] == []
    np.testing.assert_allclose(np.array(back), ct.array, atol=float(ds.RescaleSlope) / 2 + 1e-3)


def test_ct_with_nan_is_refused(tmp_path):
    ct = make_ct(shape=(2, 4, 4))
    ct.array[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_ct_series(ct, tmp_path / "ct")


def _square(z, half=6.0, cx=-18.0, cy=32.0):
    return np.array([[cx - half, cy - half, z], [cx + half, cy - half, z], [cx + half, cy + half, z],
                     [cx - half, cy + half, z]])


class _StructureLike:
    """Duck type of navigator.anatomy.structures.Structure (name, contours, color)."""

    def __init__(self, name, contours, color):
        self.name, self.contours, self.color, self.number = name, contours, color, 7


def test_rtstruct_passes_dciodvfy_and_round_trips(ct_written, tmp_path):
    ct, patient, _ = ct_written
    zs = [ct.ijk_to_lps([0, 0, k])[2] for k in range(ct.array.shape[0])]
    gtv = [_square(zs[k]) + [0.123456, 0, 0] for k in (4, 5, 6)]
    ctv = _StructureLike("CTV", [_square(zs[k], half=9.0) for k in (3, 4, 5, 6, 7)], (0, 255, 0))
    between = [_square(zs[2] + 1.0)]  # not on a slice: no image reference
    needle = [np.array([[-18.0, 10.0, zs[5]], [-18.0, 31.5, zs[5]]])]
    seeds = [np.array([-18.0, 30.0, zs[5]]), np.array([-18.0, 25.0, zs[5]])]
    path = write_rtstruct(tmp_path / "RS.dcm", ct, {"GTV": gtv, "CTV": ctv, "odd": between, "N1": needle,
                                                    "seeds": seeds},
                          patient, roi_types={"GTV": "GTV", "CTV": "ctv", "N1": "BRACHY_CHANNEL", "seeds": "MARKER"},
                          colors={"GTV": (255, 0, 0)}, label="preplan", sop_instance_uid="1.2.826.0.1.3680043.8.498.1")
    errors, warnings = dciodvfy(path)
    assert errors == [] and warnings == []

    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert ds.StudyInstanceUID == ct.study_uid and ds.PatientID == "PAT-1"
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct.frame_of_reference_uid
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.series_uid
    assert [c.ReferencedSOPInstanceUID for c in series.ContourImageSequence] == ct.meta["sop_instance_uids"]

    names = {r.ROINumber: r.ROIName for r in ds.StructureSetROISequence}
    assert list(names.values()) == ["GTV", "CTV", "odd", "N1", "seeds"]
    types = {names[o.ReferencedROINumber]: o.RTROIInterpretedType for o in ds.RTROIObservationsSequence}
    assert types == {"GTV": "GTV", "CTV": "CTV", "odd": "ORGAN", "N1": "BRACHY_CHANNEL", "seeds": "MARKER"}
    by_name = {names[rc.ReferencedROINumber]: rc for rc in ds.ROIContourSequence}
    assert list(by_name["GTV"].ROIDisplayColor) == [255, 0, 0]
    assert list(by_name["CTV"].ROIDisplayColor) == [0, 255, 0]

    uids = ct.meta["sop_instance_uids"]
    for name, polys, slices in (("GTV", gtv, (4, 5, 6)), ("CTV", ctv.contours, (3, 4, 5, 6, 7))):
        items = by_name[name].ContourSequence
        assert len(items) == len(polys)
        for item, poly, k in zip(items, polys, slices):
            assert item.ContourGeometricType == "CLOSED_PLANAR"
            assert item.NumberOfContourPoints == len(poly)
            np.testing.assert_allclose(np.array(item.ContourData, dtype=float).reshape(-1, 3), poly, atol=1e-6)
            assert item.ContourImageSequence[0].ReferencedSOPInstanceUID == uids[k]
    assert "ContourImageSequence" not in by_name["odd"].ContourSequence[0]
    line = by_name["N1"].ContourSequence[0]
    assert line.ContourGeometricType == "OPEN_NONPLANAR" and line.NumberOfContourPoints == 2
    np.testing.assert_allclose(np.array(line.ContourData, dtype=float).reshape(-1, 3), needle[0], atol=1e-6)
    assert [c.ContourGeometricType for c in by_name["seeds"].ContourSequence] == ["POINT", "POINT"]


def test_rtstruct_without_ct_slice_uids_still_conforms(tmp_path):
    ct = make_ct(shape=(4, 10, 10), direction=np.eye(3))  # never written: no sop_instance_uids
    path = write_rtstruct(tmp_path / "RS.dcm", ct, {"GTV": [_square(ORIGIN[2] + 2.5)]})
    assert dciodvfy(path)[0] == []
    ds = pydicom.dcmread(path)
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == ct.frame_of_reference_uid != ""


def test_rtstruct_rejects_a_malformed_contour(ct_written, tmp_path):
    ct, _, _ = ct_written
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        write_rtstruct(tmp_path / "RS.dcm", ct, {"bad": [np.zeros((4, 2))]})


def _dose_on(ct: Volume) -> Volume:
    pts = ct.voxel_centers_lps()
    seed = ct.ijk_to_lps([16, 20, 6])
    r2 = np.sum((pts - seed) ** 2, axis=1) + 1.0
    dose = (5000.0 / r2).reshape(ct.array.shape).astype(np.float32)  # ~1/r^2, 0.1 to 5000 Gy
    return ct.with_array(dose)


@pytest.mark.parametrize("bits", [16, 32])
def test_rtdose_round_trip_within_scaling_precision(ct_written, tmp_path, bits):
    ct, patient, _ = ct_written
    dose = _dose_on(ct)
    path = write_rtdose(tmp_path / "RD.dcm", dose, ct, patient, plan_sop_uid="1.2.826.0.1.3680043.8.498.9",
                        comment="TG-43 2D", bits=bits)
    ds = pydicom.dcmread(path)
    assert (ds.BitsAllocated, ds.NumberOfFrames, ds.DoseUnits, ds.DoseType, ds.DoseSummationType) == \
        (bits, ct.array.shape[0], "GY", "PHYSICAL", "PLAN")
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == "1.2.826.0.1.3680043.8.498.9"
    assert ds.FrameOfReferenceUID == ct.frame_of_reference_uid
    scaling = float(ds.DoseGridScaling)
    assert ds.pixel_array.max() <= 2 ** bits - 1
    assert scaling <= float(dose.array.max()) / (2 ** bits - 1) * 1.0001  # the full range is used
    back = read_rtdose(path)
    np.testing.assert_allclose(back.array, dose.array, atol=scaling / 2 + 1e-6 * dose.array.max(), rtol=1e-6)
    np.testing.assert_allclose(back.origin_mm, ct.origin_mm, atol=1e-6)
    np.testing.assert_allclose(back.spacing_mm, ct.spacing_mm, atol=1e-6)
    np.testing.assert_allclose(back.direction, ct.direction, atol=1e-9)  # feet-first k survives
    assert back.frame_of_reference_uid == ct.frame_of_reference_uid
    np.testing.assert_allclose([float(v) for v in ds.GridFrameOffsetVector], -2.5 * np.arange(12), atol=1e-9)


def test_rtdose_passes_dciodvfy(ct_written, tmp_path):
    # dicom3tools (2022) aborts on any 32-bit Pixel Data (assertion in Proposal14EncodingRules), so the IOD
    # is checked on the 16-bit form of the same writer; the 32-bit form differs only in Bits Allocated/Stored.
    ct, patient, _ = ct_written
    for plan_uid in ("1.2.826.0.1.3680043.8.498.9", None):
        path = write_rtdose(tmp_path / f"RD{plan_uid is None}.dcm", _dose_on(ct), ct, patient,
                            plan_sop_uid=plan_uid, bits=16)
        errors, warnings = dciodvfy(path)
        assert errors == [] and warnings == []
    assert "no RT Plan object" in pydicom.dcmread(path).DoseComment


def test_rtdose_on_a_grid_without_ct(tmp_path):
    grid = grid_volume([-10.0, 5.0, 20.0], [10.0, 25.0, 30.0], 2.0, frame_of_reference_uid="1.2.3.4.5")
    grid.array[:] = np.linspace(0.0, 160.0, grid.array.size, dtype=np.float32).reshape(grid.array.shape)
    path = write_rtdose(tmp_path / "RD.dcm", grid, bits=16)
    assert dciodvfy(path)[0] == []
    back = read_rtdose(path)
    assert back.frame_of_reference_uid == "1.2.3.4.5"
    np.testing.assert_allclose(back.origin_mm, grid.origin_mm)
    np.testing.assert_allclose(back.array, grid.array, atol=160.0 / 65535)
    assert back.ijk_to_lps([3, 2, 1]) == pytest.approx(grid.ijk_to_lps([3, 2, 1]))


def test_rtdose_refuses_negative_dose(tmp_path):
    grid = grid_volume([0, 0, 0], [4, 4, 4], 2.0)
    grid.array[0, 0, 0] = -1.0
    with pytest.raises(InputError, match="negative"):
        write_rtdose(tmp_path / "RD.dcm", grid)


def test_read_rtdose_refuses_other_objects(ct_written):
    _, _, paths = ct_written
    with pytest.raises(InputError, match="not an RT Dose"):
        read_rtdose(paths[0])
    with pytest.raises(InputError, match="cannot read"):
        read_rtdose(Path(paths[0]).with_name("missing.dcm"))


# --- the product's own readers (dicom_ct, structures) read what we write -----------------------------------
def test_ct_series_loads_back_with_load_ct_series(ct_written):
    from navigator.io.dicom import load_ct_series

    ct, patient, paths = ct_written
    back = load_ct_series(paths[0].parent)
    assert (back.series_uid, back.frame_of_reference_uid, back.study_uid) == \
        (ct.series_uid, ct.frame_of_reference_uid, ct.study_uid)
    assert back.meta["patient_position"] == "FFS" and back.meta["PatientSex"] == "F"
    np.testing.assert_allclose(back.spacing_mm, SPACING, atol=1e-6)
    kk, jj, ii = np.indices(ct.array.shape)
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    t = np.rint(back.lps_to_ijk(ct.ijk_to_lps(ijk))).astype(int)
    np.testing.assert_allclose(back.ijk_to_lps(t), ct.ijk_to_lps(ijk), atol=1e-4)
    np.testing.assert_array_equal(back.array[t[:, 2], t[:, 1], t[:, 0]], np.rint(ct.array).ravel())
    # the loader's slice order and ours name the same instances at the same positions
    ours = dict(zip(ct.meta["sop_instance_uids"], [ct.ijk_to_lps([0, 0, k]) for k in range(len(paths))]))
    for k, uid in enumerate(back.meta["sop_instance_uids"]):
        np.testing.assert_allclose(ours[uid], back.ijk_to_lps([0, 0, k]), atol=1e-4)


def test_real_feet_first_series_survives_a_rewrite(ibsi_dir, tmp_path):
    from navigator.io.dicom import load_ct_series

    real = load_ct_series(ibsi_dir / "STS_004" / "ct")
    assert real.meta["patient_position"] == "FFS"
    paths = write_ct_series(real, tmp_path / "ct", series_uid=new_uid(), patient_position="FFS")
    # StudyID of this export is 17 characters, over SH's 16: kept as the CT has it (a cut value no longer matches
    # the study), so dciodvfy reports in our slices the VR error it reports in the source's, and nothing else
    source = sorted((ibsi_dir / "STS_004" / "ct").glob("*.dcm"))[0]
    assert errors_not_in_source(dciodvfy(paths[0])[0], source) == []
    assert errors_not_in_source(dciodvfy(paths[-1])[0], source) == []
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).StudyID == real.meta["StudyID"] == "IBSI_1_STS_004_CT"
    again = load_ct_series(tmp_path / "ct")
    np.testing.assert_allclose(again.origin_mm, real.origin_mm, atol=1e-4)
    np.testing.assert_allclose(again.spacing_mm, real.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(again.direction, real.direction, atol=1e-6)
    np.testing.assert_array_equal(again.array, real.array)
    assert again.frame_of_reference_uid == real.frame_of_reference_uid and again.patient_id == real.patient_id


def test_rtstruct_reads_back_with_read_structure_set(ct_written, tmp_path):
    from navigator.io.dicom import read_structure_set

    ct, patient, _ = ct_written
    zs = [ct.ijk_to_lps([0, 0, k])[2] for k in range(ct.array.shape[0])]
    gtv = [_square(zs[k]) for k in (4, 5, 6)]
    path = write_rtstruct(tmp_path / "RS.dcm", ct, {"GTV": gtv, "N1": [np.array([[0, 0, zs[5]], [0, 20, zs[5]]])]},
                          patient, roi_types={"GTV": "GTV", "N1": "BRACHY_CHANNEL"})
    back = read_structure_set(path, ct)
    assert back["GTV"].roi_type == "GTV" and back["GTV"].number == 1
    assert len(back["GTV"].contours) == 3
    for a, b in zip(back["GTV"].contours, gtv):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert back["N1"].contours == [] and back["N1"].skipped_contours == 1  # a needle track is not a polygon
    # and a Structure read back writes out again unchanged
    path2 = write_rtstruct(tmp_path / "RS2.dcm", ct, {"GTV": back["GTV"]}, patient)
    assert read_structure_set(path2, ct)["GTV"].roi_type == "GTV"


# --- issue #12: identity of the CT carried into every object, series apart, ROIs as read ------------------------
DEID_CODES = [("113100", "DCM", "Basic Application Confidentiality Profile"),
              ("113107", "DCM", "Retain Longitudinal With Modified Dates Option")]


def _deidentified_ct_on_disk(tmp_path, study_id: str, series_number: int = 5):
    """A CT written with de-identification attributes (as a de-identifying PACS export has them), loaded back."""
    from navigator.io.dicom import load_ct_series

    ct = make_ct(shape=(6, 20, 16))
    ct.meta["StudyID"] = study_id
    patient = PatientInfo.from_volume(ct)
    codes = [{"00080100": {"vr": "SH", "Value": [v]}, "00080102": {"vr": "SH", "Value": [s]},
              "00080104": {"vr": "LO", "Value": [m]}} for v, s, m in DEID_CODES]
    patient.carried = {"PatientIdentityRemoved": {"vr": "CS", "Value": ["YES"]},
                       "DeidentificationMethod": {"vr": "LO", "Value": ["Per DICOM PS 3.15 AnnexE"]},
                       "DeidentificationMethodCodeSequence": {"vr": "SQ", "Value": codes},
                       "PatientWeight": {"vr": "DS", "Value": [71.5]},
                       "StudyDescription": {"vr": "LO", "Value": ["NECK NODE"]}}
    write_ct_series(ct, tmp_path / "ct", patient, series_number=series_number, series_description="source CT")
    return load_ct_series(tmp_path / "ct"), sorted((tmp_path / "ct").glob("*.dcm"))[0]


def _derived_objects(ct, tmp_path) -> dict:
    z = ct.ijk_to_lps([0, 0, 2])[2]
    rs = write_rtstruct(tmp_path / "RS.dcm", ct, {"GTV": [_square(z)]})
    rd = write_rtdose(tmp_path / "RD.dcm", _dose_on_small(ct), ct, bits=16)
    return {"RTSTRUCT": rs, "RTDOSE": rd}


def _dose_on_small(ct: Volume) -> Volume:
    d = np.linalg.norm(ct.voxel_centers_lps() - ct.ijk_to_lps([8, 10, 3]), axis=1) + 1.0
    return ct.with_array((100.0 / d ** 2).reshape(ct.array.shape).astype(np.float32))


def test_deidentification_and_identity_of_the_ct_carried_into_every_object(tmp_path):
    ct, ct_file = _deidentified_ct_on_disk(tmp_path, "STUDY-16-CHARS!!")
    source = pydicom.dcmread(ct_file, stop_before_pixels=True)
    assert source.PatientIdentityRemoved == "YES"  # the CT writer carries them too
    for name, path in _derived_objects(ct, tmp_path).items():
        errors, _ = dciodvfy(path)
        assert errors == [], (name, errors)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for kw in ("PatientIdentityRemoved", "DeidentificationMethod", "PatientWeight", "StudyDescription",
                   "StudyID", "StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                   "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName"):
            assert str(ds.get(kw, "")) == str(source.get(kw, "")) != "", (name, kw)
        assert [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning)
                for c in ds.DeidentificationMethodCodeSequence] == DEID_CODES


def test_study_id_kept_exactly_whether_it_fits_sh_or_not(tmp_path):
    # 16 characters (SH's maximum): kept, and the objects conform
    ct, _ = _deidentified_ct_on_disk(tmp_path / "a", "ABCDEFGHIJKLMNOP")
    for path in _derived_objects(ct, tmp_path / "a").values():
        assert pydicom.dcmread(path, stop_before_pixels=True).StudyID == "ABCDEFGHIJKLMNOP"
        assert dciodvfy(path)[0] == []
    # 17 characters (real exports break the rule): still kept, not cut, since a cut StudyID no longer matches
    # the CT's study; dciodvfy then reports that one VR error, as it does in the CT itself, and nothing else
    ct, ct_file = _deidentified_ct_on_disk(tmp_path / "b", "IBSI_1_STS_004_CT")
    assert dciodvfy(ct_file)[0] != []
    for path in _derived_objects(ct, tmp_path / "b").values():
        assert pydicom.dcmread(path, stop_before_pixels=True).StudyID == "IBSI_1_STS_004_CT"
        errors = dciodvfy(path)[0]
        assert any("Study ID" in e and "Length invalid" in e for e in errors), errors
        assert errors_not_in_source(errors, ct_file) == []


def test_derived_series_numbered_above_the_ct_with_descriptions(tmp_path):
    ct, _ = _deidentified_ct_on_disk(tmp_path, "42", series_number=5)
    assert ct.meta["series_number"] == "5"
    objs = {k: pydicom.dcmread(p, stop_before_pixels=True) for k, p in _derived_objects(ct, tmp_path).items()}
    assert (int(objs["RTSTRUCT"].SeriesNumber), int(objs["RTDOSE"].SeriesNumber)) == (6, 7)
    assert objs["RTDOSE"].SeriesDescription == "navigator dose (TG-43)"


def test_roi_generation_algorithm_colour_and_type_as_read(ct_written, tmp_path):
    from navigator.core.structure import Structure
    from navigator.io.dicom import read_structure_set

    ct, patient, _ = ct_written
    z = ct.ijk_to_lps([0, 0, 5])[2]
    drawn = Structure("Node", 1, [_square(z)], color=(12, 34, 56), roi_type="GTV", generation_algorithm="MANUAL")
    path = write_rtstruct(tmp_path / "RS.dcm", ct, {"Node": drawn, "CTV": [_square(z, half=8.0)]}, patient,
                          roi_types={"CTV": "CTV"})
    assert dciodvfy(path)[0] == []
    ds = pydicom.dcmread(path)
    rois = {r.ROIName: r for r in ds.StructureSetROISequence}
    assert rois["Node"].ROIGenerationAlgorithm == "MANUAL" and "ROIGenerationDescription" not in rois["Node"]
    assert (rois["CTV"].ROIGenerationAlgorithm, rois["CTV"].ROIGenerationDescription) == ("AUTOMATIC", "navigator")
    back = read_structure_set(path, ct)
    assert (back["Node"].generation_algorithm, back["Node"].color, back["Node"].roi_type) == \
        ("MANUAL", (12, 34, 56), "GTV")
    # written again from what was read: unchanged
    again = read_structure_set(write_rtstruct(tmp_path / "RS2.dcm", ct, back, patient), ct)
    assert [(s.name, s.generation_algorithm, s.color, s.roi_type) for s in again.values()] == \
        [(s.name, s.generation_algorithm, s.color, s.roi_type) for s in back.values()]
