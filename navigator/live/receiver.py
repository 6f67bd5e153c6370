"""The DICOM door of the live session: a pynetdicom Storage SCP (CT Image, RT Structure Set, RT Plan, RT Dose)
with Verification (C-ECHO).

Each instance is written straight to disk in the C-STORE handler (``incoming/<series_uid>/<sop_uid>.dcm``,
through a temp file, fsync and rename, so a status of success means the file is on disk); no series is held
in memory. An instance already on disk (same SOP Instance UID) is acknowledged and ignored. DICOM has no
end-of-series signal, so (as Orthanc's ``StableAge``) a series is complete when none of its instances arrived
for ``quiet_s`` seconds: a watcher thread hands each completed series to ``on_complete`` (the live session puts
it on its queue). When the association that carried a series' instances is released normally, the series is
handed to ``on_settled`` at once: not complete yet (more may come within the quiet period), but likely to be, so
the session may start its work early and keep it only if nothing arrives before the series completes.
Associations from a calling AE title outside the allow-list are rejected before anything is
stored, and reported to ``on_rejected`` (journaled by the session).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_UID = re.compile(r"^[0-9][0-9.]{0,63}$")
log = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 B.2.3): success, processing failure, cannot understand (bad identifiers)
SUCCESS, FAILED, CANNOT_UNDERSTAND = 0x0000, 0x0110, 0xC000


@dataclass
class IncomingSeries:
    """A series being received (or restored from disk after a restart)."""

    series_uid: str
    folder: Path
    modality: str = ""
    patient_id: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    calling_ae: str = ""
    instances: int = 0
    duplicates: int = 0
    fresh: int = 0  # instances written since the series was last handed over
    received_at: str = ""
    last_at: float = field(default_factory=time.monotonic)
    complete: bool = False

    def to_json(self) -> dict:
        return {"series_uid": self.series_uid, "modality": self.modality, "instances": self.instances,
                "complete": self.complete, "patient_id": self.patient_id, "study_uid": self.study_uid,
                "frame_of_reference_uid": self.frame_of_reference_uid, "calling_ae": self.calling_ae,
                "received_at": self.received_at, "folder": str(self.folder), "duplicates": self.duplicates}


def _utc_now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DicomReceiver:
    """Storage SCP on ``(host, port)`` (port 0: any free port; ``.port`` is the bound one)."""

    def __init__(self, incoming: Path, ae_title: str = "NAVIGATOR", host: str = "127.0.0.1", port: int = 11112,
                 allow_ae: list[str] | None = None, quiet_s: float = 5.0,
                 on_complete: Callable[[IncomingSeries], None] = lambda s: None,
                 on_rejected: Callable[[dict], None] = lambda d: None,
                 on_settled: Callable[[IncomingSeries], None] = lambda s: None):
        self.incoming = Path(incoming)
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.ae_title, self.host, self.port = ae_title, host, int(port)
        self.allow_ae = [a.strip() for a in (allow_ae or []) if a.strip()]
        self.quiet_s = float(quiet_s)
        self.on_complete, self.on_rejected, self.on_settled = on_complete, on_rejected, on_settled
        self.series: dict[str, IncomingSeries] = {}
        self._carried: dict[int, set[str]] = {}  # id(association) -> series it stored instances of
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = None
        self._watcher: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import (CTImageStorage, RTDoseStorage, RTPlanStorage, RTStructureSetStorage,
                                          Verification)

        ae = AE(ae_title=self.ae_title)
        for cx in (CTImageStorage, RTStructureSetStorage, RTPlanStorage, RTDoseStorage, Verification):
            ae.add_supported_context(cx)
        if self.allow_ae:
            ae.require_calling_aet = self.allow_ae
        ae.maximum_pdu_size = 0  # no limit: fewer PDUs per 512x512 slice
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_RELEASED, self._on_released),
                    (evt.EVT_ABORTED, self._on_aborted)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        self._watcher = threading.Thread(target=self._watch, name="series-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._watcher is not None:
            self._watcher.join(timeout=2.0)

    def restore(self, known_complete: set[str]) -> list[str]:
        """After a restart: series folders on disk that were never handed over are watched again (they complete
        after the quiet period, or on more instances). Returns their UIDs."""
        restored = []
        for folder in sorted(p for p in self.incoming.iterdir() if p.is_dir()):
            if folder.name in known_complete or not _UID.match(folder.name):
                continue
            files = list(folder.glob("*.dcm"))
            if not files:
                continue
            s = IncomingSeries(folder.name, folder, instances=len(files), fresh=len(files), received_at=_utc_now())
            _fill_header(s, files[0])
            with self._lock:
                self.series[s.series_uid] = s
            restored.append(s.series_uid)
        return restored

    def in_progress(self) -> list[IncomingSeries]:
        with self._lock:
            return [s for s in self.series.values() if not s.complete]

    # --- handlers (pynetdicom's threads) --------------------------------------------------------------------
    def _on_rejected(self, event) -> None:
        """pynetdicom rejected an association (before any C-STORE): the calling AE is not allowed, or too
        many associations are open."""
        calling = _ae_text(event.assoc.requestor.ae_title)
        why = ("calling AE title not in --allow-ae" if self.allow_ae and calling not in self.allow_ae
               else "too many associations at once")
        self.on_rejected({"calling_ae": calling, "address": event.assoc.requestor.address,
                          "allowed": self.allow_ae, "reason": f"{why}; association rejected, nothing stored"})

    def _on_store(self, event) -> int:
        try:
            ds = event.dataset
            sop, series_uid = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
        except Exception as exc:  # an instance without its identifiers cannot be filed
            log.warning("C-STORE without SOP/Series Instance UID: %s", exc)
            return CANNOT_UNDERSTAND
        if not (_UID.match(sop) and _UID.match(series_uid)):
            return CANNOT_UNDERSTAND
        with self._lock:
            s = self.series.get(series_uid)
            if s is None:
                s = IncomingSeries(series_uid, self.incoming / series_uid, received_at=_utc_now(),
                                   calling_ae=_ae_text(event.assoc.requestor.ae_title))
                if s.folder.is_dir():  # instances of it stored before (this run or a previous one)
                    s.instances = len(list(s.folder.glob("*.dcm")))
                _fill_from(s, ds)
                self.series[series_uid] = s
            s.last_at = time.monotonic()
        path = s.folder / f"{sop}.dcm"
        if path.exists():
            with self._lock:
                s.duplicates += 1
            return SUCCESS
        try:
            _write_atomic(path, event.encoded_dataset())
        except OSError as exc:
            log.error("cannot store %s: %s", path, exc)
            return FAILED
        with self._lock:
            s.instances += 1
            s.fresh += 1
            s.last_at = time.monotonic()
            s.complete = False  # a late instance re-opens the series; it is handed over again when quiet
            self._carried.setdefault(id(event.assoc), set()).add(series_uid)
        return SUCCESS

    def _on_released(self, event) -> None:
        """The sender released its association: the series it stored are probably whole (``on_settled``)."""
        with self._lock:
            settled = [self.series[u] for u in self._carried.pop(id(event.assoc), ()) if u in self.series]
            settled = [s for s in settled if not s.complete and s.fresh]
        for s in settled:
            try:
                self.on_settled(s)
            except Exception:
                log.exception("settled series %s", s.series_uid)

    def _on_aborted(self, event) -> None:
        """An aborted association promises nothing: its series complete after the quiet period only."""
        with self._lock:
            self._carried.pop(id(event.assoc), None)

    # --- the quiet-period watcher ---------------------------------------------------------------------------
    def _watch(self) -> None:
        tick = max(0.02, min(0.25, self.quiet_s / 5))
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                done = [s for s in self.series.values() if not s.complete and now - s.last_at >= self.quiet_s]
                for s in done:
                    s.complete = True
                done, fresh = [s for s in done if s.fresh], done
                for s in fresh:
                    s.fresh = 0  # a series of duplicates only is not handed over again
            for s in done:
                try:
                    self.on_complete(s)
                except Exception:  # the watcher must survive a failing consumer
                    log.exception("handing over series %s failed", s.series_uid)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _ae_text(value) -> str:
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)).strip()


def _fill_from(s: IncomingSeries, ds) -> None:
    s.modality = str(ds.get("Modality", ""))
    s.patient_id = str(ds.get("PatientID", ""))
    s.study_uid = str(ds.get("StudyInstanceUID", ""))
    s.frame_of_reference_uid = str(ds.get("FrameOfReferenceUID", ""))


def _fill_header(s: IncomingSeries, path: Path) -> None:
    """Identifiers of a restored series from one of its files (pydicom through navigator.io)."""
    from navigator.io.dicom import list_series

    try:
        info = list_series(path.parent)[0]
    except Exception:  # an unreadable folder is still listed; processing will say what is wrong
        return
    s.modality, s.study_uid, s.frame_of_reference_uid = info.modality, info.study_uid, info.frame_of_reference_uid
