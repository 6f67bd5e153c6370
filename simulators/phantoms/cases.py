"""Synthetic patients and their scans: the pre-plan CT with structures, intraop and post-implant CTs.

Frames (all LPS mm):
- ``preplan``: the frame of the pre-plan CT (``Patient.ct``). The anatomy, the plan, and the true needles and
  seeds handed to the scan functions are in this frame: where things are in the patient's body as the pre-plan
  CT imaged it.
- ``scan``: each later CT has its own frame of reference (new UID): the patient has moved (``Motion``) and the
  table/field of view differ. ``vol.meta["truth"]`` gives the motion and every object in that scan's frame.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from navigator.errors import InputError
from navigator.core.volume import Volume

from . import anatomy as A
from .motion import Motion
from .needles import STEEL_HU, needle_occupancy
from .scanner import ScannerModel, acquire, scanner_model
from .seeds import SEED_HU, _unit, seed_occupancy
from .shapes import render_hu, structure_occupancy


@dataclass(frozen=True)
class CaseSpec:
    """A named case: which anatomy and the options that make it (any can be overridden)."""

    name: str
    site: str
    description: str
    options: dict = field(default_factory=dict)


_COMMON = dict(node_diameter_mm=30.0, necrosis=None, patient_position="HFS", slice_mm=2.5, n_slices=64,
               pixel_mm=None, matrix=None, scanner=None)
_SITE_DEFAULTS = {
    "neck": dict(pixel_mm=0.8, matrix=(256, 256), node_side="R", body_part="NECK"),
    "mediastinum": dict(pixel_mm=0.9, matrix=(384, 288), station="subcarinal", body_part="CHEST"),
}

CASES: dict[str, CaseSpec] = {c.name: c for c in [
    CaseSpec("neck", "neck", "3 cm necrotic node beside the right carotid sheath (level III), head-first supine"),
    CaseSpec("neck_small", "neck", "1 cm node beside the right carotid sheath, no necrosis",
             dict(node_diameter_mm=10.0)),
    CaseSpec("neck_large", "neck", "5 cm lobulated necrotic node bulging the right neck",
             dict(node_diameter_mm=50.0)),
    CaseSpec("neck_ffs", "neck", "3 cm node, left side, feet-first supine (flipped image axes)",
             dict(patient_position="FFS", node_side="L")),
    CaseSpec("neck_thin", "neck", "2 cm node, 1.25 mm slices", dict(node_diameter_mm=20.0, slice_mm=1.25,
                                                                   n_slices=96)),
    CaseSpec("mediastinum", "mediastinum", "3 cm subcarinal (station 7) node between the main bronchi"),
    CaseSpec("mediastinum_paratracheal", "mediastinum", "2.5 cm right paratracheal (4R) node",
             dict(node_diameter_mm=25.0, station="paratracheal")),
]}

TARGET = "GTV"
# Day and time written into the pre-plan DICOM (fixed so a case is byte-for-byte reproducible except UIDs).
STUDY_DATE, STUDY_TIME = "20260105", "091500"


def list_cases() -> list[str]:
    return list(CASES)


def _uid(*parts) -> str:
    from navigator.io.dicom import new_uid

    return new_uid("simulators.phantoms/" + "/".join(str(p) for p in parts))


def _direction(patient_position: str) -> np.ndarray:
    """Image axes of an axial series: HFS rows +x cols +y slices +z; FFS flips x and z (the scanner keeps
    the viewer at the feet), so k runs towards the feet."""
    if patient_position == "HFS":
        return np.eye(3)
    if patient_position == "FFS":
        return np.diag([-1.0, 1.0, -1.0])
    raise InputError(f"patient_position {patient_position!r} is not supported; use 'HFS' or 'FFS'")


def _grid(center_mm, pixel_mm: float, slice_mm: float, matrix, n_slices: int, direction) -> Volume:
    ni, nj = int(matrix[0]), int(matrix[1])
    spacing = np.array([pixel_mm, pixel_mm, slice_mm], dtype=float)
    half = spacing * (np.array([ni, nj, n_slices]) - 1) / 2.0
    origin = np.asarray(center_mm, dtype=float) - direction @ half
    return Volume(np.zeros((n_slices, nj, ni), dtype=np.float32), origin, spacing, direction)


@dataclass
class Patient:
    """A synthetic patient: pre-plan CT, structure masks on its grid, and the analytic truth.

    ``ct``: pre-plan CT (HU float32, frame ``preplan``). ``structures``: bool masks (k, j, i) on ``ct``'s grid
    (occupancy >= 0.5), ``occupancy``: their partial-volume fractions. The target is ``GTV``; ``BODY`` is the
    filled body outline and ``Skin`` its outer 3 mm.
    """

    case: str
    seed: int
    ct: Volume
    structures: dict[str, np.ndarray]
    occupancy: dict[str, np.ndarray]
    anatomy: A.Anatomy
    options: dict
    scanner: ScannerModel

    target: str = TARGET

    @property
    def node_center_mm(self) -> np.ndarray:
        """Centre of the node's shape (pre-plan LPS mm)."""
        return self.anatomy.node_center_mm.copy()

    @property
    def patient_position(self) -> str:
        return self.options["patient_position"]

    def structure_cc(self, name: str) -> float:
        """Partial-volume volume of a structure (cc): the truth the mask's volume should approach."""
        return float(self.occupancy[name].sum(dtype=np.float64) * self.ct.voxel_volume_cc)

    def contours(self, name: str) -> list[np.ndarray]:
        """Axial polygons (N, 3) LPS mm of a structure's mask, as written to the RT Structure Set."""
        from navigator.anatomy.structures import mask_to_contours

        return mask_to_contours(self.structures[name], self.ct)

    def truth(self) -> dict:
        """Ground truth as JSON-ready values (``truth.json``)."""
        from .truth import patient_truth

        return patient_truth(self)


