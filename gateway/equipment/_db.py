"""One small SQLite file (WAL) used from the event loop without blocking it.

The registry and the metering log each own one of these: a single connection, every
operation one transaction run in a worker thread (`asyncio.to_thread`) under a lock, so
operations are serialized and the loop never waits on disk. These files are tiny and written
by people and bookings (a few changes a minute), so one connection is plenty; the readings
store and its writer thread are not involved.

A call whose task is cancelled while its transaction runs still finishes the transaction (a
thread cannot be interrupted); the caller just does not see the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.equipment.errors import EquipmentError

T = TypeVar("T")


class State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class SqliteFile:
    def __init__(self, path: str | Path, schema: str, *, what: str) -> None:
        self.path = Path(path)
        self._schema = schema
        self._what = what
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.state = State.NEW

    async def open(self) -> None:
        if self.state is not State.NEW:
            raise EquipmentError(f"{self._what} {self.path}: open() once, on a new object")
        self._conn = await asyncio.to_thread(self._connect)
        self.state = State.OPEN

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(self._schema)
            return conn
        except (sqlite3.Error, OSError) as exc:
            raise EquipmentError(f"{self._what} {self.path}: cannot open ({exc})") from exc

    async def close(self) -> None:
        if self.state is not State.OPEN:
            self.state = State.CLOSED
            return
        self.state = State.CLOSED
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(self._close, conn)

    def _close(self, conn: sqlite3.Connection) -> None:
        with self._lock:  # after any transaction still running
            conn.close()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(fn, "BEGIN IMMEDIATE")

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(fn, "BEGIN")

    async def _run(self, fn: Callable[[sqlite3.Connection], T], begin: str) -> T:
        if self.state is not State.OPEN or self._conn is None:
            raise EquipmentError(f"{self._what} {self.path} is {self.state.value}, not open")
        return await asyncio.to_thread(self._tx, self._conn, fn, begin)

    def _tx(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], begin: str) -> T:
        with self._lock:
            try:
                conn.execute(begin)
            except sqlite3.Error as exc:
                raise EquipmentError(f"{self._what} {self.path}: {exc}") from exc
            try:
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise EquipmentError(f"{self._what} {self.path}: {exc}") from exc
            except BaseException:
                self._rollback(conn)
                raise

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # SQLite may already have rolled back (disk full, I/O error): keep the first error
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
