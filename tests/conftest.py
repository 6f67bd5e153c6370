"""Shared test configuration.

Paths to the shared real data live here; each module's fixtures live in its own test file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
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


class LineProcess:
    """A background process whose stderr is drained as it comes; ``wait_for(pattern)`` waits on its lines."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list = []
        self.cond = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        seen = 0
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    if line is None:
                        raise AssertionError(f"process ended before {pattern!r}: {''.join(self.lines[:-1])}")
                    m = re.search(pattern, line)
                    if m:
                        return m
                seen = len(self.lines)
                if not self.cond.wait(timeout):
                    raise AssertionError(f"no {pattern!r} within {timeout} s: {''.join(self.lines)}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@contextlib.contextmanager
def external_dask_cluster():
    """`dask scheduler` and one `dask worker` as separate processes on 127.0.0.1 (as a hospital's cluster is
    run); yields the scheduler's address, stops both after."""
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler = LineProcess([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"])
    worker = None
    try:
        address = scheduler.wait_for(r"Scheduler at:\s+(tcp://127\.0\.0\.1:\d+)").group(1)
        worker = LineProcess([dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                              "--host", "127.0.0.1"])
        worker.wait_for(r"Registered to:")
        yield address
    finally:
        for p in (worker, scheduler):
            if p is not None:
                p.stop()
