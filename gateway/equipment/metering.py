"""Usage metering per booking, and the hash-chained log it is billed from.

**Metering** (pure). A machine's meters (`machine.meters`, or its type's defaults below) name
counter points; `meter_usage(meters, samples, start, end)` turns the readings of a booking's
period into quantities. The counter's value at `start` is the last sample at or before it (or,
with none, the first one inside); every later sample up to `end` adds its rise. Counters only
go up, so a fall is one of:

* a **reset** (the value fell to at most `reset_fraction` of the previous, default half: a
  job counter restarting at 0, a replaced telematics unit): the new value is what was counted
  since the reset, so it is added;
* a **wrap** (`rollover` set and the fall is a reset): `rollover - previous + value`;
* a **glitch** (a smaller fall): ignored, and the counter keeps its previous high so the
  recovery is not counted twice.

BAD, missing and non-numeric samples are skipped.

Default meters by type (`DEFAULT_METERS`): tractor and combine_harvester: engine_hours <-
`engine_hours`, hectares <- `area_done`; sugarcane_harvester: those and tonnes <-
`cane_harvested`; drone_sprayer: hectares <- `area_done`; pump: engine_hours <- `run_hours`,
energy_kwh <- `energy_total`; sugarcane_press: tonnes <- `cane_crushed_total`; others none.

**The log** follows the pool contract's `UsageRecord` (`sync/pool_api.yaml`): a record is
`{record_id, booking_id, machine_id, engine_hours, hectares, tonnes, energy_kwh, period:
{start, end}, prev_hash, hash}`, quantities the machine does not meter null.
`record_id` = SHA-256 of the canonical JSON of the fields other than `record_id`, `prev_hash`
and `hash` (`json.dumps(fields, sort_keys=True, separators=(",", ":"))`: keys sorted,
non-ASCII escaped); `hash` = SHA-256 of the ASCII text `prev_hash + record_id`; the first
record's `prev_hash` is 64 zeros. The pool recomputes both and de-duplicates on `record_id`.
`verify_chain(records)` names the first record that does not fit: edited (its `record_id`
or `hash` does not match its content), removed or reordered (its `prev_hash` is not the
previous record's `hash`). A record cut off the end leaves a valid shorter chain; only a
known head (`head=`, e.g. the last hash the pool acknowledged) reveals it. An edit with both
hashes recomputed shows at the next record.

`MeteringLog` keeps the chain in its own SQLite file: append-only (triggers refuse UPDATE
and DELETE), one record per booking and period (appending it again returns the first), and
per-consumer cursors over its sequence numbers so the pool sync delivers each record once
(`pending`, post, then `ack`).
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.equipment._db import SqliteFile
from gateway.equipment._time import as_utc, iso
from gateway.equipment.errors import EquipmentError
from gateway.equipment.model import Machine, MachineType, MeterSpec, Quantity
from gateway.readings import Value

GENESIS = "0" * 64
QUANTITY_DECIMALS = 6

Q = Quantity
_FARM = (
    MeterSpec(quantity=Q.ENGINE_HOURS, point="engine_hours"),
    MeterSpec(quantity=Q.HECTARES, point="area_done"),
)
DEFAULT_METERS: dict[MachineType, tuple[MeterSpec, ...]] = {
    MachineType.TRACTOR: _FARM,
    MachineType.COMBINE_HARVESTER: _FARM,
    MachineType.SUGARCANE_HARVESTER: (
        *_FARM,
        MeterSpec(quantity=Q.TONNES, point="cane_harvested"),
    ),
    MachineType.DRONE_SPRAYER: (MeterSpec(quantity=Q.HECTARES, point="area_done"),),
    MachineType.PUMP: (
        MeterSpec(quantity=Q.ENGINE_HOURS, point="run_hours"),
        MeterSpec(quantity=Q.ENERGY_KWH, point="energy_total"),
    ),
    MachineType.SUGARCANE_PRESS: (MeterSpec(quantity=Q.TONNES, point="cane_crushed_total"),),
}


def meters_of(machine: Machine) -> tuple[MeterSpec, ...]:
    """The machine's meters, or its type's defaults (point names without the point_prefix)."""
    if machine.meters is not None:
        return tuple(machine.meters)
    return DEFAULT_METERS.get(machine.type, ())


class CounterTracker:
    """Accumulates one counter's rise across resets, wraps and glitches (module docstring)."""

    def __init__(self, spec: MeterSpec) -> None:
        self.spec = spec
        self.last: float | None = None
        self.total = 0.0
        self.resets = 0
        self.glitches = 0

    def feed(self, value: float) -> float:
        """Take the next sample; returns what it added (in counter units, before scale)."""
        if self.last is None:
            self.last = value
            return 0.0
        prev = self.last
        if value >= prev:
            delta = value - prev
        elif value <= prev * self.spec.reset_fraction:
            self.resets += 1
            rollover = self.spec.rollover
            delta = rollover - prev + value if rollover is not None else value
        else:
            self.glitches += 1
            return 0.0
        self.last = value
        self.total += delta
        return delta


