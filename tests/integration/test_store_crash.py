"""kill -9 safety of the store: a child process writes and reports each committed id; after
SIGKILL at an arbitrary moment, every reported id must be on disk, contiguous, in a file that
passes integrity_check, and new readings must continue with higher ids. Three kills, one file."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from gateway.config import StoreConfig
from gateway.readings import Reading
from gateway.store import Store

# The child submits several batches per round (so a transaction is usually open when the
# kill lands) and prints the committed last id after each flush.
CHILD = """
import asyncio, sys, time
from gateway.config import StoreConfig
from gateway.readings import Reading
from gateway.store import Store

async def main(path):
    store = Store(path, StoreConfig(synchronous="normal", flush_interval=0.005))
    await store.open()
    k = 0
    while True:
        for _ in range(4):
            k += 1
            now = time.time()
            store.submit([Reading(f"dev.p{j}", float(k), ts_gateway=now) for j in range(50)])
        await store.flush()
        print(store.stats().last_id, flush=True)
        if k % 8 == 0:
            store.submit([Reading("dev.tail", float(k))])  # left in flight for the kill

asyncio.run(main(sys.argv[1]))
"""


def run_child_and_kill(path: Path, lines_before_kill: int) -> int:
    """Start the writer child, read `lines_before_kill` reported ids, SIGKILL it mid-stream;
    return the last id it reported as committed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None and proc.stderr is not None
    reported: list[int] = []
    try:
        while len(reported) < lines_before_kill:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"child ended early: {proc.stderr.read()}")
            reported.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert reported == sorted(reported) and len(set(reported)) == len(reported)
    return reported[-1]


def ids_and_integrity(path: Path) -> tuple[list[int], str]:
    with sqlite3.connect(path) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM readings ORDER BY id")]
        return ids, conn.execute("PRAGMA integrity_check").fetchone()[0]


async def recover_and_continue(path: Path, reported: int) -> int:
    """Open the store after the crash (it recovers the WAL), check what survived, write one
    more batch; return the new highest id."""
    store = Store(path, StoreConfig(flush_interval=0.005))
    await store.open()
    try:
        last = store.stats().last_id
        assert last >= reported, f"reported id {reported} lost (store ends at {last})"
        ids, integrity = ids_and_integrity(path)
        assert integrity == "ok"
        assert ids == list(range(1, last + 1)), "ids are not contiguous from 1"

        assert store.submit([Reading("dev.after", 1.0), Reading("dev.after", 2.0)])
        await store.flush()
        rows = await store.history("dev.after", limit=2)
        assert [r.id for r in rows] == [last + 1, last + 2]
        return store.stats().last_id
    finally:
        await store.close()


def test_committed_readings_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    highest = 0
    for lines in (5, 23, 11):
        reported = run_child_and_kill(path, lines)
        assert reported > highest, f"ids must continue after {highest}"
        highest = asyncio.run(recover_and_continue(path, reported))

    ids, integrity = ids_and_integrity(path)
    assert integrity == "ok"
    assert ids == list(range(1, highest + 1))
