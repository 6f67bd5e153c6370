"""DICOM out over the network: a Storage SCU that sends the files of a folder by C-STORE (pynetdicom), as a CT
scanner or a PACS sends a series to ``navigator serve``. Used by the rehearsal's simulated scanner.

    sent = send_folder(ct_dir, "127.0.0.1", 11112, calling_ae="SCANNER", called_ae="NAVIGATOR")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom

from navigator.errors import InputError


class SendError(InputError):
    """The receiver could not be reached, refused the association, or refused an instance."""


@dataclass(frozen=True)
class SendResult:
    sent: int
    series_uids: tuple[str, ...]


def send_folder(folder, host: str, port: int, calling_ae: str = "SCANNER", called_ae: str = "NAVIGATOR",
                timeout_s: float = 30.0) -> SendResult:
    """C-STORE every DICOM file in ``folder`` (not recursive) over one association; ``SendError`` on any
    refusal (the status of each instance is checked)."""
    from pynetdicom import AE

    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in (".dcm", ""))
    headers = []
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is named to the caller
            raise SendError(f"{p}: not a DICOM file ({type(exc).__name__}); nothing was sent") from None
        headers.append((p, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), str(ds.SeriesInstanceUID)))
    if not headers:
        raise SendError(f"{folder}: no DICOM files to send")
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class, syntax in sorted({(h[1], h[2]) for h in headers}):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(host, int(port), ae_title=called_ae)
    if not assoc.is_established:
        raise SendError(f"DICOM {called_ae}@{host}:{port}: association refused or no answer; check the "
                        f"receiver's port and that it allows the calling AE title {calling_ae}")
    try:
        for p, *_ in headers:
            status = assoc.send_c_store(p)
            code = getattr(status, "Status", None)
            if code != 0x0000:
                raise SendError(f"{p}: the receiver answered C-STORE with status "
                                f"{'none' if code is None else hex(code)}; the series was not sent whole")
    finally:
        assoc.release()
    return SendResult(sent=len(headers), series_uids=tuple(sorted({h[3] for h in headers})))
