"""Packages name their public API in ``__init__`` without importing it all at once (PEP 562).

``navigator tg43`` should not pay for numba, nor ``navigator deliver`` for SimpleITK: a package's
``__init__`` lists ``{name: submodule}`` and a name's module is imported on first use.
"""

from __future__ import annotations

import importlib


def lazy_api(package: str, api: dict[str, str]):
    """``(__getattr__, __dir__, __all__)`` for a package whose public names live in its submodules."""

    def __getattr__(name: str):
        if name in api:
            return getattr(importlib.import_module(f"{package}.{api[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(api)

    return __getattr__, __dir__, sorted(api)
