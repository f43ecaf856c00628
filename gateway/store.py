"""The gateway's durable store: outbox, latest values and history in one SQLite file (WAL).

Why it looks like this:

* **One writer thread owns every write.** SQLite allows one writer at a time; funnelling the
  readings, the uplinks' acks, consumer registrations and housekeeping through one thread
  with one connection means no write ever waits on another inside SQLite, and the event loop
  never does disk I/O. `submit` only appends to an in-memory queue.
* **Batches become transactions.** The writer waits for the first batch, lingers up to
  `flush_interval` (or until `batch_max` readings wait) and writes everything gathered in one
  transaction: the rows, built in one comprehension, go into `readings` through 32-row
  INSERT statements (one `executemany`), then one upsert into `latest` carries the last
  reading per point. Fsync cost is paid per transaction, not per reading.
* **One table is both outbox and history.** A reading's id (assigned here, in submission
  order, never reused thanks to AUTOINCREMENT) is the outbox position: each uplink keeps a
  cursor (the highest id the far side confirmed) and reads `id > cursor`. The same rows serve
  `history()`. Rows leave only through the size cap or retention, and each one that leaves is
  counted: `trimmed` when every uplink already had it, `dropped["oldest_unsent"]` when not.
* **Reads run on other connections in worker threads.** WAL lets readers see the last commit
  while the writer works; readers never block the writer or the loop.

Contract: a reading whose transaction committed survives `kill -9` (and power loss with
`synchronous: full`); `flush()` returns once everything submitted before it is committed;
`close()` flushes. Nothing accepted is dropped silently: refused, deleted-unsent and invalid
readings are all in `StoreStats.dropped`, persisted in the `counters` table.

Acks, registrations and counters are written by the writer thread too; `ack()` returns once its
cursor is committed, so an uplink never re-reads what it acked, even after a crash.

Dead letters (messages a driver received but could not use: unparsable, too large, unknown
equipment) go the same way: `dead_letter()` only enqueues (bounded; refusals are counted as
`dead_letters_dropped`), the writer commits them with the next transaction into the
`dead_letters` table, which keeps the newest `DEAD_LETTERS_KEEP` with each payload cut to
`DEAD_LETTER_PAYLOAD_MAX` bytes. The table is created on open when missing, so files written
before it existed open unchanged (same schema version: older gateways ignore the table).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import math
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

from gateway.config import DropPolicy, StoreConfig
from gateway.errors import StoreError
from gateway.readings import Batch, Quality, Value
from gateway.stats import LatencyWindow

log = logging.getLogger("millrace.store")

SCHEMA_VERSION = 1

#: Reasons a reading can be counted as dropped (the documented policies).
DROP_REASONS = ("queue_full", "store_full", "oldest_unsent", "too_old")

#: Bytes of a dead letter's payload that are kept (its full size is recorded beside it).
DEAD_LETTER_PAYLOAD_MAX = 4096
#: Dead letters kept in the file: the newest ones; older ones are deleted as new ones arrive.
DEAD_LETTERS_KEEP = 10_000
#: Dead letters waiting for the writer before `dead_letter()` refuses (and counts) more.
DEAD_LETTERS_QUEUE_MAX = 1000
_DEAD_TEXT_MAX = 1024  # source, topic and reason are cut to this many characters

# `kind` column: the Python type of the value, so that it comes back exactly as it went in
# (SQLite has no bool and turns NaN into NULL).
_K_NONE, _K_BOOL, _K_INT, _K_FLOAT, _K_STR = range(5)
_KINDS: dict[type, int] = {
    type(None): _K_NONE,
    bool: _K_BOOL,
    int: _K_INT,
    float: _K_FLOAT,
    str: _K_STR,
}
_NAN = float("nan")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_QUALITY_OF: dict[int, Quality] = {int(q): q for q in Quality}
# Plain ints bind straight into SQLite; an IntEnum goes through the adapter lookup first.
_QUALITY_INT: dict[Any, int] = {q: int(q) for q in Quality} | {int(q): int(q) for q in Quality}
_TS = attrgetter("ts_gateway")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS points(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS readings(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    point INTEGER NOT NULL,
    ts_gateway REAL NOT NULL,
    ts_source REAL,
    quality INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    value,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS readings_point_ts ON readings(point, ts_gateway);
CREATE TABLE IF NOT EXISTS latest(
    point INTEGER PRIMARY KEY,
    reading_id INTEGER NOT NULL,
    ts_gateway REAL NOT NULL,
    ts_source REAL,
    quality INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    value,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS consumers(name TEXT PRIMARY KEY, cursor INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS consumer_seq(name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    source TEXT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL,
    payload_size INTEGER NOT NULL
);
"""

