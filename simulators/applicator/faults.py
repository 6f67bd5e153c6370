"""Named fault scenarios of the simulated applicator, driven by one seeded ``numpy.random.Generator``.

Every fault has a name used alike on the command line (``--corrupt-rate 0.01``) and in the in-process URL
(``sgpsim://?corrupt_rate=0.01``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Faults:
    corrupt_rate: float = 0.0           # probability that a byte is altered, both directions
    loss_rate: float = 0.0              # probability that a frame is lost: requests in, replies/events out
    reply_delay_s: float = 0.0          # extra delay before every reply, s
    jam_every: int = 0                  # every N-th release attempt jams (ER,E_JAM, FAULT), 0 = never
    estop_at_release: int = 0           # the emergency stop is pressed at the N-th release attempt, 0 = never
    disconnect_every: int = 0           # the link drops after every N-th request frame received (its reply is lost)
    empty_cartridge: bool = False       # the cartridge starts with 0 seeds
    power_cycle_at_release: int = 0     # the device loses power right after the N-th successful release

    def __post_init__(self) -> None:
        for name in ("corrupt_rate", "loss_rate"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} {v} must be in [0, 1)")
        for name in ("jam_every", "estop_at_release", "disconnect_every", "power_cycle_at_release"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.reply_delay_s < 0:
            raise ValueError("reply_delay_s must be >= 0")

    @classmethod
    def from_mapping(cls, values: dict) -> "Faults":
        """From strings (URL query, argparse namespace); unknown names raise ValueError."""
        kwargs = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, raw in values.items():
            if key not in types:
                raise ValueError(f"unknown fault {key!r}; known: {sorted(types)}")
            t = types[key]
            if t in ("bool", bool):
                kwargs[key] = str(raw).lower() in ("1", "true", "yes", "on")
            elif t in ("int", int):
                kwargs[key] = int(raw)
            else:
                kwargs[key] = float(raw)
        return cls(**kwargs)


class FaultInjector:
    """Applies the link faults (corruption, loss) with the device's random generator."""

    def __init__(self, faults: Faults, rng: np.random.Generator):
        self.faults = faults
        self.rng = rng
        self.bytes_corrupted = 0
        self.frames_lost = 0

    def corrupt(self, data: bytes) -> bytes:
        p = self.faults.corrupt_rate
        if p <= 0 or not data:
            return data
        hit = self.rng.random(len(data)) < p
        if not hit.any():
            return data
        arr = np.frombuffer(data, dtype=np.uint8).copy()
        flips = self.rng.integers(1, 256, size=int(hit.sum()), dtype=np.uint8)
        arr[hit] ^= flips
        self.bytes_corrupted += int(hit.sum())
        return arr.tobytes()

    def lose(self) -> bool:
        if self.faults.loss_rate > 0 and self.rng.random() < self.faults.loss_rate:
            self.frames_lost += 1
            return True
        return False
