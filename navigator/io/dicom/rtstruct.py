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
                                      MANUFACTURER,
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
                   series_number: int | None = None, uid_seed: str | None = None) -> Path:
    """Write an RT Structure Set for ``ct`` (LPS mm polygons in the CT's frame of reference).

    ``structures``: ``{name: [(N, 3) polygons]}`` or ``{name: Structure}`` (anything with ``.contours``).
    Closed polygons (N >= 3) are CLOSED_PLANAR and reference the CT slice whose plane they lie in (within
    0.05 mm; ``ct.meta["sop_instance_uids"]``); ROIs typed MARKER / CONTROL / BRACHY_CHANNEL (needle tracks given
    as 2-point lines) and any 2-point contour are OPEN_NONPLANAR; single points are POINT.
    ``roi_types``: ``{name: RTROIInterpretedType}`` (else the Structure's ``roi_type``, else ORGAN; e.g. GTV,
    CTV, PTV, AVOIDANCE, MARKER, BRACHY_CHANNEL). ROI numbers are 1..n in the order of ``structures``.
    ``colors``: ``{name: (r, g, b)}`` 0-255 (else the Structure's ``color``, else a palette colour).
    ROIGenerationAlgorithm: the Structure's ``generation_algorithm`` as read from its structure set; ROIs without
    one are ours: AUTOMATIC, ROIGenerationDescription "navigator".
    ``series_number``: default 1 above the CT's (``PatientInfo.series_number_above``).
    ``uid_seed``: derive generated UIDs from it. Returns the path; the SOP Instance UID is ``sop_instance_uid``
    (generated if None; read it back with ``pydicom.dcmread(path).SOPInstanceUID``).
    """
    roi_types = {k: str(v).upper() for k, v in (roi_types or {}).items()}
    colors = colors or {}
    patient = patient or PatientInfo.from_volume(ct)
    _fill_identity(ct, patient)
    sop_uid = sop_instance_uid or _uid(uid_seed, "rtstruct")
    number = series_number if series_number is not None else patient.series_number_above(1)
    ds = _base_dataset(RT_STRUCTURE_SET_STORAGE, sop_uid, patient, "RTSTRUCT",
                       _uid(uid_seed, f"series/{number}"), number, series_description)
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    date, time = _now()
    ds.FrameOfReferenceUID = ct.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = (label or "navigator")[:16]
    ds.StructureSetDate = date
    ds.StructureSetTime = time
    ds.ReferencedFrameOfReferenceSequence = Sequence([_referenced_frame(ct)])

    lookup = _slice_lookup(ct)
    roi_seq, contour_seq, obs_seq = [], [], []
    for roi_number, (name, value) in enumerate(structures.items(), start=1):
        roi_type = roi_types.get(name) or str(getattr(value, "roi_type", "") or "ORGAN").upper()
        color = colors.get(name) or getattr(value, "color", None) or _PALETTE[(roi_number - 1) % len(_PALETTE)]
        roi_seq.append(_roi_item(roi_number, name, ct.frame_of_reference_uid,
                                 str(getattr(value, "generation_algorithm", "") or "")))
        contour_seq.append(_roi_contour(roi_number, _contours_of(value), roi_type, color, lookup))
        obs = Dataset()
        obs.ObservationNumber = roi_number
        obs.ReferencedROINumber = roi_number
        obs.RTROIInterpretedType = roi_type
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = Sequence(roi_seq)
    ds.ROIContourSequence = Sequence(contour_seq)
    ds.RTROIObservationsSequence = Sequence(obs_seq)
    return _save(ds, path)


def _referenced_frame(ct: Volume) -> Dataset:
    """The CT's frame of reference, with its study, series and slices where the CT's slices are known."""
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
    return frame


def _roi_item(number: int, name: str, frame_of_reference_uid: str, generation_algorithm: str) -> Dataset:
    """A StructureSetROISequence item; an ROI read from another structure set keeps its generation algorithm."""
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = frame_of_reference_uid
    roi.ROIName = str(name)[:64]
    algorithm = generation_algorithm.strip().upper()
    if algorithm:
        roi.ROIGenerationAlgorithm = algorithm
    else:
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = MANUFACTURER
    return roi


