"""Synthetic patients for tests and rehearsal: CT + structures + ground truth, motion, needles, seeds.

Like pydicom's example datasets, cases are named (``list_cases()``; ``python -m simulators.phantoms list``):

    >>> from simulators import phantoms
    >>> p = phantoms.make_patient("neck", seed=3)              # p.ct (Volume), p.structures["GTV"] (bool mask)
    >>> m = phantoms.random_rigid(rng, center_mm=p.node_center_mm)   # 4x4 preplan_to_scan
    >>> scan = phantoms.intraop_scan(p, [(entry_mm, tip_mm)], motion=m)  # Volume in its own frame
    >>> scan.meta["truth"]["needles_mm"]                        # where the needles are in that scan
    >>> needles = phantoms.needle_layout(p, "neighbours", 6)    # axial / tilted / crossing / neighbours
    >>> scan = phantoms.intraop_scan(p, needles, m, scanner="vendor_b", slice_mm=2.5, pixel_mm=0.9)

Frames: the anatomy and every true needle/seed handed in are LPS mm of the pre-plan CT (``p.ct``); each
scan has its own frame of reference and records ``preplan_to_scan`` (4x4, row-major, maps a pre-plan point to
the scan) plus any deformation in ``meta["truth"]``. Units are mm and HU throughout.

Structures: ``GTV`` (the node, its necrotic centre included), ``BODY`` (filled outline), ``Skin`` (outer 3 mm
of BODY) and organs at risk (see ``anatomy``).
"""

from .anatomy import HU
from .cases import (CASES, TARGET, CaseSpec, Patient, demo_implant, intraop_scan, list_cases, make_patient, postimplant_scan,
                    render_scan)
from .layouts import NEEDLE_GEOMETRIES, needle_layout, seeds_along
from .motion import Deformation, Motion, random_deformation, random_rigid, rigid_4x4, rotation_matrix
from .needles import (NEEDLE_18G_DIAMETER_MM, NeedleDraw, NeedleErrorModel, draw_needles, needle_occupancy,
                      render_needles)
from .scanner import SCANNERS, ScannerModel, scanner_model
from .seeds import SEED_DIAMETER_MM, SEED_LENGTH_MM, render_seeds, seed_occupancy
from .truth import load_truth
from .writer import WrittenCase, write_case, write_patient, write_scan

__all__ = [
    "CASES", "TARGET", "HU", "CaseSpec", "Patient", "demo_implant", "list_cases", "make_patient", "render_scan", "intraop_scan",
    "postimplant_scan", "Motion", "Deformation", "random_rigid", "random_deformation", "rigid_4x4",
    "rotation_matrix", "NEEDLE_18G_DIAMETER_MM", "NeedleErrorModel", "NeedleDraw", "draw_needles",
    "needle_occupancy", "render_needles", "SEED_LENGTH_MM", "SEED_DIAMETER_MM", "seed_occupancy", "render_seeds",
    "ScannerModel", "SCANNERS", "scanner_model", "NEEDLE_GEOMETRIES", "needle_layout", "seeds_along", "load_truth",
    "WrittenCase", "write_case", "write_patient", "write_scan",
]
