"""One past implant re-analysed: which files make the study, then seeds, delivered dose and metrics.

``study_tasks(index, options)`` turns the studies found in a PACS export (``io.dicom.find_studies``) into
``StudyTask``s: file paths only (the post-implant CT series, the RT Structure Set with the target, any RT
Plans), never pixels, so a task is small to send to a worker, and the worker reads the study from disk.
``analyse_study(task)`` (a module-level function, the unit of work on the cluster) returns the study's row;
whatever goes wrong in one study becomes its ``status`` ("error: <reason>") and the others go on.

Choice of files in a study:
- the structure set: one whose ROIs include the target (case-insensitive), preferring one drawn on a CT series
  of the study;
- the CT: the series that structure set references, else the one CT in its frame of reference, else the only
  CT of the study;
- the seed model, strength and count: the first readable brachy RT Plan of the study; without one, the
  options (``--seed-model``, ``--seed-sk-u``); the prescription for the V-values likewise (``--rx-gy``).

Delivered dose (post-implant CT frame, LPS mm): the seeds found near the target (``imaging.find_seeds``
within ``search_margin_mm`` of its box, expected count from the RT Plan; kept within ``keep_margin_mm`` of the
target itself, so that bone in the search box is not counted), TG-43 2D with the found axes
(``physics.dose_on_grid``) on a ``grid_mm`` grid in the CT's orientation over the target + ``grid_margin_mm``;
the target and organs at risk as fractional occupancy on that grid (``anatomy.structure_fraction``); metrics as
in plan.json (``physics.plan_metrics``). Organs at risk are only evaluated where they cross the dose grid
(their hottest part, next to the target, is there; D2cc is of the part inside the grid).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from navigator.errors import InputError, NavigatorError


@dataclass(frozen=True)
class StudyOptions:
    """What every study of a cohort is analysed with (picklable: it travels with each task)."""

    target: str = "GTV"
    seed_model: str | None = None     # for studies without an RT Plan
    seed_sk_u: float | None = None
    rx_gy: float | None = None        # prescription for the V-values of studies without an RT Plan
    grid_mm: float = 1.0
    grid_margin_mm: float = 15.0
    max_dose_voxels: int = 2_000_000
    search_margin_mm: float = 40.0    # seeds are searched for within this distance of the target's box...
    keep_margin_mm: float = 20.0      # ...and kept within this distance of the target (bone further away is not)


@dataclass(frozen=True)
class StudyTask:
    """The files of one study to analyse (paths only) and the options; ``problem``: why it cannot be analysed,
    known already from the headers (no CT, no structure set with the target)."""

    patient_id: str
    study_uid: str
    study_date: str
    study_time: str
    ct_series_uid: str | None
    ct_files: tuple[str, ...]
    rtstruct_file: str | None
    rtplan_files: tuple[str, ...]
    options: StudyOptions = field(default_factory=StudyOptions)
    problem: str | None = None


def study_tasks(index, options: StudyOptions) -> list[StudyTask]:
    """One task per study of ``index`` (a ``StudyIndex``), in its order."""
    return [_task(st, options) for st in index.studies]


def _task(st, options: StudyOptions) -> StudyTask:
    base = StudyTask(patient_id=st.patient_id, study_uid=st.study_uid, study_date=st.study_date,
                     study_time=st.study_time, ct_series_uid=None, ct_files=(), rtstruct_file=None,
                     rtplan_files=tuple(f for s in st.of_modality("RTPLAN") for f in s.files), options=options)
    cts = st.of_modality("CT")
    if not cts:
        kinds = ", ".join(sorted({s.modality or "?" for s in st.series}))
        return replace(base, problem=f"no CT series in the study (it holds {kinds}); the post-implant CT is needed")
    sets = st.of_modality("RTSTRUCT")
    target = options.target.lower()
    with_target = [s for s in sets if target in {n.lower() for n in s.roi_names}]
    if not with_target:
        if not sets:
            return replace(base, problem=f"no RT Structure Set in the study; the target '{options.target}' must be "
                                         "contoured on the post-implant CT")
        names = sorted({n for s in sets for n in s.roi_names})
        return replace(base, problem=f"no structure named '{options.target}' in the study's structure set(s) (they "
                                     f"hold: {', '.join(names) or 'none'}); give the target's name with --target")
    ct_uids = {s.series_uid for s in cts}
    with_target.sort(key=lambda s: not (set(s.referenced_series_uids) & ct_uids))
    rs = with_target[0]
    ct = _ct_of(rs, cts)
    if ct is None:
        return replace(base, rtstruct_file=rs.files[0],
                       problem=f"{len(cts)} CT series in the study and the structure set with '{options.target}' "
                               "references none of them; export the post-implant CT the target was drawn on")
    return replace(base, ct_series_uid=ct.series_uid, ct_files=ct.files, rtstruct_file=rs.files[0])


def _ct_of(rs, cts):
    """The CT series the structure set was drawn on."""
    for ct in cts:
        if ct.series_uid in rs.referenced_series_uids:
            return ct
    same_frame = [ct for ct in cts if rs.frame_of_reference_uid and ct.frame_of_reference_uid == rs.frame_of_reference_uid]
    if len(same_frame) == 1:
        return same_frame[0]
    return cts[0] if len(cts) == 1 else None


# --- the unit of work --------------------------------------------------------------------------------------
def analyse_study(task: StudyTask) -> dict:
    """The study's row: identity, ``status`` ("ok" or "error: <reason>"), seeds found, metrics (plan.json
    keys), where the seed data came from, warnings and seconds. Never raises: a study that fails is reported."""
    t0 = time.perf_counter()
    row = {"patient_id": task.patient_id, "study_uid": task.study_uid, "study_date": task.study_date,
           "study_time": task.study_time, "ct_series_uid": task.ct_series_uid, "status": "ok", "seeds_found": None,
           "expected_seeds": None, "seed_model": None, "seed_sk_u": None, "prescription_gy": None,
           "seed_data_from": None, "metrics": None, "warnings": [], "seeds_mm": [], "ct_files": len(task.ct_files)}
    try:
        if task.problem:
            raise InputError(task.problem)
        row.update(_analyse(task))
    except NavigatorError as exc:
        row["status"] = f"error: {_one_line(exc)}"
    except MemoryError:
        row["status"] = "error: out of memory analysing this study; give the workers more memory"
    except Exception as exc:  # noqa: BLE001 - a bug met on one study must not stop the cohort; it is reported
        row["status"] = f"error: internal error ({type(exc).__name__}: {_one_line(exc)}); please report it"
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def study_lost(task: StudyTask, exc: BaseException) -> dict:
    """The row of a study whose task never came back (its worker died: killed for memory, machine lost)."""
    return {"patient_id": task.patient_id, "study_uid": task.study_uid, "study_date": task.study_date,
            "study_time": task.study_time, "ct_series_uid": task.ct_series_uid,
            "status": f"error: its worker died while analysing it ({type(exc).__name__}: {_one_line(exc)}); "
                      "run it again, or give the workers more memory",
            "seeds_found": None, "expected_seeds": None, "seed_model": None, "seed_sk_u": None,
            "prescription_gy": None, "seed_data_from": None, "metrics": None, "warnings": [], "seeds_mm": [],
            "ct_files": len(task.ct_files), "seconds": None}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _seed_data(task: StudyTask, warnings: list) -> dict:
    """Seed model, strength, count and prescription: the study's RT Plan, else the options."""
    from navigator.io.dicom import read_rtplan

    o = task.options
    reasons = []
    for path in task.rtplan_files:
        try:
            plan = read_rtplan(path)
        except NavigatorError as exc:
            reasons.append(_one_line(exc))
            continue
        return {"seed_model": plan.seed_model, "seed_sk_u": float(plan.seed_sk_u), "expected_seeds": len(plan.seeds),
                "prescription_gy": float(plan.prescription_gy or o.rx_gy or 0) or None, "seed_data_from": "RT Plan"}
    if reasons:
        warnings.append(f"RT Plan(s) not usable ({'; '.join(reasons)}); the options give the seed data")
    if o.seed_model is None or o.seed_sk_u is None:
        raise InputError("no brachy RT Plan in the study and no --seed-model/--seed-sk-u given: the seed model and "
                         "strength are unknown; give them as options")
    return {"seed_model": o.seed_model, "seed_sk_u": float(o.seed_sk_u), "expected_seeds": None,
            "prescription_gy": o.rx_gy, "seed_data_from": "options"}


