"""The hash-chained audit log: appends chain, and `verify` (library and `millrace audit
verify`) names every edited, removed and reordered entry."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.audit import GENESIS, AuditLog, canonical, entry_hash
from gateway.cli import main


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    audit = AuditLog(tmp_path / "audit.db")
    for i in range(1, 6):
        audit.append_sync(
            "device.write", f"user{i} [token t{i}]", f"pump-1.sp{i}", {"value": i}, now=100.0 + i
        )
    yield audit
    audit.close()


def _sql(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as con:
        for s in statements:
            con.execute(s)


def test_entries_chain_and_verify(log: AuditLog) -> None:
    entries = log.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS
    for a, b in itertools.pairwise(entries):
        assert b.prev_hash == a.hash
    e = entries[2]
    assert e.hash == entry_hash(e.ts, e.who, e.action, e.target, canonical(e.detail), e.prev_hash)
    result = log.verify()
    assert result.ok and result.entries == 5 and result.head_seq == 5
    assert result.head_hash == entries[-1].hash and result.problems == []


async def test_async_append_and_paging(log: AuditLog) -> None:
    entry = await log.append("data.export", "admin [token a]", "uplink:central", {"rows": 3})
    assert entry.seq == 6 and entry.prev_hash == log.entries(after=4)[0].hash
    page = log.entries(after=2, limit=2)
    assert [e.seq for e in page] == [3, 4]
    assert [e.seq for e in log.entries(action="data.export")] == [6]


def test_edited_entry_is_named(log: AuditLog) -> None:
    _sql(log.path, "UPDATE audit SET detail = '{\"value\":999}' WHERE seq = 3")
    result = log.verify()
    assert not result.ok
    assert result.problems == ["seq 3: edited (its content does not match its hash)"]


def test_edit_with_its_hash_recomputed_shows_at_the_next_entry(log: AuditLog) -> None:
    e = log.entries(after=2, limit=1)[0]
    forged = entry_hash(e.ts, "someone else", e.action, e.target, canonical(e.detail), e.prev_hash)
    _sql(log.path, f"UPDATE audit SET who = 'someone else', hash = '{forged}' WHERE seq = 3")
    problems = log.verify().problems
    assert problems == [
        "seq 4: chain broken (the entry before it, seq 3, was rewritten or replaced)"
    ]


def test_removed_entry_is_named(log: AuditLog) -> None:
    _sql(log.path, "DELETE FROM audit WHERE seq = 2")
    assert log.verify().problems == ["seq 2: removed (seq 3 follows a missing entry)"]
    _sql(log.path, "DELETE FROM audit WHERE seq IN (3, 4)")
    assert log.verify().problems == ["seq 2-4: removed (seq 5 follows a missing entry)"]


def test_reordered_entries_are_named(log: AuditLog) -> None:
    # swap the contents of seq 2 and 3 (the numbers stay where they were)
    _sql(
        log.path,
        "UPDATE audit SET seq = -2 WHERE seq = 2",
        "UPDATE audit SET seq = 2 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = -2",
    )
    problems = log.verify().problems
    assert problems[0] == "seq 2: out of order (it follows the entry now at seq 3, not seq 1)"
    assert problems[1] == "seq 3: out of order (it follows the entry now at seq 1, not seq 2)"
    assert all("edited" not in p for p in problems)  # the entries themselves are intact


def test_cli_verify_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        yaml.safe_dump({"gateway": {"id": "gw", "site": "s"}, "store": {"path": "gw.db"}})
    )
    audit = AuditLog(tmp_path / "audit.db")
    for i in range(3):
        audit.append_sync("device.write", "tech [token t]", f"p{i}", {"value": i})
    audit.close()
    assert main(["audit", "verify", "-c", str(cfg)]) == 0
    assert "3 entries, intact" in capsys.readouterr().out
    assert main(["audit", "list", "-c", str(cfg), "--json", "--after", "1"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["seq"] for e in listed] == [2, 3] and listed[0]["target"] == "p1"

    _sql(tmp_path / "audit.db", "UPDATE audit SET target = 'p9' WHERE seq = 2")
    assert main(["audit", "verify", "-c", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED  seq 2: edited" in out and "NOT intact (1 problems)" in out