def _roi_contour(number: int, contours: list, roi_type: str, color, lookup) -> Dataset:
    """A ROIContourSequence item: the colour and each contour with its geometric type (and CT slice)."""
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
    return rc


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


def structure_set_series_number(path) -> int | None:
    """The SeriesNumber of an RT Structure Set (file, or a folder holding exactly one); None when it has none."""
    with _quiet():
        ds = pydicom.dcmread(_find_rtstruct(Path(path)), stop_before_pixels=True, specific_tags=["SeriesNumber"])
    try:
        return int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        return None


def read_structure_set(path, ct: Volume | None = None) -> dict[str, Structure]:
    """Read an RT Structure Set (file, or a folder holding exactly one) -> {ROI name: Structure}.

    Contours are placed by their patient coordinates (ContourData, LPS mm); ContourImageSequence / SOP Instance
    UID references are not used (real exports reference UIDs that match nothing). Only CLOSED_PLANAR contours
    with >= 3 points are kept; others are counted in ``skipped_contours``. A duplicated ROI name gets the key
    ``"name#number"``. Each Structure keeps its ROIDisplayColor, RTROIInterpretedType and ROIGenerationAlgorithm.

    With ``ct`` given: every ROI's frame of reference must equal ``ct.frame_of_reference_uid`` (else
    ``StructureError``), and ``plane_spacing_mm`` is set to the CT slice step.
    """
    path = _find_rtstruct(Path(path))
    with _quiet():
        ds = _read_rtstruct_dataset(path)
        set_for = ""
        for item in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
            set_for = str(item.get("FrameOfReferenceUID", "")) or set_for
        set_for = set_for or str(ds.get("FrameOfReferenceUID", ""))
        rois = {}
        for item in ds.StructureSetROISequence:
            num = int(item.get("ROINumber", -1))
            rois[num] = (str(item.get("ROIName", f"ROI {num}")).strip(),
                         str(item.get("ReferencedFrameOfReferenceUID", "")) or set_for,
                         str(item.get("ROIGenerationAlgorithm", "") or "").strip())
        types = {}
        for item in ds.get("RTROIObservationsSequence", []) or []:
            types[int(item.get("ReferencedROINumber", -1))] = str(item.get("RTROIInterpretedType", "") or "")
        contours_by_roi = {int(rc.get("ReferencedROINumber", -1)): rc for rc in ds.get("ROIContourSequence", [])}
        out: dict[str, Structure] = {}
        for num, (name, for_uid, algorithm) in rois.items():
            contours, skipped, color = _roi_contours(path, name, contours_by_roi.get(num))
            if ct is not None and for_uid and ct.frame_of_reference_uid and for_uid != ct.frame_of_reference_uid:
                raise StructureError(
                    f"{path}: ROI '{name}' is in frame of reference {for_uid} but the CT series {ct.series_uid} "
                    f"is in {ct.frame_of_reference_uid}; the contours belong to another scan or registration; "
                    "give the structure set drawn on this CT"
                )
            s = Structure(name=name, number=num, contours=contours, color=color, frame_of_reference_uid=for_uid,
                          roi_type=types.get(num, ""), generation_algorithm=algorithm,
                          plane_spacing_mm=float(abs(ct.spacing_mm[2])) if ct is not None else None,
                          skipped_contours=skipped)
            out[name if name not in out else f"{name}#{num}"] = s
    return out


def _read_rtstruct_dataset(path: Path):
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
    return ds


def _roi_contours(path: Path, name: str, rc) -> tuple[list, int, tuple | None]:
    """(closed contours (N, 3) LPS mm, number of contours skipped, ROIDisplayColor or None) of one ROI."""
    contours, skipped, color = [], 0, None
    if rc is None:
        return contours, skipped, color
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
    return contours, skipped, color
