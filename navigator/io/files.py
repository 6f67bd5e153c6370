"""Result files written atomically (temp file + rename in the same folder), so a crash never leaves half a file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def json_default(o):
    """JSON for numpy values and paths (``json.dumps(default=json_default)``)."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_text(path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def strict(value):
    """The value with every non-finite float (NaN, +-Infinity) as None: JSON has no such tokens, and a
    number that is not a number is absent (``null``), never a token other tools cannot parse."""
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def dumps(data) -> str:
    """Strict JSON text (RFC 8259: no NaN or Infinity tokens) of results holding numpy values."""
    return json.dumps(strict(data), indent=2, default=json_default, allow_nan=False)


def write_json(path, data: dict) -> Path:
    return write_text(path, dumps(data))
