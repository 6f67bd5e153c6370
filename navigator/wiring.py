"""Composition root: turns a device URL into an ``navigator.delivery.applicator.Applicator``.

The only navigator module that imports ``device_drivers`` (and, for ``sgpsim://``, ``simulators``). It adapts
the driver's value objects and exceptions to the navigator's, so clinical code never sees a serial type.

    app = open_applicator("socket://127.0.0.1:7777", traffic=journal_traffic)
    app.connect()
"""

from __future__ import annotations

import contextlib
from typing import Callable

from navigator.delivery.applicator import (Applicator, CounterMismatchError, DeviceEvent, DeviceInfo, DeviceRefusedError,
                         DeviceStatus, DeviceUnreachable, InterlockRefused, LinkLostError, Reconciliation,
                         ReconcileRequiredError, ReleaseRecord, ReleaseReport)
from navigator.errors import DeliveryError


def open_applicator(url: str, traffic: Callable[[str, str], None] | None = None,
                    timeout_scale: float = 1.0, keepalive_s: float | None = 0.5) -> Applicator:
    """An unconnected applicator for ``url`` (``/dev/ttyUSB0``, ``socket://HOST:PORT``, ``sgpsim://...``).

    ``timeout_scale`` < 1 shortens SGP/1's reply timeouts (only for an instant simulator); ``traffic(kind,
    text)`` sees device commands, replies, events and link changes (for the session journal).
    """
    import dataclasses

    from device_drivers import LinkConfig, SgpApplicator

    if not isinstance(url, str) or not url.strip():
        raise DeviceUnreachable("--device: no device URL given; use /dev/ttyUSB0, socket://HOST:PORT or sgpsim://")
    if url.lower().startswith("sgpsim://"):
        import simulators.applicator  # noqa: F401  (registers the sgpsim:// URL handler with pyserial)
    config = dataclasses.replace(LinkConfig().scaled(timeout_scale), keepalive_s=keepalive_s)
    return DriverApplicator(SgpApplicator(url, config, traffic))


@contextlib.contextmanager
def _translated(what: str):
    from device_drivers import errors as e

    try:
        yield
    except e.ConnectError as exc:
        raise DeviceUnreachable(str(exc)) from None
    except e.LinkLost as exc:
        raise LinkLostError(f"{what}: {exc}") from None
    except e.DeviceRefused as exc:
        raise DeviceRefusedError(f"{what}: {exc}", exc.code, exc.detail) from None
    except e.InterlockError as exc:
        raise InterlockRefused(f"{what}: {exc}") from None
    except e.ReconcileRequired as exc:
        raise ReconcileRequiredError(f"{what}: {exc}") from None
    except e.CounterMismatch as exc:
        raise CounterMismatchError(f"{what}: {exc}") from None
    except e.DeviceError as exc:  # ProtocolError and anything new: a device bug, stop delivery
        raise DeliveryError(f"{what}: {exc}") from None


def _status(s) -> DeviceStatus:
    return DeviceStatus(s.state, s.selected_hole, s.docked_hole, s.depth_mm, s.seeds_left, s.released_total)


def _record(r) -> ReleaseRecord:
    return ReleaseRecord(r.k, r.hole, r.depth_mm, r.uptime_ms)


class DriverApplicator:
    """Adapter: ``device_drivers.SgpApplicator`` behind ``navigator.delivery.applicator.Applicator``."""

    def __init__(self, driver):
        self.driver = driver

    @property
    def needs_reconcile(self) -> bool:
        return self.driver.needs_reconcile

    @property
    def url(self) -> str:
        return self.driver.url

    def connect(self) -> DeviceInfo:
        with _translated("connect"):
            h = self.driver.connect()
        return DeviceInfo(h.model, h.serial, h.firmware, h.protocol)

    def close(self) -> None:
        self.driver.close()

    def reconnect(self) -> None:
        with _translated("reconnect"):
            self.driver.reconnect()

    def status(self) -> DeviceStatus:
        with _translated("STATUS"):
            return _status(self.driver.status())

    def enable(self) -> None:
        with _translated("ENABLE"):
            self.driver.enable()

    def reset(self) -> None:
        with _translated("RESET"):
            self.driver.reset()

    def select(self, hole: str) -> None:
        with _translated(f"SELECT {hole}"):
            self.driver.select(hole)

    def retract(self, mm: float) -> float:
        with _translated(f"RETRACT {mm:.1f} mm"):
            return self.driver.retract(mm)

    def release_seed(self, hole, planned_depth_mm, on_intent=None) -> ReleaseReport:
        with _translated(f"release at {hole}, {planned_depth_mm:.1f} mm"):
            r = self.driver.release_seed(hole, planned_depth_mm, on_intent)
        return ReleaseReport(r.released_total, r.seeds_left, r.depth_mm, r.hole)

    def record(self, k: int) -> ReleaseRecord:
        with _translated(f"RECORD {k}"):
            return _record(self.driver.record(k))

    def reconcile(self, from_k: int = 1) -> Reconciliation:
        with _translated("reconcile"):
            rec = self.driver.reconcile(from_k)
        return Reconciliation(_status(rec.status), tuple(_record(r) for r in rec.records))

    def next_event(self, timeout_s: float = 0.0) -> DeviceEvent | None:
        from device_drivers import EventGap

        with _translated("events"):
            item = self.driver.next_event(timeout_s)
        if item is None:
            return None
        if isinstance(item, EventGap):
            return DeviceEvent("GAP", (str(item.expected_eid), str(item.received_eid)), None,
                               _status(item.status) if item.status else None)
        return DeviceEvent(item.name, item.fields, item.eid)

    def sim_dock(self, hole: str, depth_mm: float) -> None:
        with _translated(f"SIM,DOCK {hole}"):
            self.driver.sim_dock(hole, depth_mm)

    def sim_undock(self) -> None:
        with _translated("SIM,UNDOCK"):
            self.driver.sim_undock()

    @property
    def stats(self):
        return self.driver.stats
