"""``navigator dose --seeds FILE.csv --model M (--seed-sk-u S | --seed-activity-mci A | --seed-activity-mbq A)
[--ct DIR --structures RS.dcm [--target NAME --rx-gy D] [--oar NAME ...]] [--grid-mm G] --out DIR``

Independent dose check of a seed list from any planning system. The CSV has a header with columns ``x_mm,
y_mm,z_mm`` (LPS mm of the CT named with it) and optionally ``ux,uy,uz`` (seed axis; all three or none; with
axes the TG-43U1 2D formalism is used, without them the 1D one); other columns are ignored. The dose (total
dose of the permanent implant, Gy) goes on the CT grid when ``--ct`` is given, else on a ``--grid-mm`` grid
over the seeds + 20 mm. Writes ``dose.json`` and ``RTDOSE.dcm``. With structures: ``metrics`` holds, for
``--target``/``--rx-gy``, the plan.json target metrics plus ``oars`` (the ``--oar`` structures, or every other
structure); without ``--target``, ``oars``-style metrics of every structure.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np

from navigator.physics import dose as dose_engine
from navigator.physics import dvh, tg43
from navigator.errors import InputError
from navigator.core.volume import Volume, grid_volume
from navigator.commands._common import Progress, add_ct_option, add_output_options, add_strength_options, emit, number, read_ct, staged_out, warn
from navigator.io import write_json

GRID_MARGIN_MM = 20.0
MAX_VOXELS = 6e7  # ~0.5 GB of float64 work arrays


PRODUCES = ('dose.json', 'RTDOSE.dcm')  # every output; an earlier run's are replaced or removed


def add_arguments(parser) -> None:
    parser.add_argument("--seeds", required=True, metavar="FILE.csv", help="seed list: x_mm,y_mm,z_mm[,ux,uy,uz]")
    parser.add_argument("--model", required=True, help=f"seed model: {', '.join(tg43.known_models())}")
    add_strength_options(parser)
    add_ct_option(parser, "--ct", "CT series folder: dose on its grid, in its frame", required=False)
    parser.add_argument("--structures", metavar="RS.dcm", help="RT Structure Set on that CT (needs --ct)")
    parser.add_argument("--target", help="target structure name for the plan metrics (needs --rx-gy)")
    parser.add_argument("--rx-gy", type=number(0, 1000, "Gy", above=True), help="prescription dose, Gy (needs --target)")
    parser.add_argument("--oar", action="append", default=None, help="organ at risk structure name (repeatable)")
    parser.add_argument("--grid-mm", type=number(0.25, 5, "mm"), default=1.0, help="dose grid step without --ct, mm (default 1)")
    add_output_options(parser)


def read_seed_csv(path) -> tuple[np.ndarray, np.ndarray | None]:
    """(positions (N, 3) LPS mm, unit axes (N, 3) or None) from a seed CSV; InputError names file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"--seeds {path}: file not found; give the seed list CSV (x_mm,y_mm,z_mm[,ux,uy,uz])") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--seeds {path}: cannot read it as text ({exc}); give a CSV file") from None
    rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), start=1)
            if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]  # fmt: skip
    if not rows:
        raise InputError(f"--seeds {path}: the file is empty; it needs a header x_mm,y_mm,z_mm and one row per seed")
    header_line, header = rows[0]
    cols = {name.strip().lower(): k for k, name in enumerate(header)}
    missing = [c for c in ("x_mm", "y_mm", "z_mm") if c not in cols]
    if missing:
        raise InputError(
            f"--seeds {path} line {header_line}: header lacks column(s) {', '.join(missing)} "
            f"(found: {', '.join(h.strip() for h in header)}); the header must name x_mm,y_mm,z_mm"
        )
    axis_cols = [c for c in ("ux", "uy", "uz") if c in cols]
    if axis_cols and len(axis_cols) != 3:
        raise InputError(f"--seeds {path} line {header_line}: give all of ux,uy,uz for the seed axes or none of them")
    names = ["x_mm", "y_mm", "z_mm"] + (["ux", "uy", "uz"] if axis_cols else [])
    values = []
    for line, row in rows[1:]:
        rec = []
        for name in names:
            k = cols[name]
            cell = row[k].strip() if k < len(row) else ""
            try:
                v = float(cell)
            except ValueError:
                what = f"'{cell}'" if cell else "an empty cell"
                raise InputError(f"--seeds {path} line {line}: column {name} holds {what}, not a number; fix that row") from None
            if not math.isfinite(v):
                raise InputError(f"--seeds {path} line {line}: column {name} is {cell}; give a finite number")
            rec.append(v)
        if axis_cols and math.hypot(*rec[3:]) < 1e-9:
            raise InputError(f"--seeds {path} line {line}: seed axis (ux,uy,uz) = (0,0,0) has no direction")
        values.append(rec)
    if not values:
        raise InputError(f"--seeds {path}: no seed rows after the header; the list must hold at least one seed")
    data = np.array(values, dtype=float)
    axes = None
    if axis_cols:
        axes = data[:, 3:6] / np.linalg.norm(data[:, 3:6], axis=1)[:, None]
    return data[:, :3], axes


