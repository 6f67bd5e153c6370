"""Helpers shared by the subcommands: output folder, seed strength options, printing results, progress."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from navigator.errors import ClinicalCheckFailed, InputError
from navigator.io.files import dumps


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


@contextlib.contextmanager
def staged_out(args, produces: tuple[str, ...]) -> Iterator[Path]:
    """All or nothing on disk: the command writes into a temporary folder beside ``--out``; when it finishes
    (or fails only a clinical check, exit 3, whose JSON the contract keeps) its outputs replace those of any
    earlier run in ``--out`` and the earlier run's outputs named in ``produces`` that this run did not write
    are removed, so ``--out`` never describes two runs. On any other failure ``--out`` is left as it was.

        with staged_out(args, ("plan.json", "RTPLAN.dcm")) as out:
            write_json(out / "plan.json", ...)
    """
    final = Path(args.out)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    except OSError as exc:
        raise InputError(f"--out {final}: cannot create the output folder ({exc.strerror}); "
                         "choose a writable folder") from None
    try:
        yield stage
    except ClinicalCheckFailed:
        _commit(stage, final, produces)
        raise
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, Exception):
            exc.add_note(f"Nothing in --out {final} was changed.")
        raise
    else:
        _commit(stage, final, produces)


def _commit(stage: Path, final: Path, produces: tuple[str, ...]) -> None:
    try:
        final.mkdir(parents=True, exist_ok=True)
        written = {p.name for p in stage.iterdir()}
        for name in set(produces) - written:
            _remove(final / name)
        for name in sorted(written):
            _remove(final / name)
            os.replace(stage / name, final / name)
    except OSError as exc:
        raise InputError(f"--out {final}: cannot move the results in ({exc.strerror}); the complete results "
                         f"are kept in {stage}") from None
    stage.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def emit(args, data: dict, summary: str) -> None:
    """Print the JSON (``--json``) or the short human summary."""
    if getattr(args, "json", False):
        sys.stdout.write(dumps(data) + "\n")
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
