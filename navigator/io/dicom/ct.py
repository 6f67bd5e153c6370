"""Read a folder of single-frame CT slices into one ``Volume`` (HU, float32) in DICOM LPS mm.

Geometry comes from the headers only, never from file names or InstanceNumber:

- the slice normal is ``n = row_cosine x column_cosine`` (ImageOrientationPatient);
- each slice's position along the stack is ``s = ImagePositionPatient . n`` and slices are sorted by ``s``;
- ``Volume.direction`` columns are (row cosine, column cosine, n), so index ``k`` runs along increasing ``s``
  whatever the patient position (HFS, FFS, ...); ``origin_mm`` is the ImagePositionPatient of slice k = 0;
- ``spacing_mm`` is (PixelSpacing[1], PixelSpacing[0], slice step): DICOM PixelSpacing is (row spacing,
  column spacing) = (spacing along j, spacing along i).

A series is refused (``DicomSeriesError``) rather than guessed at when it cannot be one regular volume: missing
slices, uneven spacing, duplicate positions, gantry tilt (slice offsets not along the normal), non-orthonormal
orientation, mixed matrix or pixel spacing, non-CT modality, unreadable or truncated files.

Only the files directly inside the folder are read (no recursion). Files that are obviously not DICOM by name
(hidden files, ``.txt``, ``.json``, ...) and DICOMDIR are skipped; any other file that pydicom cannot parse is an
error, because silently skipping a truncated slice at the end of a stack would shorten the volume unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from navigator.errors import DicomSeriesError, InputError
from navigator.io.dicom._base import (CT_IMAGE_STORAGE, PatientInfo, _base_dataset, _ds, _ds_list, _fill_identity,
                                      _hu_rescale, _now, _plane_geometry, _prechecked, _quiet, _save, _uid,
                                      identity_elements)
from navigator.core.volume import Volume

__all__ = ["SeriesInfo", "list_series", "load_ct_series"]

# Study/patient tags kept in Volume.meta (by DICOM keyword) so derived RT objects can be written for the same
# patient and study.
STUDY_PATIENT_KEYWORDS = (
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)

_NOT_DICOM_SUFFIXES = {
    ".txt", ".md", ".json", ".xml", ".csv", ".html", ".htm", ".pdf", ".png", ".jpg", ".jpeg", ".gif", ".bmp",
    ".zip", ".gz", ".tar", ".ini", ".log", ".py", ".sh", ".bat", ".exe", ".db", ".nrrd", ".nii", ".mha", ".mhd",
}
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
# Transfer syntaxes whose pixel data are stored raw and can be read with numpy directly.
_NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": "<",  # implicit VR little endian
    "1.2.840.10008.1.2.1": "<",  # explicit VR little endian
    "1.2.840.10008.1.2.2": ">",  # explicit VR big endian (retired, still seen)
}
# Type 1 attributes a slice must have to be placed and scaled; a header cut short by truncation lacks them.
_REQUIRED_KEYWORDS = (
    "SOPInstanceUID", "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "Rows", "Columns", "BitsAllocated", "PixelRepresentation",
)
# Orientation cosines and direction: how far from unit length / perpendicular / identical counts as wrong.
_COSINE_TOL = 1e-3


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder (any modality)."""

    series_uid: str
    modality: str
    n_files: int
    description: str
    series_number: str
    study_uid: str
    frame_of_reference_uid: str

    def line(self) -> str:
        """One human-readable line: uid, modality, number of files, description."""
        return f"{self.series_uid}  {self.modality or '?'}  {self.n_files} files  '{self.description}'"


@dataclass
class _Header:
    path: Path
    ds: pydicom.Dataset  # read with defer_size: PixelData comes from the file on first access


# --- folder scan --------------------------------------------------------------------------------------------
def _candidate_files(folder: Path) -> list[Path]:
    if not folder.exists():
        raise DicomSeriesError(f"CT folder {folder} does not exist; give the folder that holds the CT slice files")
    if not folder.is_dir():
        raise DicomSeriesError(
            f"{folder} is a file, not a folder; give the folder that holds the CT slice files (one file per slice)"
        )
    files = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.suffix.lower() in _NOT_DICOM_SUFFIXES:
            continue
        if p.name.upper() == "DICOMDIR":
            continue
        files.append(p)
    return files


