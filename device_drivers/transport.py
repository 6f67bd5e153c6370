"""Byte transport: holds one pyserial port opened from a URL and runs the driver's only thread.

``serial.serial_for_url`` serves ``/dev/ttyUSB0``, ``socket://host:port`` and the simulator's ``sgpsim://``
alike. The reader thread hands every chunk of bytes to ``on_bytes`` and calls ``on_tick`` at least every
``tick_s`` (the driver feeds the device watchdog from there); when the port fails it calls ``on_lost`` once and
ends. Nothing here knows about frames.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import serial

from .errors import ConnectError

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

BAUDRATE = 115200  # SGP/1 section 2: 115200 8N1, no flow control


class LinkDown(Exception):
    """Internal: the port is not usable (closed, disconnected); the driver turns it into a retry or LinkLost."""


class Transport:
    def __init__(self, url: str, on_bytes: Callable[[bytes], None], on_tick: Callable[[], None] | None = None,
                 on_lost: Callable[[str], None] | None = None, tick_s: float = 0.05):
        self.url = url
        self._on_bytes = on_bytes
        self._on_tick = on_tick or (lambda: None)
        self._on_lost = on_lost or (lambda why: None)
        self._tick_s = tick_s
        self._port = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._up = False
        self.opens = 0

    @property
    def connected(self) -> bool:
        return self._up

    @property
    def port(self):
        """The pyserial port object (for diagnostics and simulator access in tests)."""
        return self._port

    def open(self) -> None:
        try:
            if self._port is None:
                self._port = serial.serial_for_url(self.url, baudrate=BAUDRATE, bytesize=8, parity="N",
                                                   stopbits=1, timeout=self._tick_s, write_timeout=2.0)
            else:
                self._port.open()
        except ValueError as exc:
            raise ConnectError(f"device URL {self.url!r} is not usable ({exc}); give a serial port "
                               "(/dev/ttyUSB0), socket://HOST:PORT or sgpsim://") from None
        except (serial.SerialException, OSError) as exc:
            raise ConnectError(f"cannot open device {self.url!r} ({exc}); check the cable/USB port, "
                               "or that the simulator is running and listening") from None
        self.opens += 1
        self._stop.clear()
        self._up = True
        self._thread = threading.Thread(target=self._reader, name=f"sgp-reader {self.url}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._up = False
        port = self._port
        if port is not None:
            try:
                port.close()
            except Exception:  # closing a dead socket may fail; it is closed either way
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None

    def reopen(self) -> None:
        self.close()
        self.open()

    def write(self, data: bytes) -> None:
        if not self._up:
            raise LinkDown("port not open")
        with self._write_lock:
            try:
                self._port.write(data)
                self._port.flush()
            except Exception as exc:  # SerialException, OSError, or a port closed under us
                self._mark_lost(f"write failed: {exc}")
                raise LinkDown(str(exc)) from None

    def _mark_lost(self, why: str) -> None:
        if self._up and not self._stop.is_set():
            self._up = False
            log.warning("link to %s lost: %s", self.url, why)
            self._on_lost(why)
        self._up = False

    def _reader(self) -> None:
        port = self._port
        while not self._stop.is_set():
            try:
                data = port.read(max(1, min(port.in_waiting, 4096)))
            except Exception as exc:
                if not self._stop.is_set():
                    self._mark_lost(f"read failed: {exc}")
                return
            if data:
                self._on_bytes(data)
            self._on_tick()