def _dose_grid(args, seeds_mm) -> tuple[Volume, Volume | None]:
    if args.ct:

        ct = read_ct(args, "--ct")
        # not a grid over a box (``grid_volume``): the dose goes on the CT's own voxels, so the RT Dose
        # overlays the given series voxel for voxel
        grid = Volume(array=np.zeros(ct.array.shape, np.float32), origin_mm=ct.origin_mm, spacing_mm=ct.spacing_mm,
                      direction=ct.direction, frame_of_reference_uid=ct.frame_of_reference_uid,
                      study_uid=ct.study_uid, patient_id=ct.patient_id, patient_name=ct.patient_name)  # fmt: skip
        outside = ~ct.contains_lps(seeds_mm)
        if outside.any():
            raise InputError(f"--seeds: seed {int(np.argmax(outside)) + 1} (data row {int(np.argmax(outside)) + 1}) at "
                             f"{seeds_mm[outside][0].round(1).tolist()} mm lies outside the CT {args.ct} "
                             f"({int(outside.sum())} of {len(seeds_mm)} seeds do); are the seeds in this CT's "
                             "patient coordinates (LPS mm)?")  # fmt: skip
        return grid, ct
    if not (args.grid_mm > 0 and math.isfinite(args.grid_mm)) or args.grid_mm > 10:
        raise InputError(f"--grid-mm {args.grid_mm} mm must be > 0 and <= 10 mm (default 1 mm)")
    lo, hi = seeds_mm.min(0) - GRID_MARGIN_MM, seeds_mm.max(0) + GRID_MARGIN_MM
    # the user named the step: a grid too big is refused, not coarsened (as ``grid_volume(max_voxels=)`` does
    # for the plan's and the post-implant grids); the count is grid_volume's own (cover=True)
    n_voxels = float(np.prod(np.ceil((hi - lo) / args.grid_mm) + 1))
    if n_voxels > MAX_VOXELS:
        raise InputError(
            f"--seeds span {' x '.join(f'{v:.0f}' for v in hi - lo - 2 * GRID_MARGIN_MM)} mm: at --grid-mm "
            f"{args.grid_mm:g} the grid would hold {n_voxels:.3g} voxels (limit {MAX_VOXELS:.0e}); check the seed "
            "coordinates for an outlier or give a coarser --grid-mm"
        )
    return grid_volume(lo, hi, args.grid_mm), None


