"""Dead letters in the store: kept through the writer thread, newest first, payloads cut to a
bound with their real size, the table capped, a flood refused and counted, and store files
written before the table existed still opening."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import StoreConfig
from gateway.errors import StoreError
from gateway.readings import Reading
from gateway.store import (
    DEAD_LETTER_PAYLOAD_MAX,
    DEAD_LETTERS_QUEUE_MAX,
    DeadLetter,
    Store,
)

MakeStore = Callable[..., Awaitable[Store]]


@pytest.fixture
async def make_store(tmp_path: Path) -> AsyncIterator[MakeStore]:
    stores: list[Store] = []

    async def make(name: str = "store.db", **cfg: Any) -> Store:
        store = Store(tmp_path / name, StoreConfig(**{"flush_interval": 0.01, **cfg}))
        store._housekeeping_interval = 0.02
        store._max_backoff = 0.05
        store._busy_timeout_ms = 20  # a locked file fails fast (the flood test locks it)
        await store.open()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()
    assert not [t for t in threading.enumerate() if t.name == "millrace-store-writer"]


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_dead_letters_round_trip_newest_first_and_by_source(make_store: MakeStore) -> None:
    store = await make_store()
    before = time.time()
    store.dead_letter("broker-a", "coop/t1/telemetry", b"{not json", "not_json: Expecting value")
    store.dead_letter("broker-b", "farm/x", b"\xff\xfe", "not_utf8: byte 0 is not UTF-8")
    store.dead_letter("broker-a", "coop/zz/telemetry", b"{}", "unknown_equipment: zz")
    store.submit([Reading("t1.rpm", 1500, ts_gateway=before)])  # readings still flow beside
    await store.flush()

    every = await store.dead_letters()
    assert [d.topic for d in every] == ["coop/zz/telemetry", "farm/x", "coop/t1/telemetry"]
    first = every[-1]
    assert isinstance(first, DeadLetter)
    assert (first.source, first.payload, first.payload_size) == ("broker-a", b"{not json", 9)
    assert first.reason.startswith("not_json")
    assert before <= first.ts <= time.time()
    assert every[0].id > every[1].id > every[2].id
    assert [d.topic for d in await store.dead_letters(source="broker-a")] == [
        "coop/zz/telemetry",
        "coop/t1/telemetry",
    ]
    assert [d.payload for d in await store.dead_letters(limit=1)] == [b"{}"]
    assert await store.dead_letters(limit=0) == []
    st = store.stats()
    assert (st.dead_letters, st.dead_letters_dropped, st.committed) == (3, 0, 1)


async def test_payload_is_cut_and_its_size_kept(make_store: MakeStore) -> None:
    store = await make_store()
    huge = bytes(range(256)) * 4000  # 1 MB
    store.dead_letter("broker-a", "t" * 5000, huge, "too_large: 1024000 bytes")
    await store.flush()
    (d,) = await store.dead_letters()
    assert d.payload == huge[:DEAD_LETTER_PAYLOAD_MAX]
    assert d.payload_size == len(huge)
    assert len(d.topic) == 1024  # hostile topics are cut too


async def test_table_keeps_only_the_newest(make_store: MakeStore) -> None:
    store = await make_store()
    store._dead_letters_keep = 5
    for i in range(12):
        store.dead_letter("b", f"t/{i}", b"x", "not_json")
        if i % 4 == 3:
            await store.flush()  # several transactions, each trimming the oldest
    await store.flush()
    assert [d.topic for d in await store.dead_letters()] == [f"t/{i}" for i in range(11, 6, -1)]
    assert store.stats().dead_letters == 5


async def test_a_flood_is_refused_and_counted_and_readings_are_not_held_back(
    tmp_path: Path, make_store: MakeStore
) -> None:
    path = tmp_path / "flood.db"
    store = await make_store("flood.db")
    store.dead_letter("b", "t/first", b"1", "not_json")
    await store.flush()
    blocker = sqlite3.connect(path, isolation_level=None, timeout=5)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer cannot commit: letters pile up
    try:
        store.dead_letter("b", "t/held", b"1", "not_json")
        await wait_until(lambda: "locked" in (store.stats().last_error or ""))
        # The writer holds t/held in its failing transaction; the queue takes QUEUE_MAX more.
        for i in range(DEAD_LETTERS_QUEUE_MAX + 37):
            store.dead_letter("b", f"t/{i}", b"x" * 10, "not_json")
        assert store.stats().dead_letters_dropped == 37
        assert store.submit([Reading("a.b", 1.0)])  # readings are still accepted
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await store.flush(timeout=10)
    st = store.stats()
    assert st.dead_letters == 2 + DEAD_LETTERS_QUEUE_MAX
    assert st.committed == 1 and st.last_error is None
    await store.close()

    reopened = await make_store("flood.db")
    assert reopened.stats().dead_letters_dropped == 37  # persisted with the other counters
    assert reopened.stats().dead_letters == 2 + DEAD_LETTERS_QUEUE_MAX


async def test_a_file_from_before_dead_letters_opens_and_gains_the_table(
    tmp_path: Path, make_store: MakeStore
) -> None:
    store = await make_store("old.db")
    store.submit([Reading("a.b", 2.5, ts_gateway=1_700_000_000.0)])
    await store.close()
    with sqlite3.connect(tmp_path / "old.db") as conn:  # what an older gateway wrote
        conn.execute("DROP TABLE dead_letters")
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            1,
        )

    store = await make_store("old.db")
    assert [(r.point, r.value) for r in await store.latest()] == [("a.b", 2.5)]
    assert store.stats().dead_letters == 0
    store.dead_letter("b", "t", b"x", "not_json")
    await store.flush()
    assert len(await store.dead_letters()) == 1


async def test_dead_letter_outside_open_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", StoreConfig())
    with pytest.raises(StoreError, match="dead_letter"):
        store.dead_letter("b", "t", b"x", "not_json")
    await store.open()
    store.dead_letter("b", "t", b"x", "not_json")
    await store.close()  # close flushes dead letters like readings
    with pytest.raises(StoreError, match="dead_letter"):
        store.dead_letter("b", "t", b"x", "not_json")
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (1,)
