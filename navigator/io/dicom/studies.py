"""Find the DICOM studies in a folder exported from a PACS, in any layout and depth.

PACS exports and archive copies put files anywhere: one folder per patient, per study or per series, several
patients mixed in one folder, a series split over two folders, names without extension (``IM000123``), UIDs
as names, upper-case ``.DCM``. So nothing here trusts a folder or a file name: every file is opened, its header
read up to the pixel data (``stop_before_pixels``, only the tags listed in ``_TAGS``), and the files are grouped
by what the headers say: patient (PatientID), study (StudyInstanceUID), then per image series
(SeriesInstanceUID) or per non-image object (one RT Structure Set, one RT Plan: each its own entry).

``find_studies(root)`` returns a ``StudyIndex`` of ``StudyFiles`` holding file *paths* only (no pixels: a study
is loaded later, by whoever analyses it, with ``load_ct_files``). The headers of a large export can be read
by a cluster's workers (``mapper``: chunks of files, each read by ``read_headers``). What is not DICOM (README.txt, .DS_Store,
Thumbs.db, a truncated header) is listed in ``StudyIndex.skipped`` with the reason; a file present twice (the
same SOPInstanceUID) is kept once and counted in ``duplicates``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from navigator.core.volume import Volume
from navigator.errors import DicomSeriesError, InputError
from navigator.io.dicom._base import _quiet
from navigator.io.dicom.ct import _NOT_DICOM_SUFFIXES, _Header, _load, _read_header

__all__ = ["SeriesFiles", "StudyFiles", "StudyIndex", "find_studies", "load_ct_files", "read_headers"]

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
# Image modalities grouped per series; anything else (RTSTRUCT, RTPLAN, RTDOSE, SR...) is one entry per object.
_IMAGE_MODALITIES = {"CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT", "SC"}
_KEYS = ["SOPClassUID", "SOPInstanceUID", "Modality", "PatientID", "PatientName", "StudyInstanceUID", "StudyDate",
         "StudyTime", "StudyDescription", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber",
         "FrameOfReferenceUID"]
_TAGS = [*_KEYS, "ReferencedFrameOfReferenceSequence", "StructureSetROISequence"]   # what a header read keeps


@dataclass(frozen=True)
class SeriesFiles:
    """One image series (all its files) or one non-image object (its one file) of a study.

    ``frame_of_reference_uid``: the series' own, or for an RT Structure Set the frame its contours are in.
    ``referenced_series_uids``: the image series an RT Structure Set was drawn on. ``roi_names``: its ROIs."""

    series_uid: str
    modality: str
    sop_class_uid: str
    description: str
    series_number: str
    frame_of_reference_uid: str
    files: tuple[str, ...]
    referenced_series_uids: tuple[str, ...] = ()
    roi_names: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"series_uid": self.series_uid, "modality": self.modality, "description": self.description,
                "files": len(self.files), "roi_names": list(self.roi_names)}


@dataclass(frozen=True)
class StudyFiles:
    """The files of one study of one patient, by series/object."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    study_time: str
    study_description: str
    series: tuple[SeriesFiles, ...]

    def of_modality(self, modality: str) -> list[SeriesFiles]:
        return [s for s in self.series if s.modality == modality]

    @property
    def n_files(self) -> int:
        return sum(len(s.files) for s in self.series)


@dataclass
class StudyIndex:
    """What ``find_studies`` found under ``root``: the studies (ordered by patient, date, uid), the number of
    files looked at, those skipped with the reason (not DICOM, unreadable header, no study), duplicates."""

    root: str
    studies: list[StudyFiles]
    files_seen: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicates: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"root": self.root, "files_seen": self.files_seen, "studies": len(self.studies),
                "patients": len({s.patient_id for s in self.studies}), "duplicates": self.duplicates,
                "skipped": len(self.skipped),
                "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped[:50]],
                "seconds": round(self.seconds, 3)}


