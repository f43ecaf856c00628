"""The store against real SQLite files: what goes in comes back, ids are stable, cursors hold,
the size cap and retention count every reading they remove, and failures lose nothing."""

from __future__ import annotations

import asyncio
import enum
import math
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import DropPolicy, StoreConfig
from gateway.errors import StoreError
from gateway.readings import Batch, Quality, Reading
from gateway.store import Store, StoredReading

MakeStore = Callable[..., Awaitable[Store]]


class FakeClock:
    """Wall clock the test moves by hand, so retention needs no sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_store(tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Open stores on files in tmp_path with fast timings; close them all afterwards and fail
    if a writer thread outlives its store."""
    stores: list[Store] = []

    async def make(
        name: str = "store.db", *, clock: Callable[[], float] = time.time, **cfg: Any
    ) -> Store:
        # Test readings carry small timestamps (1970): with the default 7-day retention and
        # housekeeping every 20 ms they could leave history between a flush and the read that
        # checks them. Tests about retention set their own.
        defaults = {"flush_interval": 0.01, "history_retention": 100 * 365 * 86400.0}
        store = Store(tmp_path / name, StoreConfig(**{**defaults, **cfg}), clock=clock)
        store._housekeeping_interval = 0.02
        store._max_backoff = 0.05
        await store.open()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()
    leaked = [t for t in threading.enumerate() if t.name == "millrace-store-writer"]
    assert not leaked, f"writer threads left running: {leaked}"


def batch(n: int, *, point: str = "dev.p", ts: float | None = None, value: float = 1.0) -> Batch:
    """n readings spread over 10 points, all stamped `ts`."""
    ts = time.time() if ts is None else ts
    return [Reading(f"{point}{i % 10}", value + i, ts_gateway=ts) for i in range(n)]


