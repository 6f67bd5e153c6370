"""Helpers shared by the subcommands: output folder, seed strength options, printing results, progress."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from navigator.errors import ClinicalCheckFailed, InputError, RegistrationError
from navigator.io.files import dumps


def number(lo: float, hi: float, unit: str = "", *, above: bool = False, integer: bool = False,
           hint: str = ""):
    """An argparse ``type`` that checks an option once where it enters: a finite number (a whole one with
    ``integer``) from ``lo`` (exclusive with ``above``) to ``hi``; otherwise exit 2 with the allowed range.

        p.add_argument("--dose-grid-mm", type=number(0.25, 5.0, "mm"))
    """
    kind = "whole number" if integer else "number"

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind}; give a {kind} "
                                             f"{_range(lo, hi, unit, above)}{hint}") from None
        if not math.isfinite(value) or value < lo or (above and value == lo) or value > hi:
            raise argparse.ArgumentTypeError(f"{text} {unit}".rstrip() + f" is out of range; give a {kind} "
                                             f"{_range(lo, hi, unit, above)}{hint}")
        return value

    parse.__name__ = kind  # argparse names the type in its own messages
    return parse


def _range(lo, hi, unit, above) -> str:
    u = f" {unit}" if unit else ""
    if above and lo == 0:
        return f"that is positive, up to {hi:g}{u}"
    return f"{'above' if above else 'from'} {lo:g}{u if above else ''} {'and up to' if above else 'to'} {hi:g}{u}"


def add_ct_option(parser, option: str, help_text: str, required: bool = True) -> None:
    """``--ct DIR`` and its ``--ct-series-uid UID`` (which series, when the folder holds several)."""
    parser.add_argument(option, required=required, metavar="DIR", help=help_text)
    parser.add_argument(f"{option}-series-uid", metavar="UID", default=None,
                        help=f"the SeriesInstanceUID to load when the {option} folder holds more than one series")


def read_ct(args, option: str):
    """The CT series of ``option`` (e.g. ``"--preplan-ct"``), picked by its ``-series-uid`` when given."""
    from navigator.io.dicom import load_ct_series

    from navigator.errors import DicomSeriesError

    dest = option.lstrip("-").replace("-", "_")
    try:
        return load_ct_series(getattr(args, dest), series_uid=getattr(args, f"{dest}_series_uid", None),
                              series_option=f"{option}-series-uid")
    except DicomSeriesError as exc:
        raise DicomSeriesError(f"{option}: {exc}") from None


def add_strength_options(parser, prefix: str = "--seed-") -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument(f"{prefix}activity-mci", type=number(0, 20, "mCi", above=True), dest="activity_mci",
                   help="apparent activity per seed, mCi")
    g.add_argument(f"{prefix}activity-mbq", type=number(0, 740, "MBq", above=True), dest="activity_mbq",
                   help="apparent activity per seed, MBq")
    g.add_argument(f"{prefix}sk-u", type=number(0, 25, "U", above=True), dest="sk_u",
                   help="air-kerma strength per seed, U")


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
    (or ends in a finding whose record the contract keeps: a failed clinical check, exit 3, or a refused
    registration with its registration.json) its outputs replace those of any earlier run in ``--out`` and the
    earlier run's outputs named in ``produces`` that this run did not write are removed, so ``--out`` never
    describes two runs. On any other failure ``--out`` is left as it was.

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
    except (ClinicalCheckFailed, RegistrationError):
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


def ctv_structure_set(args, ct=None) -> tuple[dict, object, Path | None]:
    """(every structure, the CTV, the file) of ``--structures``, else of ``RTSTRUCT.dcm`` beside ``--plan`` (as
    ``navigator plan`` writes it, with the CTV); the CTV is the structure named ``--ctv``. ``({}, None, None)``
    when there is no such file, ``(structures, None, file)`` when the default file has no such structure;
    ``InputError`` when ``--structures`` has none. With ``ct``, the structures must be in its frame."""
    from navigator.io.dicom import read_structure_set

    rs = Path(args.structures) if args.structures else Path(args.plan).resolve().parent / "RTSTRUCT.dcm"
    if not rs.exists():
        return {}, None, None
    structs = read_structure_set(rs, ct)
    if args.ctv in structs:
        return structs, structs[args.ctv], rs
    if args.structures:
        raise InputError(f"--structures {rs}: no structure named {args.ctv!r} (it has {sorted(structs)}); "
                         "name the CTV with --ctv")
    return structs, None, rs


def warn(command: str, warnings: list[str]) -> list[str]:
    """Each warning on stderr (``navigator plan: warning: ...``); the list, for the command's JSON."""
    for w in warnings:
        sys.stderr.write(f"navigator {command}: warning: {w}\n")
    return list(warnings)


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