def _candidates(root: Path) -> list[Path]:
    """Every file under ``root`` that could be DICOM, in a stable order (hidden files and folders, DICOMDIR and
    names that are obviously something else are passed over)."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(folder) / name
            if name.startswith(".") or name.upper() == "DICOMDIR" or p.suffix.lower() in _NOT_DICOM_SUFFIXES:
                continue
            out.append(p)
    return out


def read_headers(paths) -> list[tuple[str, dict | None, str]]:
    """``(path, header, reason)`` of each file: ``header`` a small dict of the tags the grouping needs (no
    pixels; picklable, so chunks of files can be read on a cluster's workers), or None and the reason the file
    is not a usable DICOM object."""
    with _quiet():
        return [(str(p), *_header(Path(p))) for p in paths]


def _header(path: Path) -> tuple[dict | None, str]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except InvalidDicomError:
        return None, "not a DICOM file (no DICM preamble)"
    except Exception as exc:  # noqa: BLE001 - damaged files raise many types (EOFError, struct.error, OSError...)
        return None, f"header cannot be read ({type(exc).__name__}: {exc})"
    if str(ds.get("SOPClassUID", "")) == _MEDIA_STORAGE_DIRECTORY:
        return None, "DICOMDIR (a media index, not an object)"
    if not ds.get("StudyInstanceUID") or not ds.get("SeriesInstanceUID"):
        return None, "no StudyInstanceUID or SeriesInstanceUID: cannot be placed in a study"
    h = {k: _str(ds, k) for k in _KEYS}
    h["Modality"] = h["Modality"].upper()
    h["refs"], h["rois"] = (), ()
    if h["Modality"] == "RTSTRUCT":
        frame, h["refs"], h["rois"] = _structure_set_refs(ds)
        h["FrameOfReferenceUID"] = frame or h["FrameOfReferenceUID"]
    return h, ""


def _str(ds, keyword: str) -> str:
    v = ds.get(keyword, "")
    return "" if v is None else str(v).strip()


def _structure_set_refs(ds) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(frame of reference, referenced image series, ROI names) of an RT Structure Set header."""
    frame, series = "", []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        frame = frame or _str(fr, "FrameOfReferenceUID")
        for st in fr.get("RTReferencedStudySequence", []) or []:
            for se in st.get("RTReferencedSeriesSequence", []) or []:
                if _str(se, "SeriesInstanceUID"):
                    series.append(_str(se, "SeriesInstanceUID"))
    names = tuple(_str(r, "ROIName") for r in ds.get("StructureSetROISequence", []) or [])
    return frame, tuple(dict.fromkeys(series)), names


def find_studies(root, progress: Callable[[int, int], None] | None = None, mapper=None,
                 chunk_files: int = 400) -> StudyIndex:
    """Walk ``root`` (any depth) and group its DICOM files by patient and study; see the module docstring.

    The headers are read in chunks of ``chunk_files`` files by ``read_headers``: here, or by ``mapper(fn,
    chunks, progress)`` (a cluster runner's ``map``, results in the chunks' order) when one is given, so a
    large export is read by many workers. ``progress(done, total)``: chunks read. Raises InputError when
    ``root`` is not a folder."""
    t0 = time.perf_counter()
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is a file, not a folder"
        raise InputError(f"--studies {root} {what}; give the folder of the PACS export (DICOM files in any layout)")
    files = [str(p) for p in _candidates(root)]
    chunks = [files[i:i + chunk_files] for i in range(0, len(files), chunk_files)]
    if mapper is not None:
        read = mapper(read_headers, chunks, progress=progress)
    else:
        read = []
        for n, c in enumerate(chunks, start=1):
            read.append(read_headers(c))
            if progress:
                progress(n, len(chunks))
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    duplicates = 0
    # (patient, study) -> {"info": header of its first file, "series": {key: [header, paths]}}
    groups: dict[tuple[str, str], dict] = {}
    for path, h, reason in (r for part in read for r in part):
        if h is None:
            skipped.append((path, reason))
            continue
        sop = h["SOPInstanceUID"]
        if sop and sop in seen:
            duplicates += 1
            continue
        seen.add(sop)
        study = groups.setdefault((h["PatientID"], h["StudyInstanceUID"]), {"info": h, "series": {}})
        key = h["SeriesInstanceUID"] if h["Modality"] in _IMAGE_MODALITIES else f"{h['SeriesInstanceUID']}/{sop}"
        study["series"].setdefault(key, [h, []])[1].append(path)
    studies = [_study(info["info"], info["series"]) for info in groups.values()]
    studies.sort(key=lambda s: (s.patient_id, s.study_date, s.study_time, s.study_uid))
    return StudyIndex(root=str(root), studies=studies, files_seen=len(files), skipped=skipped,
                      duplicates=duplicates, seconds=time.perf_counter() - t0)


def _study(info: dict, series: dict) -> StudyFiles:
    items = []
    for h, paths in series.values():
        items.append(SeriesFiles(series_uid=h["SeriesInstanceUID"], modality=h["Modality"],
                                 sop_class_uid=h["SOPClassUID"], description=h["SeriesDescription"],
                                 series_number=h["SeriesNumber"], frame_of_reference_uid=h["FrameOfReferenceUID"],
                                 files=tuple(sorted(paths)), referenced_series_uids=h["refs"], roi_names=h["rois"]))
    items.sort(key=lambda s: (s.modality, s.series_number, s.series_uid, s.files[0]))
    return StudyFiles(patient_id=info["PatientID"], patient_name=info["PatientName"],
                      study_uid=info["StudyInstanceUID"], study_date=info["StudyDate"],
                      study_time=info["StudyTime"], study_description=info["StudyDescription"],
                      series=tuple(items))


def load_ct_files(paths, series_uid: str | None = None) -> Volume:
    """Load a CT series from its files wherever they lie (``load_ct_series`` for a list of paths: the same
    checks and geometry conventions). ``series_uid`` picks one series when the files hold several."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise DicomSeriesError("no CT files given; the study has no CT series")
    folder = Path(os.path.commonpath([str(p.parent) for p in paths]))
    with _quiet():
        headers = [_Header(p, _read_header(p)) for p in paths]
        headers = [h for h in headers if str(h.ds.get("SOPClassUID", "")) != _MEDIA_STORAGE_DIRECTORY]
        return _load(folder, series_uid, headers)
