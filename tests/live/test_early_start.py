"""Early start (issue #13): when the sender releases the association that carried a series, ``navigator serve``
starts the series' step before the quiet period has declared it complete, and keeps that result only if the
series, its purpose and the session's inputs are unchanged when it completes. The contract's completion rule
(``--series-quiet-s``) and the journal are untouched: the step is journaled once, on completion, with
``started_early`` in its ``series_processed`` result.

A series sent whole by storescu is started early. A series whose last instances came on an association that was
aborted (a scanner's link dropping) completes on the quiet period only; the early result of its first part is
thrown away and the check is made on every slice, giving the same needles as the whole scan."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.live.conftest import Service, journal

QUIET_S = 4.0


@pytest.fixture(scope="module")
def svc(case, users_file, tmp_path_factory):
    session = tmp_path_factory.mktemp("early") / "session"
    svc = Service(session, "--plan", str(case["plan"]), "--preplan-ct", str(case["preplan_ct"]), "--users",
                  str(users_file), "--allow-ae", "SCANNER", quiet_s=QUIET_S)
    token = svc.login("phil")
    assert svc.call("POST", "/api/control", {}, token=token)[0] == 200
    yield svc, token
    assert svc.stop() == 0


def copy_series(src: Path, out: Path) -> tuple[str, list[Path]]:
    """The scan under a new Series Instance UID and new SOP Instance UIDs (the same pixels), files sorted."""
    uid = generate_uid()
    out.mkdir(parents=True)
    files = []
    for k, f in enumerate(sorted(src.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / f"{k:04d}.dcm", enforce_file_format=True)
        files.append(out / f"{k:04d}.dcm")
    return uid, files


def processed(session: Path, uid: str) -> list[dict]:
    return [e["data"] for e in journal(session) if e["kind"] == "series_processed" and e["data"]["series_uid"] == uid]


def check_of(svc: Service, token: str, n: int) -> dict:
    svc.wait_for(lambda: svc.call("GET", "/api/session", token=token)[1]["checks"] >= n, 120, f"check {n}")
    return svc.call("GET", "/api/checks/latest", token=token)[1]


def send_and_abort(svc: Service, files: list[Path]) -> None:
    """C-STORE ``files`` on one association (pynetdicom as the scanner), then abort it."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", svc.dicom_port, ae_title="NAVIGATOR")
    assert assoc.is_established
    try:
        for f in files:
            status = assoc.send_c_store(pydicom.dcmread(f))
            assert status and status.Status == 0x0000, status
    finally:
        assoc.abort()


def test_a_scan_sent_whole_is_started_before_its_quiet_period_ends(svc, case, tmp_path):
    svc, token = svc
    uid, _ = copy_series(case["intraop"], tmp_path / "whole")
    assert svc.call("POST", "/api/scans/next", {"scan": "all"}, token=token)[0] == 200
    assert svc.storescu(tmp_path / "whole").returncode == 0
    check = check_of(svc, token, 1)
    assert check["intraop_series_uid"] == uid
    done = processed(svc.session, uid)
    assert len(done) == 1 and done[0]["result"]["started_early"] is True, done
    assert done[0]["result"]["check"] == 1


def test_a_series_finished_on_an_aborted_association_is_checked_whole_after_the_quiet_period(svc, case, tmp_path):
    svc, token = svc
    whole = svc.call("GET", "/api/checks/latest", token=token)[1]
    if whole is None or "needles" not in whole:  # the first test did not run in this process
        test_a_scan_sent_whole_is_started_before_its_quiet_period_ends((svc, token), case, tmp_path / "first")
        whole = svc.call("GET", "/api/checks/latest", token=token)[1]
    n = svc.call("GET", "/api/session", token=token)[1]["checks"]
    uid, files = copy_series(case["intraop"], tmp_path / "split")
    half = len(files) // 2
    first = tmp_path / "first_half"
    first.mkdir()
    for f in files[:half]:
        shutil.copy(f, first / f.name)
    assert svc.call("POST", "/api/scans/next", {"scan": "all"}, token=token)[0] == 200
    assert svc.storescu(first).returncode == 0   # released: an early start on half the slices
    send_and_abort(svc, files[half:])            # the rest, on an association that is aborted
    check = check_of(svc, token, n + 1)
    assert check["intraop_series_uid"] == uid
    done = processed(svc.session, uid)
    assert len(done) == 1 and done[0]["result"]["started_early"] is False, done
    received = [e["data"] for e in journal(svc.session) if e["kind"] == "series_received"
                and e["data"]["series_uid"] == uid]
    assert len(received) == 1 and received[0]["instances"] == len(files)
    # every slice was used: the same needles, at the same places, as the scan sent whole
    assert [x["found"] for x in check["needles"]] == [x["found"] for x in whole["needles"]]
    for a, b in zip(check["needles"], whole["needles"]):
        if a["found"]:
            assert a["tip_mm"] == pytest.approx(b["tip_mm"], abs=0.05), a["id"]