def _read_header(path: Path) -> pydicom.Dataset:
    try:
        # Large values (PixelData) are not read now but from the file when first used: one parse per file.
        return pydicom.dcmread(path, defer_size="64 KB")
    except InvalidDicomError as exc:
        raise DicomSeriesError(
            f"{path}: not a readable DICOM file ({exc}); remove it from the folder or re-export the series"
        ) from None
    except Exception as exc:  # pydicom raises many types on damaged files (EOFError, struct.error, ValueError...)
        raise DicomSeriesError(
            f"{path}: DICOM header cannot be read ({type(exc).__name__}: {exc}); the file is damaged or "
            "truncated; copy or re-export the series again"
        ) from None


def _scan(folder: Path) -> list[_Header]:
    files = _candidate_files(folder)
    headers = []
    for p in files:
        ds = _read_header(p)
        if str(ds.get("SOPClassUID", "")) == _MEDIA_STORAGE_DIRECTORY:
            continue
        headers.append(_Header(p, ds))
    if not headers:
        raise DicomSeriesError(
            f"CT folder {folder} holds no DICOM files ({len(files)} candidate files); "
            "give the folder that holds the CT slice files"
        )
    return headers


def _group(headers: list[_Header]) -> dict[str, list[_Header]]:
    groups: dict[str, list[_Header]] = {}
    for h in headers:
        uid = str(h.ds.get("SeriesInstanceUID", ""))
        if not uid:
            raise DicomSeriesError(
                f"{h.path}: SeriesInstanceUID (0020,000E) is missing; the file cannot be assigned to a series; "
                "re-export it from the scanner or PACS"
            )
        groups.setdefault(uid, []).append(h)
    return groups


