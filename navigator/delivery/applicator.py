"""The seed applicator as the clinical logic needs it: a Protocol, value objects and errors.

Nothing here talks to a port. ``navigator/wiring.py`` (the one composition root) opens a device URL and
returns an object with this interface: the SGP/1 driver (``device_drivers``) for ``/dev/tty...`` and
``socket://``, with the simulated applicator (``simulators.applicator``) registered for ``sgpsim://``.
Depths are millimetres from the template's reference plane along the needle (SGP/1 ``depth_mm``), which is
the depth plan.json defines (distance from the needle's ``entry_mm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from navigator.errors import DeliveryError, InputError


@dataclass(frozen=True)
class DeviceInfo:
    model: str
    serial: str
    firmware: str
    protocol: str


@dataclass(frozen=True)
class DeviceStatus:
    state: str                  # SAFE, IDLE, ARMED, FAULT, ESTOP
    selected_hole: str | None
    docked_hole: str | None
    depth_mm: float             # docked needle's tip depth beyond the template plane
    seeds_left: int
    released_total: int         # seeds released since the device's power-up


@dataclass(frozen=True)
class ReleaseReport:
    released_total: int         # the device's counter after this release: this seed's device index
    seeds_left: int
    depth_mm: float
    hole: str


@dataclass(frozen=True)
class ReleaseRecord:
    k: int                      # 1-based index since power-up
    hole: str
    depth_mm: float
    uptime_ms: int


@dataclass(frozen=True)
class DeviceEvent:
    name: str                   # DOCKED, UNDOCKED, DEPTH, DISARMED, WATCHDOG, ESTOP, ..., or GAP (missed events)
    fields: tuple[str, ...]
    eid: int | None = None
    status: DeviceStatus | None = None  # with GAP: the STATUS re-read after the gap


@dataclass(frozen=True)
class Reconciliation:
    status: DeviceStatus
    records: tuple[ReleaseRecord, ...]  # RECORD 1..released_total


class ApplicatorError(DeliveryError):
    """The applicator could not do what was asked (exit code 1); see the subclasses."""


class LinkLostError(ApplicatorError):
    """No reply after all retransmissions or the port dropped: reconnect, then reconcile."""


class DeviceRefusedError(ApplicatorError):
    """The device answered ``ER``; ``code`` is the SGP/1 error code (``E_JAM``, ``E_STATE``...)."""

    def __init__(self, message: str, code: str, detail: str | None = None):
        super().__init__(message)
        self.code, self.detail = code, detail


class InterlockRefused(ApplicatorError):
    """The host's interlock refused a release: nothing was sent."""


class ReconcileRequiredError(ApplicatorError):
    """ARM/RELEASE asked for before reconciling after a lost link."""


class CounterMismatchError(ApplicatorError):
    """The device's released counter did not rise by exactly one over a release."""


class DeviceUnreachable(InputError):
    """The device URL cannot be opened (exit code 2: fix the URL, cable or simulator)."""


@runtime_checkable
class Applicator(Protocol):
    """What delivery and the session controller call. Every method may raise ``ApplicatorError``."""

    needs_reconcile: bool  # True after a lost link until reconcile() ran

    def connect(self) -> DeviceInfo: ...
    def close(self) -> None: ...
    def reconnect(self) -> None: ...
    def status(self) -> DeviceStatus: ...
    def enable(self) -> None: ...
    def reset(self) -> None: ...
    def select(self, hole: str) -> None: ...
    def retract(self, mm: float) -> float: ...

    def release_seed(self, hole: str, planned_depth_mm: float,
                     on_intent: Callable[[int, str], None] | None = None) -> ReleaseReport:
        """Interlocks (docked on the selected ``hole``, depth within 0.5 mm of ``planned_depth_mm``), ARM,
        RELEASE, counter check. ``on_intent(seq, request_text)`` runs before the RELEASE's first byte."""

    def record(self, k: int) -> ReleaseRecord: ...
    def reconcile(self, from_k: int = 1) -> Reconciliation:
        """STATUS and RECORD from_k..released_total; clears ``needs_reconcile``."""
    def next_event(self, timeout_s: float = 0.0) -> DeviceEvent | None: ...

    # the operator's hands, for rehearsal against a simulator (a real device refuses: E_VERB)
    def sim_dock(self, hole: str, depth_mm: float) -> None: ...
    def sim_undock(self) -> None: ...