def _metrics(args, dose_vol: Volume, ct: Volume, warnings: list[str]) -> dict:
    from navigator.anatomy.structures import structure_fraction
    from navigator.core.structure import get_structure
    from navigator.io.dicom import read_structure_set

    structures = read_structure_set(args.structures, ct=ct)
    from navigator.anatomy.structures import contour_warnings

    warnings.extend(warn("dose", contour_warnings(structures, ct)))
    if args.target:
        target = get_structure(structures, args.target)
        oar_names = args.oar if args.oar is not None else [n for n in structures if structures[n] is not target]
        oars = {n: structure_fraction(get_structure(structures, n), dose_vol) for n in oar_names}
        return dvh.plan_metrics(dose_vol, structure_fraction(target, dose_vol), oars, args.rx_gy)
    names = args.oar if args.oar is not None else list(structures)
    metrics = {"oars": {}}
    for n in names:
        w = structure_fraction(get_structure(structures, n), dose_vol)
        metrics["oars"][n] = {**dvh.oar_metrics(dose_vol.array, w, dose_vol.voxel_volume_cc),
                              "volume_cc": float(w.sum() * dose_vol.voxel_volume_cc)}  # fmt: skip
    return metrics


def run(args) -> int:
    with staged_out(args, PRODUCES) as out:
        return _run(args, out, Path(args.out))


def _run(args, out: Path, final: Path) -> int:
    if bool(args.ct) != bool(args.structures) and args.structures:
        raise InputError("--structures needs --ct (the structures are placed on that CT's grid and frame)")
    if (args.target is None) != (args.rx_gy is None):
        raise InputError("--target and --rx-gy go together: the target metrics need the prescription dose in Gy")
    if args.target and not args.structures:
        raise InputError("--target needs --ct and --structures")
    model = tg43.load_seed_model(args.model)
    sk_u = tg43.sk_u_from(activity_mci=args.activity_mci, activity_mbq=args.activity_mbq, sk_u=args.sk_u)
    seeds_mm, axes = read_seed_csv(args.seeds)
    progress = Progress(enabled=not args.json)

    grid, ct = _dose_grid(args, seeds_mm)
    progress.step(f"dose of {len(seeds_mm)} seeds on {grid.array.size} voxels ({'2D' if axes is not None else '1D'} formalism)")
    t0 = time.perf_counter()
    dose_gy = dose_engine.dose_on_grid(grid, seeds_mm, axes, sk_u, model)
    seconds = time.perf_counter() - t0
    dose_vol = grid.with_array(dose_gy)

    result = {
        "voxels": int(dose_gy.size),
        "seeds": int(len(seeds_mm)),
        "compute_seconds": round(seconds, 4),
        "grid_mm": [float(v) for v in grid.spacing_mm],
        "seed_model": model.name,
        "seed_sk_u": sk_u,
        "formalism": "2D" if axes is not None else "1D",
        "max_dose_gy": float(dose_gy.max()),
        "tg43_source": model.source,
    }
    if args.structures:
        progress.step("structure metrics")
        result["warnings"] = []
        result["metrics"] = _metrics(args, dose_vol, ct, result["warnings"])

    from navigator.io.dicom import write_rtdose

    write_rtdose(out / "RTDOSE.dcm", dose_vol, ct)
    write_json(out / "dose.json", result)
    summary = (f"dose: {len(seeds_mm)} seeds ({model.name}, {sk_u:.4g} U), {dose_gy.size} voxels at "
               f"{' x '.join(f'{v:g}' for v in grid.spacing_mm)} mm in {seconds:.2f} s; max {dose_gy.max():.1f} Gy")  # fmt: skip
    if "metrics" in result and "D90_gy" in result["metrics"]:
        m = result["metrics"]
        summary += f"\n{args.target}: {m['ctv_cc']:.2f} cc, D90 {m['D90_gy']:.1f} Gy, V100 {m['V100_pct']:.1f} %"
    emit(args, result, summary + f"\nwritten: {final / 'dose.json'}, {final / 'RTDOSE.dcm'}")
    return 0