def make_patient(case: str = "neck", seed: int = 0, **options) -> Patient:
    """A synthetic patient of catalogue case ``case`` (see ``CASES``); same ``seed``, same patient.

    Options (override the case's): ``node_diameter_mm`` (5-60, equivalent-sphere diameter of the node),
    ``necrosis`` (None: only nodes >= 15 mm), ``patient_position`` ("HFS"/"FFS"), ``slice_mm``, ``n_slices``,
    ``pixel_mm``, ``matrix`` ((columns, rows)), ``scanner`` (a ``ScannerModel`` or a preset's name in
    ``scanner.SCANNERS``: sim_a, vendor_b, ...), neck: ``node_side`` ("R"/"L"),
    mediastinum: ``station`` ("subcarinal"/"paratracheal").
    """
    if case not in CASES:
        raise InputError(f"unknown phantom case {case!r}; the catalogue has {', '.join(CASES)} "
                         "(python -m simulators.phantoms list)")
    spec = CASES[case]
    opts = {**_COMMON, **_SITE_DEFAULTS[spec.site], **spec.options}
    unknown = set(options) - set(opts)
    if unknown:
        raise InputError(f"unknown option(s) {sorted(unknown)} for case {case!r}; known: {sorted(opts)}")
    opts.update(options)
    d = float(opts["node_diameter_mm"])
    if not 5.0 <= d <= 60.0:
        raise InputError(f"node_diameter_mm {d} mm is outside 5-60 mm; pick a node size in that range")
    if not 0.3 <= float(opts["slice_mm"]) <= 10.0:
        raise InputError(f"slice_mm {opts['slice_mm']} mm is outside 0.3-10 mm")
    scanner = scanner_model(opts["scanner"], ScannerModel(noise_hu=12.0 if spec.site == "neck" else 15.0))
    rng = np.random.default_rng([int(seed), int.from_bytes(case.encode()[:8], "little")])
    length = float(opts["slice_mm"]) * int(opts["n_slices"]) + 40.0
    if spec.site == "neck":
        anat = A.neck(rng, d, opts["necrosis"], length, opts["node_side"])
    else:
        anat = A.mediastinum(rng, d, opts["necrosis"], length, opts["station"])

    # field of view: the case's matrix at its pixel size, widened if the body would not fit
    matrix = tuple(int(v) for v in opts["matrix"])
    need = (anat.fov_hi_mm - anat.fov_lo_mm)[:2]
    pixel = max(float(opts["pixel_mm"]), float(np.max(need / (np.array(matrix) - 1))))
    pixel = math.ceil(pixel * 1000) / 1000
    center = 0.5 * (anat.fov_lo_mm + anat.fov_hi_mm)
    center[:2] += rng.uniform(-4, 4, size=2)
    center[2] = anat.node_center_mm[2] + rng.uniform(-8, 8)
    grid = _grid(center, pixel, float(opts["slice_mm"]), matrix, int(opts["n_slices"]),
                 _direction(opts["patient_position"]))

    ideal, _, _ = _render_profiled(anat.scene, grid, None, (), np.zeros((0, 3)), np.zeros((0, 3)),
                                   scanner.slice_profile)
    img = acquire(ideal, grid, rng, scanner)
    ct = grid.with_array(img.astype(np.float32))
    ct.patient_id = f"PHANTOM-{case.upper()}-{seed}"
    ct.patient_name = f"Phantom^{case}^{seed}"
    ct.study_uid = _uid(case, seed, "preplan", "study")
    ct.series_uid = _uid(case, seed, "preplan", "series")
    ct.frame_of_reference_uid = _uid(case, seed, "preplan", "frame")
    ct.meta = {"modality": "CT", "patient_position": opts["patient_position"],
               "slice_thickness_mm": float(opts["slice_mm"]), "BodyPartExamined": opts["body_part"],
               "StudyDate": STUDY_DATE, "StudyTime": STUDY_TIME, "series_description": "phantom pre-plan CT",
               "phantom": {"case": case, "seed": int(seed), "kind": "preplan"}}

    occupancy = {name: structure_occupancy(anat.scene, name, grid) for name in anat.scene.structures}
    masks = {name: occ >= 0.5 for name, occ in occupancy.items()}
    return Patient(case, int(seed), ct, masks, occupancy, anat, opts, scanner)