def _info(uid: str, hs: list[_Header]) -> SeriesInfo:
    ds = hs[0].ds
    return SeriesInfo(
        series_uid=uid,
        modality=str(ds.get("Modality", "")),
        n_files=len(hs),
        description=str(ds.get("SeriesDescription", "")),
        series_number=str(ds.get("SeriesNumber", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
    )


def list_series(path) -> list[SeriesInfo]:
    """All series in the folder ``path`` (every modality, RTSTRUCT included), ordered by modality then number."""
    with _quiet():
        groups = _group(_scan(Path(path)))
        infos = [_info(uid, hs) for uid, hs in groups.items()]
    return sorted(infos, key=lambda s: (s.modality, s.series_number, s.series_uid))


def _series_list_text(infos) -> str:
    return "\n  " + "\n  ".join(s.line() for s in infos)


# --- per-series checks --------------------------------------------------------------------------------------
def _floats(h: _Header, keyword: str, n: int) -> np.ndarray:
    v = h.ds.get(keyword)
    try:
        arr = np.array([float(x) for x in v], dtype=float) if v is not None else None
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise DicomSeriesError(
            f"{h.path}: {keyword} is missing or not {n} numbers (value {v!r}); the slice cannot be placed in "
            "patient coordinates (the file may be truncated); re-export the series with full geometry"
        )
    return arr


def _require_same(hs: list[_Header], keyword: str, values, what: str, unit: str) -> None:
    first = values[0]
    for h, v in zip(hs, values):
        if not np.allclose(np.asarray(v, float), np.asarray(first, float), atol=1e-4, rtol=0):
            raise DicomSeriesError(
                f"{hs[0].path.parent}: {what} differs between slices ({keyword} {np.round(first, 4).tolist()}{unit} "
                f"in {hs[0].path.name}, {np.round(v, 4).tolist()}{unit} in {h.path.name}); a volume needs one "
                "value for the whole series; re-export the series as one reconstruction"
            )


def _check_series_modality(folder: Path, info: SeriesInfo, hs: list[_Header]) -> None:
    mods = sorted({str(h.ds.get("Modality", "")) for h in hs})
    if mods != ["CT"]:
        raise DicomSeriesError(
            f"{folder}: series {info.series_uid} ('{info.description}') has modality {'/'.join(mods) or 'none'}, "
            "not CT; the navigator needs a CT series (Hounsfield units); choose the CT series"
        )
    for h in hs:
        if str(h.ds.get("SOPClassUID", "")) == _ENHANCED_CT or int(h.ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomSeriesError(
                f"{h.path}: multi-frame (Enhanced CT) file; only single-frame CT Image Storage (one file per "
                "slice) is supported; export the series as classic single-frame CT images"
            )


def _geometry(folder: Path, hs: list[_Header]):
    """Sort slices along the normal and check they form one regular, untilted stack.

    Returns (order, origin LPS mm, spacing (i, j, k) mm, direction columns, (rows, columns))."""
    rows, cols, ps, iop = _image_plane(hs)
    row_cos, col_cos, normal = _orthonormal(hs[0], iop)
    if len(hs) < 2:
        raise DicomSeriesError(
            f"{folder}: series has 1 slice ({hs[0].path.name}); a volume needs at least 2 slices; "
            "export the whole series"
        )
    ipps = np.array([_floats(h, "ImagePositionPatient", 3) for h in hs])
    s = ipps @ normal
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    tol = _check_steps(folder, hs, order, s_sorted)
    _check_untilted(folder, hs, order, ipps, normal, s_sorted, tol)
    step = float((s_sorted[-1] - s_sorted[0]) / (len(hs) - 1))
    spacing = np.array([ps[1], ps[0], step])
    direction = np.column_stack([row_cos, col_cos, normal])
    return order, ipps[order[0]], spacing, direction, (rows, cols)


def _image_plane(hs: list[_Header]):
    """(rows, columns, PixelSpacing, ImageOrientationPatient) shared by every slice; DicomSeriesError otherwise."""
    iops = [_floats(h, "ImageOrientationPatient", 6) for h in hs]
    pss = [_floats(h, "PixelSpacing", 2) for h in hs]
    rows = [int(h.ds.get("Rows", 0) or 0) for h in hs]
    cols = [int(h.ds.get("Columns", 0) or 0) for h in hs]
    _require_same(hs, "Rows", rows, "the number of rows", "")
    _require_same(hs, "Columns", cols, "the number of columns", "")
    _require_same(hs, "PixelSpacing", pss, "the pixel spacing", " mm")
    _require_same(hs, "ImageOrientationPatient", iops, "the slice orientation", "")
    if rows[0] <= 0 or cols[0] <= 0:
        raise DicomSeriesError(f"{hs[0].path}: Rows {rows[0]} x Columns {cols[0]}; the image has no pixels")
    if np.any(pss[0] <= 0):
        raise DicomSeriesError(
            f"{hs[0].path}: PixelSpacing {pss[0].tolist()} mm; pixel spacing must be positive; re-export the series"
        )
    return rows[0], cols[0], pss[0], iops[0]


def _orthonormal(h: _Header, iop: np.ndarray):
    """Row and column cosines made exactly orthonormal, and the slice normal; DicomSeriesError when the file's
    are not two perpendicular unit vectors."""
    row_cos, col_cos = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row_cos) - 1) > _COSINE_TOL
        or abs(np.linalg.norm(col_cos) - 1) > _COSINE_TOL
        or abs(float(row_cos @ col_cos)) > _COSINE_TOL
    ):
        raise DicomSeriesError(
            f"{h.path}: ImageOrientationPatient {iop.tolist()} is not two perpendicular unit vectors "
            f"(lengths {np.linalg.norm(row_cos):.4f}, {np.linalg.norm(col_cos):.4f}, dot {row_cos @ col_cos:.4f}); "
            "the slice orientation is invalid; re-export the series"
        )
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos - (col_cos @ row_cos) * row_cos
    col_cos = col_cos / np.linalg.norm(col_cos)
    return row_cos, col_cos, np.cross(row_cos, col_cos)


def _check_steps(folder: Path, hs: list[_Header], order: np.ndarray, s_sorted: np.ndarray) -> float:
    """No duplicate positions, no missing slices, one slice step; returns the position tolerance (mm)."""
    steps = np.diff(s_sorted)
    median_step = float(np.median(steps))
    tol = max(0.01, 0.01 * abs(median_step))

    dup = np.nonzero(steps < tol)[0]
    if dup.size:
        a, b = hs[order[dup[0]]], hs[order[dup[0] + 1]]
        raise DicomSeriesError(
            f"{folder}: {dup.size} duplicate slice position(s), e.g. {a.path.name} and {b.path.name} both at "
            f"{s_sorted[dup[0]]:.3f} mm along the slice normal; the folder probably mixes two acquisitions or "
            "holds copies; keep one file per position or pick the reconstruction you want"
        )

    bad = np.nonzero(np.abs(steps - median_step) > tol)[0]
    if bad.size:
        ratios = steps[bad] / median_step
        if np.all((np.abs(ratios - np.round(ratios)) * median_step <= tol) & (np.round(ratios) >= 2)):
            gaps = ", ".join(
                f"{int(round(r)) - 1} missing between {s_sorted[g]:.2f} and {s_sorted[g + 1]:.2f} mm"
                for g, r in zip(bad[:5], ratios[:5])
            )
            raise DicomSeriesError(
                f"{folder}: missing slices: the slice step is {median_step:.3f} mm but {bad.size} gap(s) are "
                f"larger ({gaps}; positions along the slice normal); copy the complete series from the scanner "
                "or PACS"
            )
        distinct = np.unique(np.round(steps, 2))
        raise DicomSeriesError(
            f"{folder}: non-uniform slice spacing: steps of {', '.join(f'{d:g}' for d in distinct[:6])} mm "
            f"(tolerance {tol:.3f} mm around the median {median_step:.3f} mm); the navigator needs evenly spaced "
            "slices; re-export the series with uniform spacing (one reconstruction, one slice increment)"
        )
    return tol


