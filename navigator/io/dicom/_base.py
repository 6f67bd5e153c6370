"""What every DICOM object the navigator writes shares: UIDs, patient/study identity, the SOP Common, Patient,
Study, Series and Equipment modules, value formatting, and the Part-10 save.

Private to ``navigator.io.dicom``: its ct, rtstruct, rtdose and rtplan modules build on it. Every object is
written as Explicit VR Little Endian Part-10 files and checked against the IOD with ``dciodvfy`` (dicom3tools) in
the tests. Geometry in and out is DICOM patient coordinates (LPS, mm) of the frame named on the ``Volume``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
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
# Patient, study and de-identification attributes of the source CT that every object of an export repeats as
# the CT has them (Patient, Patient Study, General Study modules; PS3.15 E.1-1 asks derived objects of a
# de-identified study to say so too). Kept in ``Volume.meta["dicom_identity"]`` as the DICOM JSON model.
CARRIED_IDENTITY_KEYWORDS = (
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified", "IssuerOfPatientID", "OtherPatientIDsSequence", "PatientBirthTime",
    "PatientComments", "EthnicGroup", "PatientSpeciesDescription", "ResponsiblePerson", "ResponsibleOrganization",
    "StudyDescription", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianIdentificationSequence", "PatientAge", "PatientSize", "PatientWeight",
    "AdmittingDiagnosesDescription", "AdditionalPatientHistory",
)
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
    # {keyword: DICOM JSON model of the element} of CARRIED_IDENTITY_KEYWORDS the source CT has, written as-is
    carried: dict = field(default_factory=dict)
    series_number: int | None = None  # the source CT's SeriesNumber: ours are chosen above it

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
            carried={k: v for k, v in dict(m.get("dicom_identity") or {}).items() if k in CARRIED_IDENTITY_KEYWORDS},
            series_number=_int_or_none(m.get("series_number")),
        )

    def series_number_above(self, offset: int) -> int:
        """A SeriesNumber ``offset`` (>= 1) above the source CT's (above 1 when it is unknown), so that ours never
        collide with the CT's: a reader that lists the study by series number shows each object apart."""
        return max(int(self.series_number or 1), 1) + int(offset)


def _int_or_none(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def identity_elements(ds: Dataset) -> dict:
    """``{keyword: DICOM JSON model}`` of the CARRIED_IDENTITY_KEYWORDS present (non-empty) in ``ds``."""
    out = {}
    for kw in CARRIED_IDENTITY_KEYWORDS:
        if kw in ds and ds[kw].value not in (None, "", []):
            out[kw] = ds[kw].to_json_dict(None, 1 << 20)
    return out


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


def _prechecked(func):
    """Skip pydicom's per-value VR validation while ``func`` builds a dataset (pydicom's own switch).

    Every value we write is formatted to its VR here (DS <= 16 chars, lengths cut), and the per-value check
    costs ~20 us: 3 s for a structure set of 40 000 contour points. dciodvfy checks the output in the tests.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with pydicom.config.disable_value_validation():
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
    # The CT's StudyID exactly, even when it breaks SH's 16 characters (real exports do: IBSI's STS CTs have
    # 17): a cut value no longer matches the CT's study in a reader that groups by Study ID (dicompyler,
    # Orthanc), which is worse than the over-long SH that dciodvfy reports in our object as in the CT itself.
    ds.StudyID = str(patient.study_id)
    ds.AccessionNumber = str(patient.accession)[:16]
    _carry_identity(ds, patient.carried)

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


def _carry_identity(ds: Dataset, carried: dict) -> None:
    """Write the source CT's carried identity attributes (``PatientInfo.carried``) into ``ds`` as they were."""
    for kw, model in (carried or {}).items():
        tag = tag_for_keyword(kw)
        if tag is None or kw not in CARRIED_IDENTITY_KEYWORDS:
            continue
        ds.update(Dataset.from_json({f"{tag:08X}": model}))


def _save(ds: Dataset, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():  # an identity value kept as the source has it may break its VR's length (see StudyID)
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


# --- reading ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    """Real exports break VR length rules (e.g. an 18-character Study ID in SH); pydicom warns on every access.
    The checks that matter are done here explicitly, so these warnings are only noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\..*")
        yield


def sop_instance_uid_of(path) -> str:
    """The SOP Instance UID of a DICOM file (header only)."""
    with _quiet():
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
