"""A real Orthanc (Debian package ``orthanc``) on loopback as the PACS: a CT series uploaded to it over its REST
API is forwarded to the navigator with ``POST /modalities/{id}/store``; the navigator receives the whole
series (calling AE ORTHANC, on the allow-list) and, in a new session, files it as the pre-plan CT."""

from __future__ import annotations

import json
import socket
import shutil
import subprocess
import time
import urllib.request

import pytest

from tests.live.conftest import Service, journal

# Debian installs the server in /usr/sbin, which a non-login PATH may lack.
ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/sbin") or "Orthanc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder, navigator_port: int):
        self.http_port, self.dicom_port = _free_port(), _free_port()
        config = {"Name": "navigator-test", "StorageDirectory": str(folder / "db"),
                  "IndexDirectory": str(folder / "db"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
                  "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "DicomModalities": {"navigator": ["NAVIGATOR", "127.0.0.1", navigator_port]}, "Plugins": []}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")
        self.proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("GET", "/system")
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise AssertionError(f"Orthanc did not start; see {folder / 'orthanc.log'}")
                time.sleep(0.2)

    def call(self, method: str, path: str, data: bytes | None = None, timeout: float = 10):
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def orthanc_and_navigator(users_file, tmp_path):
    svc = Service(tmp_path / "session", "--users", str(users_file), "--allow-ae", "ORTHANC", quiet_s=1.0)
    pacs = None
    try:
        pacs = Orthanc(tmp_path, svc.dicom_port)
        yield pacs, svc
    finally:
        if pacs is not None:
            pacs.stop()
        assert svc.stop() == 0


def test_orthanc_forwards_a_study_to_the_navigator(orthanc_and_navigator, case):
    pacs, svc = orthanc_and_navigator
    files = sorted(p for p in case["preplan_ct"].iterdir() if p.is_file())
    study = {pacs.call("POST", "/instances", p.read_bytes())["ParentStudy"] for p in files}
    assert len(study) == 1
    pacs.call("POST", "/modalities/navigator/echo", b"{}")  # C-ECHO (Verification); a failure is an HTTP error
    pacs.call("POST", "/modalities/navigator/store", study.pop().encode(), timeout=120)

    phil = svc.login("phil")
    rows = svc.wait_for(lambda: [r for r in svc.call("GET", "/api/series", token=phil)[1] if r["complete"]
                                 and r["purpose"]], 30, "the forwarded series")
    assert len(rows) == 1
    r = rows[0]
    assert r["modality"] == "CT" and r["instances"] == len(files) and r["purpose"] == "preplan"
    assert len(list((svc.session / "incoming" / r["series_uid"]).glob("*.dcm"))) == len(files)
    line = [e["data"] for e in journal(svc.session) if e["kind"] == "series_received"][-1]
    assert line["calling_ae"] == "ORTHANC"
    assert svc.call("GET", "/api/session", token=phil)[1]["patient_id"] == case["patient_id"]
