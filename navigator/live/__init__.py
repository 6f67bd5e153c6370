"""The live session (``navigator serve``): DICOM in, each step run as its scan arrives, the operator console's
HTTP API, the applicator, and OpenIGTLink to 3D Slicer (../shared/specs/live-session.md).

Layer: above report | wiring | session, below the commands.
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "UserStore": "users", "User": "users",
    "DicomReceiver": "receiver",
    "LiveSession": "session",
    "create_app": "api",
    "IgtlServer": "igtl",
    "ServeOptions": "service", "serve": "service",
})
