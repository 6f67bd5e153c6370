"""DICOM objects the navigator writes: CT series, RT Structure Set, RT Dose (and RT Plan via ``dicom_rt``).

Every object is written as Explicit VR Little Endian Part-10 files and is checked against the IOD with
``dciodvfy`` (dicom3tools) in the tests. Geometry in and out is DICOM patient coordinates (LPS, mm) of the
frame of reference named on the ``Volume``; doses are Gy.

Public API: ``new_uid``, ``PatientInfo``, ``write_ct_series``, ``write_rtstruct``, ``write_rtdose``,
``read_rtdose``, and (implemented in ``dicom_rt``) ``write_rtplan``, ``read_rtplan``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from navigator import __version__
from navigator.errors import InputError
from navigator.core.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
# The standard (PS3.3 C.8.8.5) still names this retired SOP class in RTReferencedStudySequence.
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"

MANUFACTURER = "navigator"
# ROI types whose contours are lines or points (needle tracks, markers), not closed polygons.
LINE_ROI_TYPES = {"MARKER", "CONTROL", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "REGISTRATION"}
# A contour references a CT slice only if it lies in the slice's plane (contours made on another grid
# lie between slices and reference none).
_IN_PLANE_MM = 0.05
# Distinct colours for ROIs without one (RGB 0-255).
_PALETTE = [(255, 0, 0), (0, 160, 255), (255, 200, 0), (0, 200, 0), (255, 0, 255), (0, 255, 255),
            (255, 128, 0), (128, 0, 255), (128, 255, 0), (255, 0, 128)]


def new_uid(seed: str | None = None) -> str:
    """A new DICOM UID; deterministic when ``seed`` is given (same seed string -> same UID)."""
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[str(seed)])


def _uid(uid_seed: str | None, part: str) -> str:
    """A fresh UID, or with ``uid_seed`` (writers' option, for reproducible simulator output) a seeded one."""
    return new_uid(f"{uid_seed}/{part}") if uid_seed else new_uid()


@dataclass
class PatientInfo:
    """Patient and study identity shared by every object of one export."""

    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""  # YYYYMMDD or ""
    sex: str = ""  # "M", "F", "O" or ""
    study_uid: str = ""
    study_date: str = ""  # YYYYMMDD
    study_time: str = ""  # HHMMSS
    study_id: str = ""
    accession: str = ""
    referring_physician: str = ""
    frame_of_reference_uid: str = ""

    def __post_init__(self) -> None:
        if not self.study_uid:
            self.study_uid = new_uid()
        if not self.frame_of_reference_uid:
            self.frame_of_reference_uid = new_uid()
        if not self.study_date:
            now = _dt.datetime.now()
            self.study_date = now.strftime("%Y%m%d")
            self.study_time = self.study_time or now.strftime("%H%M%S")
        sex = str(self.sex or "").strip().upper()[:1]
        self.sex = sex if sex in ("M", "F", "O") else ""

    @classmethod
    def from_volume(cls, ct: Volume) -> "PatientInfo":
        """Identity of a loaded or synthetic CT: the Volume's ids plus DICOM keys found in ``ct.meta``."""
        m = ct.meta or {}
        return cls(
            patient_id=str(ct.patient_id or ""),
            patient_name=str(ct.patient_name or ""),
            birth_date=str(m.get("PatientBirthDate", "") or ""),
            sex=str(m.get("PatientSex", "") or ""),
            study_uid=str(ct.study_uid or ""),
            study_date=str(m.get("StudyDate", "") or ""),
            study_time=str(m.get("StudyTime", "") or ""),
            study_id=str(m.get("StudyID", "") or ""),
            accession=str(m.get("AccessionNumber", "") or ""),
            referring_physician=str(m.get("ReferringPhysicianName", "") or ""),
            frame_of_reference_uid=str(ct.frame_of_reference_uid or ""),
        )


# --- shared modules ---------------------------------------------------------------------------------------
def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters with as much precision as fits."""
    return format_number_as_ds(float(value))


def _ds_list(values) -> list[str]:
    # Fixed 6 decimals (1 nm) is plenty for mm coordinates and far faster than format_number_as_ds.
    out = []
    for v in np.asarray(values, dtype=float).ravel():
        s = f"{v:.6f}".rstrip("0").rstrip(".")
        out.append(s if s not in ("", "-0") else "0")
    return out


@contextlib.contextmanager
def _values_prechecked():
    """Skip pydicom's per-value VR validation while we build a dataset.

    Every value we write is formatted to its VR here (DS <= 16 chars, lengths cut), and the per-value check
    costs ~20 us: 3 s for a structure set of 40 000 contour points. dciodvfy checks the output in the tests.
    """
    saved = (pydicom.config.settings.reading_validation_mode, pydicom.config.settings.writing_validation_mode)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        (pydicom.config.settings.reading_validation_mode, pydicom.config.settings.writing_validation_mode) = saved


def _prechecked(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with _values_prechecked():
            return func(*args, **kwargs)

    return wrapper


def _da(value) -> str:
    v = str(value or "").strip()
    return v if len(v) == 8 and v.isdigit() else ""


def _tm(value) -> str:
    v = str(value or "").strip()
    return v if v[:6].isdigit() and len(v) <= 16 else ""


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _base_dataset(sop_class_uid: str, sop_instance_uid: str, patient: PatientInfo, modality: str,
                  series_uid: str, series_number: int, series_description: str = "") -> Dataset:
    """SOP Common, Patient, General Study, (RT/General) Series and General Equipment modules."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationVersionName = f"NAVIGATOR_{__version__}"[:16]
    ds.file_meta = meta

    date, time = _now()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: patient names from anywhere
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time

    # Identity copied from other systems may break VR lengths (real exports do); cut to the VR's maximum.
    ds.PatientName = str(patient.patient_name)[:64]
    ds.PatientID = str(patient.patient_id)[:64]
    ds.PatientBirthDate = _da(patient.birth_date)
    ds.PatientSex = patient.sex

    ds.StudyInstanceUID = patient.study_uid
    ds.StudyDate = _da(patient.study_date)
    ds.StudyTime = _tm(patient.study_time)
    ds.ReferringPhysicianName = str(patient.referring_physician)[:64]
    ds.StudyID = str(patient.study_id)[:16]
    ds.AccessionNumber = str(patient.accession)[:16]

    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate = date
    ds.SeriesTime = time
    if series_description:
        ds.SeriesDescription = series_description[:64]

    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER
    ds.SoftwareVersions = __version__
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ref(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def _plane_geometry(vol: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Row/column direction cosines, slice normal and the signed slice step along the normal (mm).

    DICOM writes one position per slice, so the k axis may point either way along the normal
    (feet-first / descending slices), but it must be parallel to it (no gantry tilt / shear).
    """
    row_dir = vol.direction[:, 0]
    col_dir = vol.direction[:, 1]
    normal = np.cross(row_dir, col_dir)
    k_dir = vol.direction[:, 2]
    along = float(np.dot(k_dir, normal))
    if abs(abs(along) - 1.0) > 1e-4:
        raise InputError(f"volume k axis {np.round(k_dir, 4).tolist()} is not perpendicular to its slices "
                         f"(cos = {along:.4f}); resample to an orthogonal grid before writing DICOM")
    return row_dir, col_dir, normal, along * float(vol.spacing_mm[2])


def _fill_identity(vol: Volume, patient: PatientInfo) -> None:
    """Give a Volume without identity the export's UIDs, so later objects can reference it."""
    if not vol.study_uid:
        vol.study_uid = patient.study_uid
    if not vol.frame_of_reference_uid:
        vol.frame_of_reference_uid = patient.frame_of_reference_uid
    if not vol.patient_id:
        vol.patient_id = patient.patient_id
    if not vol.patient_name:
        vol.patient_name = patient.patient_name


# --- CT -------------------------------------------------------------------------------------------------
def _hu_rescale(hu: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) so that HU = stored * slope + intercept fits int16 (slope 1 when it can)."""
    lo, hi = float(np.nanmin(hu)), float(np.nanmax(hu))
    if lo >= -32768 and hi <= 32767:
        return 1.0, 0.0
    intercept = float(np.round((hi + lo) / 2.0))
    if hi - lo <= 65000.0:
        return 1.0, intercept
    return float(np.ceil((hi - lo) / 65000.0 * 1000.0) / 1000.0), intercept


@_prechecked
def write_ct_series(volume: Volume, out_dir, patient: PatientInfo | None = None, series_uid: str | None = None,
                    series_description: str = "", patient_position: str = "HFS",
                    slice_thickness_mm: float | None = None, kvp: float = 120, series_number: int = 1,
                    file_names: str = "uid", body_part: str | None = None,
                    uid_seed: str | None = None) -> list[Path]:
    """Write ``volume`` (HU) as a CT Image Storage series, one file per k slice, into ``out_dir``.

    Pixels are int16 with RescaleSlope/Intercept (slope 1, intercept 0 unless the HU range needs more);
    ImagePositionPatient of slice k = origin + k * spacing_k * direction[:, 2] (LPS mm), so a k axis
    pointing to -z (feet-first, descending order) is written as such. File names are the SOP Instance
    UIDs (``file_names="uid"``, not in k order, like many scanners) or ``CT_0001.dcm`` (``"index"``).
    ``body_part``: BodyPartExamined (default ``volume.meta["BodyPartExamined"]`` or NECK; "" writes
    ImageLaterality U instead). ``uid_seed``: derive the generated UIDs from this string (reproducible output).

    Side effects (so structures and doses can reference the slices): sets ``volume.meta["sop_instance_uids"]``
    (k order) and ``volume.series_uid`` / ``study_uid`` / ``frame_of_reference_uid`` where empty. The series
    UID is ``series_uid``, else the volume's own: pass ``series_uid=new_uid()`` when re-exporting a changed
    copy of a loaded series.
    Returns the written paths in k order.
    """
    if volume.array.ndim != 3:
        raise InputError(f"CT volume must be 3-D (k, j, i); got shape {volume.array.shape}")
    patient = patient or PatientInfo.from_volume(volume)
    _fill_identity(volume, patient)
    if body_part is None:
        body_part = str((volume.meta or {}).get("BodyPartExamined", "NECK") or "")
    series_uid = series_uid or volume.series_uid or _uid(uid_seed, f"series/{series_number}")
    volume.series_uid = series_uid
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    row_dir, col_dir, normal, _ = _plane_geometry(volume)
    nk, nj, ni = volume.array.shape
    hu = np.asarray(volume.array)
    if hu.dtype.kind == "f" and not np.all(np.isfinite(hu)):
        raise InputError("CT volume has NaN or infinite values; fill them (e.g. with -1000 HU) before export")
    slope, intercept = _hu_rescale(hu)
    if slope == 1.0 and intercept == 0.0:  # the common case, kept in the input's precision (fast)
        stored = np.rint(hu).astype("<i2")
    else:
        stored = np.clip(np.rint((hu.astype(np.float64) - intercept) / slope), -32768, 32767).astype("<i2")
    thickness = float(slice_thickness_mm if slice_thickness_mm is not None else volume.spacing_mm[2])
    iop = _ds_list(np.concatenate([row_dir, col_dir]))
    pixel_spacing = [_ds(volume.spacing_mm[1]), _ds(volume.spacing_mm[0])]  # (row step, column step)
    date, time = _now()

    uids = [_uid(uid_seed, f"{series_uid}/{k}") for k in range(nk)]
    paths = []
    for k in range(nk):
        ds = _base_dataset(CT_IMAGE_STORAGE, uids[k], patient, "CT", series_uid, series_number,
                           series_description)
        ds.PatientPosition = patient_position
        if body_part:
            ds.BodyPartExamined = body_part  # NECK / CHEST: unpaired, so no (series) Laterality
        else:
            ds.ImageLaterality = "U"  # unpaired
        ds.FrameOfReferenceUID = volume.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ContentDate = date
        ds.ContentTime = time
        ds.KVP = _ds(kvp)
        ipp = volume.ijk_to_lps([0.0, 0.0, float(k)])
        ds.ImagePositionPatient = _ds_list(ipp)
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = _ds(thickness)
        ds.SliceLocation = _ds_list([float(np.dot(ipp, normal))])[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = nj
        ds.Columns = ni
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = stored[k].tobytes()
        name = f"{uids[k]}.dcm" if file_names == "uid" else f"CT_{k + 1:04d}.dcm"
        paths.append(_save(ds, out_dir / name))
    volume.meta["sop_instance_uids"] = list(uids)
    volume.meta.setdefault("patient_position", patient_position)
    volume.meta.setdefault("slice_thickness_mm", thickness)
    return paths


# --- RT Structure Set -----------------------------------------------------------------------------------
def _contours_of(value) -> list[np.ndarray]:
    contours = getattr(value, "contours", value)
    if isinstance(contours, np.ndarray) and contours.ndim == 2:
        contours = [contours]
    out = []
    for c in contours:
        a = np.asarray(c, dtype=float)
        if a.ndim == 1 and a.size == 3:
            a = a.reshape(1, 3)
        if a.ndim != 2 or a.shape[1] != 3 or len(a) == 0:
            raise InputError(f"a contour must be an (N, 3) array of LPS mm points; got shape {a.shape}")
        out.append(a)
    return out


def _slice_lookup(ct: Volume):
    """A function: contour points -> SOP Instance UID of the CT slice whose plane holds them, or None."""
    uids = (ct.meta or {}).get("sop_instance_uids") or []
    if len(uids) != ct.array.shape[0]:
        return None
    _, _, normal, step = _plane_geometry(ct)
    s0 = float(np.dot(ct.origin_mm, normal))

    def lookup(points: np.ndarray):
        s = points @ normal
        if np.ptp(s) > _IN_PLANE_MM:  # not in one axial plane
            return None
        k = int(np.rint((float(np.mean(s)) - s0) / step))
        if 0 <= k < len(uids) and abs(s0 + k * step - float(np.mean(s))) <= _IN_PLANE_MM:
            return uids[k]
        return None

    return lookup


@_prechecked
def write_rtstruct(path, ct: Volume, structures: dict, patient: PatientInfo | None = None,
                   roi_types: dict | None = None, colors: dict | None = None, label: str = "",
                   series_description: str = "", sop_instance_uid: str | None = None,
                   series_number: int = 2, uid_seed: str | None = None) -> Path:
    """Write an RT Structure Set for ``ct`` (LPS mm polygons in the CT's frame of reference).

    ``structures``: ``{name: [(N, 3) polygons]}`` or ``{name: Structure}`` (anything with ``.contours``).
    Closed polygons (N >= 3) are CLOSED_PLANAR and reference the CT slice whose plane they lie in (within
    0.05 mm; ``ct.meta["sop_instance_uids"]``); ROIs typed MARKER / CONTROL / BRACHY_CHANNEL (needle tracks given
    as 2-point lines) and any 2-point contour are OPEN_NONPLANAR; single points are POINT.
    ``roi_types``: ``{name: RTROIInterpretedType}`` (else the Structure's ``roi_type``, else ORGAN; e.g. GTV,
    CTV, PTV, AVOIDANCE, MARKER, BRACHY_CHANNEL). ROI numbers are 1..n in the order of ``structures``.
    ``colors``: ``{name: (r, g, b)}`` 0-255. ``uid_seed``: derive generated UIDs from it. Returns the path; the SOP Instance UID is ``sop_instance_uid``
    (generated if None; read it back with ``pydicom.dcmread(path).SOPInstanceUID``).
    """
    roi_types = {k: str(v).upper() for k, v in (roi_types or {}).items()}
    colors = colors or {}
    patient = patient or PatientInfo.from_volume(ct)
    _fill_identity(ct, patient)
    sop_uid = sop_instance_uid or _uid(uid_seed, "rtstruct")
    ds = _base_dataset(RT_STRUCTURE_SET_STORAGE, sop_uid, patient, "RTSTRUCT",
                       _uid(uid_seed, f"series/{series_number}"), series_number, series_description)
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    date, time = _now()
    ds.FrameOfReferenceUID = ct.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = (label or "navigator")[:16]
    ds.StructureSetDate = date
    ds.StructureSetTime = time

    frame = Dataset()
    frame.FrameOfReferenceUID = ct.frame_of_reference_uid
    uids = (ct.meta or {}).get("sop_instance_uids") or []
    if uids and ct.series_uid:
        series = Dataset()
        series.SeriesInstanceUID = ct.series_uid
        series.ContourImageSequence = Sequence([_ref(CT_IMAGE_STORAGE, u) for u in uids])
        study = _ref(DETACHED_STUDY_MANAGEMENT, ct.study_uid)
        study.RTReferencedSeriesSequence = Sequence([series])
        frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])

    lookup = _slice_lookup(ct)
    roi_seq, contour_seq, obs_seq = [], [], []
    for number, (name, value) in enumerate(structures.items(), start=1):
        roi_type = roi_types.get(name) or str(getattr(value, "roi_type", "") or "ORGAN").upper()
        contours = _contours_of(value)
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ct.frame_of_reference_uid
        roi.ROIName = str(name)[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi_seq.append(roi)

        color = colors.get(name) or getattr(value, "color", None) or _PALETTE[(number - 1) % len(_PALETTE)]
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [int(np.clip(c, 0, 255)) for c in list(color)[:3]]
        items = []
        for cnum, pts in enumerate(contours, start=1):
            item = Dataset()
            if len(pts) == 1:
                gtype = "POINT"
            elif len(pts) == 2 or roi_type in LINE_ROI_TYPES:
                gtype = "OPEN_NONPLANAR"
            else:
                gtype = "CLOSED_PLANAR"
                uid = lookup(pts) if lookup else None
                if uid is not None:
                    item.ContourImageSequence = Sequence([_ref(CT_IMAGE_STORAGE, uid)])
            item.ContourGeometricType = gtype
            item.NumberOfContourPoints = len(pts)
            item.ContourNumber = cnum
            item.ContourData = _ds_list(pts)
            items.append(item)
        if items:
            rc.ContourSequence = Sequence(items)
        contour_seq.append(rc)

        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = roi_type
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = Sequence(roi_seq)
    ds.ROIContourSequence = Sequence(contour_seq)
    ds.RTROIObservationsSequence = Sequence(obs_seq)
    return _save(ds, path)


# --- RT Dose --------------------------------------------------------------------------------------------
@_prechecked
def write_rtdose(path, dose: Volume, ct: Volume | None = None, patient: PatientInfo | None = None,
                 plan_sop_uid: str | None = None, summation: str = "PLAN", comment: str = "",
                 bits: int = 32, sop_instance_uid: str | None = None, series_number: int = 3,
                 uid_seed: str | None = None) -> Path:
    """Write a dose grid (Gy, (k, j, i), LPS geometry of ``dose``) as a multi-frame RT Dose.

    Pixels are unsigned ``bits`` (32 or 16) integers; DoseGridScaling is chosen so the maximum dose uses the
    full range (precision max_dose / 2**bits). GridFrameOffsetVector holds each frame's offset (mm) along
    the slice normal from the first frame. DoseType PHYSICAL, DoseUnits GY, TissueHeterogeneityCorrection
    WATER (TG-43 dose is dose to water). The frame of reference is the dose Volume's (or the CT's if empty).

    DICOM requires a ReferencedRTPlanSequence for every summation type; give ``plan_sop_uid`` (the RT Plan
    written by ``write_rtplan``). Without one a fresh UID is referenced and the DoseComment (LO, 64 chars)
    says that no RT Plan object exists for it (e.g. a dose recomputed from a seed list).
    ``uid_seed``: derive generated UIDs from this string (reproducible output).
    """
    if bits not in (16, 32):
        raise ValueError(f"bits must be 16 or 32, got {bits}")
    if dose.array.ndim != 3:
        raise InputError(f"dose grid must be 3-D (k, j, i); got shape {dose.array.shape}")
    if ct is not None:
        patient = patient or PatientInfo.from_volume(ct)
        if not dose.frame_of_reference_uid:
            dose.frame_of_reference_uid = ct.frame_of_reference_uid
    patient = patient or PatientInfo.from_volume(dose)
    _fill_identity(dose, patient)

    dose_gy = np.asarray(dose.array, dtype=np.float64)
    if not np.all(np.isfinite(dose_gy)) or dose_gy.min() < 0:
        raise InputError("dose grid has negative, NaN or infinite values; a physical dose is finite and >= 0 Gy")
    row_dir, col_dir, _, step = _plane_geometry(dose)
    top = float(2 ** bits - 1)
    dmax = float(dose_gy.max())
    # Scaling written as a 16-character DS, then used as read back, so stored * scaling is what a reader gets.
    scaling = float(_ds(dmax / top * (1 + 1e-9))) if dmax > 0 else 1.0
    while dmax / scaling > top:
        scaling = float(_ds(scaling * (1 + 1e-7)))
    stored = np.rint(dose_gy / scaling).astype("<u4" if bits == 32 else "<u2")

    sop_uid = sop_instance_uid or _uid(uid_seed, "rtdose")
    ds = _base_dataset(RT_DOSE_STORAGE, sop_uid, patient, "RTDOSE", _uid(uid_seed, f"series/{series_number}"),
                       series_number)
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = dose.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    date, time = _now()
    ds.ContentDate = date
    ds.ContentTime = time
    nk, nj, ni = dose_gy.shape
    ds.ImagePositionPatient = _ds_list(dose.origin_mm)
    ds.ImageOrientationPatient = _ds_list(np.concatenate([row_dir, col_dir]))
    ds.PixelSpacing = [_ds(dose.spacing_mm[1]), _ds(dose.spacing_mm[0])]
    ds.SliceThickness = _ds(abs(step)) if nk > 1 else ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = nj
    ds.Columns = ni
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = nk
    ds.FrameIncrementPointer = 0x3004000C  # GridFrameOffsetVector
    ds.GridFrameOffsetVector = _ds_list(np.arange(nk) * step)
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = summation
    ds.TissueHeterogeneityCorrection = "WATER"
    ds.DoseGridScaling = _ds(scaling)
    if plan_sop_uid is None:
        plan_sop_uid = _uid(uid_seed, "rtdose/plan")
        comment = f"{comment}; no RT Plan object for this plan UID" if comment else \
            "seed-list dose; no RT Plan object for this plan UID"
    ds.ReferencedRTPlanSequence = Sequence([_ref(RT_PLAN_STORAGE, plan_sop_uid)])
    if comment:
        ds.DoseComment = comment[:64]  # LO
    ds.PixelData = stored.tobytes()
    return _save(ds, path)


def read_rtdose(path) -> Volume:
    """Read an RT Dose (grid) into a Volume of float32 Gy, (k, j, i), LPS geometry from the file."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError) as exc:
        raise InputError(f"{path}: cannot read as DICOM ({exc}); give an RT Dose file") from None
    if ds.get("Modality") != "RTDOSE" or "PixelData" not in ds:
        raise InputError(f"{path}: not an RT Dose with a dose grid (Modality {ds.get('Modality')!r})")
    arr = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    arr = arr.reshape(nframes, int(ds.Rows), int(ds.Columns))
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    offsets = np.array([float(v) for v in ds.get("GridFrameOffsetVector", [0.0])] or [0.0])
    origin = np.array([float(v) for v in ds.ImagePositionPatient])
    if nframes > 1:
        steps = np.diff(offsets)
        if np.ptp(steps) > 1e-3 * max(1.0, abs(steps[0])):
            raise InputError(f"{path}: dose frames are not evenly spaced (steps {steps.min():.4g} to "
                             f"{steps.max():.4g} mm); resample the dose to a regular grid")
        # Relative (first offset 0) or absolute (first = the first frame's z) offsets: either way the
        # first frame lies at ImagePositionPatient and the step is the difference.
        step = float(steps[0])
    else:
        step = float(ds.get("SliceThickness") or 1.0) or 1.0
    k_dir = normal if step > 0 else -normal
    ps = [float(v) for v in ds.PixelSpacing]
    return Volume(
        array=arr.astype(np.float32),
        origin_mm=origin,
        spacing_mm=np.array([ps[1], ps[0], abs(step)]),
        direction=np.column_stack([row_dir, col_dir, k_dir]),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        patient_name=str(ds.get("PatientName", "")),
        meta={"sop_instance_uid": str(ds.SOPInstanceUID), "dose_summation_type": str(ds.get("DoseSummationType", "")),
              "referenced_plan_uids": [str(r.ReferencedSOPInstanceUID)
                                       for r in ds.get("ReferencedRTPlanSequence", [])]},
    )


def __getattr__(name):
    # write_rtplan / read_rtplan live in dicom_rt (which imports the helpers above); resolved lazily so either
    # module can be imported first.
    if name in ("write_rtplan", "read_rtplan"):
        from navigator.io.dicom import rtplan as dicom_rt

        return getattr(dicom_rt, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["new_uid", "PatientInfo", "write_ct_series", "write_rtstruct", "write_rtdose", "read_rtdose",
           "write_rtplan", "read_rtplan"]
