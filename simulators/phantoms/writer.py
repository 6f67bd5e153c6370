"""A synthetic case on disk as real DICOM with ground truth beside it (cli-contract.md, "Synthetic cases").

    DIR/preplan/ct/      CT series (one file per slice)
    DIR/preplan/RS.dcm   RT Structure Set on that series (target ``GTV``, ``BODY`` typed EXTERNAL)
    DIR/truth.json       ground truth (see ``truth.py``)

Scans rendered later (intraop, post-implant) are written with ``write_scan``: ``DIR/ct/`` + ``DIR/truth.json``
(the scan's truth: motion, needles and seeds in its frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from navigator.core.volume import Volume

from .cases import Patient, make_patient
from .truth import write_truth

ROI_TYPES = {"GTV": "GTV", "BODY": "EXTERNAL"}


@dataclass
class WrittenCase:
    patient: Patient
    ct_dir: Path
    rtstruct_path: Path
    truth_path: Path


def _write_ct(ct: Volume, out_dir: Path, description: str) -> None:
    from navigator.io.dicom import PatientInfo, write_ct_series

    write_ct_series(ct, out_dir, PatientInfo.from_volume(ct), series_description=description,
                    patient_position=ct.meta.get("patient_position", "HFS"),
                    slice_thickness_mm=ct.meta.get("slice_thickness_mm"), file_names="index",
                    body_part=ct.meta.get("BodyPartExamined"), uid_seed=f"phantom/{ct.series_uid}")


def drop_collinear(poly: np.ndarray, tol_mm: float = 1e-6) -> np.ndarray:
    """The same closed polygon without its exactly collinear vertices (marching squares puts one on every
    pixel edge; a straight or 45-degree run needs only its ends). The outline, and so the mask it encloses,
    is unchanged; the RT Structure Set gets several times fewer points."""
    if len(poly) < 4:
        return poly
    prev = np.roll(poly, 1, axis=0)
    nxt = np.roll(poly, -1, axis=0)
    cross = np.linalg.norm(np.cross(poly - prev, nxt - poly), axis=1)
    span = np.linalg.norm(nxt - prev, axis=1)
    keep = cross > tol_mm * np.maximum(span, 1e-12)
    return poly[keep] if keep.sum() >= 3 else poly


def write_patient(patient: Patient, out_dir) -> WrittenCase:
    """Write a made patient (see module docstring)."""
    from navigator.io.dicom import PatientInfo, write_rtstruct

    out = Path(out_dir)
    ct_dir = out / "preplan" / "ct"
    _write_ct(patient.ct, ct_dir, patient.ct.meta.get("series_description", "phantom pre-plan CT"))
    order = [patient.target] + [n for n in patient.structures if n != patient.target]
    contours = {name: [drop_collinear(c) for c in patient.contours(name)] for name in order}
    rs = write_rtstruct(out / "preplan" / "RS.dcm", patient.ct, contours, PatientInfo.from_volume(patient.ct),
                        roi_types=ROI_TYPES, label="phantom", series_description="phantom structures",
                        uid_seed=f"phantom/{patient.ct.series_uid}/rtstruct")
    truth = write_truth(patient.truth(), out / "truth.json")
    return WrittenCase(patient, ct_dir, Path(rs), truth)


def write_case(name: str, seed: int, out_dir, **options) -> WrittenCase:
    """Make catalogue case ``name`` with ``seed`` (and options) and write it under ``out_dir``."""
    return write_patient(make_patient(name, seed, **options), out_dir)


def write_scan(scan: Volume, out_dir) -> Path:
    """Write a rendered scan: ``out_dir/ct/`` (CT series) and ``out_dir/truth.json`` (its ``meta['truth']``).
    Returns the CT folder."""
    out = Path(out_dir)
    ct_dir = out / "ct"
    _write_ct(scan, ct_dir, scan.meta.get("series_description", "phantom CT"))
    truth = dict(scan.meta.get("truth", {}))
    truth.update({"format": "simulators.phantoms/scan-truth", "version": 1, "series_uid": scan.series_uid,
                  "frame_of_reference_uid": scan.frame_of_reference_uid, "phantom": scan.meta.get("phantom")})
    write_truth(truth, out / "truth.json")
    return ct_dir
