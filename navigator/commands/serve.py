"""``navigator serve --session DIR [--plan plan.json --preplan-ct DIR] [--ae-title NAVIGATOR] [--dicom-port 11112]
[--allow-ae AE[,AE...]] [--http-port 8080] [--bind 127.0.0.1] [--device URL] [--igtl-port 18944]
[--series-quiet-s 5] [--users FILE]``

The live session in the CT suite (../shared/specs/live-session.md): DICOM in, each step run as its scan
arrives, the console's HTTP API, the applicator, OpenIGTLink to 3D Slicer. Prints
``READY dicom=<host>:<port> http=http://<host>:<port> igtl=<host>:<port>`` once every listener is up; SIGTERM
or SIGINT ends it cleanly (exit 0). Started again on the same ``--session`` it resumes from the journal.
"""

from __future__ import annotations

from pathlib import Path

from navigator.commands._common import number
from navigator.errors import InputError
from navigator.live.service import ServeOptions, serve


def add_arguments(parser) -> None:
    parser.add_argument("--session", required=True, metavar="DIR", help="session folder (journal, scans, results)")
    parser.add_argument("--plan", metavar="plan.json", help="the pre-plan (navigator plan); with --preplan-ct")
    parser.add_argument("--preplan-ct", metavar="DIR", help="the CT series the plan was made on")
    parser.add_argument("--ae-title", default="NAVIGATOR", help="our DICOM AE title (default NAVIGATOR)")
    parser.add_argument("--dicom-port", type=number(0, 65535, integer=True), default=11112, help="DICOM port (default 11112; 0 = any free)")
    parser.add_argument("--allow-ae", metavar="AE[,AE...]", help="calling AE titles allowed to send (default: any)")
    parser.add_argument("--http-port", type=number(0, 65535, integer=True), default=8080, help="HTTP port (default 8080; 0 = any free)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--device", metavar="URL", help="the applicator: /dev/ttyUSB0, socket://HOST:PORT, sgpsim://")
    parser.add_argument("--igtl-port", type=number(0, 65535, integer=True), default=18944, help="OpenIGTLink port (default 18944; 0 = any free)")
    parser.add_argument("--series-quiet-s", type=number(0, 3600, "s", above=True), default=5.0,
                        help="a series is complete after this many seconds without an instance (default 5)")
    parser.add_argument("--users", metavar="FILE", help="console accounts (navigator users add); without it every "
                                                        "login is refused")
    parser.add_argument("--simulate-operator", action="store_true",
                        help="rehearsal and training only: a simulated operator docks the simulated applicator "
                             "on each hole (SGP/1 SIM,DOCK), as `navigator deliver --simulate-operator`")
    parser.add_argument("--tolerance-mm", type=number(0, 20, "mm", above=True), default=2.0, help="needle tip tolerance, mm (default 2)")


def _port(name: str, value: int) -> int:
    if not 0 <= value <= 65535:
        raise InputError(f"{name} {value}: give a TCP port 1-65535, or 0 for any free port")
    return value


def run(args) -> int:
    if not args.series_quiet_s > 0:
        raise InputError(f"--series-quiet-s {args.series_quiet_s}: give a positive number of seconds (e.g. 5)")
    if not args.tolerance_mm > 0:
        raise InputError(f"--tolerance-mm {args.tolerance_mm}: the tolerance must be > 0 mm (usually 2)")
    allow = [a.strip() for a in args.allow_ae.split(",") if a.strip()] if args.allow_ae else None
    bad = [a for a in allow or [] if len(a) > 16]
    if bad or len(args.ae_title) > 16 or not args.ae_title.strip():
        raise InputError(f"AE titles are 1-16 characters: {', '.join(bad or [args.ae_title])}")
    if bool(args.plan) != bool(args.preplan_ct):
        raise InputError("give both --plan plan.json and --preplan-ct DIR, or neither (the pre-plan then comes "
                         "by DICOM)")
    serve(ServeOptions(  # ends the process (exit 0) on SIGTERM/SIGINT
        session=Path(args.session), plan=Path(args.plan) if args.plan else None,
        preplan_ct=Path(args.preplan_ct) if args.preplan_ct else None, ae_title=args.ae_title,
        dicom_port=_port("--dicom-port", args.dicom_port), allow_ae=allow,
        http_port=_port("--http-port", args.http_port), bind=args.bind, device=args.device,
        igtl_port=_port("--igtl-port", args.igtl_port), series_quiet_s=args.series_quiet_s,
        users=Path(args.users) if args.users else None, tolerance_mm=args.tolerance_mm,
        simulate_operator=args.simulate_operator))
    return 0