def _analyse(task: StudyTask) -> dict:
    from navigator.anatomy import targets
    from navigator.anatomy.structures import mask_of, structure_fraction
    from navigator.core.structure import find_structure
    from navigator.core.volume import box_slices, grid_volume, voxel_box
    from navigator.imaging.seed_finding import find_seeds
    from navigator.io.dicom import load_ct_files, read_structure_set
    from navigator.physics import dvh, tg43
    from navigator.physics.dose import dose_on_grid

    o = task.options
    warnings: list[str] = []
    seed = _seed_data(task, warnings)
    if not seed["prescription_gy"]:
        raise InputError("no prescription for the V-values: the study has no RT Plan with one; give --rx-gy")
    model = tg43.load_seed_model(seed["seed_model"])
    ct = load_ct_files(task.ct_files, task.ct_series_uid)
    structures = read_structure_set(task.rtstruct_file, ct=ct)
    key, target = find_structure(structures, o.target)
    mask = mask_of(key, target, ct)
    if not mask.any():
        raise InputError(f"the target '{key}' covers no voxel of the CT; check the structure set belongs to it")
    kk, jj, ii = np.nonzero(mask)
    lo_ijk = np.array([ii.min(), jj.min(), kk.min()], float) - 0.5
    hi_ijk = np.array([ii.max(), jj.max(), kk.max()], float) + 0.5
    corners = ct.ijk_to_lps(np.array([[a, b, c] for a in (lo_ijk[0], hi_ijk[0]) for b in (lo_ijk[1], hi_ijk[1])
                                      for c in (lo_ijk[2], hi_ijk[2])]))
    lo_v, hi_v = voxel_box(ct, corners, o.search_margin_mm, allow_empty=True)
    roi = np.zeros(ct.array.shape, bool)
    roi[box_slices(lo_v, hi_v)] = True
    found = find_seeds(ct, expected=seed["expected_seeds"], roi_mask=roi)
    warnings += found.warnings
    positions, axes = _near_target(found, mask, ct, lo_v, hi_v, o.keep_margin_mm, warnings)

    local = (corners - ct.origin_mm) @ ct.direction      # mm along the CT's i, j, k axes
    grid = grid_volume(local.min(0) - o.grid_margin_mm, local.max(0) + o.grid_margin_mm, o.grid_mm, like=ct,
                       max_voxels=o.max_dose_voxels, cover=False)
    dose = grid.with_array(dose_on_grid(grid, positions, axes, seed["seed_sk_u"], model))
    weights = structure_fraction(target, grid)
    oars = {}
    for name, s in structures.items():
        if name == key or targets.is_target_name(name) or targets.is_body_name(name) or \
                targets.classify_oar(name) == "skin" or not s.contours or s.roi_type.upper() in _NOT_ORGANS:
            continue
        w = structure_fraction(s, grid)
        if w.sum() > 0:
            oars[name] = w
    metrics = dvh.plan_metrics(dose, weights, oars, seed["prescription_gy"])
    return {**seed, "seeds_found": len(positions), "metrics": metrics, "warnings": warnings, "target": key,
            "seeds_mm": np.round(positions, 2).tolist(), "dose_grid_mm": float(grid.spacing_mm[0]),
            "ct_slices": int(ct.array.shape[0])}