# --- later scans -----------------------------------------------------------------------------------------

def _digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a, dtype=float)).tobytes())
    return h.hexdigest()[:16]


def render_scan(patient: Patient, kind: str, motion=None, needles=(), seeds_mm=None, seed_axes=None,
                slice_mm: float = 2.5, length_mm: float = 100.0, rng=None, scanner: ScannerModel | None = None,
                center_offset_mm=None, matrix=None, pixel_mm: float | None = None) -> Volume:
    """A CT of the moved patient with needles and/or seeds, in its own frame (see module docstring).

    ``needles``: ``(entry_mm, tip_mm)`` pairs, ``seeds_mm`` (N, 3) and ``seed_axes`` (N, 3 or one 3-vector),
    all in the pre-plan frame; they move with the patient (end points and seed centres through the full
    motion, seed axes by its rigid part). ``motion``: a ``Motion``, a 4x4 ``preplan_to_scan``, or None.
    The field of view is centred on the node (+ ``center_offset_mm``, default a random few mm) over
    ``length_mm``, with the pre-plan CT's matrix and pixel size unless ``matrix`` ((columns, rows)) or
    ``pixel_mm`` are given. ``needles`` may also be ``NeedleDraw``s: their draws are then recorded in the
    truth (``needle_draws``). ``rng``: Generator or int; default derived from the patient, kind and inputs.
    ``scanner``: a ``ScannerModel`` or a preset's name (``SCANNERS``: "sim_a", "vendor_b", "vendor_c",
    "vendor_d"; default the patient's scanner); its ``slice_profile`` decides how slices are integrated.
    """
    motion = Motion.coerce(motion)
    scanner = scanner_model(scanner, patient.scanner)
    draws = [n.to_dict() for n in needles if hasattr(n, "to_dict")]
    needles = [(n.entry_mm, n.tip_mm) if hasattr(n, "entry_mm") else n for n in needles]
    needles = [(np.asarray(e, float).reshape(3), np.asarray(t, float).reshape(3)) for e, t in needles]
    seeds_pre = np.zeros((0, 3)) if seeds_mm is None else np.asarray(seeds_mm, dtype=float).reshape(-1, 3)
    axes_pre = _unit(seed_axes if seed_axes is not None else [0, 0, 1], len(seeds_pre)) if len(seeds_pre) \
        else np.zeros((0, 3))
    key = _digest(motion.rigid_preplan_to_scan, [] if motion.deformation is None
                  else motion.deformation.displacements_mm, np.array(needles).reshape(-1), seeds_pre, [slice_mm])
    if rng is None:
        rng = np.random.default_rng([patient.seed, int(key[:8], 16)])
    rng = np.random.default_rng(rng)
    if slice_mm <= 0 or length_mm < slice_mm:
        raise InputError(f"scan slice_mm {slice_mm} and length_mm {length_mm} must satisfy 0 < slice <= length")
    offset = rng.uniform(-6, 6, size=3) if center_offset_mm is None else np.asarray(center_offset_mm, float)
    center = motion.preplan_to_scan(patient.node_center_mm) + offset
    n_slices = max(1, int(round(length_mm / slice_mm)))
    matrix = matrix or (patient.ct.array.shape[2], patient.ct.array.shape[1])
    pixel = float(pixel_mm or patient.ct.spacing_mm[0])
    grid = _grid(center, pixel, float(slice_mm), matrix, n_slices,
                 _direction(patient.patient_position))

    needles_scan = [(motion.preplan_to_scan(e), motion.preplan_to_scan(t)) for e, t in needles]
    seeds_scan = motion.preplan_to_scan(seeds_pre) if len(seeds_pre) else np.zeros((0, 3))
    axes_scan = motion.directions_preplan_to_scan(axes_pre) if len(seeds_pre) else np.zeros((0, 3))

    ideal, metal_hu, metal_occ = _render_profiled(patient.anatomy.scene, grid, motion, needles_scan, seeds_scan,
                                                  axes_scan, scanner.slice_profile)
    img = acquire(ideal, grid, rng, scanner, metal_hu, metal_occ)

    vol = grid.with_array(img.astype(np.float32))
    vol.patient_id = patient.ct.patient_id
    vol.patient_name = patient.ct.patient_name
    vol.study_uid = _uid(patient.case, patient.seed, "procedure", "study")
    vol.series_uid = _uid(patient.case, patient.seed, kind, key, "series")
    vol.frame_of_reference_uid = _uid(patient.case, patient.seed, kind, key, "frame")
    vol.meta = {"modality": "CT", "patient_position": patient.patient_position, "slice_thickness_mm": float(slice_mm),
                "BodyPartExamined": patient.options["body_part"], "StudyDate": STUDY_DATE, "StudyTime": "110000",
                "series_description": f"phantom {kind} CT",
                "phantom": {"case": patient.case, "seed": patient.seed, "kind": kind},
                "truth": {
                    "kind": kind,
                    "frame": "scan (this volume's LPS)",
                    "preplan_frame_of_reference_uid": patient.ct.frame_of_reference_uid,
                    "preplan_to_scan": motion.rigid_preplan_to_scan.tolist(),
                    "motion": motion.to_dict(),
                    "node_center_mm": motion.preplan_to_scan(patient.node_center_mm).tolist(),
                    "needles_mm": [[e.tolist(), t.tolist()] for e, t in needles_scan],
                    "needles_preplan_mm": [[e.tolist(), t.tolist()] for e, t in needles],
                    "needle_draws": draws,
                    "seeds_mm": seeds_scan.tolist(),
                    "seed_axes": axes_scan.tolist(),
                    "seeds_preplan_mm": seeds_pre.tolist(),
                    "seed_axes_preplan": axes_pre.tolist(),
                }}
    return vol


