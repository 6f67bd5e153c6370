"""The architecture as a test: import-linter's contracts in pyproject.toml ([tool.importlinter]) all hold.

Layers pointing down docs/architecture.md, commands apart, pydicom only in navigator.io, the device driver only
in navigator.wiring, no import cycles between siblings. Runs the venv's own ``lint-imports`` from the repo root,
where it finds the configuration and the packages."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"  # the entry point installed beside this python
    assert lint_imports.is_file(), f"{lint_imports} is missing: install the test extra (pip install -e '.[test]')"
    res = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"lint-imports exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
