"""SGP/1 host driver for the seed applicator and guide template (../shared/specs/sgp1-applicator-protocol.md).

Layers: ``transport`` (pyserial URL, the only thread) -> ``framing`` (bytes <-> frames, CRC; pure) ->
``codec`` (frames <-> requests, replies, events; pure) -> ``applicator`` (seq, retransmission, timeouts,
watchdog, events, reconnection, reconciliation, interlocks).

    from device_drivers import SgpApplicator, LinkConfig
    with SgpApplicator("socket://127.0.0.1:7777") as dev:
        dev.enable(); dev.select("C7"); ...
"""

from .applicator import EventGap, LinkConfig, LinkStats, Reconciliation, SgpApplicator
from .codec import Cartridge, Event, Hello, ReleaseRecord, ReleaseReport, Reply, Request, Status, fmt_mm
from .errors import (ConnectError, CounterMismatch, DeviceError, DeviceRefused, InterlockError, LinkLost,
                     ProtocolError, ReconcileRequired)
from .framing import Frame, FrameDecoder, crc16_ccitt_false, encode_frame

__all__ = [
    "SgpApplicator", "LinkConfig", "LinkStats", "EventGap", "Reconciliation",
    "Status", "Hello", "Cartridge", "ReleaseReport", "ReleaseRecord", "Event", "Reply", "Request", "fmt_mm",
    "DeviceError", "ConnectError", "LinkLost", "DeviceRefused", "InterlockError", "ReconcileRequired",
    "CounterMismatch", "ProtocolError",
    "Frame", "FrameDecoder", "crc16_ccitt_false", "encode_frame",
]