_PROFILE_SUB = 3   # sub-slices per slice on which a Gaussian slice profile is integrated


def _render_ideal(scene, grid: Volume, motion, needles_scan, seeds_scan, axes_scan):
    """(ideal HU, metal HU, metal occupancy) on ``grid`` with a box slice profile (each slice averaged)."""
    ideal = render_hu(scene, grid, motion)
    occ_n = needle_occupancy(grid, needles_scan)
    occ_s = seed_occupancy(grid, seeds_scan, axes_scan) if len(seeds_scan) else np.zeros_like(occ_n)
    metal_hu = occ_n * np.float32(STEEL_HU) + occ_s * np.float32(SEED_HU)
    return ideal, metal_hu, occ_n + occ_s


def _render_profiled(scene, grid: Volume, motion, needles_scan, seeds_scan, axes_scan, profile: str):
    """The ideal image and metal of ``grid`` through the scanner's slice sensitivity profile.

    ``box``: each slice averages its own thickness. ``gaussian`` (FWHM = slice thickness, as most helical
    scanners): rendered on sub-slices of a third of the thickness, one slice beyond each end, and summed with
    the Gaussian's weights at the sub-slice centres (+-4/3 slice = +-3.1 sigma), so a seed or needle in one slice
    also shows in its neighbours."""
    if profile == "box":
        ideal, metal_hu, occ = _render_ideal(scene, grid, motion, needles_scan, seeds_scan, axes_scan)
        return ideal, metal_hu, np.minimum(occ, 1.0)
    m = _PROFILE_SUB
    n = grid.array.shape[0]
    sp = grid.spacing_mm
    centre = grid.ijk_to_lps((np.array(grid.shape_ijk, float) - 1) / 2.0)
    fine = _grid(centre, float(sp[0]), float(sp[2]) / m, (grid.array.shape[2], grid.array.shape[1]),
                 m * n + 2 * m, grid.direction)
    parts = _render_ideal(scene, fine, motion, needles_scan, seeds_scan, axes_scan)
    sigma = float(sp[2]) / 2.3548
    offs = np.arange(-m, 2 * m) - (m - 1) / 2.0              # sub-slice centres, in sub-slices from the centre
    w = np.exp(-0.5 * (offs * float(sp[2]) / m / sigma) ** 2)
    w /= w.sum()
    out = []
    for a in parts:
        acc = np.zeros((n,) + a.shape[1:], dtype=np.float32)
        for s_i, wt in enumerate(w):
            acc += np.float32(wt) * a[s_i: s_i + m * n: m]
        out.append(acc)
    return out[0], out[1], np.minimum(out[2], 1.0)


