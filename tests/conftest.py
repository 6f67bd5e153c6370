"""Shared test configuration.

Paths to the shared real data live here; each module's fixtures live in its own test file.
"""

from __future__ import annotations

import os
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
