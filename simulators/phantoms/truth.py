"""Ground truth as JSON: what the synthetic patient really is, so every answer can be checked against it.

``truth.json`` (written by ``write_case``), all geometry LPS mm in the pre-plan CT's frame:

    {"format": "simulators.phantoms/truth", "version": 1, "case": str, "seed": int, "options": {...},
     "patient": {"patient_id", "patient_name", "study_uid", "series_uid", "frame_of_reference_uid",
                 "patient_position"},
     "ct": {"shape_ijk": [ni, nj, nk], "origin_mm": [x,y,z], "spacing_mm": [si,sj,sk],
            "direction": 3x3 (columns = i, j, k axes in LPS), "slice_thickness_mm": float},
     "target": "GTV",
     "node": {"center_mm": [x,y,z], "diameter_mm": float (equivalent sphere), "shape_volume_cc": float
              (analytic, before vessels cut into it), "necrotic": bool, "hu": float, "necrosis_hu": float},
     "structures": {name: {"volume_cc": float (partial-volume, exact to the rendering),
                           "mask_volume_cc": float (voxels with occupancy >= 0.5), "voxels": int}},
     "hu": {tissue: HU}, "scanner": {...}, "anatomy": {...}}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import anatomy as A

FORMAT = "simulators.phantoms/truth"
VERSION = 1


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    if hasattr(v, "describe"):
        return v.describe()
    return v


def patient_truth(patient) -> dict:
    ct = patient.ct
    structures = {}
    for name, mask in patient.structures.items():
        structures[name] = {"volume_cc": round(patient.structure_cc(name), 6),
                            "mask_volume_cc": round(float(mask.sum()) * ct.voxel_volume_cc, 6),
                            "voxels": int(mask.sum())}
    an = patient.anatomy
    return {
        "format": FORMAT, "version": VERSION,
        "case": patient.case, "seed": patient.seed,
        "options": {k: _jsonable(v) for k, v in patient.options.items() if k != "scanner"},
        "patient": {"patient_id": ct.patient_id, "patient_name": ct.patient_name, "study_uid": ct.study_uid,
                    "series_uid": ct.series_uid, "frame_of_reference_uid": ct.frame_of_reference_uid,
                    "patient_position": patient.patient_position},
        "ct": {"shape_ijk": list(ct.shape_ijk), "origin_mm": ct.origin_mm.tolist(),
               "spacing_mm": ct.spacing_mm.tolist(), "direction": ct.direction.tolist(),
               "slice_thickness_mm": float(ct.meta.get("slice_thickness_mm", ct.spacing_mm[2]))},
        "target": patient.target,
        "node": {"center_mm": an.node_center_mm.tolist(), "diameter_mm": float(patient.options["node_diameter_mm"]),
                 "shape_volume_cc": round(an.node_volume_mm3 / 1000.0, 6), "necrotic": an.necrosis_row is not None,
                 "hu": A.HU["node"], "necrosis_hu": A.HU["necrosis"]},
        "structures": structures,
        "hu": dict(A.HU),
        "scanner": patient.scanner.describe(),
        "anatomy": an.params,
    }


def write_truth(truth: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(truth, indent=2, default=_jsonable))
    tmp.replace(path)
    return path


def load_truth(path) -> dict:
    d = json.loads(Path(path).read_text())
    if d.get("format") != FORMAT:
        raise ValueError(f"{path}: not a phantom truth file (format {d.get('format')!r}, expected {FORMAT!r})")
    return d
