"""``navigator users add NAME --role physicist|operator|viewer --users FILE``

Adds or replaces a console account of ``navigator serve``. The password is read from stdin (one line; typed
at a prompt when stdin is a terminal) and stored only as a salted scrypt hash (``navigator.live.users``).
"""

from __future__ import annotations

import sys

from navigator.errors import InputError
from navigator.live.users import ROLES, UserStore


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="add")
    add = sub.add_parser("add", help="add or replace a user (password from stdin)",
                         description="add or replace a user; the password is read from stdin")
    add.add_argument("name", metavar="NAME", help="user name (letters, digits, . _ @ -)")
    add.add_argument("--role", required=True, choices=ROLES, help="what the user may do on the console")
    add.add_argument("--users", required=True, metavar="FILE", help="the users file (created if missing)")


def _password() -> str:
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("password: ")
    line = sys.stdin.readline()
    if not line:
        raise InputError("no password on stdin; pipe it in, e.g. `printf '%s\\n' \"$PW\" | navigator users add ...`")
    return line.rstrip("\r\n")


def run(args) -> int:
    store = UserStore.load(args.users, missing_ok=True)
    replaced = args.name in store.users
    store.add(args.name, args.role, _password())
    path = store.save()
    sys.stdout.write(f"{'replaced' if replaced else 'added'} user {args.name} ({args.role}) in {path}\n")
    return 0
