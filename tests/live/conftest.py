"""Fixtures of the live-session tests: one synthetic patient with a hand-made plan (no planning run: the
needle layout of tests/cli/test_cli_needles.py), its intraop scan with one needle left out, a scan of another
patient, and a running ``navigator serve`` subprocess driven over DICOM (dcmtk's storescu) and HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, demo_plan

MISSING = 7  # the needle left out of the intraop scan: not found, out of tolerance


def build_case(root: Path) -> dict:
    from simulators.phantoms.cases import demo_implant, intraop_scan, make_patient
    from simulators.phantoms.motion import random_rigid
    from simulators.phantoms.needles import NeedleErrorModel, draw_needles
    from simulators.phantoms.writer import write_patient, write_scan

    patient = make_patient("neck", 11, matrix=(160, 160), n_slices=36)
    written = write_patient(patient, root / "case")
    needles, seeds, _ = demo_implant(patient, n_needles=12, seeds_per_needle=3, spacing_mm=10.0)
    plan = demo_plan(patient, needles, seeds, seeds_per_needle=3, cols=4)
    (root / "plan").mkdir()
    plan.save(root / "plan" / "plan.json")
    rng = np.random.default_rng(1111)
    motion = random_rigid(rng, 8.0, 4.0, center_mm=patient.node_center_mm)
    draws = draw_needles(needles, NeedleErrorModel(lateral_sd_mm=0.3, depth_sd_mm=0.3, angle_sd_deg=0.2), rng)
    present = [(d.entry_mm, d.tip_mm) for k, d in enumerate(draws) if k != MISSING]
    scan = intraop_scan(patient, present, motion, rng=rng, slice_mm=1.25, length_mm=60.0)
    intraop = write_scan(scan, root / "intraop")
    other = make_patient("neck", 12, matrix=(96, 96), n_slices=8)
    other_dir = write_patient(other, root / "other").ct_dir
    return {"root": root, "plan": root / "plan" / "plan.json", "preplan_ct": written.ct_dir,
            "rs": written.rtstruct_path, "intraop": intraop, "other": other_dir, "plan_obj": plan,
            "patient_id": patient.ct.patient_id}


@pytest.fixture(scope="session")
def case(tmp_path_factory):
    return build_case(tmp_path_factory.mktemp("live_case"))


@pytest.fixture(scope="session")
def users_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("live_users") / "users.json"
    for name, role in (("phil", "physicist"), ("otto", "operator"), ("vera", "viewer")):
        add_user(path, name, role, f"{name}-secret-pw")
    return path


def add_user(path: Path, name: str, role: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "navigator.cli", "users", "add", name, "--role", role,
                           "--users", str(path)], input=password + "\n", capture_output=True, text=True,
                          cwd=REPO, timeout=60)


class Service:
    """``navigator serve`` in a subprocess on loopback, every port 0; ``.dicom``, ``.http``, ``.igtl`` from
    its READY line."""

    def __init__(self, session: Path, *extra: str, quiet_s: float = 0.8):
        cmd = [sys.executable, "-m", "navigator.cli", "serve", "--session", str(session), "--dicom-port", "0",
               "--http-port", "0", "--igtl-port", "0", "--bind", "127.0.0.1", "--series-quiet-s", str(quiet_s),
               *extra]
        self.session = session
        self.log = open(session.parent / f"{session.name}.stderr.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, cwd=REPO, text=True)
        line = self._readline(90)
        if not line.startswith("READY "):
            self.proc.kill()
            raise AssertionError(f"no READY line (got {line!r}); stderr: {self.stderr()}")
        fields = dict(kv.split("=", 1) for kv in line.split()[1:])
        self.ready = line
        self.dicom_port = int(fields["dicom"].rsplit(":", 1)[1])
        self.http = fields["http"]
        self.igtl_port = int(fields["igtl"].rsplit(":", 1)[1])

    def _readline(self, timeout_s: float) -> str:
        out: list[str] = []
        t = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout_s)
        return out[0].strip() if out else ""

    def stderr(self) -> str:
        self.log.flush()
        return (self.session.parent / f"{self.session.name}.stderr.log").read_text()[-3000:]

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.log.close()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()

    # --- HTTP ---------------------------------------------------------------------------------------------
    def call(self, method: str, path: str, body=None, token: str | None = None, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.http + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read().decode()
                return r.status, (text if raw else json.loads(text))
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, text

    def login(self, name: str) -> str:
        code, body = self.call("POST", "/api/login", {"username": name, "password": f"{name}-secret-pw"})
        assert code == 200, body
        return body["token"]

    def wait_for(self, predicate, timeout_s: float = 60.0, what: str = "condition"):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited ({self.proc.returncode}): {self.stderr()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; stderr: {self.stderr()}")

    # --- DICOM --------------------------------------------------------------------------------------------
    def storescu(self, folder: Path, calling_ae: str = "SCANNER") -> subprocess.CompletedProcess:
        return subprocess.run(["storescu", "-aet", calling_ae, "-aec", "NAVIGATOR", "127.0.0.1",
                               str(self.dicom_port), "+sd", str(folder)], capture_output=True, text=True, timeout=120)


def series_entry(svc: Service, token: str, uid_prefix: str | None = None, purpose: str | None = None):
    code, rows = svc.call("GET", "/api/series", token=token)
    assert code == 200
    return [r for r in rows if r["complete"] and (purpose is None or r["purpose"] == purpose)]


def journal(session: Path) -> list[dict]:
    raw = (session / "session.jsonl").read_bytes()
    return [json.loads(x) for x in raw.splitlines() if x.strip()]


