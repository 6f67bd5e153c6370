"""``navigator deliver --plan plan.json --device URL --journal FILE [--simulate-operator]``

Drives the applicator through the plan's seeds (navigator/delivery.py), appends to the journal, and writes
``delivery.json`` beside it. The seed ledger is ``<journal stem>.ledger.jsonl`` beside the journal; running
the command again with the same journal resumes: seeds in the ledger are never released again.
Exit codes: 0 all seeds released and reconciled, 2 bad input (plan, URL, journal), 1 delivery stopped by the
device or not reconciled (delivery.json is still written).
"""

from __future__ import annotations

from pathlib import Path

from navigator.delivery.run import Delivery, delivery_tasks
from navigator.errors import InputError
from navigator.session.journal import Journal
from navigator.delivery.ledger import SeedLedger
from navigator.core.plan import Plan
from navigator.wiring import open_applicator
from navigator.commands._common import Progress, emit, number
from navigator.io import write_json


def add_arguments(parser) -> None:
    parser.add_argument("--plan", required=True, help="plan.json written by `navigator plan`")
    parser.add_argument("--device", required=True, metavar="URL",
                        help="applicator: /dev/ttyUSB0, socket://HOST:PORT, or sgpsim://?seeds=60 (simulator)")
    parser.add_argument("--journal", required=True, metavar="FILE", help="session journal (session.jsonl), appended")
    parser.add_argument("--simulate-operator", action="store_true",
                        help="rehearsal: dock the applicator through the simulator's SIM verbs")
    parser.add_argument("--dock-timeout-s", type=number(0, 86400, "s", above=True), default=600.0,
                        help="how long to wait for the operator to dock on each needle, s (default 600)")
    parser.add_argument("--repair-journal", action="store_true",
                        help="cut off a torn last journal line (after a power loss) and resume")
    parser.add_argument("--json", action="store_true", help="print delivery.json to stdout instead of a summary")


def ledger_path_for(journal_path: Path) -> Path:
    return journal_path.with_name(journal_path.stem + ".ledger.jsonl")


def run(args) -> int:
    plan = Plan.load(args.plan)
    delivery_tasks(plan)  # plan problems are bad input: exit 2 before touching the device
    journal_path = Path(args.journal)
    if journal_path.is_dir():
        raise InputError(f"--journal {journal_path}: is a folder; give a file such as {journal_path}/session.jsonl")
    try:
        journal = Journal(journal_path, repair=args.repair_journal)
    except OSError as exc:
        raise InputError(f"--journal {journal_path}: cannot open ({exc.strerror}); choose a writable file") from None
    progress = Progress(enabled=not args.json)
    ledger = SeedLedger(ledger_path_for(journal_path))
    app = open_applicator(args.device, traffic=lambda kind, text: journal.append(kind, {"text": text}))
    try:
        result = Delivery(plan, app, ledger, journal=journal.append, simulate_operator=args.simulate_operator,
                          dock_timeout_s=args.dock_timeout_s, progress=progress.step).run()
    finally:
        app.close()
        ledger.close()
    data = result.to_json()
    write_json(journal_path.parent / "delivery.json", data)
    journal.close()
    summary = (f"delivered {data['released']} of {data['planned']} seeds; device counted "
               f"{data['device_released_total']}; reconciled: {'yes' if data['reconciled'] else 'NO'}")
    if result.stopped_reason:
        summary += f"\nstopped: {result.stopped_reason}"
    emit(args, data, summary + f"\nwrote {journal_path.parent / 'delivery.json'}")
    return 0 if result.ok else 1