def ids_on_disk(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM readings ORDER BY id")]


def on_disk(path: Path) -> tuple[int, dict[str, int]]:
    """Rows and counters read in one transaction: deletions and their counts commit together,
    so this is the invariant a crash at any moment would leave."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        rows = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        counters = dict(conn.execute("SELECT name, value FROM counters"))
        conn.execute("COMMIT")
        return rows, counters
    finally:
        conn.close()


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def fill(store: Store, readings: int, *, per_batch: int = 500, ack: str | None = None) -> int:
    """Submit `readings` in batches, flushing (and acking) every 4 batches; return accepted."""
    accepted = 0
    for k in range(readings // per_batch):
        b = batch(per_batch)
        if store.submit(b):
            accepted += len(b)
        if k % 4 == 3:
            await store.flush()
            if ack:
                await store.ack(ack, store.stats().last_id)
    await store.flush()
    return accepted


# -- values, ids, latest, history ---------------------------------------------------------


class Mode(enum.IntEnum):
    AUTO = 3


async def test_every_value_kind_and_quality_round_trips(make_store: MakeStore) -> None:
    store = await make_store()
    store.register_consumer("up")
    values: list[Any] = [None, True, False, 0, -1, 2**63 - 1, -(2**63), 1.5, -0.0]
    values += [math.nan, math.inf, -math.inf, "", "héllo ✓", "0"]
    qualities = [Quality.GOOD, Quality.UNCERTAIN, Quality.BAD]
    sent = [
        Reading(
            f"dev.v{i}",
            v,
            qualities[i % 3],
            ts_gateway=1000.0 + i,
            ts_source=None if i % 2 else 999.5 + i,
            reason=None if i % 3 == 0 else f"why {i}",
        )
        for i, v in enumerate(values)
    ]
    store.submit(sent)
    await store.flush()

    got = await store.pending("up", 100)
    assert [g.point for g in got] == [r.point for r in sent]
    for r, g in zip(sent, got, strict=True):
        assert type(g.value) is type(r.value), (r, g)
        if isinstance(r.value, float) and math.isnan(r.value):
            assert math.isnan(g.value)  # type: ignore[arg-type]
        else:
            assert g.value == r.value
        if isinstance(r.value, float):
            assert math.copysign(1, g.value) == math.copysign(1, r.value)  # type: ignore[arg-type]
        assert g.quality is r.quality
        assert (g.ts_gateway, g.ts_source, g.reason) == (r.ts_gateway, r.ts_source, r.reason)
    latest = {g.point: g for g in await store.latest()}
    assert latest["dev.v1"].value is True and latest["dev.v2"].value is False
    assert math.isnan(latest["dev.v9"].value)  # type: ignore[arg-type]


async def test_unusual_values_are_kept_and_unusable_readings_counted(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    store.submit(
        [
            Reading("dev.big", 2**70),
            Reading("dev.enum", Mode.AUTO),
            Reading("dev.list", [1, 2]),  # type: ignore[arg-type]
            Reading(None, 1.0),  # type: ignore[arg-type]
            Reading("dev.ok", 2.5),
        ]
    )
    await store.flush()
    got = {r.point: r.value for r in await store.latest()}
    assert got == {"dev.big": 2**70, "dev.enum": 3, "dev.list": "[1, 2]", "dev.ok": 2.5}
    assert type(got["dev.enum"]) is int
    st = store.stats()
    assert st.dropped["invalid"] == 1
    assert st.committed == 4 and st.last_id == 4


async def test_ids_strictly_increase_and_are_never_reused(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = await make_store()
    for n in (3, 50, 7):
        assert store.submit(batch(n))
    await store.flush()
    assert ids_on_disk(tmp_path / "store.db") == list(range(1, 61))
    assert store.stats().last_id == 60
    await store.close()

    with sqlite3.connect(tmp_path / "store.db") as conn:  # someone empties the table
        conn.execute("DELETE FROM readings WHERE id > 20")
    store = await make_store()
    assert store.stats().last_id == 60
    store.submit(batch(5))
    await store.flush()
    assert ids_on_disk(tmp_path / "store.db") == [*range(1, 21), *range(61, 66)]


async def test_per_point_order_follows_submission(make_store: MakeStore) -> None:
    store = await make_store()
    for k in range(20):
        store.submit([Reading("dev.a", k, ts_gateway=5.0), Reading("dev.b", -k, ts_gateway=5.0)])
    await store.flush()
    rows = await store.history("dev.a")
    assert [r.value for r in rows] == list(range(20))
    assert [r.id for r in rows] == sorted(r.id for r in rows)


async def test_latest_keeps_the_last_value_of_each_point(make_store: MakeStore) -> None:
    store = await make_store()
    store.submit([Reading("dev.a", 1), Reading("dev.b", 1), Reading("dev.a", 2)])
    store.submit([Reading("dev.b", 3, Quality.BAD, reason="timeout")])
    await store.flush()
    store.submit([Reading("dev.c", "on")])
    await store.flush()

    got = {r.point: r for r in await store.latest()}
    assert {p: r.value for p, r in got.items()} == {"dev.a": 2, "dev.b": 3, "dev.c": "on"}
    assert got["dev.b"].quality is Quality.BAD and got["dev.b"].reason == "timeout"
    assert got["dev.a"].id == 3  # the id of the reading it came from
    some = await store.latest(["dev.c", "dev.missing", "dev.a"])
    assert [r.point for r in some] == ["dev.c", "dev.a"]
    assert await store.points() == ["dev.a", "dev.b", "dev.c"]

    await store.close()
    store = await make_store()
    assert {r.point: r.value for r in await store.latest()} == {
        "dev.a": 2,
        "dev.b": 3,
        "dev.c": "on",
    }


async def test_history_range_limit_and_order(make_store: MakeStore) -> None:
    store = await make_store()
    # Out of order timestamps and a tie, to see ordering by (ts_gateway, id).
    tss = [10.0, 30.0, 20.0, 20.0, 40.0, 50.0]
    store.submit([Reading("dev.t", i, ts_gateway=ts) for i, ts in enumerate(tss)])
    store.submit([Reading("dev.other", 99, ts_gateway=25.0)])
    await store.flush()

    every = await store.history("dev.t")
    assert [r.ts_gateway for r in every] == [10.0, 20.0, 20.0, 30.0, 40.0, 50.0]
    assert [r.value for r in every] == [0, 2, 3, 1, 4, 5]
    window = await store.history("dev.t", since=20.0, until=40.0)  # since <= ts < until
    assert [r.value for r in window] == [2, 3, 1]
    newest = await store.history("dev.t", limit=2)
    assert [r.value for r in newest] == [4, 5]
    assert [r.value for r in await store.history("dev.t", until=30.0, limit=2)] == [2, 3]
    assert await store.history("dev.nope") == []
    assert await store.history("dev.t", limit=0) == []


# -- consumers ----------------------------------------------------------------------------


async def test_consumers_start_at_the_end_and_keep_their_cursor(make_store: MakeStore) -> None:
    store = await make_store()
    store.submit(batch(10))
    await store.flush()
    store.register_consumer("mqtt")
    assert await store.pending("mqtt", 100) == []

    store.submit(batch(5))
    await store.flush()
    got = await store.pending("mqtt", 100)
    assert [r.id for r in got] == [11, 12, 13, 14, 15]
    assert [r.id for r in await store.pending("mqtt", 2)] == [11, 12]

    await store.ack("mqtt", 13)
    assert [r.id for r in await store.pending("mqtt", 100)] == [14, 15]
    await store.ack("mqtt", 12)  # never backwards
    await store.ack("mqtt", 10_000)  # never past what exists
    assert store.stats().consumers == {"mqtt": 15}

    store.register_consumer("influx")  # registered later: starts later, independent
    store.submit(batch(2))
    await store.flush()
    assert [r.id for r in await store.pending("mqtt", 100)] == [16, 17]
    assert [r.id for r in await store.pending("influx", 100)] == [16, 17]
    await store.ack("influx", 17)
    assert [r.id for r in await store.pending("mqtt", 100)] == [16, 17]
    assert await store.pending("influx", 100) == []
    await store.close()

    store = await make_store()
    store.register_consumer("mqtt")  # known: keeps its persisted cursor
    assert store.stats().consumers == {"mqtt": 15, "influx": 17}
    assert [r.id for r in await store.pending("mqtt", 100)] == [16, 17]
    with pytest.raises(StoreError, match="unknown consumer"):
        await store.pending("nobody", 10)
    with pytest.raises(StoreError, match="unknown consumer"):
        await store.ack("nobody", 1)


async def test_concurrent_acks_and_writes_end_consistent(make_store: MakeStore) -> None:
    store = await make_store()
    names = ["a", "b", "c"]
    for name in names:
        store.register_consumer(name)

    handed: dict[str, list[int]] = {name: [] for name in names}

    async def uplink(name: str) -> int:
        seen = 0
        for _ in range(30):
            got = await store.pending(name, 50)
            if got:
                assert [r.id for r in got] == list(range(got[0].id, got[0].id + len(got)))
                handed[name] += [r.id for r in got]
                await store.ack(name, got[-1].id)
                seen += len(got)
            await asyncio.sleep(0)
        return seen

    async def producer() -> None:
        for _ in range(40):
            store.submit(batch(20))
            await asyncio.sleep(0.001)

    await asyncio.gather(producer(), *(uplink(n) for n in names))
    await store.flush()
    for name in names:
        rest = await store.pending(name, 10_000)
        assert store.stats().consumers[name] + len(rest) == 800
        # acked rows are never handed out again: no re-send without a failure
        assert len(handed[name]) == len(set(handed[name])), name


async def test_pending_hands_out_only_rows_ack_accepts(make_store: MakeStore) -> None:
    """The writer publishes its highest id just after the transaction is visible to
    readers. A reader in that gap must not be given rows `ack` would refuse (capped at the
    published id): they would stay behind the cursor and be sent a second time."""
    store = await make_store()
    store.register_consumer("up")
    store.submit(batch(5))
    await store.flush()
    with store._lock:
        store._last_id = 3  # the gap: ids 4 and 5 committed, not yet published
    got = await store.pending("up", 100)
    assert [r.id for r in got] == [1, 2, 3]
    await store.ack("up", got[-1].id)
    assert store.cursor("up") == 3
    with store._lock:
        store._last_id = 5  # published
    assert [r.id for r in await store.pending("up", 100)] == [4, 5]


# -- flush, close, misuse -----------------------------------------------------------------


async def test_flush_commits_without_waiting_for_the_linger(make_store: MakeStore) -> None:
    store = await make_store(flush_interval=30.0, batch_max=100_000)
    await store.flush()  # nothing pending: returns at once
    store.submit(batch(100))
    t0 = time.monotonic()
    await store.flush(timeout=5)
    assert time.monotonic() - t0 < 2
    st = store.stats()
    assert (st.committed, st.queued, st.last_id) == (100, 0, 100)
    assert store.commit_latency.count == 100


async def test_close_flushes_and_misuse_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", StoreConfig(flush_interval=30.0, batch_max=100_000))
    with pytest.raises(StoreError, match="state new"):
        store.submit(batch(1))
    await store.open()
    store.submit(batch(25))
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="state closed"):
        store.submit(batch(1))
    with pytest.raises(StoreError):
        await store.latest()
    assert ids_on_disk(tmp_path / "s.db") == list(range(1, 26))


async def test_queue_full_refuses_and_counts_a_burst(make_store: MakeStore) -> None:
    # The writer lingers 0.5 s, so a tight burst outruns it; queue_max is the smallest allowed.
    store = await make_store(queue_max=1000, flush_interval=0.5, batch_max=100_000)
    results = [store.submit(batch(250)) for _ in range(40)]
    refused = results.count(False)
    assert refused >= 30
    assert results[:4] == [True] * 4
    await store.flush()
    st = store.stats()
    assert st.dropped["queue_full"] == 250 * refused
    assert st.committed == st.submitted == 250 * results.count(True)
    assert store.submit(batch(250))  # drained: accepted again
    await store.close()

    store = await make_store()
    assert store.stats().dropped["queue_full"] == 250 * refused  # persisted


# -- size cap -----------------------------------------------------------------------------


async def test_drop_oldest_counts_unsent_when_a_consumer_lags(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = await make_store(max_bytes=300_000, compact=False)
    store.register_consumer("slow")  # never acks
    accepted = await fill(store, 20_000)
    st = store.stats()
    assert accepted == 20_000
    assert st.bytes_used <= 300_000
    assert st.dropped["oldest_unsent"] > 0 and st.trimmed == 0
    ids = ids_on_disk(tmp_path / "store.db")
    assert len(ids) == st.rows < 20_000
    assert len(ids) + st.dropped["oldest_unsent"] == 20_000  # nothing lost uncounted
    rows, counters = on_disk(tmp_path / "store.db")
    assert rows + counters["dropped.oldest_unsent"] == 20_000
    assert ids == list(range(ids[0], 20_001))  # the newest are kept
    pending = await store.pending("slow", 10)
    assert pending[0].id == ids[0]
    await store.close()

    store = await make_store()
    assert store.stats().dropped["oldest_unsent"] == st.dropped["oldest_unsent"]


async def test_drop_oldest_counts_trimmed_when_everything_was_sent(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = await make_store("acked.db", max_bytes=300_000, compact=False)
    store.register_consumer("fast")
    await fill(store, 20_000, ack="fast")
    st = store.stats()
    rows, counters = on_disk(tmp_path / "acked.db")
    assert st.trimmed > 0 and st.dropped["oldest_unsent"] == 0
    assert rows + st.trimmed == 20_000 and st.bytes_used <= 300_000
    assert counters["trimmed"] == st.trimmed and counters["dropped.oldest_unsent"] == 0

    lone = await make_store(
        "history.db", max_bytes=300_000, compact=False
    )  # no consumer: plain history
    await fill(lone, 20_000)
    st = lone.stats()
    rows, counters = on_disk(tmp_path / "history.db")
    assert st.trimmed > 0 and st.dropped["oldest_unsent"] == 0
    assert rows + st.trimmed == 20_000 == rows + counters["trimmed"]
    assert st.rows == rows


async def test_reject_new_refuses_until_acks_and_retention_free_space(
    make_store: MakeStore, tmp_path: Path
) -> None:
    clock = FakeClock()
    store = await make_store(
        max_bytes=300_000,
        drop_policy=DropPolicy.REJECT_NEW,
        history_retention=60,
        clock=clock,
        compact=False,
    )
    store.register_consumer("up")
    accepted = refused = 0
    for _ in range(200):
        b = batch(500, ts=clock.now)
        if store.submit(b):
            accepted += 500
        else:
            refused += 500
            if refused >= 2000:
                break
        await store.flush()
    st = store.stats()
    assert refused >= 2000
    assert st.dropped["store_full"] == refused
    assert st.dropped["oldest_unsent"] == 0 and st.trimmed == 0
    assert len(ids_on_disk(tmp_path / "store.db")) == accepted  # nothing unsent was deleted
    assert not store.submit(batch(10, ts=clock.now))

    await store.ack("up", store.stats().last_id)
    clock.now += 120
    await wait_until(lambda: store.submit(batch(10, ts=clock.now)))
    await store.flush()
    st = store.stats()
    assert st.trimmed > 0 and st.dropped["oldest_unsent"] == 0
    assert st.bytes_used <= 300_000


async def test_retention_trims_only_old_readings_every_consumer_has(
    make_store: MakeStore, tmp_path: Path
) -> None:
    clock = FakeClock(10_000.0)
    store = await make_store(history_retention=60, clock=clock)
    store.register_consumer("up")
    store.submit(batch(100, ts=10_000.0))  # ids 1..100, old soon
    store.submit(batch(100, ts=10_100.0))  # ids 101..200, stay young
    await store.flush()
    await store.ack("up", 50)

    clock.now = 10_150.0  # cutoff 10_090: the first hundred are old
    await wait_until(lambda: store.stats().trimmed == 50)
    assert ids_on_disk(tmp_path / "store.db") == list(range(51, 201))

    await store.ack("up", 200)
    await wait_until(lambda: store.stats().trimmed == 100)
    await asyncio.sleep(0.1)  # a few more housekeeping rounds change nothing
    assert ids_on_disk(tmp_path / "store.db") == list(range(101, 201))
    assert store.stats().rows == 100 and store.stats().dropped["oldest_unsent"] == 0
    assert [r.value for r in await store.latest(["dev.p0"])] == [91.0]  # latest survives
    await store.close()

    store = await make_store(clock=clock)
    assert store.stats().trimmed == 100  # persisted


# -- failures -----------------------------------------------------------------------------


async def test_failed_commits_are_retried_without_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "locked.db"
    store = Store(path, StoreConfig(flush_interval=0.01))
    store._busy_timeout_ms = 20
    store._max_backoff = 0.05
    await store.open()
    try:
        store.submit(batch(10))
        await store.flush()
        blocker = sqlite3.connect(path, isolation_level=None, timeout=5)
        blocker.execute("BEGIN EXCLUSIVE")  # every write of the store now fails: locked
        try:
            for _ in range(5):
                assert store.submit(batch(10))
            await wait_until(lambda: "locked" in (store.stats().last_error or ""))
            with pytest.raises(TimeoutError):
                await store.flush(timeout=0.2)
            st = store.stats()
            assert st.committed == 10 and st.queued == 50
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await store.flush(timeout=5)
        st = store.stats()
        assert st.committed == 60 and st.last_error is None
        assert ids_on_disk(path) == list(range(1, 61))
        assert any(
            r.name == "millrace.store" and getattr(r, "error", "").find("locked") >= 0
            for r in caplog.records
        )
    finally:
        await store.close()


async def test_corrupt_or_unreadable_file_raises_store_error(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"this is not an sqlite database " * 200)
    store = Store(bad, StoreConfig())
    with pytest.raises(StoreError, match=re.escape(str(bad))) as err:
        await store.open()
    assert "not a database" in str(err.value)
    with pytest.raises(StoreError, match=re.escape(str(tmp_path))):
        await Store(tmp_path, StoreConfig()).open()  # a directory
    assert not [t for t in threading.enumerate() if t.name == "millrace-store-writer"]


async def test_stats_account_for_every_reading(make_store: MakeStore) -> None:
    store = await make_store()
    for n in (30, 120, 500):
        store.submit(batch(n))
    await store.flush()
    st = store.stats()
    assert (st.submitted, st.committed, st.queued, st.rows, st.last_id) == (650, 650, 0, 650, 650)
    assert 1 <= st.commits <= 3
    assert 0 < st.bytes_used <= st.max_bytes
    assert st.last_error is None
    p50, p99 = store.commit_latency.quantiles(0.5, 0.99)
    assert p50 is not None and p99 is not None and 0 <= p50 <= p99 < 5


def test_stored_reading_is_frozen() -> None:
    r = StoredReading(1, "dev.a", 1.0, Quality.GOOD, 1.0, None, None)
    with pytest.raises(AttributeError):
        r.value = 2.0  # type: ignore[misc]


# -- compaction before drops ----------------------------------------------------------------


async def test_at_the_cap_unsent_readings_are_compacted_before_any_is_dropped(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = await make_store(max_bytes=400_000, compact_window=60)
    store.register_consumer("slow")  # never acks: everything stays unsent
    t0 = 1_700_000_000.0
    values = [float((i * 37) % 101) for i in range(12_000)]
    for k in range(0, 12_000, 500):
        b = [Reading("dev.temp", values[i], ts_gateway=t0 + i * 0.1) for i in range(k, k + 500)]
        b += [Reading("dev.event", f'{{"n": {i}}}', ts_gateway=t0 + i) for i in range(k, k + 2)]
        assert store.submit(b)
        await store.flush()
    st = store.stats()
    assert st.dropped.get("oldest_unsent", 0) == 0  # folded, not dropped
    assert st.compacted > 0 and st.bytes_used <= 400_000
    rows = await store.pending("slow", 100_000)
    temps = [r for r in rows if r.point == "dev.temp"]
    events = [r for r in rows if r.point == "dev.event"]
    assert len(events) == 48  # events at full fidelity
    assert len(temps) + st.compacted == 12_000  # every raw reading is kept or counted
    ids = [r.id for r in rows]
    assert ids == sorted(ids)  # ids (and so per-point order) keep increasing
    # each compacted 60 s window keeps its true min, max and mean
    by_window: dict[int, list[StoredReading]] = {}
    for r in temps:
        if r.reason and r.reason.startswith("compacted"):
            by_window.setdefault(int((r.ts_gateway - 0) // 60), []).append(r)
    assert by_window
    w, kept = next(iter(sorted(by_window.items())))
    raw = [v for i, v in enumerate(values) if int((t0 + i * 0.1) // 60) == w]
    got = {r.reason.split(":")[1].split()[0]: r.value for r in kept}
    assert got["min"] == min(raw) and got["max"] == max(raw)
    assert got["mean"] == pytest.approx(sum(raw) / len(raw))
    await store.close()
    reopened = await make_store(compact_window=60)
    assert reopened.stats().compacted == st.compacted


async def test_when_nothing_is_left_to_compact_the_drop_policy_applies(
    make_store: MakeStore,
) -> None:
    # one reading per point and window: nothing to fold, so the oldest unsent must go
    store = await make_store(max_bytes=300_000, compact_window=1)
    store.register_consumer("slow")
    t0 = 1_700_000_000.0
    for k in range(0, 20_000, 500):
        assert store.submit([Reading("dev.p", 1.0, ts_gateway=t0 + i) for i in range(k, k + 500)])
        await store.flush()
    st = store.stats()
    assert st.compacted == 0
    assert st.dropped["oldest_unsent"] > 0
    assert st.rows + st.dropped["oldest_unsent"] == 20_000


async def test_an_uplinks_batch_sequence_commits_with_its_cursor(make_store: MakeStore) -> None:
    store = await make_store("seq.db")
    store.register_consumer("uplink:a")
    store.register_consumer("uplink:b")
    await fill(store, 1000)
    assert store.consumer_seq("uplink:a") == 0
    await store.ack("uplink:a", 400, seq=1)
    await store.ack("uplink:a", 1000, seq=2)
    await store.ack("uplink:a", 900, seq=1)  # late or repeated: neither moves back
    assert store.cursor("uplink:a") == 1000 and store.consumer_seq("uplink:a") == 2
    assert store.cursor("uplink:b") == 0 and store.consumer_seq("uplink:b") == 0
    await store.close()
    again = await make_store("seq.db")
    assert again.consumer_seq("uplink:a") == 2 and again.cursor("uplink:a") == 1000


async def test_unsent_readings_older_than_max_unsent_age_are_dropped_and_counted(
    make_store: MakeStore,
) -> None:
    clock = FakeClock()
    store = await make_store(max_unsent_age=3600, clock=clock)
    store.register_consumer("down")  # never acks
    assert store.submit([Reading("dev.p", float(i), ts_gateway=clock() - 7200) for i in range(50)])
    assert store.submit([Reading("dev.p", float(i), ts_gateway=clock() - 60) for i in range(30)])
    await store.flush()
    await wait_until(lambda: store.stats().dropped["too_old"] == 50)
    st = store.stats()
    assert st.rows == 30 and st.trimmed == 0
    pending = await store.pending("down", 100)
    assert [r.id for r in pending] == list(range(51, 81))


async def test_max_unsent_age_leaves_delivered_history_alone(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = await make_store(max_unsent_age=3600, clock=clock)
    store.register_consumer("up")
    assert store.submit([Reading("dev.p", float(i), ts_gateway=clock() - 7200) for i in range(40)])
    await store.flush()
    await store.ack("up", 25)  # 25 delivered, 15 still unsent, all two hours old
    await wait_until(lambda: store.stats().dropped["too_old"] == 15)
    st = store.stats()
    assert st.rows == 25 and st.trimmed == 0  # history of delivered readings is kept
    assert [r.value for r in await store.history("dev.p", limit=100)] == [
        float(i) for i in range(25)
    ]
