"""SGP/1 command codec (spec sections 6 and 7): frames <-> typed requests, replies, events. Pure.

Requests are built with ``make_request``; received frames become ``Reply`` or ``Event`` with ``decode``; the
``parse_*`` functions turn an OK reply's fields into value objects with units in their names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ProtocolError
from .framing import Frame, encode_frame

SEQ_MAX = 65535
HOLE_RE = re.compile(r"^[A-Z][0-9]{1,2}$")
_UINT_RE = re.compile(r"^[0-9]{1,10}$")
_DEC_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")  # decimal with '.', no exponent

VERBS = ("HELLO", "PING", "STATUS", "CART", "ENABLE", "SELECT", "RETRACT", "ARM", "RELEASE", "RECORD",
         "ESTOP", "RESET", "SIM")
STATES = ("SAFE", "IDLE", "ARMED", "FAULT", "ESTOP")
RETRACT_MIN_MM, RETRACT_MAX_MM = 0.5, 50.0


def fmt_mm(value_mm: float) -> str:
    """Millimetres on the wire: one decimal, '.' as the point (``35.0``)."""
    text = f"{round(float(value_mm), 1):.1f}"
    return "0.0" if text == "-0.0" else text


def parse_decimal(text: str, what: str) -> float:
    if not _DEC_RE.match(text):
        raise ProtocolError(f"{what} {text!r} is not a decimal number")
    return float(text)


def parse_uint(text: str, what: str) -> int:
    if not _UINT_RE.match(text):
        raise ProtocolError(f"{what} {text!r} is not a non-negative integer")
    return int(text)


def check_hole(hole: str) -> str:
    if not isinstance(hole, str) or not HOLE_RE.match(hole):
        raise ValueError(f"hole {hole!r} is not a template hole id (a row letter A-Z and a column 0-99, e.g. C7)")
    return hole


@dataclass(frozen=True)
class Request:
    seq: int
    verb: str
    args: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The request text the device compares for exactly-once execution (between ``$`` and ``*``)."""
        return ",".join((str(self.seq), self.verb) + self.args)

    def encode(self) -> bytes:
        return encode_frame("$", (str(self.seq), self.verb) + self.args).raw


def make_request(seq: int, verb: str, *args) -> Request:
    """Validated request; numbers in ``args`` must already be wire text (use ``fmt_mm``)."""
    if not 1 <= int(seq) <= SEQ_MAX:
        raise ValueError(f"seq {seq} out of range 1..{SEQ_MAX}")
    if verb not in VERBS:
        raise ValueError(f"unknown SGP/1 verb {verb!r}")
    req = Request(int(seq), verb, tuple(str(a) for a in args))
    req.encode()  # raises FrameEncodeError on forbidden characters / length
    return req


@dataclass(frozen=True)
class Reply:
    seq: int
    ok: bool
    fields: tuple[str, ...]  # after OK, or after ER: (code, detail...)
    text: str

    @property
    def code(self) -> str | None:
        return None if self.ok else (self.fields[0] if self.fields else "")

    @property
    def detail(self) -> str | None:
        return None if self.ok or len(self.fields) < 2 else ",".join(self.fields[1:])


@dataclass(frozen=True)
class Event:
    eid: int
    name: str
    fields: tuple[str, ...]
    text: str


def decode(frame: Frame) -> Reply | Event | None:
    """A received frame as a reply or event; ``None`` for frames a host ignores (requests, bad numbers)."""
    f = frame.fields
    if frame.start == "$" or len(f) < 2 or not _UINT_RE.match(f[0]):
        return None
    number = int(f[0])
    if not 1 <= number <= SEQ_MAX:
        return None
    if frame.start == "#":
        if f[1] == "OK":
            return Reply(number, True, f[2:], frame.body)
        if f[1] == "ER" and len(f) >= 3:
            return Reply(number, False, f[2:], frame.body)
        return None
    return Event(number, f[1], f[2:], frame.body)


# --- value objects for OK replies -------------------------------------------------------------------------

def _need(reply: Reply, n: int, what: str) -> tuple[str, ...]:
    if not reply.ok or len(reply.fields) != n:
        raise ProtocolError(f"{what} reply '{reply.text}' should carry {n} fields after OK")
    return reply.fields


def _hole_or_none(text: str, what: str) -> str | None:
    if text == "-":
        return None
    if not HOLE_RE.match(text):
        raise ProtocolError(f"{what} {text!r} is neither a hole id nor '-'")
    return text


@dataclass(frozen=True)
class Hello:
    model: str
    serial: str
    firmware: str
    protocol: str


@dataclass(frozen=True)
class Status:
    state: str
    selected_hole: str | None
    docked_hole: str | None
    depth_mm: float
    seeds_left: int
    released_total: int


@dataclass(frozen=True)
class Cartridge:
    cartridge_id: str
    seed_model: str
    activity_mbq: float
    calibration_date: str  # YYYYMMDD
    seeds_left: int


@dataclass(frozen=True)
class ReleaseReport:
    released_total: int
    seeds_left: int
    depth_mm: float
    hole: str


@dataclass(frozen=True)
class ReleaseRecord:
    k: int  # 1-based index of the release since power-up
    hole: str
    depth_mm: float
    uptime_ms: int


def parse_hello(reply: Reply) -> Hello:
    return Hello(*_need(reply, 4, "HELLO"))


def parse_status(reply: Reply) -> Status:
    s, sel, dock, depth, left, total = _need(reply, 6, "STATUS")
    if s not in STATES:
        raise ProtocolError(f"STATUS state {s!r} is not one of {STATES}")
    return Status(s, _hole_or_none(sel, "selected hole"), _hole_or_none(dock, "docked hole"),
                  parse_decimal(depth, "depth_mm"), parse_uint(left, "seeds_left"),
                  parse_uint(total, "released_total"))


def parse_cartridge(reply: Reply) -> Cartridge:
    cid, model, act, date, left = _need(reply, 5, "CART")
    return Cartridge(cid, model, parse_decimal(act, "activity_MBq"), date, parse_uint(left, "seeds_left"))


def parse_release(reply: Reply) -> ReleaseReport:
    total, left, depth, hole = _need(reply, 4, "RELEASE")
    return ReleaseReport(parse_uint(total, "released_total"), parse_uint(left, "seeds_left"),
                         parse_decimal(depth, "depth_mm"), _hole_or_none(hole, "hole") or "-")


def parse_record(reply: Reply) -> ReleaseRecord:
    k, hole, depth, up = _need(reply, 4, "RECORD")
    return ReleaseRecord(parse_uint(k, "k"), hole, parse_decimal(depth, "depth_mm"), parse_uint(up, "uptime_ms"))


def parse_depth(reply: Reply) -> float:
    return parse_decimal(_need(reply, 1, "RETRACT")[0], "depth_mm")