@dataclass(frozen=True)
class Usage:
    quantities: dict[str, float]
    resets: int = 0
    glitches: int = 0
    #: Quantities whose counter had fewer than two usable samples (reported as 0).
    no_data: tuple[str, ...] = ()


def _num(v: Value) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) and f >= 0 else None


def meter_usage(
    meters: Sequence[MeterSpec],
    samples: Iterable[tuple[str, Value, float]],
    start: datetime | float,
    end: datetime | float,
) -> Usage:
    """Quantities used between `start` and `end` from `(point name, value, ts)` samples
    (any order; ts epoch seconds). Names are the machine's point names (no prefix)."""
    t0, t1 = as_utc(start, "start").timestamp(), as_utc(end, "end").timestamp()
    if t1 <= t0:
        raise ValueError("a metering period must end after it starts")
    by_point: dict[str, list[tuple[float, float]]] = {m.point: [] for m in meters}
    for name, value, ts in samples:
        series = by_point.get(name)
        v = _num(value)
        if series is not None and v is not None and ts <= t1:
            series.append((ts, v))
    quantities: dict[str, float] = {}
    resets = glitches = 0
    no_data: list[str] = []
    for spec in meters:
        series = sorted(by_point[spec.point], key=lambda s: s[0])
        before = [v for ts, v in series if ts <= t0]
        inside = [v for ts, v in series if ts > t0]
        tracker = CounterTracker(spec)
        if before:
            tracker.feed(before[-1])
        for v in inside:
            tracker.feed(v)
        if len(before[-1:]) + len(inside) < 2:
            no_data.append(spec.quantity.value)
        quantities[spec.quantity.value] = round(tracker.total * spec.scale, QUANTITY_DECIMALS)
        resets += tracker.resets
        glitches += tracker.glitches
    return Usage(quantities, resets, glitches, tuple(no_data))


# -- the hash chain ---------------------------------------------------------------------------

#: The quantity fields of a record, each a number or null.
QUANTITY_FIELDS = tuple(q.value for q in Quantity)
_CONTENT = ("booking_id", "machine_id", *QUANTITY_FIELDS, "period")


def canonical(obj: Any) -> bytes:
    """The contract's canonical JSON (ASCII, keys sorted, no spaces; NaN refused)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def record_id_of(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of the record's content fields."""
    return hashlib.sha256(canonical({k: record.get(k) for k in _CONTENT})).hexdigest()


def chain_hash(prev_hash: str, record_id: str) -> str:
    return hashlib.sha256((prev_hash + record_id).encode("ascii")).hexdigest()


def make_record(
    *,
    booking_id: str,
    machine_id: str,
    period: tuple[datetime | float, datetime | float],
    quantities: Mapping[str, float | None],
    prev_hash: str,
) -> dict[str, Any]:
    """A chained record (module docstring); quantities rounded to 6 decimals, absent ones null."""
    unknown = sorted(set(map(str, quantities)) - set(QUANTITY_FIELDS))
    if unknown:
        raise ValueError(f"unknown quantity {', '.join(unknown)} (known: {QUANTITY_FIELDS})")
    record: dict[str, Any] = {"booking_id": booking_id, "machine_id": machine_id}
    for name in QUANTITY_FIELDS:
        v = quantities.get(name)
        if v is not None:
            f = float(v)
            if not math.isfinite(f) or f < 0:
                raise ValueError(f"quantity {name} must be a finite number >= 0 (got {v})")
            v = round(f, QUANTITY_DECIMALS)
        record[name] = v
    start, end = as_utc(period[0], "period start"), as_utc(period[1], "period end")
    if end <= start:
        raise ValueError(f"a period must end after it starts (got {iso(start)} to {iso(end)})")
    record["period"] = {"start": iso(start), "end": iso(end)}
    rid = record_id_of(record)
    return {"record_id": rid, **record, "prev_hash": prev_hash, "hash": chain_hash(prev_hash, rid)}


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    #: Index (in the list given) of the first record that does not fit; None when ok.
    bad_index: int | None = None
    reason: str = ""


def verify_chain(
    records: Sequence[Mapping[str, Any]],
    *,
    prev_hash: str = GENESIS,
    head: str | None = None,
) -> ChainCheck:
    """Check a chain from its start (or, for a later slice, from `prev_hash`); `head`, when
    known, must be the last record's hash."""
    expected_prev = prev_hash
    for i, rec in enumerate(records):
        try:
            rid = record_id_of(rec)
        except (TypeError, ValueError) as exc:
            return ChainCheck(False, i, f"record {i} cannot be hashed: {exc}")
        if rec.get("record_id") != rid:
            return ChainCheck(False, i, f"record {i} was edited: its record_id does not match it")
        if rec.get("prev_hash") != expected_prev:
            return ChainCheck(
                False,
                i,
                f"record {i} does not follow record {i - 1}: one was removed or reordered"
                if i
                else "record 0 is not the start of the chain: records before it were removed",
            )
        if rec.get("hash") != chain_hash(expected_prev, rid):
            return ChainCheck(False, i, f"record {i} was edited: its hash does not match it")
        expected_prev = rec["hash"]
    if head is not None and expected_prev != head:
        return ChainCheck(
            False, len(records), "the chain ends before the known head: records were cut off"
        )
    return ChainCheck(True)


