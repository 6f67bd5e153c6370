"""RT Dose: the dose grid (Gy) as a DICOM RT Dose object, and back to a ``Volume``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.sequence import Sequence

from navigator.core.volume import Volume
from navigator.errors import InputError
from navigator.io.dicom._base import (RT_DOSE_STORAGE, RT_PLAN_STORAGE, PatientInfo, _base_dataset, _ds, _ds_list,
                                      _fill_identity, _now, _plane_geometry, _prechecked, _ref, _save, _uid)

# --- RT Dose --------------------------------------------------------------------------------------------
@_prechecked
def write_rtdose(path, dose: Volume, ct: Volume | None = None, patient: PatientInfo | None = None,
                 plan_sop_uid: str | None = None, summation: str = "PLAN", comment: str = "",
                 bits: int = 32, sop_instance_uid: str | None = None, series_number: int | None = None,
                 uid_seed: str | None = None, series_description: str = "navigator dose (TG-43)") -> Path:
    """Write a dose grid (Gy, (k, j, i), LPS geometry of ``dose``) as a multi-frame RT Dose.

    Pixels are unsigned ``bits`` (32 or 16) integers; DoseGridScaling is chosen so the maximum dose uses the
    full range (precision max_dose / 2**bits). GridFrameOffsetVector holds each frame's offset (mm) along
    the slice normal from the first frame. DoseType PHYSICAL, DoseUnits GY, TissueHeterogeneityCorrection
    WATER (TG-43 dose is dose to water). The frame of reference is the dose Volume's (or the CT's if empty).

    DICOM requires a ReferencedRTPlanSequence for every summation type; give ``plan_sop_uid`` (the RT Plan
    written by ``write_rtplan``). Without one a fresh UID is referenced and the DoseComment (LO, 64 chars)
    says that no RT Plan object exists for it (e.g. a dose recomputed from a seed list).
    ``series_number``: default 2 above the CT's (``PatientInfo.series_number_above``); ``series_description``:
    SeriesDescription (LO). ``uid_seed``: derive generated UIDs from this string (reproducible output).
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
    sop_uid = sop_instance_uid or _uid(uid_seed, "rtdose")
    number = series_number if series_number is not None else patient.series_number_above(2)
    ds = _base_dataset(RT_DOSE_STORAGE, sop_uid, patient, "RTDOSE", _uid(uid_seed, f"series/{number}"), number,
                       series_description)
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = dose.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    date, time = _now()
    ds.ContentDate = date
    ds.ContentTime = time
    _dose_image(ds, dose, dose_gy, bits)
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = summation
    ds.TissueHeterogeneityCorrection = "WATER"
    if plan_sop_uid is None:
        plan_sop_uid = _uid(uid_seed, "rtdose/plan")
        comment = f"{comment}; no RT Plan object for this plan UID" if comment else \
            "seed-list dose; no RT Plan object for this plan UID"
    ds.ReferencedRTPlanSequence = Sequence([_ref(RT_PLAN_STORAGE, plan_sop_uid)])
    if comment:
        ds.DoseComment = comment[:64]  # LO
    return _save(ds, path)


def _dose_image(ds, dose: Volume, dose_gy: np.ndarray, bits: int) -> None:
    """Image Plane, Image Pixel and Multi-frame attributes, DoseGridScaling and the pixels of ``dose_gy``."""
    row_dir, col_dir, _, step = _plane_geometry(dose)
    top = float(2 ** bits - 1)
    dmax = float(dose_gy.max())
    # Scaling written as a 16-character DS, then used as read back, so stored * scaling is what a reader gets.
    scaling = float(_ds(dmax / top * (1 + 1e-9))) if dmax > 0 else 1.0
    while dmax / scaling > top:
        scaling = float(_ds(scaling * (1 + 1e-7)))
    stored = np.rint(dose_gy / scaling).astype("<u4" if bits == 32 else "<u2")
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
    ds.DoseGridScaling = _ds(scaling)
    ds.PixelData = stored.tobytes()


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
