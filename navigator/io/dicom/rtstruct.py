"""RT Structure Set: writing (contours per ROI, needle tracks as lines) and reading (-> ``core.Structure``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from navigator.core.structure import Structure
from navigator.core.volume import Volume
from navigator.errors import InputError, StructureError
from navigator.io.dicom._base import (_IN_PLANE_MM, _PALETTE, CT_IMAGE_STORAGE, DETACHED_STUDY_MANAGEMENT, LINE_ROI_TYPES,
                                      RT_STRUCTURE_SET_STORAGE, PatientInfo, _base_dataset, _ds_list, _fill_identity,
                                      _now, _plane_geometry, _prechecked, _quiet, _ref, _save, _uid)

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


# --- reading ------------------------------------------------------------------------------------------------
def _find_rtstruct(path: Path) -> Path:
    if not path.exists():
        raise StructureError(f"structure set {path} does not exist; give the RT Structure Set file (RS*.dcm)")
    if path.is_file():
        return path
    found = []
    for p in sorted(path.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["Modality"])
            except Exception:
                continue
            if str(ds.get("Modality", "")) == "RTSTRUCT":
                found.append(p)
    if len(found) != 1:
        raise StructureError(
            f"folder {path} holds {len(found)} RT Structure Sets ({', '.join(p.name for p in found) or 'none'}); "
            "give the structure set file itself"
        )
    return found[0]


def read_structure_set(path, ct: Volume | None = None) -> dict[str, Structure]:
    """Read an RT Structure Set (file, or a folder holding exactly one) -> {ROI name: Structure}.

    Contours are placed by their patient coordinates (ContourData, LPS mm); ContourImageSequence / SOP Instance
    UID references are not used (real exports reference UIDs that match nothing). Only CLOSED_PLANAR contours
    with >= 3 points are kept; others are counted in ``skipped_contours``. A duplicated ROI name gets the key
    ``"name#number"``.

    With ``ct`` given: every ROI's frame of reference must equal ``ct.frame_of_reference_uid`` (else
    ``StructureError``), and ``plane_spacing_mm`` is set to the CT slice step.
    """
    path = _find_rtstruct(Path(path))
    with _quiet():
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise StructureError(
                f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc}); give the RT Structure Set file"
            ) from None
        modality = str(ds.get("Modality", ""))
        if modality != "RTSTRUCT" or "StructureSetROISequence" not in ds:
            raise StructureError(
                f"{path}: modality '{modality}', not an RT Structure Set (RTSTRUCT with StructureSetROISequence); "
                "give the structure set file (RS*.dcm)"
            )
        set_for = ""
        for item in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
            set_for = str(item.get("FrameOfReferenceUID", "")) or set_for
        set_for = set_for or str(ds.get("FrameOfReferenceUID", ""))

        rois = {}
        for item in ds.StructureSetROISequence:
            num = int(item.get("ROINumber", -1))
            rois[num] = (
                str(item.get("ROIName", f"ROI {num}")).strip(),
                str(item.get("ReferencedFrameOfReferenceUID", "")) or set_for,
            )
        types = {}
        for item in ds.get("RTROIObservationsSequence", []) or []:
            types[int(item.get("ReferencedROINumber", -1))] = str(item.get("RTROIInterpretedType", "") or "")

        out: dict[str, Structure] = {}
        contours_by_roi = {int(rc.get("ReferencedROINumber", -1)): rc for rc in ds.get("ROIContourSequence", [])}
        for num, (name, for_uid) in rois.items():
            rc = contours_by_roi.get(num)
            contours, skipped = [], 0
            color = None
            if rc is not None:
                if "ROIDisplayColor" in rc and len(rc.ROIDisplayColor) == 3:
                    color = tuple(int(c) for c in rc.ROIDisplayColor)
                for n, c in enumerate(rc.get("ContourSequence", []) or []):
                    data = c.get("ContourData", None)
                    if data is None or len(data) % 3:
                        raise StructureError(
                            f"{path}: ROI '{name}' contour {n}: ContourData has {0 if data is None else len(data)} "
                            "values, not a multiple of 3 (x, y, z mm); the file is damaged; re-export it"
                        )
                    pts = np.asarray([float(v) for v in data], dtype=float).reshape(-1, 3)
                    if str(c.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR" or len(pts) < 3:
                        skipped += 1
                        continue
                    if not np.all(np.isfinite(pts)):
                        raise StructureError(f"{path}: ROI '{name}' contour {n} has non-finite coordinates")
                    if len(pts) > 3 and np.allclose(pts[0], pts[-1]):
                        pts = pts[:-1]  # some exporters repeat the first point; DICOM closes implicitly
                    contours.append(pts)
            if ct is not None and for_uid and ct.frame_of_reference_uid and for_uid != ct.frame_of_reference_uid:
                raise StructureError(
                    f"{path}: ROI '{name}' is in frame of reference {for_uid} but the CT series {ct.series_uid} "
                    f"is in {ct.frame_of_reference_uid}; the contours belong to another scan or registration; "
                    "give the structure set drawn on this CT"
                )
            s = Structure(
                name=name,
                number=num,
                contours=contours,
                color=color,
                frame_of_reference_uid=for_uid,
                roi_type=types.get(num, ""),
                plane_spacing_mm=float(abs(ct.spacing_mm[2])) if ct is not None else None,
                skipped_contours=skipped,
            )
            key = name if name not in out else f"{name}#{num}"
            out[key] = s
    return out
