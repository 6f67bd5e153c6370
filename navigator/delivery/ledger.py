"""The seed ledger: what may have left the applicator, on disk before and after every release.

Append-only JSON lines, each flushed and fsync'ed before the call returns:

- ``{"type": "device_epoch", "epoch": e, "baseline": N, ...}``: from here on the device's ``released_total``
  counts from ``N`` (a new epoch starts when the device was power-cycled and its counter restarted at 0);
- ``{"type": "intent", "seed_id", "hole", "depth_mm", "seq", "epoch", "seeds_left"}``: written before the
  RELEASE's first byte;
- ``{"type": "released", "seed_id", "hole", "depth_mm", "device_index", "epoch", "how"}``: the seed left
  (``how``: "reply", or "reconciled" from RECORD, or "cartridge_count" after a power cycle);
- ``{"type": "not_released", "seed_id", "reason"}``: the device said no seed left;
- ``{"type": "uncertain", "seed_id", "reason"}``: nobody can tell; never released again automatically.

An intent without an outcome means "may have left: reconcile with the device". A torn last line (power lost
mid-write) is dropped on load: it was never acted on, because every action waits for its line's fsync.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from navigator.core.models import LedgerRecord, explain
from navigator.errors import DeliveryError


@dataclass(frozen=True)
class LedgerSeed:
    seed_id: str
    hole: str
    depth_mm: float
    device_index: int   # the device's released_total right after this seed (in its epoch)
    epoch: int
    how: str


class SeedLedger:
    def __init__(self, path):
        self.path = Path(path)
        self.released: dict[str, LedgerSeed] = {}
        self.pending: dict[str, dict] = {}     # seed_id -> intent line without outcome
        self.uncertain: dict[str, str] = {}
        self.not_released: dict[str, str] = {}
        self.epochs: list[dict] = []
        self.torn_tail = False
        if self.path.exists():
            self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")

    # --- state ---------------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int | None:
        return self.epochs[-1]["epoch"] if self.epochs else None

    @property
    def baseline(self) -> int:
        return self.epochs[-1]["baseline"] if self.epochs else 0

    def released_in_epoch(self, epoch: int | None = None) -> list[LedgerSeed]:
        e = self.epoch if epoch is None else epoch
        return sorted((s for s in self.released.values() if s.epoch == e), key=lambda s: s.device_index)

    def expected_device_total(self) -> int:
        """What the device's ``released_total`` must read if the ledger and the device agree."""
        return self.baseline + len(self.released_in_epoch())

    # --- writing -------------------------------------------------------------------------------------------
    def start_epoch(self, baseline: int, reason: str, **extra) -> int:
        epoch = 0 if self.epoch is None else self.epoch + 1
        self._write({"type": "device_epoch", "epoch": epoch, "baseline": int(baseline), "reason": reason, **extra})
        return epoch

    def intent(self, seed_id: str, hole: str, depth_mm: float, seq: int, seeds_left: int | None = None) -> None:
        if seed_id in self.released:
            raise DeliveryError(f"seed {seed_id} is already in the ledger as released; it must not be released again")
        self._write({"type": "intent", "seed_id": seed_id, "hole": hole, "depth_mm": round(float(depth_mm), 1),
                     "seq": int(seq), "epoch": self.epoch, "seeds_left": seeds_left})

    def mark_released(self, seed_id: str, hole: str, depth_mm: float, device_index: int, how: str = "reply",
                      epoch: int | None = None) -> LedgerSeed:
        self._write({"type": "released", "seed_id": seed_id, "hole": hole, "depth_mm": round(float(depth_mm), 1),
                     "device_index": int(device_index), "epoch": self.epoch if epoch is None else epoch,
                     "how": how})
        return self.released[seed_id]

    def mark_not_released(self, seed_id: str, reason: str) -> None:
        self._write({"type": "not_released", "seed_id": seed_id, "reason": reason})

    def mark_uncertain(self, seed_id: str, reason: str) -> None:
        self._write({"type": "uncertain", "seed_id": seed_id, "reason": reason})

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    # --- internals -----------------------------------------------------------------------------------------
    def _write(self, record: dict) -> None:
        record = {"t": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"), **record}
        line = json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._apply(record)

    def _apply(self, r: dict) -> None:
        kind, sid = r["type"], r.get("seed_id")
        if kind == "device_epoch":
            self.epochs.append(r)
        elif kind == "intent":
            self.pending[sid] = r
            self.not_released.pop(sid, None)
        elif kind == "released":
            self.pending.pop(sid, None)
            self.released[sid] = LedgerSeed(sid, r["hole"], float(r["depth_mm"]), int(r["device_index"]),
                                            int(r["epoch"]), r.get("how", "reply"))
        elif kind == "not_released":
            self.pending.pop(sid, None)
            self.not_released[sid] = r.get("reason", "")
        elif kind == "uncertain":
            self.pending.pop(sid, None)
            self.uncertain[sid] = r.get("reason", "")
        else:
            raise DeliveryError(f"seed ledger {self.path}: unknown line type {kind!r}; is this a seed ledger?")

    def _load(self) -> None:
        raw = self.path.read_bytes()
        pieces = raw.split(b"\n")
        tail = pieces.pop()
        for i, line in enumerate(pieces, start=1):
            try:
                record = json.loads(line)
                LedgerRecord.model_validate(record)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DeliveryError(f"seed ledger {self.path}, line {i}: unreadable ({exc}); do not continue "
                                    "delivery until a physicist has checked it") from None
            except ValidationError as exc:
                raise DeliveryError(f"seed ledger {self.path}, line {i}: not a ledger record ({explain(exc)}); do "
                                    "not continue delivery until a physicist has checked it") from None
            self._apply(record)
        if tail:  # torn by a crash mid-write: never acted on; cut it so appends start on a fresh line
            self.torn_tail = True
            with open(self.path, "r+b") as f:
                f.truncate(len(raw) - len(tail))
                os.fsync(f.fileno())
