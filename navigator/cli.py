"""The ``navigator`` command line (../shared/specs/cli-contract.md).

Each subcommand lives in ``navigator/commands/<name>.py`` and provides ``add_arguments(parser)`` and
``run(args) -> int``. This module only dispatches and turns errors into the contract's exit codes:
0 success, 2 bad input (one clear paragraph on stderr, no traceback), 3 clinical check failed, 1 internal error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from navigator.errors import NavigatorError

COMMANDS = {
    "rehearse": "a whole simulated procedure on a synthetic patient (the main job)",
    "tg43": "TG-43 dose-rate table of one seed (commissioning check), CSV on stdout",
    "dose": "independent dose check of a seed list from any planning system",
    "plan": "pre-plan: CTV, needles, seeds, dose; plan.json + DICOM RT objects",
    "register": "rigid registration of the intraop CT (moving) to the pre-plan CT (fixed)",
    "needles": "find the needles in an intraop CT and compare each with the plan",
    "deliver": "drive the applicator through the plan's seeds, needle by needle",
    "postimplant": "find the seeds, compute the delivered dose, cold spots, supplementary seeds",
    "serve": "the live session in the CT suite: DICOM in, steps as scans arrive, console and API, OpenIGTLink",
    "users": "console accounts for `navigator serve` (users add NAME --role ROLE --users FILE)",
    "replan": "intraoperative re-plan: keep the needles where they were found, re-optimise the seeds on them",
    "robustness": "robustness preview: the plan's metrics under random needle placement errors (Dask)",
    "cohort": "re-analyse many post-implant studies: delivered dose of each, then dose-response (Dask)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors are bad input: exit 2 with a clear message
        self.print_usage(sys.stderr)
        sys.stderr.write(f"navigator: error: {message}\n")
        raise SystemExit(2)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` command's module is imported (so `navigator deliver` does not pay
    for the dose engine's compiler at start-up). ``None`` imports every command (documentation, tests)."""
    parser = _Parser(prog="navigator", description="CT-guided I-125 seed-implant navigator")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if selected is None or name == selected:
            module = _command_module(name)
            if module is not None:
                module.add_arguments(p)
        p.set_defaults(_module=name)
    return parser


def _command_module(name: str):
    try:
        return importlib.import_module(f"navigator.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"navigator.commands.{name}":
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    module = _command_module(args._module)
    if module is None:
        sys.stderr.write(f"navigator: the '{args._module}' command is not available in this build.\n")
        return 1
    try:
        return int(module.run(args) or 0)
    except NavigatorError as exc:
        sys.stderr.write(f"navigator {args._module}: {exc}\n")
        for note in getattr(exc, "__notes__", ()):
            sys.stderr.write(f"{note}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"navigator {args._module}: interrupted; outputs written so far are kept.\n")
        return 130
    except Exception:  # an internal error: keep the traceback for the bug report, say so plainly
        sys.stderr.write(f"navigator {args._module}: internal error (a bug, please report it with this text):\n")
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