def _near_target(found, mask: np.ndarray, ct, lo, hi, keep_mm: float, warnings: list):
    """The found seeds within ``keep_mm`` of the target (distance to its mask in mm over the search box):
    the search box reaches bone (the spine, the mandible) whose fragments can pass for seeds, and a seed
    further away adds little to the target's dose."""
    from scipy import ndimage

    from navigator.core.volume import box_slices

    sl = box_slices(lo, hi)
    dist = ndimage.distance_transform_edt(~mask[sl], sampling=ct.spacing_mm[::-1])    # numpy (k, j, i) axes
    ijk = np.rint(ct.lps_to_ijk(found.positions_mm)).astype(int) - np.asarray(lo)
    ijk = np.clip(ijk, 0, np.asarray(hi) - np.asarray(lo) - 1)
    keep = dist[ijk[:, 2], ijk[:, 1], ijk[:, 0]] <= keep_mm
    if not keep.all():
        warnings.append(f"{int((~keep).sum())} bright object(s) found more than {keep_mm:g} mm from the target were "
                        "not counted as its seeds (bone, or seeds migrated away: review the images)")
    if not keep.any():
        raise InputError(f"no seed within {keep_mm:g} mm of the target; is this the post-implant CT of this target?")
    return found.positions_mm[keep], found.axes[keep]


_NOT_ORGANS = {"EXTERNAL", "MARKER", "BRACHY_CHANNEL", "CONTROL", "REGISTRATION", "ISOCENTER", "SUPPORT", "FIXATION",
               "CAVITY", "BOLUS", "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "DOSE_REGION", "CONTRAST_AGENT"}
