"""``navigator serve`` refuses bad input with exit 2 and one clear message (no traceback), before listening."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "navigator.cli", "serve", *args, "--dicom-port", "0",
                           "--http-port", "0", "--igtl-port", "0"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_bad_input_exits_2_with_a_clear_message(case, tmp_path):
    cases = [
        (("--session", str(tmp_path / "s1"), "--plan", str(tmp_path / "nope.json"), "--preplan-ct",
          str(case["preplan_ct"])), "file not found"),
        (("--session", str(tmp_path / "s2"), "--plan", str(case["plan"])), "--preplan-ct"),
        (("--session", str(tmp_path / "s3"), "--users", str(tmp_path / "users.json")), "navigator users add"),
        (("--session", str(tmp_path / "s4"), "--series-quiet-s", "0"), "--series-quiet-s"),
        (("--session", str(tmp_path / "s5"), "--allow-ae", "A-CALLING-AE-TITLE-TOO-LONG"), "1-16 characters"),
    ]
    for args, words in cases:
        r = _serve(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert "READY" not in r.stdout


def test_a_session_folder_keeps_its_plan(case, tmp_path):
    """Started again on a session folder with another plan: refused, saying which plan the session runs on."""
    session = tmp_path / "session"
    (session).mkdir()
    other = tmp_path / "other.json"
    other.write_text(case["plan"].read_text())
    from navigator.live.session import LiveSession

    live = LiveSession(session, case["plan"], case["preplan_ct"])
    live.session.journal.close()
    r = _serve("--session", str(session), "--plan", str(other), "--preplan-ct", str(case["preplan_ct"]))
    assert r.returncode == 2 and "already runs on the pre-plan" in r.stderr and "Traceback" not in r.stderr