# Row tuples are (id, point, ts_gateway, ts_source, quality, kind, value, reason) for both
# statements, so the upsert reuses the tuples built for the insert.
_INSERT_READINGS = (
    "INSERT INTO readings(id, point, ts_gateway, ts_source, quality, kind, value, reason)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_CHUNK = 32
_INSERT_CHUNK = _INSERT_READINGS + ", (?, ?, ?, ?, ?, ?, ?, ?)" * (_CHUNK - 1)
_UPSERT_LATEST = (
    "INSERT INTO latest(reading_id, point, ts_gateway, ts_source, quality, kind, value, reason)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(point) DO UPDATE SET"
    " reading_id = excluded.reading_id, ts_gateway = excluded.ts_gateway,"
    " ts_source = excluded.ts_source, quality = excluded.quality, kind = excluded.kind,"
    " value = excluded.value, reason = excluded.reason"
)
_UPSERT_COUNTER = (
    "INSERT INTO counters(name, value) VALUES (?, ?)"
    " ON CONFLICT(name) DO UPDATE SET value = excluded.value"
)
_REGISTER = "INSERT INTO consumers(name, cursor) VALUES (?, ?) ON CONFLICT(name) DO NOTHING"
_ACK = "UPDATE consumers SET cursor = max(cursor, ?) WHERE name = ?"
_SEQ = (
    "INSERT INTO consumer_seq(name, seq) VALUES (?, ?)"
    " ON CONFLICT(name) DO UPDATE SET seq = max(seq, excluded.seq)"
)

_COLS = "r.id, p.name, r.kind, r.value, r.quality, r.ts_gateway, r.ts_source, r.reason"
_SELECT_PENDING = (
    f"SELECT {_COLS} FROM readings r JOIN points p ON p.id = r.point"
    " WHERE r.id > ? AND r.id <= ? ORDER BY r.id LIMIT ?"
)
_SELECT_PENDING_SUFFIX = (
    f"SELECT {_COLS} FROM readings r JOIN points p ON p.id = r.point"
    " WHERE r.id > ? AND r.id <= ? AND substr(p.name, -?) = ? ORDER BY r.id LIMIT ?"
)
_SELECT_HISTORY = (
    f"SELECT {_COLS} FROM readings r JOIN points p ON p.id = r.point"
    " WHERE r.point = (SELECT id FROM points WHERE name = ?)"
    " AND r.ts_gateway >= ? AND r.ts_gateway < ?"
    " ORDER BY r.ts_gateway DESC, r.id DESC LIMIT ?"
)
_SELECT_RANGE = (
    f"SELECT {_COLS} FROM readings r JOIN points p ON p.id = r.point"
    " WHERE r.id > ? AND r.ts_gateway >= ? AND r.ts_gateway < ? ORDER BY r.id LIMIT ?"
)
_LATEST_COLS = (
    "l.reading_id, p.name, l.kind, l.value, l.quality, l.ts_gateway, l.ts_source, l.reason"
)
_SELECT_LATEST = f"SELECT {_LATEST_COLS} FROM latest l JOIN points p ON p.id = l.point"
_INSERT_DEAD = (
    "INSERT INTO dead_letters(ts, source, topic, reason, payload, payload_size)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_DEAD_COLS = "id, ts, source, topic, reason, payload, payload_size"
_SELECT_DEAD = f"SELECT {_DEAD_COLS} FROM dead_letters ORDER BY id DESC LIMIT ?"
_SELECT_DEAD_SOURCE = (
    f"SELECT {_DEAD_COLS} FROM dead_letters WHERE source = ? ORDER BY id DESC LIMIT ?"
)

#: Readings deleted per retention transaction: bounds how long intake waits behind it.
_RETENTION_CHUNK = 10_000
#: Drop-oldest / trim deletes stop at this share of the cap, so the cap is not hit again at once.
_CAP_TARGET = 0.9
_SQL_VARS = 500
#: Raw readings examined per compaction step (one transaction).
_COMPACT_CHUNK = 20_000
#: Points whose every reading is kept at full fidelity: model events and alarm states.
_FULL_FIDELITY_SUFFIX = ".event"
_FULL_FIDELITY_INFIX = ".alarm_"
#: Rows per cap-enforcement delete, and the time one writer round may spend on it.
_CAP_CHUNK = 50_000
_CAP_BUDGET_S = 0.25

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as it came back from disk; `id` is its stable outbox id (de-dup key upstream)."""

    id: int
    point: str
    value: Value
    quality: Quality
    ts_gateway: float
    ts_source: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message a driver could not use, kept for the technician: where it came from, why it
    was refused, and its first `DEAD_LETTER_PAYLOAD_MAX` bytes (`payload_size` is the size
    the store was handed)."""

    id: int
    ts: float
    source: str
    topic: str
    reason: str
    payload: bytes
    payload_size: int


@dataclass(slots=True)
class StoreStats:
    """A snapshot of the store's counters, cheap enough for every /metrics scrape.

    `submitted`, `committed` and `commits` count since this process opened the store;
    `dropped` and `trimmed` are persistent totals over the file's life.
    """

    #: Readings accepted by `submit` (refused ones are in `dropped`).
    submitted: int = 0
    #: Readings committed to disk.
    committed: int = 0
    #: Readings accepted but not committed yet (queued or in the writer's open transaction).
    queued: int = 0
    #: Transactions that wrote readings.
    commits: int = 0
    #: Readings held in the file (outbox and history), kept up to date incrementally.
    rows: int = 0
    bytes_used: int = 0
    max_bytes: int = 0
    #: Readings not kept, by reason: queue_full, store_full, oldest_unsent (and invalid,
    #: close_timeout in the rare cases described on `Store`).
    dropped: dict[str, int] = field(default_factory=dict)
    #: Readings removed after every consumer had them (retention or cap): not a loss.
    trimmed: int = 0
    #: Unsent raw readings folded into min/mean/max per window to make room (persistent).
    compacted: int = 0
    #: Highest committed reading id.
    last_id: int = 0
    #: Committed cursor of every registered consumer.
    consumers: dict[str, int] = field(default_factory=dict)
    #: The writer's current failure, None while it commits fine.
    last_error: str | None = None
    #: Dead letters held in the file (at most DEAD_LETTERS_KEEP).
    dead_letters: int = 0
    #: Dead letters refused because DEAD_LETTERS_QUEUE_MAX were already waiting (persistent).
    dead_letters_dropped: int = 0


class _State(enum.Enum):
    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class _Slow(Exception):
    """The fast row path met something it cannot bind: redo the group value by value."""


_WAIT_BATCHES, _WAIT_OPS = 0, 1


class Store:
    """Durable outbox + latest + history. See the module docstring for the design.

    Lifecycle: `open()` → `submit()`/reads/acks → `close()`. Using it before `open()` or after
    `close()` began raises `StoreError`. `submit` keeps a reference to the batch: do not
    mutate a batch after handing it over.

    Values of types other than None/bool/int/float/str are stored through their `.item()`
    (numpy scalars) or `str()`; ints outside 64 bits are kept as text and come back as int.
    A reading that cannot be stored at all (no usable point name or timestamp) is counted as
    `dropped["invalid"]`. If `close()` times out while commits keep failing, what is still in
    memory is counted as `dropped["close_timeout"]` (in memory and in the log only: the file
    cannot take it).
    """

    def __init__(
        self,
        path: Path | str,
        config: StoreConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.config = config
        self._clock = clock
        self.commit_latency = LatencyWindow()

        # Tunables that tests shorten; not configuration (the defaults suit every box).
        self._busy_timeout_ms = 5000
        self._housekeeping_interval = 1.0
        self._max_backoff = 5.0

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._abort = threading.Event()
        self._state = _State.NEW
        self._writer: threading.Thread | None = None
        self._exited: Future[None] = Future()
        self._pool: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []

        # Intake, guarded by _lock.
        self._queue: deque[Batch] = deque()
        self._waiting = 0  # readings in _queue
        self._inflight = 0  # readings taken by the writer, not committed yet
        self._batches_enqueued = 0
        self._batches_committed = 0
        self._acks_pending: dict[str, int] = {}
        self._regs_pending: dict[str, int] = {}
        self._seqs_pending: dict[str, int] = {}
        #: Per-consumer batch sequence numbers, committed with the cursor they belong to.
        self._seqs: dict[str, int] = {}
        self._dead_pending: list[tuple[float, str, str, str, bytes, int]] = []
        self._dead_letters_keep = DEAD_LETTERS_KEEP
        self._dead_refusing = False
        self._ops_enqueued = 0
        self._ops_committed = 0
        self._waiters: list[tuple[int, int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._stopping = False
        self._refusing: str | None = None

        # State mirrored from disk (written by the writer, read anywhere).
        self._last_id = 0
        self._point_ids: dict[str, int] = {}
        self._cursors: dict[str, int] = {}
        self._dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._trimmed = 0
        self._compacted = 0
        #: Readings with ids up to this were examined by compaction (persisted in `meta`).
        self._compacted_upto = 0
        self._counters_version = 0
        self._counters_written = 0
        self._counters_pending: int | None = None
        self._rows = 0
        self._dead_rows = 0
        self._dead_dropped = 0
        self._bytes_used = 0
        self._page_size = 4096
        self._over_cap = False
        self._trimming = False  # a cap enforcement ran out of time budget: go on next round
        self._unsent_logged_at = -math.inf
        self._unsent_unlogged = 0
        self._submitted = 0
        self._committed = 0
        self._commits = 0
        self._last_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or recover the file and start the writer.

        Recovery is SQLite's: WAL frames of committed transactions are replayed on the first
        connection; ids continue after the highest committed id (sqlite_sequence).
        """
        with self._lock:
            if self._state is not _State.NEW:
                raise StoreError(f"store {self.path}: open() in state {self._state.value}")
            self._state = _State.OPENING
        ready: Future[None] = Future()
        self._exited = Future()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="millrace-store-read")
        self._writer = threading.Thread(
            target=self._writer_main, args=(ready,), name="millrace-store-writer", daemon=True
        )
        self._writer.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            await asyncio.wrap_future(self._exited)
            self._writer.join()
            self._pool.shutdown(wait=True)
            with self._lock:
                self._writer = None
                self._pool = None
                self._state = _State.NEW
            raise
        with self._lock:
            self._state = _State.OPEN
        log.info(
            "store opened",
            extra={
                "store_path": str(self.path),
                "last_id": self._last_id,
                "rows": self._rows,
                "bytes_used": self._bytes_used,
                "consumers": len(self._cursors),
            },
        )

    async def close(self, timeout: float = 10.0) -> None:
        """Flush, stop the writer, close every connection. Idempotent.

        If commits keep failing for `timeout` seconds, the writer is told to give up; what it
        still held is logged and counted as `dropped["close_timeout"]`.
        """
        with self._lock:
            state = self._state
            if state in (_State.NEW, _State.CLOSED):
                self._state = _State.CLOSED
                return
            if state is _State.OPEN:
                self._state = _State.CLOSING
                self._stopping = True
                self._cond.notify_all()
        exited = asyncio.wrap_future(self._exited)
        if state is not _State.OPEN:  # another close() is at work: wait for the writer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), timeout)
            return
        try:
            await asyncio.wait_for(asyncio.shield(exited), timeout)
        except TimeoutError:
            self._abort.set()  # the writer keeps failing: make it give up
            with self._lock:
                self._cond.notify_all()
            await exited
        assert self._writer is not None
        self._writer.join()
        with self._lock:
            self._state = _State.CLOSED
            readers, self._readers = self._readers, []
        if self._pool is not None:
            # Queued reads are cancelled; one in progress takes milliseconds.
            self._pool.shutdown(wait=True, cancel_futures=True)
        for conn in readers:
            conn.close()
        log.info("store closed", extra={"store_path": str(self.path), "last_id": self._last_id})

    # -- intake ----------------------------------------------------------------------------

    def submit(self, batch: Batch) -> bool:
        """Hand a batch to the writer. Never blocks and never touches the disk.

        Returns False when refused: the writer is `queue_max` readings behind ("queue_full")
        or, with `reject_new`, the file is over its cap ("store_full"); every reading of the
        batch is then counted under that reason.
        """
        n = len(batch)
        with self._lock:
            if self._state is not _State.OPEN:
                raise StoreError(f"store {self.path}: submit() in state {self._state.value}")
            if not n:
                return True
            if self._over_cap and self.config.drop_policy is DropPolicy.REJECT_NEW:
                reason = "store_full"
            elif (held := self._waiting + self._inflight) and held + n > self.config.queue_max:
                reason = "queue_full"
            else:
                self._queue.append(batch)
                self._waiting += n
                self._submitted += n
                self._batches_enqueued += 1
                if len(self._queue) == 1 or self._waiting >= self.config.batch_max:
                    self._cond.notify()
                if self._refusing is not None:
                    self._refusing = None
                    log.info("store accepts readings again", extra={"store_path": str(self.path)})
                return True
            self._dropped[reason] = self._dropped.get(reason, 0) + n
            self._counters_version += 1
            first = self._refusing != reason
            self._refusing = reason
        if first:
            log.warning(
                "store refuses readings",
                extra={"store_path": str(self.path), "reason": reason, "readings": n},
            )
        return False

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted before this call is committed.

        Raises TimeoutError after `timeout` seconds (the readings stay queued and the writer
        keeps retrying), StoreError if the store was never opened or the writer has stopped.
        """
        with self._lock:
            if self._state in (_State.NEW, _State.OPENING):
                raise StoreError(f"store {self.path}: flush() before open()")
            fut = self._add_waiter(_WAIT_BATCHES, self._batches_enqueued)
            # Dead letters (and acks, registrations) ride on the ops counter.
            ops = self._add_waiter(_WAIT_OPS, self._ops_enqueued)
        if fut is not None and ops is not None:
            await asyncio.wait_for(asyncio.gather(fut, ops), timeout)
        elif fut is not None or ops is not None:
            await asyncio.wait_for(fut or ops, timeout)  # type: ignore[arg-type]

    # -- dead letters ----------------------------------------------------------------------

    def dead_letter(self, source: str, topic: str, payload: bytes, reason: str) -> None:
        """Keep a message a driver received but could not use. Never blocks, never touches
        the disk: the writer commits it with its next transaction.

        The payload is cut to DEAD_LETTER_PAYLOAD_MAX bytes here (its size is kept), so a
        flood of huge messages costs bounded memory. When DEAD_LETTERS_QUEUE_MAX already wait,
        the letter is counted as `dead_letters_dropped` instead: dead letters are evidence,
        not data, and must never hold back readings.
        """
        size = len(payload)
        row = (
            self._clock(),
            str(source)[:_DEAD_TEXT_MAX],
            str(topic)[:_DEAD_TEXT_MAX],
            str(reason)[:_DEAD_TEXT_MAX],
            bytes(memoryview(payload)[:DEAD_LETTER_PAYLOAD_MAX]),
            size,
        )
        with self._lock:
            if self._state is not _State.OPEN:
                raise StoreError(f"store {self.path}: dead_letter() in state {self._state.value}")
            if len(self._dead_pending) >= DEAD_LETTERS_QUEUE_MAX:
                self._dead_dropped += 1
                self._counters_version += 1
                first = self._dead_dropped == 1 or not self._dead_refusing
                self._dead_refusing = True
            else:
                self._dead_pending.append(row)
                self._dead_refusing = False
                self._ops_enqueued += 1
                self._cond.notify()
                return
        if first:
            log.warning(
                "store refuses dead letters: too many waiting",
                extra={
                    "store_path": str(self.path),
                    "source": row[1],
                    "waiting": len(self._dead_pending),
                },
            )

    async def dead_letters(
        self, *, limit: int = 100, source: str | None = None
    ) -> list[DeadLetter]:
        """The newest `limit` dead letters (of one `source`, the driver's device id, when
        given), newest first."""
        if limit <= 0:
            return []
        if source is None:
            rows = await self._read(_fetch, _SELECT_DEAD, (limit,))
        else:
            rows = await self._read(_fetch, _SELECT_DEAD_SOURCE, (source, limit))
        return [
            DeadLetter(rid, ts, src, topic, reason, bytes(payload), size)
            for rid, ts, src, topic, reason, payload, size in rows
        ]

    # -- consumers (uplinks) ---------------------------------------------------------------

    def register_consumer(self, name: str) -> None:
        """Give an uplink a cursor. A new one starts at the current end (it gets only readings
        committed from now on); a known one keeps its persisted cursor."""
        if not isinstance(name, str) or not name:
            raise StoreError(f"store {self.path}: consumer name must be a non-empty string")
        with self._lock:
            if self._state is not _State.OPEN:
                raise StoreError(f"store {self.path}: register_consumer() before open()")
            if name in self._cursors:
                return
            self._cursors[name] = self._last_id
            self._regs_pending[name] = self._last_id
            self._ops_enqueued += 1
            self._cond.notify()
        log.info(
            "store consumer registered",
            extra={"store_path": str(self.path), "consumer": name, "cursor": self._last_id},
        )

    def consumer_seq(self, consumer: str) -> int:
        """The last batch sequence number committed with this consumer's cursor (0: none)."""
        with self._lock:
            return self._seqs.get(consumer, 0)

    def cursor(self, consumer: str) -> int:
        """The consumer's committed cursor (the highest id the far side confirmed)."""
        return self._cursor(consumer)

    async def pending(self, consumer: str, limit: int) -> list[StoredReading]:
        """Up to `limit` readings the consumer has not acked, ascending id.

        Only up to the highest id the writer has published: a reader sees a transaction the
        moment it commits, a little before the writer moves `_last_id`, and `ack` caps at
        `_last_id` — a row handed out in that gap could not be acked and went out twice
        (the soak counted 398 such re-sends in 1.7 million readings)."""
        cursor = self._cursor(consumer)
        with self._lock:
            top = self._last_id
        if limit <= 0 or top <= cursor:
            return []
        rows = await self._read(_fetch, _SELECT_PENDING, (cursor, top, limit))
        return _decode_rows(rows)

    async def pending_matching(
        self, consumer: str, limit: int, suffix: str, *, scan: int = 100_000
    ) -> tuple[list[StoredReading], int]:
        """Up to `limit` unacked readings of points whose name ends with `suffix`, and the
        highest id looked at. For a consumer that wants a few points among many (the pool
        sync wants `<machine>.availability`): it acks up to that id even when nothing
        matched, so its cursor keeps up without decoding the telemetry in Python. At most
        `scan` ids are looked at per call."""
        cursor = self._cursor(consumer)
        with self._lock:
            top = self._last_id
        hi = min(top, cursor + scan)
        if limit <= 0 or not suffix or hi <= cursor:
            return [], cursor
        rows = _decode_rows(
            await self._read(
                _fetch, _SELECT_PENDING_SUFFIX, (cursor, hi, len(suffix), suffix, limit)
            )
        )
        return rows, rows[-1].id if len(rows) == limit else hi

    async def ack(self, consumer: str, upto: int, seq: int | None = None) -> None:
        """Mark readings up to `upto` delivered; returns once the cursor is committed.

        Cursors only move forward, and never past the highest committed id. `seq` (an
        uplink's batch sequence number) is committed in the same transaction, so after a
        crash cursor and sequence agree.
        """
        with self._lock:
            if consumer not in self._cursors:
                raise StoreError(f"store {self.path}: unknown consumer {consumer!r}")
            if self._state is not _State.OPEN:
                raise StoreError(f"store {self.path}: ack() in state {self._state.value}")
            upto = min(int(upto), self._last_id)
            new_seq = seq is not None and seq > self._seqs.get(consumer, 0)
            if new_seq:
                assert seq is not None
                self._seqs_pending[consumer] = max(self._seqs_pending.get(consumer, seq), seq)
            if (
                upto <= self._cursors[consumer]
                and consumer not in self._acks_pending
                and not new_seq
            ):
                return
            self._acks_pending[consumer] = max(self._acks_pending.get(consumer, upto), upto)
            self._ops_enqueued += 1
            fut = self._add_waiter(_WAIT_OPS, self._ops_enqueued)
        if fut is not None:
            await fut

    # -- reads -----------------------------------------------------------------------------

    async def latest(self, points: Sequence[str] | None = None) -> list[StoredReading]:
        """The last stored reading of each point (all points, by name, when `points` is None;
        otherwise in the order asked, skipping points never stored)."""
        if points is None:
            rows = await self._read(_fetch, _SELECT_LATEST + " ORDER BY p.name", ())
            return _decode_rows(rows)
        wanted = list(dict.fromkeys(points))
        found = {r.point: r for r in _decode_rows(await self._read(_fetch_latest, wanted))}
        return [found[p] for p in wanted if p in found]

    async def history(
        self,
        point: str,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[StoredReading]:
        """Readings of `point` with since <= ts_gateway < until, ascending by ts_gateway then id;
        the newest `limit` of them when more match."""
        if limit <= 0:
            return []
        lo = -math.inf if since is None else float(since)
        hi = math.inf if until is None else float(until)
        rows = await self._read(_fetch, _SELECT_HISTORY, (point, lo, hi, limit))
        rows.reverse()
        return _decode_rows(rows)

    async def time_range(
        self, since: float, until: float, *, after_id: int = 0, limit: int = 1000
    ) -> list[StoredReading]:
        """Every point's readings with since <= ts_gateway < until and id > after_id, by
        ascending id (a replay walks a range in pages by passing the last id it got)."""
        if limit <= 0:
            return []
        rows = await self._read(_fetch, _SELECT_RANGE, (after_id, since, until, limit))
        return _decode_rows(rows)

    async def points(self) -> list[str]:
        """Names of every point ever stored, sorted."""
        rows = await self._read(_fetch, "SELECT name FROM points ORDER BY name", ())
        return [r[0] for r in rows]

    def stats(self) -> StoreStats:
        """A consistent snapshot of the counters; no I/O."""
        with self._lock:
            return StoreStats(
                submitted=self._submitted,
                committed=self._committed,
                queued=self._waiting + self._inflight,
                commits=self._commits,
                rows=self._rows,
                bytes_used=self._bytes_used,
                max_bytes=self.config.max_bytes,
                dropped=dict(self._dropped),
                trimmed=self._trimmed,
                compacted=self._compacted,
                last_id=self._last_id,
                consumers=dict(self._cursors),
                last_error=self._last_error,
                dead_letters=self._dead_rows,
                dead_letters_dropped=self._dead_dropped,
            )

    # -- loop-side helpers -----------------------------------------------------------------

    def _add_waiter(self, kind: int, target: int) -> asyncio.Future[None] | None:
        """Register a future the writer resolves once `target` is committed (lock held)."""
        done = self._batches_committed if kind == _WAIT_BATCHES else self._ops_committed
        if done >= target:
            return None
        if self._writer is None or not self._writer.is_alive():
            raise StoreError(f"store {self.path}: the writer has stopped")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append((kind, target, loop, fut))
        self._cond.notify()
        return fut

    def _cursor(self, consumer: str) -> int:
        with self._lock:
            try:
                return self._cursors[consumer]
            except KeyError:
                raise StoreError(f"store {self.path}: unknown consumer {consumer!r}") from None

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._state is not _State.OPEN:
            raise StoreError(f"store {self.path}: read in state {self._state.value}")
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(self._with_reader, fn, *args)
        )

    def _with_reader(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` on a pooled read-only connection (in a worker thread)."""
        with self._lock:
            conn = self._readers.pop() if self._readers else None
        try:
            if conn is None:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=5.0
                )
                conn.execute("PRAGMA query_only = 1")
                conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            return fn(conn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: read failed: {exc}") from exc
        finally:
            if conn is not None:
                with self._lock:
                    keep = self._state is _State.OPEN
                    if keep:
                        self._readers.append(conn)
                if not keep:
                    conn.close()

    # -- writer thread ---------------------------------------------------------------------

    def _writer_main(self, ready: Future[None]) -> None:
        try:
            try:
                self._conn = self._open_db()
            except BaseException as exc:
                ready.set_exception(exc)
                return
            ready.set_result(None)
            try:
                self._writer_loop()
            finally:
                with self._lock:
                    for _, _, loop, fut in self._waiters:
                        _resolve(loop, fut, StoreError(f"store {self.path}: the writer stopped"))
                    self._waiters = []
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
        finally:
            self._exited.set_result(None)

    def _open_db(self) -> sqlite3.Connection:
        """Open, configure, create or check the schema, and load the state kept in memory."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot open store {self.path}: WAL mode refused ({mode})")
            sync = "FULL" if self.config.synchronous == "full" else "NORMAL"
            conn.execute(f"PRAGMA synchronous = {sync}")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA temp_store = MEMORY")
            # Every point's newest index leaf is written in each transaction: keep them cached,
            # and checkpoint less often, so a leaf rewritten by many commits reaches the main
            # file once per checkpoint (measured: -20 % writer CPU at 1M rows). The WAL may
            # then grow to ~4 % of max_bytes (at most 40 MB) before it is folded back.
            conn.execute("PRAGMA cache_size = -32768")
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            ckpt = min(10_000, max(1000, self.config.max_bytes // 25 // page))
            conn.execute(f"PRAGMA wal_autocheckpoint = {ckpt}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO meta(key, value) VALUES ('schema_version', ?)",
                        (SCHEMA_VERSION,),
                    )
                elif row[0] != SCHEMA_VERSION:
                    raise StoreError(
                        f"cannot open store {self.path}: schema version {row[0]},"
                        f" this gateway reads {SCHEMA_VERSION}"
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._load_state(conn)
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        return conn

    def _load_state(self, conn: sqlite3.Connection) -> None:
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
        max_id, rows = conn.execute("SELECT max(id), count(*) FROM readings").fetchone()
        self._last_id = max(seq[0] if seq else 0, max_id or 0)
        self._rows = rows
        self._point_ids = dict(conn.execute("SELECT name, id FROM points"))
        self._cursors = dict(conn.execute("SELECT name, cursor FROM consumers"))
        self._seqs = dict(conn.execute("SELECT name, seq FROM consumer_seq"))
        row = conn.execute("SELECT value FROM meta WHERE key = 'compacted_upto'").fetchone()
        self._compacted_upto = int(row[0]) if row else 0
        self._dead_rows = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        for name, value in conn.execute("SELECT name, value FROM counters"):
            if name == "trimmed":
                self._trimmed = value
            elif name == "compacted":
                self._compacted = value
            elif name == "dead_letters.dropped":
                self._dead_dropped = value
            elif name.startswith("dropped."):
                self._dropped[name.removeprefix("dropped.")] = value
        self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        self._measure(conn)
        self._over_cap = self._bytes_used > self.config.max_bytes

    def _writer_loop(self) -> None:
        """Gather → one transaction → account; housekeeping between transactions."""
        cfg = self.config
        group: list[Batch] = []
        group_n = 0
        acks: dict[str, int] = {}
        regs: dict[str, int] = {}
        seqs: dict[str, int] = {}
        dead: list[tuple[float, str, str, str, bytes, int]] = []
        ops_mark = self._ops_committed
        failures = 0
        next_housekeeping = time.monotonic() + self._housekeeping_interval
        while True:
            with self._cond:
                if not group and not acks and not regs and not dead and not seqs:
                    while not (
                        self._queue
                        or self._acks_pending
                        or self._regs_pending
                        or self._seqs_pending
                        or self._dead_pending
                    ):
                        if self._stopping or self._abort.is_set():
                            break
                        remaining = next_housekeeping - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    if self._queue and not self._stopping:
                        deadline = time.monotonic() + cfg.flush_interval
                        while self._waiting < cfg.batch_max and not self._waiters:
                            remaining = deadline - time.monotonic()
                            if remaining <= 0 or self._stopping:
                                break
                            self._cond.wait(remaining)
                while self._queue and group_n < cfg.batch_max:
                    batch = self._queue.popleft()
                    group.append(batch)
                    group_n += len(batch)
                    self._waiting -= len(batch)
                    self._inflight += len(batch)
                for name, upto in self._acks_pending.items():
                    acks[name] = max(acks.get(name, upto), upto)
                regs.update(self._regs_pending)
                for name, seq in self._seqs_pending.items():
                    seqs[name] = max(seqs.get(name, seq), seq)
                self._acks_pending.clear()
                self._regs_pending.clear()
                self._seqs_pending.clear()
                if self._dead_pending:
                    dead += self._dead_pending
                    self._dead_pending = []
                ops_mark = self._ops_enqueued
                idle = not (group or acks or regs or dead or seqs)
                if idle and self._stopping and not self._queue:
                    break
            if self._abort.is_set():
                break

            if not idle:
                try:
                    self._write(group, group_n, acks, regs, ops_mark, dead, seqs)
                except Exception as exc:
                    failures += 1
                    self._failed("commit", exc, group_n, failures)
                    self._abort.wait(min(self._max_backoff, 0.05 * 2 ** min(failures, 10)))
                    continue
                group, group_n, acks, regs, dead, seqs = [], 0, {}, {}, [], {}
                if failures:
                    self._recovered(failures)
                    failures = 0

            # The size policy runs before flush()/ack() callers wake, so what they see next
            # (stats, refusals) already reflects it.
            error: Exception | None = None
            try:
                if time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + self._housekeeping_interval
                    self._retention()
                    self._write_counters()
                self._enforce_cap()
            except Exception as exc:
                error = exc
            with self._lock:
                self._resolve_waiters()
            if error is not None:
                failures += 1
                self._failed("housekeeping", error, 0, failures)
                self._abort.wait(min(self._max_backoff, 0.05 * 2 ** min(failures, 10)))
            elif failures:
                self._recovered(failures)
                failures = 0

        # Leaving: persist the last counter changes; account for anything given up.
        with contextlib.suppress(Exception):
            self._write_counters()
        with self._lock:
            lost = group_n + self._waiting
            self._queue.clear()
            self._waiting = 0
            self._inflight = 0
            if lost:
                self._dropped["close_timeout"] = self._dropped.get("close_timeout", 0) + lost
            # Dead letters given up with the writer: counted in memory (the file cannot take it).
            self._dead_dropped += len(dead) + len(self._dead_pending)
            self._dead_pending = []
        if lost:
            log.error(
                "store closed with readings not committed",
                extra={"store_path": str(self.path), "readings": lost, "error": self._last_error},
            )

    def _failed(self, what: str, exc: Exception, readings: int, failures: int) -> None:
        message = f"{what} failed: {type(exc).__name__}: {exc}"
        with self._lock:
            changed = message != self._last_error
            self._last_error = message
        if changed or failures == 1:
            log.error(
                "store %s failed, retrying",
                what,
                extra={
                    "store_path": str(self.path),
                    "error": message,
                    "readings": readings,
                    "failures": failures,
                },
                exc_info=not isinstance(exc, sqlite3.Error),
            )

    def _recovered(self, failures: int) -> None:
        with self._lock:
            self._last_error = None
        log.info(
            "store writes recovered", extra={"store_path": str(self.path), "failures": failures}
        )

    def _write(
        self,
        group: list[Batch],
        n: int,
        acks: dict[str, int],
        regs: dict[str, int],
        ops: int,
        dead: list[tuple[float, str, str, str, bytes, int]],
        seqs: dict[str, int] | None = None,
    ) -> None:
        """Commit one gathered group plus ops, then publish the result to everyone waiting."""
        seqs = seqs or {}
        try:
            rows, new_points, invalid, dead_deleted = self._transaction(
                group, acks, regs, dead, slow=False, seqs=seqs
            )
        except _Slow:
            rows, new_points, invalid, dead_deleted = self._transaction(
                group, acks, regs, dead, slow=True, seqs=seqs
            )
        now = self._clock()
        if group:
            for ts, count in Counter(map(_TS, itertools.chain.from_iterable(group))).items():
                self.commit_latency.add_many(now - ts, count)
        self._point_ids.update(new_points)
        with self._lock:
            if rows:
                self._last_id = rows[-1][0]
                self._rows += len(rows)
                self._commits += 1
            self._committed += len(rows)
            if invalid:
                self._dropped["invalid"] = self._dropped.get("invalid", 0) + invalid
            self._inflight -= n
            self._batches_committed += len(group)
            self._ops_committed = max(self._ops_committed, ops)
            for name, upto in acks.items():
                self._cursors[name] = max(self._cursors.get(name, upto), upto)
            for name, seq in seqs.items():
                self._seqs[name] = max(self._seqs.get(name, seq), seq)
            self._dead_rows += len(dead) - dead_deleted
        if rows or acks or dead:
            self._measure(self._db)

    def _transaction(
        self,
        group: list[Batch],
        acks: dict[str, int],
        regs: dict[str, int],
        dead: list[tuple[float, str, str, str, bytes, int]],
        *,
        slow: bool,
        seqs: dict[str, int] | None = None,
    ) -> tuple[list[tuple[Any, ...]], dict[str, int], int, int]:
        start = self._last_id + 1
        new_points: dict[str, int] = {}
        invalid = 0
        dead_deleted = 0
        rows: list[tuple[Any, ...]] = []
        with self._txn() as conn:
            if group:
                if slow:
                    rows, invalid = self._rows_slow(group, start, new_points)
                else:
                    rows = self._rows_fast(group, start, new_points)
                if rows:
                    try:
                        _insert_rows(conn, rows)
                    except (
                        OverflowError,
                        TypeError,
                        ValueError,
                        sqlite3.InterfaceError,
                        sqlite3.ProgrammingError,
                        sqlite3.IntegrityError,
                    ) as exc:
                        if slow:
                            raise
                        raise _Slow from exc
                    conn.executemany(_UPSERT_LATEST, {row[1]: row for row in rows}.values())
            if regs:
                conn.executemany(_REGISTER, regs.items())
            if acks:
                conn.executemany(_ACK, [(upto, name) for name, upto in acks.items()])
            if seqs:
                conn.executemany(_SEQ, seqs.items())
            if dead:
                conn.executemany(_INSERT_DEAD, dead)
                # Ids only grow and rows leave only from the oldest end, so this keeps the
                # newest `_dead_letters_keep` (one indexed range delete, no count(*)).
                dead_deleted = conn.execute(
                    "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?",
                    (self._dead_letters_keep,),
                ).rowcount
            self._put_counters(conn, {"dropped.invalid": invalid} if invalid else {})
        return rows, new_points, invalid, dead_deleted

    def _rows_fast(
        self, group: list[Batch], start: int, new_points: dict[str, int]
    ) -> list[tuple[Any, ...]]:
        """Row tuples in one comprehension: the only per-reading Python work on the hot path."""
        pid = self._point_ids
        try:
            try:
                return _build_rows(group, start, pid)
            except KeyError:
                missing = {r.point for b in group for r in b if r.point not in pid}
                for name in sorted(missing, key=str):
                    if not isinstance(name, str):
                        raise _Slow from None
                    new_points[name] = self._insert_point(name)
                return _build_rows(group, start, {**pid, **new_points})
        except (KeyError, AttributeError, TypeError) as exc:
            raise _Slow from exc

    def _rows_slow(
        self, group: list[Batch], start: int, new_points: dict[str, int]
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Value-by-value conversion for groups the fast path refused; unusable readings are
        counted, never retried forever."""
        rows: list[tuple[Any, ...]] = []
        invalid = 0
        next_id = start
        for r in itertools.chain.from_iterable(group):
            try:
                name = r.point
                if not isinstance(name, str):
                    raise TypeError(f"point name {name!r} is not a string")
                pid = self._point_ids.get(name) or new_points.get(name)
                if pid is None:
                    pid = new_points[name] = self._insert_point(name)
                ts = float(r.ts_gateway)
                if not math.isfinite(ts):
                    raise ValueError(f"ts_gateway {ts!r}")
                ts_source = None if r.ts_source is None else float(r.ts_source)
                quality = int(_QUALITY_OF[int(r.quality)])
                kind, value = _encode_slow(r.value)
                reason = None if r.reason is None else str(r.reason)
            except Exception as exc:
                invalid += 1
                log.warning(
                    "store drops an invalid reading",
                    extra={
                        "store_path": str(self.path),
                        "reading": repr(r)[:200],
                        "error": str(exc),
                    },
                )
                continue
            rows.append((next_id, pid, ts, ts_source, quality, kind, value, reason))
            next_id += 1
        return rows, invalid

    def _insert_point(self, name: str) -> int:
        cur = self._db.execute("INSERT INTO points(name) VALUES (?)", (name,))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _resolve_waiters(self) -> None:
        """Wake flush()/ack() callers whose target is committed (lock held)."""
        keep = []
        for waiter in self._waiters:
            kind, target, loop, fut = waiter
            done = self._batches_committed if kind == _WAIT_BATCHES else self._ops_committed
            if done >= target:
                _resolve(loop, fut, None)
            else:
                keep.append(waiter)
        self._waiters = keep

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    @contextlib.contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT on the writer connection, rolled back on any error; counters
        written inside count as persisted only once COMMIT returned."""
        conn = self._db
        self._counters_pending = None
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        if self._counters_pending is not None:
            self._counters_written = max(self._counters_written, self._counters_pending)

    # -- housekeeping (writer thread) ------------------------------------------------------

    def _measure(self, conn: sqlite3.Connection) -> None:
        """Bytes in use: pages holding data (the file itself keeps freed pages for reuse)."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        used = (pages - free) * self._page_size
        with self._lock:
            self._bytes_used = used

    def _min_cursor(self) -> int:
        """Readings with id <= this have reached every consumer (all of them if none)."""
        with self._lock:
            return min(self._cursors.values(), default=self._last_id)

    def _enforce_cap(self) -> None:
        """Bring the file back under ~90 % of max_bytes once it went over the cap.

        Delivered readings go first (trimmed). Then, with drop_oldest, the oldest unsent
        readings go too (dropped "oldest_unsent"); with reject_new they stay and `submit`
        refuses until acks, trims and retention make room. Deletes run in chunks and within a
        time budget per call, so intake keeps flowing while a large file shrinks.
        """
        cap = self.config.max_bytes
        if self._bytes_used <= cap and not self._trimming:
            if self._over_cap:
                with self._lock:
                    self._over_cap = False
            return
        conn = self._db
        target = int(cap * _CAP_TARGET)
        drop_unsent = self.config.drop_policy is DropPolicy.DROP_OLDEST
        deadline = time.monotonic() + _CAP_BUDGET_S
        stuck = False
        while self._bytes_used > target and time.monotonic() < deadline:
            oldest = conn.execute("SELECT min(id) FROM readings").fetchone()[0]
            if oldest is None:
                stuck = True
                break
            per_row = self._bytes_used / max(self._rows, 1)
            want = math.ceil((self._bytes_used - target) / per_row)
            hi = oldest + min(_CAP_CHUNK, max(256, want)) - 1
            sent = self._min_cursor()
            if hi > sent and self._can_compact():
                if oldest > sent:
                    self._compact_step(oldest)
                    continue  # unsent raw readings folded: look again before dropping any
                hi = sent  # trim what every uplink has; fold the rest before dropping it
            if not drop_unsent:
                hi = min(hi, sent)
                if hi < oldest:
                    stuck = True
                    break
            with self._txn():
                trimmed = conn.execute(
                    "DELETE FROM readings WHERE id <= ?", (min(hi, sent),)
                ).rowcount
                unsent = 0
                if hi > sent:
                    unsent = conn.execute("DELETE FROM readings WHERE id <= ?", (hi,)).rowcount
                delta = {"trimmed": trimmed, "dropped.oldest_unsent": unsent}
                self._put_counters(conn, delta)
            self._apply_counters(delta, trimmed + unsent)
            if unsent:
                self._log_unsent_dropped(unsent, hi)
            self._measure(conn)
        self._trimming = self._bytes_used > target and not stuck
        with self._lock:
            self._over_cap = self._bytes_used > cap

    def _can_compact(self) -> bool:
        """Compaction is on and some committed readings were not examined yet."""
        return self.config.compact and self._compacted_upto < self._last_id

    def _compact_step(self, oldest: int) -> None:
        """Fold the next chunk of unsent raw readings, oldest first."""
        lo = max(oldest, self._compacted_upto + 1)
        hi = min(self._last_id, lo + _COMPACT_CHUNK - 1)
        removed = self._compact(lo, hi)
        self._measure(self._db)
        if removed:
            log.warning(
                "store nearly full: unsent readings compacted to min/mean/max per window",
                extra={
                    "store_path": str(self.path),
                    "readings_folded": removed,
                    "ids": f"{lo}..{hi}",
                    "window_s": self.config.compact_window,
                },
            )

    def _compact(self, lo: int, hi: int) -> int:
        """Per point and per `compact_window`, keep the reading with the lowest value, the one
        with the highest, and turn one more into the window's mean; delete the rest.

        Kept rows keep their ids and timestamps, so ids stay increasing and per-point order
        holds; the reason says what each kept row now stands for. Only numeric readings of
        quality GOOD or UNCERTAIN in windows of four or more are folded: BAD readings,
        strings, booleans, model events and alarm states are kept at full fidelity.
        Returns the number of readings deleted (counted as `compacted`, not as dropped).
        """
        conn = self._db
        window = self.config.compact_window
        names = {pid: name for name, pid in self._point_ids.items()}
        rows = conn.execute(
            "SELECT id, point, ts_gateway, quality, kind, value FROM readings"
            " WHERE id BETWEEN ? AND ? ORDER BY id",
            (lo, hi),
        ).fetchall()
        groups: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
        for r in rows:
            if r[4] not in (_K_INT, _K_FLOAT) or r[5] is None or r[3] == _QUALITY_INT[Quality.BAD]:
                continue
            name = names.get(r[1], "")
            if name.endswith(_FULL_FIDELITY_SUFFIX) or _FULL_FIDELITY_INFIX in name:
                continue
            groups.setdefault((r[1], math.floor(r[2] / window)), []).append(r)
        reasons: list[tuple[str, int]] = []
        means: list[tuple[float, int, str, int]] = []
        delete: list[tuple[int]] = []
        for (_, w), g in groups.items():
            n = len(g)
            if n < 4:
                continue
            vals = [float(r[5]) for r in g]
            i_min = min(range(n), key=vals.__getitem__)
            i_max = max(range(n), key=vals.__getitem__)
            i_mean = next(i for i in range(n - 1, -1, -1) if i not in (i_min, i_max))
            span = f"{n} readings in the {window:g} s window from {w * window:.0f}"
            reasons.append((f"compacted: min of {span}", g[i_min][0]))
            reasons.append((f"compacted: max of {span}", g[i_max][0]))
            mean = math.fsum(vals) / n
            means.append((mean, _K_FLOAT, f"compacted: mean of {span}", g[i_mean][0]))
            keep = {i_min, i_max, i_mean}
            delete += [(g[i][0],) for i in range(n) if i not in keep]
        with self._txn():
            if reasons:
                conn.executemany("UPDATE readings SET reason = ? WHERE id = ?", reasons)
                conn.executemany(
                    "UPDATE readings SET value = ?, kind = ?, reason = ? WHERE id = ?", means
                )
                conn.executemany("DELETE FROM readings WHERE id = ?", delete)
                self._put_counters(conn, {"compacted": len(delete)})
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('compacted_upto', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (hi,),
            )
        if delete:
            self._apply_counters({"compacted": len(delete)}, len(delete))
        self._compacted_upto = hi
        return len(delete)

    def _log_unsent_dropped(self, readings: int, upto_id: int) -> None:
        """Warn at the first drop and then at most once a minute with the total since: a full
        store drops on every commit, and the counter (not the log) is the record."""
        self._unsent_unlogged += readings
        now = time.monotonic()
        if now - self._unsent_logged_at < 60.0:
            return
        log.warning(
            "store full: oldest unsent readings dropped",
            extra={
                "store_path": str(self.path),
                "readings": self._unsent_unlogged,
                "upto_id": upto_id,
                "policy": self.config.drop_policy.value,
            },
        )
        self._unsent_logged_at = now
        self._unsent_unlogged = 0

    def _retention(self) -> None:
        """Age limits, in chunks so intake never waits long: readings every consumer has
        leave after history_retention (trimmed, not a loss); with `max_unsent_age`, unsent
        readings older than it are dropped (counted `too_old`), for sites where a reading is
        worthless after a while. Off (None) by default: nothing unsent leaves by age."""
        sent = self._min_cursor()
        now = self._clock()
        self._delete_older(now - self.config.history_retention, sent, "trimmed")
        max_age = self.config.max_unsent_age
        if max_age is not None:
            n = self._delete_older(now - max_age, self._last_id, "dropped.too_old", lo=sent + 1)
            if n:
                log.warning(
                    "unsent readings older than max_unsent_age dropped",
                    extra={"store_path": str(self.path), "readings": n},
                )
        self._measure(self._db)

    def _delete_older(self, cutoff: float, hi: int, counter: str, *, lo: int = 0) -> int:
        """Delete readings with lo <= id <= hi and ts_gateway < cutoff, counted under
        `counter` in the same transaction. Walks ids from the oldest in the range and stops
        at the first chunk with nothing old enough (ts_gateway grows with id, save for clock
        steps). Returns how many went."""
        conn = self._db
        first = conn.execute(
            "SELECT id, ts_gateway FROM readings WHERE id >= ? ORDER BY id LIMIT 1", (lo,)
        ).fetchone()
        if first is None or first[1] >= cutoff:
            return 0
        start, total = first[0], 0
        while start <= hi and not self._abort.is_set():
            end = min(hi, start + _RETENTION_CHUNK - 1)
            with self._txn():
                n = conn.execute(
                    "DELETE FROM readings WHERE id BETWEEN ? AND ? AND ts_gateway < ?",
                    (start, end, cutoff),
                ).rowcount
                if n:
                    self._put_counters(conn, {counter: n})
            if not n:
                break
            self._apply_counters({counter: n}, n)
            total += n
            start = end + 1
        return total

    def _write_counters(self) -> None:
        """Persist refusals counted by `submit` when no transaction carried them."""
        if self._counters_version == self._counters_written:
            return
        with self._txn() as conn:
            self._put_counters(conn, {})

    def _put_counters(self, conn: sqlite3.Connection, delta: dict[str, int]) -> None:
        """Write counter totals (memory + `delta`) inside the caller's transaction, so a
        deletion and its count commit together."""
        with self._lock:
            version = self._counters_version
            if not delta and version == self._counters_written:
                return
            values = {f"dropped.{k}": v for k, v in self._dropped.items()}
            values["trimmed"] = self._trimmed
            values["compacted"] = self._compacted
            if self._dead_dropped:
                values["dead_letters.dropped"] = self._dead_dropped
        for name, n in delta.items():
            values[name] = values.get(name, 0) + n
        conn.executemany(_UPSERT_COUNTER, values.items())
        self._counters_pending = version

    def _apply_counters(self, delta: dict[str, int], removed: int) -> None:
        with self._lock:
            for name, n in delta.items():
                if name == "trimmed":
                    self._trimmed += n
                elif name == "compacted":
                    self._compacted += n
                else:
                    reason = name.removeprefix("dropped.")
                    self._dropped[reason] = self._dropped.get(reason, 0) + n
            self._rows -= removed


# -- module helpers ----------------------------------------------------------------------


def _resolve(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None], exc: Exception | None
) -> None:
    def settle() -> None:
        if fut.done():
            return
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)


def _build_rows(group: list[Batch], start: int, pid: dict[str, int]) -> list[tuple[Any, ...]]:
    """Row tuples for a group, in one comprehension (the hot path's per-reading work).

    None in ts_source and reason is sent as NaN: SQLite stores a NaN as NULL, and a float
    binds directly while None goes through sqlite3's adapter lookup (measured ~0.7 µs each).
    """
    kinds = _KINDS
    qual = _QUALITY_INT
    null = _NAN
    return [
        (
            i,
            pid[r.point],
            r.ts_gateway,
            null if (src := r.ts_source) is None else src,
            qual[r.quality],
            kinds[type(v := r.value)],
            v,
            null if (why := r.reason) is None else why,
        )
        for i, r in enumerate(itertools.chain.from_iterable(group), start)
    ]


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert with multi-row statements: AUTOINCREMENT updates sqlite_sequence once per
    statement, so _CHUNK rows per statement save that work (and a VDBE reset) per row."""
    full = len(rows) - len(rows) % _CHUNK
    if full:
        flat = list(itertools.chain.from_iterable(itertools.islice(rows, full)))
        width = 8 * _CHUNK
        conn.executemany(_INSERT_CHUNK, [flat[k : k + width] for k in range(0, len(flat), width)])
    if full < len(rows):
        conn.executemany(_INSERT_READINGS, rows[full:])


def _encode_slow(value: object) -> tuple[int, Any]:
    """Kind and storable form of any value (the fast path covers the five exact types)."""
    if value is None:
        return _K_NONE, None
    if isinstance(value, bool):
        return _K_BOOL, int(value)
    if isinstance(value, int):
        v = int(value)
        return _K_INT, v if _INT64_MIN <= v <= _INT64_MAX else str(v)
    if isinstance(value, float):
        return _K_FLOAT, float(value)
    if isinstance(value, str):
        return _K_STR, str(value)
    item = getattr(value, "item", None)
    if callable(item):
        with contextlib.suppress(Exception):
            plain = item()
            if type(plain) in _KINDS:
                return _encode_slow(plain)
    return _K_STR, str(value)


def _decode(kind: int, value: Any) -> Value:
    if kind == _K_FLOAT:
        return _NAN if value is None else float(value)
    if kind == _K_BOOL:
        return bool(value)
    if kind == _K_INT:
        return value if type(value) is int else int(value)
    if kind == _K_NONE:
        return None
    return value


def _decode_rows(rows: Iterable[tuple[Any, ...]]) -> list[StoredReading]:
    q = _QUALITY_OF
    return [
        StoredReading(rid, name, _decode(kind, value), q[quality], tsg, tss, reason)
        for rid, name, kind, value, quality, tsg, tss, reason in rows
    ]


def _fetch(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def _fetch_latest(conn: sqlite3.Connection, names: list[str]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for i in range(0, len(names), _SQL_VARS):
        chunk = names[i : i + _SQL_VARS]
        marks = ", ".join("?" * len(chunk))
        out += conn.execute(f"{_SELECT_LATEST} WHERE p.name IN ({marks})", chunk).fetchall()
    return out


__all__ = [
    "DEAD_LETTERS_KEEP",
    "DEAD_LETTERS_QUEUE_MAX",
    "DEAD_LETTER_PAYLOAD_MAX",
    "DROP_REASONS",
    "DeadLetter",
    "Store",
    "StoreStats",
    "StoredReading",
]