def _check_untilted(folder: Path, hs: list[_Header], order: np.ndarray, ipps: np.ndarray, normal: np.ndarray,
                    s_sorted: np.ndarray, tol: float) -> None:
    """Gantry tilt (or sheared stacks): the slice origins must move along the normal only."""
    offsets = ipps[order] - ipps[order[0]]
    inplane = offsets - np.outer(offsets @ normal, normal)
    shear = np.linalg.norm(inplane, axis=1)
    worst = int(np.argmax(shear))
    if shear[worst] > tol:
        angle = np.degrees(np.arctan2(shear[worst], abs(s_sorted[worst] - s_sorted[0])))
        tilt = hs[0].ds.get("GantryDetectorTilt", None)
        tilt_txt = f", GantryDetectorTilt {float(tilt):g} deg" if tilt not in (None, "") else ""
        raise DicomSeriesError(
            f"{folder}: slices are not stacked along their normal: slice {hs[order[worst]].path.name} is shifted "
            f"{shear[worst]:.2f} mm in-plane over {abs(s_sorted[worst] - s_sorted[0]):.1f} mm "
            f"({angle:.2f} deg{tilt_txt}); a gantry-tilted or sheared series cannot be used as a volume; "
            "rescan without gantry tilt or re-export the series resampled to an orthogonal grid"
        )


