"""Helpers shared by the subcommands: output folder, seed strength options, printing results, progress."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from navigator.errors import InputError
from navigator.io.files import json_default


def add_strength_options(parser, prefix: str = "--seed-") -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument(f"{prefix}activity-mci", type=float, dest="activity_mci", help="apparent activity per seed, mCi")
    g.add_argument(f"{prefix}activity-mbq", type=float, dest="activity_mbq", help="apparent activity per seed, MBq")
    g.add_argument(f"{prefix}sk-u", type=float, dest="sk_u", help="air-kerma strength per seed, U")


def add_output_options(parser, out_required: bool = True) -> None:
    parser.add_argument("--out", required=out_required, help="output folder (created if missing)")
    parser.add_argument("--json", action="store_true", help="print the JSON result to stdout instead of a summary")


def out_dir(args) -> Path:
    p = Path(args.out)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {p}: cannot create the output folder ({exc.strerror}); choose a writable folder")
    return p


def emit(args, data: dict, summary: str) -> None:
    """Print the JSON (``--json``) or the short human summary."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(data, indent=2, default=json_default) + "\n")
    else:
        sys.stdout.write(summary.rstrip() + "\n")


class Progress:
    """Progress lines on stderr for steps that take more than a moment (stdout stays for results)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def step(self, message: str) -> None:
        if self.enabled:
            sys.stderr.write(f"[{time.perf_counter() - self.t0:6.1f} s] {message}\n")
            sys.stderr.flush()
