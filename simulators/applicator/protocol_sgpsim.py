# sgpsim://[NAME][?seeds=N&seed=RNG_SEED&realtime=0|1&watchdog_s=S&<fault>=<value>...]
#
# pyserial URL handler of the simulated SGP/1 applicator, in-process. Without NAME every port object gets
# its own device; with NAME the device is shared through DEVICES, so a test (or a second port) can reach
# the same simulated world. Faults use the names of simulators.applicator.faults.Faults, e.g.
# sgpsim://?seeds=60&seed=1&corrupt_rate=0.01&loss_rate=0.02&disconnect_every=2000.
# Registered by importing simulators.applicator (serial.protocol_handler_packages).
"""pyserial ``Serial`` class for ``sgpsim://``: a byte pipe to a ``SimulatedApplicator``.

A dropped link (the ``disconnect_every`` fault) makes read and write raise ``SerialException`` like a
``socket://`` port whose peer went away; ``close()`` + ``open()`` reconnects to the same device, whose state
and counters are intact.
"""

from __future__ import annotations

import threading
import time
import urllib.parse

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from .device import SimulatedApplicator
from .faults import Faults

DEVICES: dict[str, SimulatedApplicator] = {}
_DEVICES_LOCK = threading.Lock()
_OWN_KEYS = {"seeds", "seed", "realtime", "watchdog_s"}


def register_device(name: str, device: SimulatedApplicator) -> None:
    """Make ``sgpsim://NAME`` reach ``device`` (e.g. one built with a ``ManualClock``)."""
    with _DEVICES_LOCK:
        DEVICES[name] = device


def device_from_url(url: str) -> SimulatedApplicator:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "sgpsim":
        raise SerialException(f"{url!r} is not an sgpsim:// URL")
    try:
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query, strict_parsing=bool(parts.query)).items()}
        faults = Faults.from_mapping({k: v for k, v in query.items() if k not in _OWN_KEYS})
        kwargs = dict(seeds=int(query.get("seeds", 60)), rng=int(query.get("seed", 0)), faults=faults,
                      realtime=query.get("realtime", "0").lower() in ("1", "true", "yes"))
        if "watchdog_s" in query:
            kwargs["watchdog_s"] = float(query["watchdog_s"])
    except ValueError as exc:
        raise SerialException(f"{url!r}: bad simulator option ({exc})") from None
    name = parts.netloc
    if not name:
        return SimulatedApplicator(**kwargs)
    with _DEVICES_LOCK:
        if name not in DEVICES:
            DEVICES[name] = SimulatedApplicator(**kwargs)
        return DEVICES[name]


class Serial(SerialBase):
    """Port object for ``sgpsim://``; ``.device`` is the simulated applicator behind it."""

    device: SimulatedApplicator | None = None

    def open(self) -> None:
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise SerialException("Port is already open.")
        if self.device is None:
            self.device = device_from_url(self.portstr)
        self._cond = threading.Condition()
        self._rx = bytearray()
        self._dropped = False
        self.device.drop_output()  # what was sent while nobody listened is gone
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def _reconfigure_port(self) -> None:
        pass

    def _check(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        if self._dropped:
            raise SerialException("simulated link dropped (disconnect fault); reopen the port")

    def _pump(self) -> None:
        self.device.poll()
        out = self.device.take_output()
        if out:
            self._rx += out

    @property
    def in_waiting(self) -> int:
        self._check()
        with self._cond:
            self._pump()
            return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        self._check()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        with self._cond:
            while True:
                self._check()
                self._pump()
                if len(self._rx) >= size:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                # wake on a write (notify) or at the latest when a timer or a delayed reply may be due
                self._cond.wait(0.02 if left is None else min(left, 0.02))
            data = bytes(self._rx[:size])
            del self._rx[:size]
            return data

    def write(self, data) -> int:
        self._check()
        data = bytes(data)
        self.device.receive(data)
        with self._cond:
            if self.device.take_disconnect():
                self._dropped = True
            self._cond.notify_all()
        return len(data)

    def flush(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        self._check()
        with self._cond:
            self._rx.clear()

    def reset_output_buffer(self) -> None:
        pass