# --- pixels -------------------------------------------------------------------------------------------------
def _pixels(h: _Header, rows: int, cols: int) -> np.ndarray:
    """Stored values of one slice as float32 HU (rescale applied), shape (rows, cols)."""
    ds = h.ds
    if "PixelData" not in ds:
        raise DicomSeriesError(f"{h.path}: no PixelData (7FE0,0010); the file holds no image; re-export the series")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise DicomSeriesError(f"{h.path}: SamplesPerPixel {spp}; a CT slice must be greyscale (1 sample per pixel)")
    bits = int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    file_meta = getattr(ds, "file_meta", None)
    syntax = str(file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")) if file_meta is not None else ""
    n = rows * cols
    if syntax in _NATIVE_SYNTAXES and bits in (8, 16, 32):
        dtype = np.dtype(f"{_NATIVE_SYNTAXES[syntax]}{'i' if signed else 'u'}{bits // 8}")
        try:
            raw = ds.PixelData
        except Exception as exc:
            raise DicomSeriesError(
                f"{h.path}: pixel data cannot be read ({type(exc).__name__}: {exc}); the file is damaged, "
                "truncated or was changed while loading; copy or re-export the series again"
            ) from None
        if len(raw) < n * dtype.itemsize:
            raise DicomSeriesError(
                f"{h.path}: pixel data has {len(raw)} bytes but Rows x Columns x {bits} bits needs "
                f"{n * dtype.itemsize} bytes; the file is truncated; copy or re-export the series again"
            )
        arr = np.frombuffer(raw, dtype=dtype, count=n).reshape(rows, cols)
        bits_stored = int(ds.get("BitsStored", bits) or bits)
        if bits_stored < bits:
            # Stored values occupy the low BitsStored bits; mask (and sign-extend) so stray high bits do not leak.
            arr = arr.astype(np.int64) & ((1 << bits_stored) - 1)
            if signed:
                arr = np.where(arr >= 1 << (bits_stored - 1), arr - (1 << bits_stored), arr)
    else:
        try:
            arr = ds.pixel_array
        except Exception as exc:
            raise DicomSeriesError(
                f"{h.path}: compressed pixel data (transfer syntax {syntax}) cannot be decoded here "
                f"({type(exc).__name__}: {exc}); export the series uncompressed (explicit VR little endian)"
            ) from None
        if arr.shape != (rows, cols):
            raise DicomSeriesError(f"{h.path}: decoded pixel array {arr.shape} is not Rows x Columns {(rows, cols)}")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _str(ds, keyword: str) -> str:
    v = ds.get(keyword, "")
    return "" if v is None else str(v)


# --- public -------------------------------------------------------------------------------------------------
def load_ct_series(path, series_uid: str | None = None, series_option: str = "series_uid=...") -> Volume:
    """Load the CT series in folder ``path`` as a float32 HU ``Volume`` in LPS mm.

    ``series_uid`` picks a series when the folder holds more than one CT series; without it such a folder is
    refused with the list of series (uid, modality, number of files, description) and told to pick one with
    ``series_option`` (how the caller names the choice, e.g. ``--ct-series-uid``). Non-image objects in the folder
    (RTSTRUCT, RTPLAN, ...) are ignored. See the module docstring for the geometry conventions.

    Identity: ``frame_of_reference_uid``, ``series_uid``, ``study_uid``, ``patient_id``, ``patient_name``.
    ``meta``: ``patient_position`` (e.g. 'HFS', 'FFS'), ``sop_instance_uids`` and ``source_files`` in k order,
    ``slice_thickness_mm`` (SliceThickness, may differ from the slice step ``spacing_mm[2]``; None if absent),
    ``modality``, ``series_description``, ``series_number``, ``manufacturer``, and the
    study/patient tags named by DICOM keyword: PatientBirthDate, PatientSex, StudyDate, StudyTime, StudyID,
    AccessionNumber, ReferringPhysicianName, StudyDescription; ``dicom_identity``: the de-identification and
    other identity attributes the CT has (``_base.CARRIED_IDENTITY_KEYWORDS``, DICOM JSON model by keyword), which
    every object written for this CT repeats.

    Raises ``DicomSeriesError`` on anything that would make the volume untrustworthy.
    """
    with _quiet():
        return _load(Path(path), series_uid, series_option=series_option)


def _load(folder: Path, series_uid: str | None, headers: list[_Header] | None = None,
          series_option: str = "series_uid=...") -> Volume:
    # ``headers``: slices already read from anywhere (``studies.load_ct_files``); ``folder`` then only names them
    groups = _group(_scan(folder) if headers is None else headers)
    infos = {uid: _info(uid, hs) for uid, hs in groups.items()}
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomSeriesError(
                f"{folder}: no series with SeriesInstanceUID {series_uid}; the folder holds:"
                f"{_series_list_text(infos.values())}\nchoose one of these uids"
            )
        uid = series_uid
    else:
        ct = [u for u in groups if infos[u].modality == "CT"]
        if len(ct) == 1:
            uid = ct[0]
        elif not ct:
            raise DicomSeriesError(
                f"{folder}: no CT series in the folder (modality CT); it holds:{_series_list_text(infos.values())}"
                "\nthe navigator needs a CT series; give the folder of the CT"
            )
        else:
            raise DicomSeriesError(
                f"{folder}: {len(ct)} CT series in one folder; pick one by its SeriesInstanceUID with "
                f"{series_option} UID:{_series_list_text(infos[u] for u in ct)}"
            )
    hs = groups[uid]
    _check_series_modality(folder, infos[uid], hs)
    for h in hs:
        missing = [kw for kw in _REQUIRED_KEYWORDS if h.ds.get(kw, None) in (None, "")]
        if missing:
            raise DicomSeriesError(
                f"{h.path}: required CT attribute(s) {', '.join(missing)} missing; the file is truncated or "
                "incomplete; copy or re-export the series again"
            )
    fors = sorted({_str(h.ds, "FrameOfReferenceUID") for h in hs})
    if len(fors) > 1:
        raise DicomSeriesError(
            f"{folder}: series {uid} mixes {len(fors)} FrameOfReferenceUIDs ({', '.join(fors)}); slices of one "
            "volume must share one patient frame; re-export the series"
        )
    patients = sorted({_str(h.ds, "PatientID") for h in hs})
    if len(patients) > 1:
        raise DicomSeriesError(
            f"{folder}: series {uid} mixes slices of {len(patients)} patient ids ({', '.join(map(repr, patients))});"
            " a series is of one patient: find the slices that do not belong and re-export the series"
        )
    order, origin, spacing, direction, (rows, cols) = _geometry(folder, hs)

    array = np.empty((len(hs), rows, cols), dtype=np.float32)
    for k, idx in enumerate(order):
        array[k] = _pixels(hs[idx], rows, cols)

    first = hs[order[0]].ds
    st = first.get("SliceThickness", None)
    meta = {
        "patient_position": _str(first, "PatientPosition"),
        "sop_instance_uids": [_str(hs[i].ds, "SOPInstanceUID") for i in order],
        "source_files": [str(hs[i].path) for i in order],
        "slice_thickness_mm": float(st) if st not in (None, "") else None,
        "modality": "CT",
        "series_description": _str(first, "SeriesDescription"),
        "series_number": _str(first, "SeriesNumber"),
        "manufacturer": _str(first, "Manufacturer"),
    }
    for kw in STUDY_PATIENT_KEYWORDS:
        meta[kw] = _str(first, kw)
    meta["dicom_identity"] = identity_elements(first)
    return Volume(
        array=array,
        origin_mm=origin,
        spacing_mm=spacing,
        direction=direction,
        frame_of_reference_uid=fors[0],
        series_uid=uid,
        study_uid=_str(first, "StudyInstanceUID"),
        patient_id=_str(first, "PatientID"),
        patient_name=_str(first, "PatientName"),
        meta=meta,
    )


# --- writing ----------------------------------------------------------------------------------------------
def _stored_pixels(hu_array) -> tuple[np.ndarray, float, float]:
    """(int16 stored values (k, j, i), RescaleSlope, RescaleIntercept) of a HU volume."""
    hu = np.asarray(hu_array)
    if hu.dtype.kind == "f" and not np.all(np.isfinite(hu)):
        raise InputError("CT volume has NaN or infinite values; fill them (e.g. with -1000 HU) before export")
    slope, intercept = _hu_rescale(hu)
    if slope == 1.0 and intercept == 0.0:  # the common case, kept in the input's precision (fast)
        return np.rint(hu).astype("<i2"), slope, intercept
    stored = np.clip(np.rint((hu.astype(np.float64) - intercept) / slope), -32768, 32767).astype("<i2")
    return stored, slope, intercept


def _ct_slice(volume: Volume, k: int, sop_uid: str, stored: np.ndarray, c: dict):
    """The CT Image dataset of slice ``k`` (``c``: the series' shared settings, see ``write_ct_series``)."""
    row_dir, col_dir, normal, _ = _plane_geometry(volume)
    date, time = _now()
    ds = _base_dataset(CT_IMAGE_STORAGE, sop_uid, c["patient"], "CT", c["series_uid"], c["series_number"],
                       c["series_description"])
    ds.PatientPosition = c["patient_position"]
    if c["body_part"]:
        ds.BodyPartExamined = c["body_part"]  # NECK / CHEST: unpaired, so no (series) Laterality
    else:
        ds.ImageLaterality = "U"  # unpaired
    ds.FrameOfReferenceUID = volume.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.InstanceNumber = k + 1
    ds.AcquisitionNumber = 1
    ds.ContentDate = date
    ds.ContentTime = time
    ds.KVP = _ds(c["kvp"])
    ipp = volume.ijk_to_lps([0.0, 0.0, float(k)])
    ds.ImagePositionPatient = _ds_list(ipp)
    ds.ImageOrientationPatient = _ds_list(np.concatenate([row_dir, col_dir]))
    ds.PixelSpacing = [_ds(volume.spacing_mm[1]), _ds(volume.spacing_mm[0])]  # (row step, column step)
    ds.SliceThickness = _ds(c["thickness"])
    ds.SliceLocation = _ds_list([float(np.dot(ipp, normal))])[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds(c["intercept"])
    ds.RescaleSlope = _ds(c["slope"])
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.PixelData = stored.tobytes()
    return ds


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

    stored, slope, intercept = _stored_pixels(volume.array)
    thickness = float(slice_thickness_mm if slice_thickness_mm is not None else volume.spacing_mm[2])
    common = {"patient": patient, "series_uid": series_uid, "series_number": series_number,
              "series_description": series_description, "patient_position": patient_position,
              "body_part": body_part, "kvp": kvp, "thickness": thickness, "slope": slope, "intercept": intercept}
    uids = [_uid(uid_seed, f"{series_uid}/{k}") for k in range(stored.shape[0])]
    paths = []
    for k in range(stored.shape[0]):
        ds = _ct_slice(volume, k, uids[k], stored[k], common)
        name = f"{uids[k]}.dcm" if file_names == "uid" else f"CT_{k + 1:04d}.dcm"
        paths.append(_save(ds, out_dir / name))
    volume.meta["sop_instance_uids"] = list(uids)
    volume.meta.setdefault("patient_position", patient_position)
    volume.meta.setdefault("slice_thickness_mm", thickness)
    return paths
