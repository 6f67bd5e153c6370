"""The simulator's own reading and writing of SGP/1 frames (spec section 3).

Written apart from ``device_drivers`` on purpose: a bug shared by both ends would pass every test that runs
one against the other. Golden transcripts from the spec check each side on its own.
"""

from __future__ import annotations

import re

FRAME_LIMIT = 160
_FRAME = re.compile(rb"^([$#!])([\x20-\x7e]*)\*([0-9A-F]{4})\r\n$")


def crc_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE, bit by bit (poly 0x1021, init 0xFFFF)."""
    reg = 0xFFFF
    for byte in data:
        for bit in range(7, -1, -1):
            feedback = ((reg >> 15) ^ (byte >> bit)) & 1
            reg = (reg << 1) & 0xFFFF
            if feedback:
                reg ^= 0x1021
    return reg


def frame(start: str, body: str) -> bytes:
    """``start`` + ``body`` + ``*CRC`` + CR LF."""
    data = body.encode("ascii")
    return start.encode("ascii") + data + f"*{crc_ccitt(data):04X}\r\n".encode("ascii")


class WireReader:
    """Splits a byte stream into ``(start, body)`` pairs by SGP/1's receiving rules."""

    def __init__(self) -> None:
        self.pending = b""
        self.dropped = 0

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        out = []
        stream = self.pending + data
        self.pending = b""
        while stream:
            # discard everything before a start character
            starts = [i for i in (stream.find(c) for c in (b"$", b"#", b"!")) if i >= 0]
            if not starts:
                return out
            stream = stream[min(starts):]
            # the frame ends at the first LF, unless another start character comes first (restart)
            nxt = [i for i in (stream.find(c, 1) for c in (b"$", b"#", b"!", b"\n")) if i >= 0]
            if not nxt:
                if len(stream) > FRAME_LIMIT:
                    self.dropped += 1  # too long already: drop and hunt for the next start
                    stream = b""
                    continue
                self.pending = stream
                return out
            end = min(nxt)
            if stream[end] != 0x0A:  # restarted by a start character
                self.dropped += 1
                stream = stream[end:]
                continue
            candidate, stream = stream[:end + 1], stream[end + 1:]
            m = _FRAME.match(candidate) if len(candidate) <= FRAME_LIMIT else None
            body = m.group(2) if m else b""
            if not m or b"*" in body or crc_ccitt(body) != int(m.group(3), 16):
                self.dropped += 1
                continue
            out.append((m.group(1).decode(), body.decode("ascii")))
        return out