def intraop_scan(patient: Patient, needles_true, motion=None, rng=None, slice_mm: float = 2.5,
                 length_mm: float = 100.0, seeds_mm=None, seed_axes=None, **kw) -> Volume:
    """Intraop CT with the true needles ``(entry_mm, tip_mm)`` (pre-plan frame) in the moved patient.
    Returns the scan (its own frame); ``vol.meta["truth"]["needles_mm"]`` are the needles in it."""
    return render_scan(patient, "intraop", motion, needles_true, seeds_mm, seed_axes, slice_mm, length_mm, rng,
                       **kw)


def postimplant_scan(patient: Patient, seeds_mm, axes, motion=None, rng=None, slice_mm: float = 2.5,
                     length_mm: float = 100.0, needles=(), **kw) -> Volume:
    """Post-implant CT with seeds at ``seeds_mm`` (N, 3) along ``axes`` (pre-plan frame). Returns the scan;
    ``vol.meta["truth"]["seeds_mm"]`` / ``["seed_axes"]`` are the seeds in its frame."""
    return render_scan(patient, "postimplant", motion, needles, seeds_mm, axes, slice_mm, length_mm, rng, **kw)


_NO_GO = ("Spine", "SpinalCord", "Sternum", "Trachea", "MainBronchus_R", "MainBronchus_L", "Esophagus", "Aorta",
          "PulmonaryArtery", "SVC", "CarotidArtery_R", "CarotidArtery_L", "JugularVein_R", "JugularVein_L",
          "Lung_R", "Lung_L")


