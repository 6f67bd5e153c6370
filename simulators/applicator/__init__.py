"""Simulated SGP/1 seed applicator (the device side), written apart from ``device_drivers``.

In-process: ``serial.serial_for_url("sgpsim://?seeds=60&seed=1")`` once this package is imported (it
registers itself in ``serial.protocol_handler_packages``). Separate process:
``python -m simulators.applicator --listen 127.0.0.1:0`` and ``socket://`` from the host.
"""

import serial

from .device import ManualClock, RealClock, SimulatedApplicator, TrueRelease
from .faults import Faults
from .protocol_sgpsim import DEVICES, device_from_url, register_device
from .server import SimServer

__all__ = ["SimulatedApplicator", "TrueRelease", "Faults", "ManualClock", "RealClock", "SimServer",
           "register_device", "device_from_url", "DEVICES", "register"]


def register() -> None:
    """Let pyserial find ``sgpsim://`` (idempotent)."""
    if __name__ not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(__name__)


register()
