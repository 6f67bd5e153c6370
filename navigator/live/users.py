"""Console accounts: ``users.json`` written by ``navigator users add``, read by ``navigator serve``.

A password is stored only as a salted slow hash: scrypt (hashlib, RFC 7914) with a random 16-byte salt per
user and its cost parameters beside the hash, so they can be raised later without breaking older entries.
Verification recomputes the hash and compares in constant time (``hmac.compare_digest``); an unknown user
costs the same hashing time as a known one, so timing does not reveal which names exist.

File: ``{"format": "navigator/users", "version": 1, "users": {name: {"role", "scrypt": {"n","r","p","salt",
"hash"}, "changed"}}}`` (salt and hash in hex), written atomically with 0600 permissions.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from navigator.errors import InputError
from navigator.io import write_json

ROLES = ("physicist", "operator", "viewer")
FORMAT = "navigator/users"
# scrypt cost: n=2**14, r=8 needs 16 MiB and ~50 ms per check on one core (OWASP's minimum is n=2**17 with
# p=1 *or* an equivalent; 2**14 keeps the login below 0.1 s on a 2-core console PC while a guess costs the same)
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
MIN_PASSWORD = 8
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class User:
    name: str
    role: str


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


# A fixed dummy entry: an unknown user is checked against it so that the answer takes as long as for a real one.
_DUMMY = {"salt": "00" * 16, "hash": "00" * 32, **SCRYPT}


class UserStore:
    """The accounts in one users file. ``verify(name, password)`` -> ``User`` or None."""

    def __init__(self, path: Path | None, users: dict[str, dict] | None = None):
        self.path = None if path is None else Path(path)
        self.users = users or {}

    @classmethod
    def load(cls, path, missing_ok: bool = False) -> "UserStore":
        path = Path(path)
        if not path.exists():
            if missing_ok:
                return cls(path)
            raise InputError(f"--users {path}: file not found; create it with "
                             f"`navigator users add NAME --role physicist --users {path}`")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"--users {path}: cannot read it ({exc}); give the file written by "
                             "`navigator users add`") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("users"), dict):
            raise InputError(f"--users {path}: not a users file (expected format {FORMAT!r}); give the file "
                             "written by `navigator users add`")
        return cls(path, data["users"])

    def add(self, name: str, role: str, password: str) -> None:
        """Add or replace ``name`` (validated), hashing ``password`` with a fresh salt."""
        if not _NAME.match(name or ""):
            raise InputError(f"user name {name!r}: use 1-64 letters, digits or . _ @ - (no spaces)")
        if role not in ROLES:
            raise InputError(f"--role {role!r}: must be one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise InputError(f"the password has {len(password)} characters; give at least {MIN_PASSWORD} "
                             "(read from stdin, one line)")
        salt = secrets.token_bytes(16)
        digest = _hash(password, salt, **SCRYPT)
        self.users[name] = {"role": role, "scrypt": {**SCRYPT, "salt": salt.hex(), "hash": digest.hex()},
                            "changed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    def save(self) -> Path:
        """Atomic write (temp file + rename) created with 0600: the hashes are readable by the owner only."""
        if self.path is None:
            raise InputError("no users file to write to; give --users FILE")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o077)
        try:
            write_json(self.path, {"format": FORMAT, "version": 1, "users": self.users})
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        return self.path

    def verify(self, name: str, password: str) -> User | None:
        entry = self.users.get(name) if isinstance(name, str) else None
        params = entry["scrypt"] if entry else _DUMMY
        try:
            digest = _hash(password if isinstance(password, str) else "", bytes.fromhex(params["salt"]),
                           int(params["n"]), int(params["r"]), int(params["p"]))
        except (KeyError, ValueError, TypeError):
            return None
        ok = hmac.compare_digest(digest, bytes.fromhex(params["hash"]))
        return User(name, entry["role"]) if ok and entry else None

    def __len__(self) -> int:
        return len(self.users)


def may(role: str, action: str) -> bool:
    """Roles (live-session.md): physicist everything; operator all but ``approve`` (accepting out-of-tolerance
    needles, approving re-plans and supplements); viewer reads only."""
    if role == "physicist":
        return True
    if role == "operator":
        return action in ("read", "change")
    return action == "read"