# -- the log ----------------------------------------------------------------------------------

LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq          INTEGER PRIMARY KEY,
    record_id    TEXT NOT NULL UNIQUE,
    booking_id   TEXT NOT NULL,
    machine_id   TEXT NOT NULL,
    period_start TEXT NOT NULL,
    period_end   TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   REAL NOT NULL,
    UNIQUE (booking_id, period_start, period_end)
);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'the metering log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'the metering log is append-only'); END;
CREATE TABLE IF NOT EXISTS cursors (
    consumer TEXT PRIMARY KEY,
    upto     INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Logged:
    """A record and its position in the log (0, 1, 2, ...), which cursors count in."""

    seq: int
    record: dict[str, Any]


class MeteringLog:
    """The hash-chained metering log in its own SQLite file (module docstring)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self._db = SqliteFile(path, LOG_SCHEMA, what="metering log")
        self._clock = clock

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> MeteringLog:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def append(
        self,
        *,
        booking_id: str,
        machine_id: str,
        period: tuple[datetime | float, datetime | float],
        quantities: Mapping[str, float],
    ) -> tuple[dict[str, Any], bool]:
        """Chain a record; (record, True). The same booking and period again returns the
        record already logged and False (its quantities are not replaced)."""
        if not booking_id or not machine_id:
            raise EquipmentError("a metering record needs a booking id and a machine id")
        start, end = iso(as_utc(period[0], "start")), iso(as_utc(period[1], "end"))

        def run(conn: sqlite3.Connection) -> tuple[dict[str, Any], bool]:
            row = conn.execute(
                "SELECT body FROM records WHERE booking_id = ? AND period_start = ?"
                " AND period_end = ?",
                (booking_id, start, end),
            ).fetchone()
            if row is not None:
                return json.loads(row[0]), False
            last = conn.execute(
                "SELECT seq, body FROM records ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq = 0 if last is None else last[0] + 1
            prev = GENESIS if last is None else json.loads(last[1])["hash"]
            rec = make_record(
                booking_id=booking_id,
                machine_id=machine_id,
                period=period,
                quantities=quantities,
                prev_hash=prev,
            )
            conn.execute(
                "INSERT INTO records (seq, record_id, booking_id, machine_id, period_start,"
                " period_end, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    rec["record_id"],
                    booking_id,
                    machine_id,
                    start,
                    end,
                    canonical(rec).decode(),
                    self._clock(),
                ),
            )
            return rec, True

        return await self._db.write(run)

    async def records(self, *, after: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        """Records after log position `after`, in order."""

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT body FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
            return [json.loads(r[0]) for r in rows]

        return await self._db.read(run)

    async def pending(self, consumer: str, *, limit: int = 100) -> list[Logged]:
        """Records `consumer` has not acknowledged, oldest first, with their log seq."""

        def run(conn: sqlite3.Connection) -> list[Logged]:
            row = conn.execute(
                "SELECT upto FROM cursors WHERE consumer = ?", (consumer,)
            ).fetchone()
            upto = -1 if row is None else row[0]
            rows = conn.execute(
                "SELECT seq, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (upto, limit)
            ).fetchall()
            return [Logged(r[0], json.loads(r[1])) for r in rows]

        return await self._db.read(run)

    async def ack(self, consumer: str, upto_seq: int) -> None:
        """`consumer` has delivered every record up to `upto_seq`; cursors only move forward."""

        def run(conn: sqlite3.Connection) -> None:
            top = conn.execute("SELECT max(seq) FROM records").fetchone()[0]
            if top is None or upto_seq > top:
                raise EquipmentError(
                    f"metering log: cannot ack {upto_seq}, the last record is {top}"
                )
            conn.execute(
                "INSERT INTO cursors (consumer, upto) VALUES (?, ?) ON CONFLICT (consumer)"
                " DO UPDATE SET upto = max(upto, excluded.upto)",
                (consumer, upto_seq),
            )

        await self._db.write(run)

    async def verify(self, *, head: str | None = None) -> ChainCheck:
        """Check the whole stored chain (against `head` when one is known)."""

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            out = []
            for (body,) in conn.execute("SELECT body FROM records ORDER BY seq"):
                try:
                    out.append(json.loads(body))
                except json.JSONDecodeError:
                    out.append({})
            return out

        return verify_chain(await self._db.read(run), head=head)
