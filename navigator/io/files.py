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


def write_json(path, data: dict) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=json_default))