def _path_cost(patient: Patient, center_mm, u) -> tuple[int, float]:
    """(no-go voxels crossed, path length mm) on the straight path to ``center_mm`` arriving along ``u``."""
    body = patient.structures["BODY"]
    no_go = [patient.structures[n] for n in _NO_GO if n in patient.structures]
    hits, step = 0, 0.0
    shape = np.array(patient.ct.shape_ijk)
    while step < 300.0:
        step += 1.0
        ijk = np.rint(patient.ct.lps_to_ijk(center_mm - step * np.asarray(u))).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= shape) or not body[ijk[2], ijk[1], ijk[0]]:
            break
        hits += sum(bool(m[ijk[2], ijk[1], ijk[0]]) for m in no_go)
    return hits, step


def demo_implant(patient: Patient, n_needles: int = 20, seeds_per_needle: int = 3, spacing_mm: float | None = None,
                 standoff_mm: float = 15.0):
    """A plausible implant for tests and benchmarks (not a plan): parallel needles from outside the skin through
    the node on a square lattice perpendicular to the approach, seeds evenly spaced inside the node.

    Approach: in the axial plane, from the body surface nearest the node unless that path crosses bone, airway,
    vessels or lung; then the shortest axial path that crosses the fewest such voxels. Returns ``(needles, seeds_mm, seed_axes)`` in the pre-plan
    frame: ``needles`` a list of ``(entry_mm, tip_mm)`` (entry ``standoff_mm`` outside the skin), ``seeds_mm``
    (N, 3), ``seed_axes`` (N, 3) along the needles.
    """
    c = patient.node_center_mm
    body_c = np.array(patient.anatomy.params["body_center_mm"])
    u = np.array([c[0] - body_c[0], c[1] - body_c[1], 0.0])
    u = -u / np.linalg.norm(u)             # from outside towards the node
    if _path_cost(patient, c, u)[0] > 0:
        cands = [np.array([np.cos(t), np.sin(t), 0.0]) for t in np.deg2rad(np.arange(0.0, 360.0, 10.0))]
        u = min(cands, key=lambda v: _path_cost(patient, c, v))
    e1 = np.cross(u, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    d = float(patient.options["node_diameter_mm"])
    cols = int(np.ceil(np.sqrt(n_needles)))
    rows = int(np.ceil(n_needles / cols))
    pitch = spacing_mm or max(2.0, 0.8 * d / max(cols, rows))
    body = patient.structures["BODY"]
    needles, seeds, axes = [], [], []
    for n in range(n_needles):
        a = (n % cols - 0.5 * (cols - 1)) * pitch
        b = (n // cols - 0.5 * (rows - 1)) * pitch
        p = c + a * e1 + b * e2
        # walk back along the approach until outside the body mask
        back = 0.0
        while back < 300.0:
            ijk = np.rint(patient.ct.lps_to_ijk(p - (back + 1.0) * u)).astype(int)
            inside = np.all(ijk >= 0) and np.all(ijk < np.array(patient.ct.shape_ijk)) and body[ijk[2], ijk[1], ijk[0]]
            if not inside:
                break
            back += 1.0
        entry = p - (back + standoff_mm) * u
        tip = p + 0.4 * d * u
        needles.append((entry, tip))
        for s in range(seeds_per_needle):
            depth = -0.35 * d + (s + 0.5) * 0.7 * d / seeds_per_needle
            seeds.append(p + depth * u)
            axes.append(u)
    return needles, np.array(seeds).reshape(-1, 3), np.array(axes).reshape(-1, 3)
