"""``navigator.live.receiver.DicomReceiver`` in-process, fed by dcmtk's storescu and echoscu on loopback:
instances written straight to disk, C-ECHO, completion after the quiet period, a late part of a series hands
it over again, a re-sent series (duplicates only) does not, and an AE outside the allow-list is refused
before anything is stored."""

from __future__ import annotations

import queue
import shutil
import subprocess

from navigator.live.receiver import DicomReceiver


def _send(port: int, *paths, aet: str = "SCANNER") -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-aet", aet, "-aec", "NAVIGATOR", "127.0.0.1", str(port), *map(str, paths)],
                          capture_output=True, text=True, timeout=60)


def test_series_on_disk_complete_when_quiet_and_handed_over_again_when_it_grows(case, tmp_path):
    done: queue.Queue = queue.Queue()
    rejected: list[dict] = []
    rx = DicomReceiver(tmp_path / "incoming", port=0, allow_ae=["SCANNER"], quiet_s=0.5,
                       on_complete=lambda s: done.put(s.to_json()), on_rejected=rejected.append)
    rx.start()
    try:
        echo = subprocess.run(["echoscu", "-aet", "SCANNER", "-aec", "NAVIGATOR", "127.0.0.1", str(rx.port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        files = sorted(p for p in case["other"].iterdir() if p.is_file())
        assert _send(rx.port, *files[:5]).returncode == 0
        first = done.get(timeout=20)
        assert first["instances"] == 5 and first["modality"] == "CT" and first["complete"]
        assert first["patient_id"] == "PHANTOM-NECK-12" and first["calling_ae"] == "SCANNER"
        folder = tmp_path / "incoming" / first["series_uid"]
        assert len(list(folder.glob("*.dcm"))) == 5 and not list(folder.glob(".*"))

        assert _send(rx.port, *files[5:]).returncode == 0          # the rest of the series, late
        again = done.get(timeout=20)
        assert again["series_uid"] == first["series_uid"] and again["instances"] == len(files)

        assert _send(rx.port, *files).returncode == 0               # all of it again: duplicates only
        assert done.empty() or done.get(timeout=2) is None
        assert rx.series[first["series_uid"]].duplicates == len(files)

        assert _send(rx.port, *files, aet="INTRUDER").returncode != 0
        assert rejected and rejected[-1]["calling_ae"] == "INTRUDER"
        assert len(list(folder.glob("*.dcm"))) == len(files)
    finally:
        rx.stop()


def test_restore_watches_series_left_on_disk_by_a_killed_run(case, tmp_path):
    uid = "1.2.3.4.5"
    folder = tmp_path / "incoming" / uid
    folder.mkdir(parents=True)
    for p in sorted(case["other"].iterdir())[:3]:
        shutil.copy(p, folder / f"{p.name}.dcm")
    done: queue.Queue = queue.Queue()
    rx = DicomReceiver(tmp_path / "incoming", port=0, quiet_s=0.3, on_complete=lambda s: done.put(s.to_json()))
    assert rx.restore(known_complete=set()) == [uid]
    other = DicomReceiver(tmp_path / "incoming", port=0, quiet_s=0.3)
    assert other.restore(known_complete={uid}) == []  # a series the journal has is not watched again
    rx.start()
    try:
        got = done.get(timeout=10)
        assert got["series_uid"] == uid and got["instances"] == 3 and got["modality"] == "CT"
    finally:
        rx.stop()
