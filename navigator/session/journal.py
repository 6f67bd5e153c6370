"""The session journal: an append-only, hash-chained ``session.jsonl``.

Each line is one JSON object ``{"n", "t", "kind", "data", "prev"}``: ``n`` counts lines from 1, ``t`` is the
UTC time (ISO 8601), ``kind`` names the entry ("device_command", "device_reply", "seed_release_intent",
"seed_released", ...), ``data`` is a JSON object, and ``prev`` is the SHA-256 (hex) of the previous line's
bytes without its newline ("0" * 64 for the first line). ``append`` returns only after the line is flushed
and fsync'ed, so an entry that was reported is on disk.

``Journal.read`` verifies the chain and raises ``JournalError`` naming the line that was altered, removed or
torn. A torn last line (power lost during a write) is only cut off with ``repair=True``: what it said was
never acted on, because the journal is written before the action.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import threading
from pathlib import Path

from navigator.errors import JournalError

GENESIS = "0" * 64
KEYS = ("n", "t", "kind", "data", "prev")


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _error(path: Path, line: int, message: str) -> JournalError:
    err = JournalError(f"journal {path}, line {line}: {message}")
    err.line_number = line
    return err


class Journal:
    """Append-only hash-chained journal. Safe to append from several threads."""

    def __init__(self, path, repair: bool = False):
        self.path = Path(path)
        self._lock = threading.Lock()
        entries = Journal.read(self.path, repair=repair) if self.path.exists() else []
        self.n = len(entries)
        self._prev = GENESIS
        if entries:
            last = self.path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
            self._prev = hashlib.sha256(last).hexdigest()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")

    def append(self, kind: str, data: dict | None = None) -> dict:
        """Write one entry; returns it once it is on disk (flush + fsync)."""
        if not isinstance(kind, str) or not kind:
            raise ValueError("journal kind must be a non-empty string")
        with self._lock:
            entry = {"n": self.n + 1, "t": _utc_now(), "kind": kind, "data": data if data is not None else {},
                     "prev": self._prev}
            line = json.dumps(entry, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                              default=_default).encode("ascii")
            self._file.write(line + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self.n += 1
            self._prev = hashlib.sha256(line).hexdigest()
            return entry

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def read(path, repair: bool = False) -> list[dict]:
        """All entries after verifying the chain. ``repair=True`` cuts off a torn last line (and only that)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise JournalError(f"journal {path}: file not found; give the session.jsonl of the session") from None
        pieces = raw.split(b"\n")
        tail = pieces.pop()  # b"" when the file ends with a newline, else a torn last line
        entries: list[dict] = []
        prev = GENESIS
        for i, line in enumerate(pieces, start=1):
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise _error(path, i, "is not valid JSON (altered or corrupted); the journal cannot be trusted "
                                      "past this point") from None
            if not isinstance(entry, dict) or set(entry) != set(KEYS):
                raise _error(path, i, f"does not have exactly the keys {list(KEYS)} (altered)")
            if entry["n"] != i:
                raise _error(path, i, f"says n={entry['n']!r}, expected {i} (a line was removed or inserted)")
            if entry["prev"] != prev:
                where = i - 1 if i > 1 else 1
                raise _error(path, where, f"was altered or removed: its hash does not match the 'prev' recorded "
                                          f"in line {i}")
            prev = hashlib.sha256(line).hexdigest()
            entries.append(entry)
        if tail:
            n = len(pieces) + 1
            if not repair:
                raise _error(path, n, f"is torn ({len(tail)} bytes without end of line, probably power lost "
                                      "during a write); cut that line off and resume with --repair-journal "
                                      "(Journal(path, repair=True) in Python)")
            with open(path, "r+b") as f:
                f.truncate(len(raw) - len(tail))
                f.flush()
                os.fsync(f.fileno())
        return entries


def _default(o):
    try:
        import numpy as np

        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.floating, np.integer, np.bool_)):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
