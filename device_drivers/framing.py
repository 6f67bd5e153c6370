"""SGP/1 framing (spec section 3): bytes <-> frames, with CRC-16/CCITT-FALSE. Pure: no port, no clock.

A frame is ``<start><body>*<CRC>\\r\\n`` with start ``$`` (request), ``#`` (reply) or ``!`` (event), body the
comma-separated fields, CRC four upper-case hex digits over the body's bytes. ``FrameDecoder`` applies the
receiving rules: bytes before a start character are discarded, a start character inside a frame restarts
it, and a frame longer than 160 bytes, without ``*``, with a bad CRC or bad ending is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

START_CHARS = b"$#!"
MAX_FRAME_BYTES = 160  # including CR LF
FORBIDDEN_IN_FIELDS = set("$#!,*\r\n")


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _make_table()


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0. ``b"123456789"`` -> 0x29B1."""
    crc = 0xFFFF
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ b) & 0xFF]
    return crc


class FrameEncodeError(ValueError):
    """A field cannot be put on the wire (forbidden character, non-ASCII, frame too long)."""


@dataclass(frozen=True)
class Frame:
    """One received or encoded frame: its start character, its fields (split on ``,``) and its wire bytes."""

    start: str
    fields: tuple[str, ...]
    raw: bytes

    @property
    def body(self) -> str:
        """The text between the start character and ``*``: what the CRC covers and what SGP/1 calls the
        request text for exactly-once comparison."""
        return ",".join(self.fields)


def encode_frame(start: str, fields: Iterable[str]) -> Frame:
    """Build a frame from its fields; raises ``FrameEncodeError`` if it could not be received intact."""
    if start not in ("$", "#", "!"):
        raise FrameEncodeError(f"start character {start!r} is not one of $ # !")
    fields = tuple(str(f) for f in fields)
    for f in fields:
        bad = FORBIDDEN_IN_FIELDS.intersection(f)
        if bad or not f.isascii():
            raise FrameEncodeError(f"field {f!r} contains characters SGP/1 forbids ({sorted(bad) or 'non-ASCII'})")
    body = ",".join(fields).encode("ascii")
    raw = start.encode("ascii") + body + b"*%04X\r\n" % crc16_ccitt_false(body)
    if len(raw) > MAX_FRAME_BYTES:
        raise FrameEncodeError(f"frame is {len(raw)} bytes; SGP/1 allows at most {MAX_FRAME_BYTES} including CR LF")
    return Frame(start, fields, raw)


_HEX = frozenset(b"0123456789ABCDEF")


def parse_frame(raw: bytes) -> Frame | None:
    """Check one complete candidate frame (start character ... CR LF); ``None`` if it must be discarded."""
    if len(raw) < 8 or len(raw) > MAX_FRAME_BYTES or raw[0] not in START_CHARS or raw[-2:] != b"\r\n":
        return None
    star = len(raw) - 7  # "*XXXX\r\n"
    if raw[star] != 0x2A or not _HEX.issuperset(raw[star + 1:star + 5]):
        return None
    body = raw[1:star]
    if any(b >= 0x80 or b in b"$#!*\r\n" for b in body):
        return None
    if crc16_ccitt_false(body) != int(raw[star + 1:star + 5], 16):
        return None
    return Frame(chr(raw[0]), tuple(body.decode("ascii").split(",")), bytes(raw))


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the complete, valid frames found so far."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_frame = False
        self.discarded = 0  # frames dropped (bad CRC, too long, malformed): a link-quality counter

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        for b in data:
            if b in START_CHARS:  # a start character always (re)starts a frame
                if self._in_frame and self._buf:
                    self.discarded += 1
                self._buf = bytearray((b,))
                self._in_frame = True
                continue
            if not self._in_frame:
                continue  # noise before a start character
            self._buf.append(b)
            if b == 0x0A:  # LF ends a frame (it must be preceded by CR; parse_frame checks)
                frame = parse_frame(bytes(self._buf))
                if frame is None:
                    self.discarded += 1
                else:
                    frames.append(frame)
                self._buf = bytearray()
                self._in_frame = False
            elif len(self._buf) > MAX_FRAME_BYTES:
                self.discarded += 1
                self._buf = bytearray()
                self._in_frame = False
        return frames
