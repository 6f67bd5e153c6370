"""``navigator users add`` and ``navigator.live.users.UserStore``: salted scrypt hashes only, 0600, replace,
constant-time verification, clear errors for bad input."""

from __future__ import annotations

import json
import stat

from navigator.live.users import UserStore, may
from tests.live.conftest import add_user


def test_users_add_stores_only_a_salted_slow_hash(tmp_path):
    path = tmp_path / "users.json"
    r = add_user(path, "phil", "physicist", "correct horse battery")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "correct horse battery" not in text
    entry = json.loads(text)["users"]["phil"]
    assert entry["role"] == "physicist"
    assert set(entry["scrypt"]) == {"n", "r", "p", "salt", "hash"} and entry["scrypt"]["n"] >= 2 ** 14
    assert add_user(path, "otto", "operator", "correct horse battery").returncode == 0
    salts = {u["scrypt"]["salt"] for u in json.loads(path.read_text())["users"].values()}
    assert len(salts) == 2  # same password, different salts, different hashes

    store = UserStore.load(path)
    assert store.verify("phil", "correct horse battery").role == "physicist"
    assert store.verify("phil", "correct horse batterY") is None
    assert store.verify("nobody", "correct horse battery") is None


def test_users_add_replaces_an_existing_user(tmp_path):
    path = tmp_path / "users.json"
    assert add_user(path, "phil", "physicist", "first-password").returncode == 0
    r = add_user(path, "phil", "viewer", "second-password")
    assert r.returncode == 0 and "replaced" in r.stdout
    store = UserStore.load(path)
    assert len(store) == 1
    assert store.verify("phil", "first-password") is None
    assert store.verify("phil", "second-password").role == "viewer"


def test_bad_input_is_a_clear_error(tmp_path):
    path = tmp_path / "users.json"
    r = add_user(path, "phil", "physicist", "short")
    assert r.returncode == 2 and "at least 8" in r.stderr and "Traceback" not in r.stderr
    r = add_user(path, "phil", "surgeon", "long-enough-pw")
    assert r.returncode == 2 and "physicist" in r.stderr
    r = add_user(path, "two words", "viewer", "long-enough-pw")
    assert r.returncode == 2 and "no spaces" in r.stderr
    path.write_text("{not json")
    r = add_user(path, "phil", "viewer", "long-enough-pw")
    assert r.returncode == 2 and "navigator users add" in r.stderr and "Traceback" not in r.stderr


def test_roles():
    assert may("physicist", "approve") and may("physicist", "change")
    assert may("operator", "change") and not may("operator", "approve")
    assert may("viewer", "read") and not may("viewer", "change")
