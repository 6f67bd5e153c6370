"""Shared test configuration.

Paths to the shared real data live here; each module's fixtures live in its own test file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NAVIGATOR_SHARED", REPO.parent / "shared"))
IBSI = SHARED / "data" / "ibsi-sts-ct"


@pytest.fixture(scope="session")
def ibsi_dir() -> Path:
    if not IBSI.is_dir():
        pytest.fail(f"shared data not found at {IBSI}; set NAVIGATOR_SHARED to the shared/ folder")
    return IBSI


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave pictures and reports worth looking at (ignored by git)."""
    p = REPO / "test-artifacts"
    p.mkdir(exist_ok=True)
    return p


def dciodvfy(path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of dicom3tools' IOD check of one file; DICOMDIR-only hints are not about the object.

    Fails the test when dciodvfy itself crashes (it asserts on 32-bit pixel data): a crash checks nothing."""
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (Debian package dicom3tools) must be installed for the DICOM conformance tests"
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (res.stdout + res.stderr).splitlines()
    assert not any("Assertion" in line for line in lines), lines
    return ([line for line in lines if line.startswith("Error")],
            [line for line in lines if line.startswith("Warning") and "DICOMDIR" not in line])


def demo_plan(patient, needles, seeds, seeds_per_needle: int, cols: int, rx_gy: float = 140.0):
    """A plan of a phantom's demo implant (``simulators.phantoms.cases.demo_implant``): needles N01.. in template
    holes A1, A3, ... (``cols`` a row), ``seeds_per_needle`` seeds S001.. on each, 0.5 mCi 6711."""
    from navigator.core.plan import Needle, Plan, PlannedSeed
    from navigator.physics import tg43

    plan = Plan(frame_of_reference_uid=patient.ct.frame_of_reference_uid, ct_series_uid=patient.ct.series_uid,
                target="GTV", prescription_gy=rx_gy, seed_model="6711", seed_sk_u=0.5 * tg43.MCI_TO_U)
    for k, (entry, tip) in enumerate(needles):
        nid = f"N{k + 1:02d}"
        plan.needles.append(Needle(nid, entry, tip, hole=f"{chr(ord('A') + k // cols)}{2 * (k % cols) + 1}"))
        for s in range(seeds_per_needle):
            n = seeds_per_needle * k + s
            plan.seeds.append(PlannedSeed(f"S{n + 1:03d}", nid, seeds[n]))
    return plan
