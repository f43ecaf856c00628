"""What the gateway remembers about its dealings with the pool: bookings read back, the
booking feed position, each machine's availability sequence number and the profile version
the pool last accepted. One small SQLite file beside the store (`pool-ledger.db`).

The pool owns bookings (the gateway keeps a copy to block the booked windows and to meter
them), the gateway owns status and health. Sequence numbers must only grow: a restored
backup or a lost file restarts them from the current epoch milliseconds, which is above any
counter the gateway could have reached (the contract says so too).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.equipment._db import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS bookings (
    booking_id   TEXT PRIMARY KEY,
    machine_id   TEXT NOT NULL,
    demand_id    TEXT NOT NULL,
    start        REAL NOT NULL,
    "end"        REAL NOT NULL,
    status       TEXT NOT NULL,
    version      INTEGER NOT NULL,
    customer_org TEXT NOT NULL,
    metered_at   REAL
);
CREATE INDEX IF NOT EXISTS bookings_by_machine ON bookings (machine_id, start);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Booking:
    booking_id: str
    machine_id: str
    demand_id: str
    start: float
    end: float
    status: str  # confirmed | cancelled
    version: int
    customer_org: str
    metered_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        from gateway.equipment._time import as_utc, iso

        return {
            "booking_id": self.booking_id,
            "machine_id": self.machine_id,
            "demand_id": self.demand_id,
            "start": iso(as_utc(self.start)),
            "end": iso(as_utc(self.end)),
            "status": self.status,
            "version": self.version,
            "customer_org": self.customer_org,
            "metered": self.metered_at is not None,
        }


def _epoch(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def booking_from_feed(item: Mapping[str, Any]) -> Booking:
    """A contract `Booking` as read from the feed; ValueError names what is wrong."""
    try:
        return Booking(
            booking_id=str(item["booking_id"]),
            machine_id=str(item["machine_id"]),
            demand_id=str(item["demand_id"]),
            start=_epoch(item["start"]),
            end=_epoch(item["end"]),
            status=str(item["status"]),
            version=int(item["version"]),
            customer_org=str(item["customer_org"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a booking ({exc!r}): {dict(item)!r:.200}") from None


class PoolLedger:
    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self._db = SqliteFile(path, SCHEMA, what="pool ledger")
        self._clock = clock
        #: The kv table (sequence numbers, feed position, profile versions), mirrored after
        #: every commit: the sync loops read it every cycle without touching the disk.
        self._kv: dict[str, int] = {}
        self._bookings: dict[str, Booking] = {}

    @property
    def path(self) -> Path:
        return self._db.path

    async def open(self) -> None:
        await self._db.open()

        def run(conn: sqlite3.Connection) -> tuple[dict[str, int], list[Booking]]:
            kv = {k: int(v) for k, v in conn.execute("SELECT key, value FROM kv")}
            rows = conn.execute(
                'SELECT booking_id, machine_id, demand_id, start, "end", status, version,'
                " customer_org, metered_at FROM bookings"
            ).fetchall()
            return kv, [Booking(*r) for r in rows]

        self._kv, bookings = await self._db.read(run)
        self._bookings = {b.booking_id: b for b in bookings}

    async def close(self) -> None:
        await self._db.close()

    # -- sequence numbers -------------------------------------------------------------------

    async def next_seq(self, machine_id: str) -> int:
        """The machine's next availability sequence number, committed before it is used."""
        return (await self.next_seqs([machine_id]))[machine_id]

    async def next_seqs(self, machine_ids: Iterable[str]) -> dict[str, int]:
        """The next sequence number of each machine, all committed in one transaction (a
        day boundary changes every machine's windows at once)."""
        floor = int(self._clock() * 1000)
        seqs = {
            mid: max(self._kv.get(f"seq:{mid}", 0) + 1, floor) for mid in dict.fromkeys(machine_ids)
        }
        if not seqs:
            return seqs

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key)"
                " DO UPDATE SET value = max(value, excluded.value)",
                [(f"seq:{mid}", seq) for mid, seq in seqs.items()],
            )

        await self._db.write(run)
        self._kv.update({f"seq:{mid}": seq for mid, seq in seqs.items()})
        return seqs

    def get(self, key: str, default: int = 0) -> int:
        """A kv value as committed (from memory)."""
        return self._kv.get(key, default)

    async def put(self, key: str, value: int) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key)"
                " DO UPDATE SET value = excluded.value",
                (key, int(value)),
            )

        await self._db.write(run)
        self._kv[key] = int(value)

    # -- bookings -------------------------------------------------------------------------

    async def apply_feed(self, bookings: Iterable[Booking], next_since_version: int) -> int:
        """Store the feed's changes (a booking's newer version replaces the older; an older
        one is ignored) and the feed position, in one transaction. Returns how many changed."""
        items = list(bookings)

        def run(conn: sqlite3.Connection) -> list[Booking]:
            changed = []
            for b in items:
                row = conn.execute(
                    "SELECT version, metered_at FROM bookings WHERE booking_id = ?",
                    (b.booking_id,),
                ).fetchone()
                if row is not None and row[0] >= b.version:
                    continue
                metered = None if row is None else row[1]
                conn.execute(
                    "INSERT OR REPLACE INTO bookings (booking_id, machine_id, demand_id, start,"
                    ' "end", status, version, customer_org, metered_at)'
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        b.booking_id,
                        b.machine_id,
                        b.demand_id,
                        b.start,
                        b.end,
                        b.status,
                        b.version,
                        b.customer_org,
                        metered,
                    ),
                )
                changed.append(
                    Booking(**{**b.__dict__, "metered_at": metered})  # keep the metering mark
                )
            conn.execute(
                "INSERT INTO kv (key, value) VALUES ('booking_feed', ?) ON CONFLICT (key)"
                " DO UPDATE SET value = max(value, excluded.value)",
                (int(next_since_version),),
            )
            return changed

        changed = await self._db.write(run)
        self._kv["booking_feed"] = max(self._kv.get("booking_feed", 0), int(next_since_version))
        for b in changed:
            self._bookings[b.booking_id] = b
        return len(changed)

    def bookings(self, machine_id: str | None = None) -> list[Booking]:
        """Every known booking (of one machine), by start."""
        found = [
            b for b in self._bookings.values() if machine_id is None or b.machine_id == machine_id
        ]
        return sorted(found, key=lambda b: (b.start, b.booking_id))

    def blocked(self, machine_id: str, now: float) -> list[tuple[float, float]]:
        """Confirmed bookings of the machine not yet over: windows it cannot be offered in."""
        return [
            (b.start, b.end)
            for b in self.bookings(machine_id)
            if b.status == "confirmed" and b.end > now
        ]

    def due_for_metering(self, now: float) -> list[Booking]:
        """Confirmed bookings that ended and were not metered yet."""
        return [
            b
            for b in self.bookings()
            if b.status == "confirmed" and b.end <= now and b.metered_at is None
        ]

    async def mark_metered(self, booking_id: str) -> None:
        at = self._clock()

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE bookings SET metered_at = ? WHERE booking_id = ?", (at, booking_id)
            )

        await self._db.write(run)
        b = self._bookings.get(booking_id)
        if b is not None:
            self._bookings[booking_id] = Booking(**{**b.__dict__, "metered_at": at})
