"""Exception types of the SGP/1 driver, one per thing a caller can do about it.

- ``ConnectError``: the URL cannot be opened (wrong URL, port busy, simulator not running). Fix the URL/cable.
- ``LinkLost``: no valid reply after the spec's retransmissions, or the port dropped. Reconnect, then
  ``reconcile()`` before any further release (SGP/1 section 8).
- ``DeviceRefused``: the device answered ``ER,<code>``; ``code`` says why (``E_STATE``, ``E_JAM``, ...).
- ``InterlockError``: the driver refused to send ARM/RELEASE because its own checks failed (not docked on
  the selected hole, depth off the planned depth); nothing was sent.
- ``ReconcileRequired``: ARM/RELEASE was asked for after a lost link before ``reconcile()`` ran.
- ``CounterMismatch``: a RELEASE reply did not raise ``released_total`` by exactly one. Stop and reconcile.
- ``ProtocolError``: the device's reply is malformed (wrong field count, bad number). A device bug.
"""

from __future__ import annotations


class DeviceError(Exception):
    """Base class of every error the driver raises on purpose."""


class ConnectError(DeviceError):
    """The port or URL could not be opened."""


class LinkLost(DeviceError):
    """No reply after all retransmissions, or the port went away. Reconcile before releasing again."""

    def __init__(self, message: str, request_text: str | None = None):
        super().__init__(message)
        self.request_text = request_text


class DeviceRefused(DeviceError):
    """The device replied ``ER,<code>[,<detail>]``. Nothing was executed unless the code says so."""

    def __init__(self, request_text: str, code: str, detail: str | None = None):
        self.request_text = request_text
        self.code = code
        self.detail = detail
        extra = f",{detail}" if detail else ""
        super().__init__(f"device refused '{request_text}': ER,{code}{extra} ({_MEANING.get(code, 'unknown code')})")


class InterlockError(DeviceError):
    """A host-side interlock failed; no byte of the ARM/RELEASE was sent."""


class ReconcileRequired(DeviceError):
    """The link was lost since the last reconciliation: call ``reconcile()`` before ARM/RELEASE."""


class CounterMismatch(DeviceError):
    """``released_total`` did not rise by exactly one over a RELEASE."""


class ProtocolError(DeviceError):
    """A frame passed its CRC but its fields do not follow SGP/1."""


_MEANING = {
    "E_SYNTAX": "malformed fields",
    "E_VERB": "unknown verb",
    "E_ARG": "argument out of range",
    "E_STATE": "not allowed in this state",
    "E_SEQ": "sequence number reused with other text",
    "E_NODOCK": "not docked on the selected hole",
    "E_EMPTY": "no seeds left",
    "E_JAM": "release jammed, no seed left the applicator; device in FAULT",
    "E_ESTOP": "emergency stop",
    "E_BUSY": "busy",
}
