"""navigator.session.journal: the hash-chained, append-only session journal."""

import hashlib
import json
import threading

import pytest

from navigator.errors import JournalError
from navigator.session.journal import GENESIS, Journal


def write_some(path, n=4):
    with Journal(path) as j:
        for i in range(n):
            j.append("device_command", {"text": f"{i + 1},PING"})
    return path


def test_lines_are_chained_and_complete(tmp_path):
    path = write_some(tmp_path / "session.jsonl")
    lines = path.read_bytes().split(b"\n")[:-1]
    entries = [json.loads(x) for x in lines]
    assert [e["n"] for e in entries] == [1, 2, 3, 4]
    assert entries[0]["prev"] == GENESIS
    for prev_line, e in zip(lines, entries[1:]):
        assert e["prev"] == hashlib.sha256(prev_line).hexdigest()
    assert set(entries[0]) == {"n", "t", "kind", "data", "prev"} and entries[0]["t"].endswith("Z")
    assert Journal.read(path) == entries


def test_reopen_continues_the_chain(tmp_path):
    path = write_some(tmp_path / "s.jsonl", 2)
    with Journal(path) as j:
        e = j.append("seed_released", {"seed_id": "S1"})
    assert e["n"] == 3
    assert [x["kind"] for x in Journal.read(path)][-1] == "seed_released"


def test_an_altered_line_is_named(tmp_path):
    path = write_some(tmp_path / "s.jsonl")
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"2,PING", b"2,PONG")
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(JournalError, match="line 2") as info:
        Journal.read(path)
    assert info.value.line_number == 2


def test_a_removed_line_is_detected(tmp_path):
    path = write_some(tmp_path / "s.jsonl")
    lines = path.read_bytes().split(b"\n")
    del lines[2]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(JournalError, match="line 3"):
        Journal.read(path)


def test_garbage_line_is_named(tmp_path):
    path = write_some(tmp_path / "s.jsonl")
    lines = path.read_bytes().split(b"\n")
    lines[0] = b"{not json"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(JournalError, match="line 1.*not valid JSON"):
        Journal.read(path)


def test_torn_last_line_needs_explicit_repair(tmp_path):
    path = write_some(tmp_path / "s.jsonl")
    intact = path.read_bytes()
    path.write_bytes(intact + b'{"n":5,"t":"2026-')   # power lost mid-write
    with pytest.raises(JournalError, match="line 5.*torn") as info:
        Journal.read(path)
    assert info.value.line_number == 5
    with pytest.raises(JournalError):
        Journal(path)                                   # opening to append refuses too
    assert len(Journal.read(path, repair=True)) == 4
    assert path.read_bytes() == intact
    with Journal(path) as j:
        assert j.append("resumed", {})["n"] == 5
    assert len(Journal.read(path)) == 5


def test_concurrent_appends_keep_the_chain(tmp_path):
    path = tmp_path / "s.jsonl"
    with Journal(path) as j:
        threads = [threading.Thread(target=lambda k=k: [j.append("device_event", {"k": k, "i": i})
                                                        for i in range(10)]) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(Journal.read(path)) == 40


def test_missing_file_and_bad_kind(tmp_path):
    with pytest.raises(JournalError, match="not found"):
        Journal.read(tmp_path / "none.jsonl")
    with Journal(tmp_path / "k.jsonl") as j, pytest.raises(ValueError):
        j.append("", {})
