"""The reference central matching pool: FastAPI + SQLite implementing `sync/pool_api.yaml`.

Gateways register their machines (`PUT /v1/machines/{id}`), keep their availability live
(`POST /v1/availability`, `PUT /v1/gateways/{id}/snapshot`), read the bookings of their
machines (`GET /v1/gateways/{id}/bookings?since_version=N`) and deliver metered usage
(`POST /v1/usage`); cooperatives post demands (`POST /v1/demands`), read ranked matches
(`GET /v1/demands/{id}/matches`), book (`POST /v1/demands/{id}/bookings`) and cancel
(`DELETE /v1/bookings/{id}`). The contract file is the authority; this module implements it
and the tests hold both to it (every route, every response body).

Matching (`score_machine`, pure). For a demand of `quantity` `unit` within a window of D days
(H hours), each registered machine offering the demanded capability gets four components in
0..1:

* capability = min(1, capacity × T / quantity), T = D for a `<unit>/day` capacity, H for
  `<unit>/h` (so a capacity of at least quantity-per-day of window scores 1), the best of the
  machine's capabilities with that name and base unit; 0 when none has the unit;
* distance = max(0, 1 − km / max_distance_km), great-circle km from the demand's location to
  the machine's coarse (0.01°) location;
* window_overlap = the share of the demand's window covered by the machine's reported
  available windows minus its confirmed bookings;
* health = 1 − failure_risk (1 when the gateway reports no risk), 0 when rul_hours < H.

score = 0.35·capability + 0.25·distance + 0.25·window_overlap + 0.15·health (`WEIGHTS`),
rounded to 4 decimals; `recommended` at ≥ 0.8, `manual_review` at 0.6 to 0.8, `rejected`
below 0.6. Hard rules reject whatever the score (with the reason): not shared, no
availability reported, offline (reported, absent from the gateway's last snapshot, or the
gateway silent longer than `liveness_timeout`), available `none`, no capacity in the unit,
beyond `max_distance_km`, no free time in the window, health 0, health under the demand's
`min_health`. `limited` machines are scored with their health as given, their reason shown.

Storage: one SQLite database (a file, or a private in-memory one when `db_path` is None),
used only from one worker thread, one short transaction per request, so the event loop never
waits on the disk. Idempotency keys, booking versions and usage record ids live in the same
database, so a restarted pool on the same file keeps its exactly-once promises.

Run it alone::

    python -m simulators.central_pool --port 8400 --db pool.db \\
        --token "gw-token:gateway:Demo Cane Cooperative" \\
        --token "coop-token:cooperative:Demo Fruit Cooperative"

(`--token TOKEN:ROLE:ORG`, repeatable; without any, those two demo tokens.) It prints one
line saying where it listens, runs until SIGINT or SIGTERM, and exits 0. With
`--mqtt 127.0.0.1:1883 --mqtt-gateway gw-1:gw-token` it also takes the retained-MQTT
transport from that broker (`simulators/central_pool_mqtt.py`).

In-process (tests, demo)::

    async with CentralPool(port=0, tokens={"t": {"org": "Coop", "role": "gateway"}}) as pool:
        pool.url                    # http://127.0.0.1:<port>
        pool.advance_clock(600)     # the pool's clock runs 10 minutes ahead from now on
        await pool.usage_records("b-...")

uvicorn runs inside the caller's loop without its own signal handling (as the gateway's
local API does): the owner of the loop decides when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import secrets
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.httpserve import bind, embedded_server
from simulators._cli import run_cli, serve_until_signal
from simulators._service import Service

#: The contract this module implements.
CONTRACT = Path(__file__).resolve().parents[1] / "sync" / "pool_api.yaml"
API_VERSION = "1"
DEFAULT_PORT = 8400

#: Score weights (sum 1).
WEIGHTS = {"capability": 0.35, "distance": 0.25, "window_overlap": 0.25, "health": 0.15}
RECOMMEND_AT = 0.8
REVIEW_AT = 0.6
#: A gateway that has not called for this long has its machines served as offline.
LIVENESS_TIMEOUT = 900.0

DEMO_TOKENS: dict[str, dict[str, str]] = {
    "gw-token": {"org": "Demo Cane Cooperative", "role": "gateway"},
    "coop-token": {"org": "Demo Fruit Cooperative", "role": "cooperative"},
}

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"
_MAX_INT = 9007199254740991
_ZERO_HASH = "0" * 64
_EARTH_KM = 6371.0088


class Role(StrEnum):
    GATEWAY = "gateway"
    COOPERATIVE = "cooperative"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a bearer token says about its holder."""

    org: str
    role: Role
    site: str = ""


def parse_token(spec: str) -> tuple[str, TokenInfo]:
    """`TOKEN:ROLE:ORG` (the CLI's `--token`) -> (token, info). The organisation may hold ':'."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[2].strip():
        raise ValueError(f"--token wants TOKEN:ROLE:ORG, got {spec!r}")
    try:
        role = Role(parts[1])
    except ValueError:
        raise ValueError(
            f"--token {parts[0][:4]}…: role must be gateway, cooperative or operator"
        ) from None
    return parts[0], TokenInfo(org=parts[2].strip(), role=role)


def _token_table(tokens: Mapping[str, TokenInfo | Mapping[str, str]]) -> dict[str, TokenInfo]:
    table: dict[str, TokenInfo] = {}
    for token, info in tokens.items():
        if not isinstance(info, TokenInfo):
            info = TokenInfo(org=info["org"], role=Role(info["role"]), site=info.get("site", ""))
        table[token] = info
    return table


# --------------------------------------------------------------------------------------------
# Request bodies (the contract's request schemas; responses are built as plain dicts)
# --------------------------------------------------------------------------------------------

Id = Annotated[str, Field(pattern=ID_PATTERN)]
Seq = Annotated[int, Field(ge=1, le=_MAX_INT)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
CapabilityName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Latitude = Annotated[float, Field(ge=-90, le=90)]
Longitude = Annotated[float, Field(ge=-180, le=180)]
MachineType = Literal[
    "tractor",
    "combine_harvester",
    "sugarcane_harvester",
    "drone_sprayer",
    "fruit_grading_line",
    "cnc_mill",
    "pump",
    "cogeneration_turbine",
    "sugarcane_press",
    "other",
]
Status = Literal["working", "idle", "in_transit", "fault", "maintenance", "offline"]
Available = Literal["none", "limited", "full"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CapabilityIn(_Body):
    name: CapabilityName
    capacity: Annotated[float, Field(gt=0)]
    unit: Annotated[str, Field(pattern=r"^[A-Za-z0-9%]{1,16}/(h|day)$")]


class CoarseLocationIn(_Body):
    lat: Latitude
    lon: Longitude
    precision_m: Annotated[int, Field(ge=1000)]

    @field_validator("lat", "lon")
    @classmethod
    def _coarse(cls, v: float) -> float:
        if abs(v * 100 - round(v * 100)) > 1e-6:
            raise ValueError("coordinates must be coarsened to 0.01° (about 1 km)")
        return round(v, 2)


class LocationIn(_Body):
    lat: Latitude
    lon: Longitude


class WeeklyWindowIn(_Body):
    days: Annotated[list[Day], Field(min_length=1, max_length=7)]
    start: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    end: Annotated[str, Field(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(set(self.days)) != len(self.days):
            raise ValueError("days repeat")
        if self.end <= self.start:
            raise ValueError("end must be after start (split a window that crosses midnight)")
        return self


class RateIn(_Body):
    amount: Annotated[float, Field(ge=0)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    per: Literal["hour", "hectare", "tonne", "day"]


class SharingIn(_Body):
    shared: bool
    timezone: Annotated[str, Field(min_length=1, max_length=64)]
    windows: Annotated[list[WeeklyWindowIn], Field(max_length=28)]
    blackout_dates: Annotated[list[date], Field(max_length=366)]
    rate: RateIn | None
    min_booking_hours: Annotated[float, Field(ge=0)]


class RestrictedIn(_Body):
    exact_location: LocationIn | None = None
    operator_name: Annotated[str, Field(max_length=128)] | None = None
    operator_phone: Annotated[str, Field(max_length=32)] | None = None
    operator_email: Annotated[str, Field(max_length=254)] | None = None
    serial_number: Annotated[str, Field(max_length=64)] | None = None
    notes: Annotated[str, Field(max_length=1000)] | None = None


class MachineProfileIn(_Body):
    gateway_id: Id
    version: Seq
    type: MachineType
    make: Annotated[str, Field(min_length=1, max_length=64)]
    model: Annotated[str, Field(min_length=1, max_length=64)]
    owner_org: Annotated[str, Field(min_length=1, max_length=128)]
    owner_ref: Sha256Hex | None = None
    capabilities: Annotated[list[CapabilityIn], Field(max_length=32)]
    location: CoarseLocationIn
    sharing: SharingIn
    restricted: RestrictedIn | None = None


class HealthIn(_Body):
    failure_risk: Annotated[float | None, Field(ge=0, le=1)]
    rul_hours: Annotated[float | None, Field(ge=0)]
    source: Annotated[str | None, Field(max_length=128)]


class TimeWindowIn(_Body):
    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class AvailabilityIn(_Body):
    machine_id: Id
    gateway_id: Id
    seq: Seq
    idempotency_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")]
    ts: AwareDatetime
    status: Status
    health: HealthIn
    available: Available
    reason: Annotated[str | None, Field(max_length=200)] = None
    windows: Annotated[list[TimeWindowIn], Field(max_length=100)]


class AvailabilityBatchIn(_Body):
    items: Annotated[list[AvailabilityIn], Field(min_length=1, max_length=500)]


class SnapshotIn(_Body):
    seq: Seq
    ts: AwareDatetime
    items: Annotated[list[AvailabilityIn], Field(max_length=5000)]


class DemandIn(_Body):
    capability: CapabilityName
    quantity: Annotated[float, Field(gt=0)]
    unit: Annotated[str, Field(pattern=r"^[A-Za-z0-9%]{1,16}$")]
    location: LocationIn
    max_distance_km: Annotated[float, Field(gt=0, le=1000)]
    window: TimeWindowIn
    min_health: Annotated[float, Field(ge=0, le=1)] | None = None


class BookingIn(TimeWindowIn):
    machine_id: Id


class UsageRecordIn(_Body):
    record_id: Sha256Hex
    booking_id: Id
    machine_id: Id
    engine_hours: Annotated[float | None, Field(ge=0)]
    hectares: Annotated[float | None, Field(ge=0)]
    tonnes: Annotated[float | None, Field(ge=0)]
    energy_kwh: Annotated[float | None, Field(ge=0)]
    period: TimeWindowIn
    prev_hash: Sha256Hex
    hash: Sha256Hex


class UsageBatchIn(_Body):
    records: Annotated[list[UsageRecordIn], Field(min_length=1, max_length=500)]


# --------------------------------------------------------------------------------------------
# Pure helpers: time, windows, usage hashes, matching
# --------------------------------------------------------------------------------------------

Span = tuple[float, float]


def iso(ts: float) -> str:
    """Epoch seconds -> ISO 8601 UTC with `Z` (milliseconds only when there are any)."""
    dt = datetime.fromtimestamp(ts, UTC)
    spec = "seconds" if dt.microsecond == 0 else "milliseconds"
    return dt.isoformat(timespec=spec).replace("+00:00", "Z")


def merge(spans: Sequence[Span]) -> list[Span]:
    """Sorted union of half-open spans."""
    out: list[Span] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def subtract(spans: Sequence[Span], busy: Sequence[Span]) -> list[Span]:
    """`spans` minus `busy` (both any order), merged."""
    free = merge(spans)
    for bs, be in merge(busy):
        nxt: list[Span] = []
        for s, e in free:
            if be <= s or bs >= e:
                nxt.append((s, e))
                continue
            if s < bs:
                nxt.append((s, bs))
            if be < e:
                nxt.append((be, e))
        free = nxt
    return free


def covered(window: Span, spans: Sequence[Span]) -> float:
    """Seconds of `window` covered by the union of `spans`."""
    ws, we = window
    return sum(max(0.0, min(e, we) - max(s, ws)) for s, e in merge(spans))


def usage_record_id(record: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a usage record's fields other than the hashes."""
    fields = {k: v for k, v in record.items() if k not in ("record_id", "prev_hash", "hash")}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def usage_chain_hash(prev_hash: str, record_id: str) -> str:
    """The chain link: sha256 of `prev_hash + record_id` (64 zeros before the first)."""
    return hashlib.sha256((prev_hash + record_id).encode()).hexdigest()


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


def decide(score: float) -> str:
    """The decision a (rounded) score earns when no hard rule rejects the machine."""
    if score >= RECOMMEND_AT:
        return "recommended"
    if score >= REVIEW_AT:
        return "manual_review"
    return "rejected"


@dataclass(frozen=True, slots=True)
class Demand:
    capability: str
    quantity: float
    unit: str
    lat: float
    lon: float
    max_distance_km: float
    start: float
    end: float
    min_health: float | None = None

    @property
    def hours(self) -> float:
        return (self.end - self.start) / 3600.0


def score_machine(
    demand: Demand,
    profile: Mapping[str, Any],
    state: Mapping[str, Any] | None,
    *,
    offline_reason: str | None = None,
    busy: Sequence[Span] = (),
) -> dict[str, Any]:
    """One `Match` (contract schema) for a machine offering the demanded capability.

    `profile` is the registered public profile; `state` the last applied availability
    (`status`, `available`, `reason`, `health`, `windows` as epoch spans) or None;
    `offline_reason` says why the pool treats the machine as offline (absent from a
    snapshot, gateway silent); `busy` are its confirmed bookings."""
    hours = demand.hours
    capability = 0.0
    for cap in profile["capabilities"]:
        base, _, per = cap["unit"].partition("/")
        if cap["name"] != demand.capability or base != demand.unit:
            continue
        span = hours if per == "h" else hours / 24.0
        capability = max(capability, min(1.0, cap["capacity"] * span / demand.quantity))
    loc = profile["location"]
    km = haversine_km(demand.lat, demand.lon, loc["lat"], loc["lon"])
    distance = max(0.0, 1.0 - km / demand.max_distance_km)
    window = (demand.start, demand.end)
    overlap = 0.0
    health = 1.0
    if state is not None:
        free = subtract([tuple(w) for w in state["windows"]], busy)
        overlap = min(1.0, covered(window, free) / (demand.end - demand.start))
        h = state["health"]
        health = 1.0 - (h["failure_risk"] or 0.0)
        if h["rul_hours"] is not None and h["rul_hours"] < hours:
            health = 0.0
    components = {
        "capability": round(capability, 4),
        "distance": round(distance, 4),
        "window_overlap": round(overlap, 4),
        "health": round(health, 4),
    }
    score = round(
        WEIGHTS["capability"] * capability
        + WEIGHTS["distance"] * distance
        + WEIGHTS["window_overlap"] * overlap
        + WEIGHTS["health"] * health,
        4,
    )
    reason = _rejection(demand, profile, state, offline_reason, capability, km, overlap, health)
    if reason is not None:
        decision = "rejected"
    else:
        decision = decide(score)
        if state is not None and state["available"] == "limited":
            reason = f"limited: {state['reason'] or 'no reason given'}"
        elif decision == "rejected":
            reason = f"score below {REVIEW_AT}"
    return {
        "machine_id": profile["machine_id"],
        "type": profile["type"],
        "owner_org": profile["owner_org"],
        "score": score,
        "decision": decision,
        "components": components,
        "distance_km": round(km, 2),
        "reason": reason,
    }


def _rejection(
    demand: Demand,
    profile: Mapping[str, Any],
    state: Mapping[str, Any] | None,
    offline_reason: str | None,
    capability: float,
    km: float,
    overlap: float,
    health: float,
) -> str | None:
    if not profile["sharing"]["shared"]:
        return "not shared by its owner"
    if state is None:
        return "no availability reported"
    if offline_reason is not None:
        return offline_reason
    if state["status"] == "offline":
        return "offline"
    if state["available"] == "none":
        return f"not available: {state['reason'] or 'no reason given'}"
    if capability == 0.0:
        return f"no {demand.capability} capacity in {demand.unit}"
    if km > demand.max_distance_km:
        return f"{km:.1f} km away, beyond {demand.max_distance_km:g} km"
    if overlap == 0.0:
        return "no free time in the demand's window"
    if health == 0.0:
        rul = state["health"]["rul_hours"]
        if rul is not None and rul < demand.hours:
            return f"remaining useful life {rul:g} h is shorter than the {demand.hours:g} h window"
        return "predicted to fail"
    if demand.min_health is not None and health < demand.min_health:
        return f"health {health:.2f} below min_health {demand.min_health:g}"
    return None


_DECISION_ORDER = {"recommended": 0, "manual_review": 1, "rejected": 2}


def rank(matches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        matches,
        key=lambda m: (
            _DECISION_ORDER[m["decision"]],
            -m["score"],
            m["distance_km"],
            m["machine_id"],
        ),
    )


# --------------------------------------------------------------------------------------------
# Storage (one worker thread)
# --------------------------------------------------------------------------------------------


class PoolError(Exception):
    """An answer other than 2xx, rendered as problem+json."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def _forbidden(detail: str) -> PoolError:
    return PoolError(403, "Forbidden", detail)


def _not_found(detail: str) -> PoolError:
    return PoolError(404, "Not found", detail)


def _conflict(detail: str) -> PoolError:
    return PoolError(409, "Conflict", detail)


def _unprocessable(detail: str) -> PoolError:
    return PoolError(422, "Unprocessable request", detail)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateways (
    gateway_id TEXT PRIMARY KEY, org TEXT NOT NULL, last_seen REAL NOT NULL,
    snapshot_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS machines (
    machine_id TEXT PRIMARY KEY, org TEXT NOT NULL, gateway_id TEXT NOT NULL,
    version INTEGER NOT NULL, profile TEXT NOT NULL, restricted TEXT,
    retired INTEGER NOT NULL DEFAULT 0, registered_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS machines_gateway ON machines (gateway_id);
CREATE TABLE IF NOT EXISTS availability (
    machine_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, state TEXT NOT NULL,
    received_at REAL NOT NULL, absent INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS applied_keys (
    machine_id TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (machine_id, key));
CREATE TABLE IF NOT EXISTS demands (
    demand_id TEXT PRIMARY KEY, org TEXT NOT NULL, body TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bookings (
    booking_id TEXT PRIMARY KEY, machine_id TEXT NOT NULL, demand_id TEXT NOT NULL,
    start REAL NOT NULL, "end" REAL NOT NULL, status TEXT NOT NULL,
    version INTEGER NOT NULL UNIQUE, customer_org TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS bookings_machine ON bookings (machine_id, status);
CREATE TABLE IF NOT EXISTS usage (
    record_id TEXT PRIMARY KEY, booking_id TEXT NOT NULL, machine_id TEXT NOT NULL,
    record TEXT NOT NULL, received_at REAL NOT NULL);
"""


def _booking_view(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "booking_id": row["booking_id"],
        "machine_id": row["machine_id"],
        "demand_id": row["demand_id"],
        "start": iso(row["start"]),
        "end": iso(row["end"]),
        "status": row["status"],
        "version": row["version"],
        "customer_org": row["customer_org"],
    }


class _Store:
    """The pool's state in SQLite. Every method runs in the pool's single worker thread, each
    in one short transaction; `now` comes from the caller (the pool's clock)."""

    def __init__(self, path: str, liveness_timeout: float) -> None:
        self.path = path
        self.liveness_timeout = liveness_timeout
        self._db: sqlite3.Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        db.row_factory = sqlite3.Row
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        assert db is not None, "store is not open"
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- shared checks -----------------------------------------------------------------------

    @staticmethod
    def _may(who: TokenInfo, org: str) -> bool:
        return who.role is Role.OPERATOR or who.org == org

    def _claim_gateway(
        self, db: sqlite3.Connection, gateway_id: str, who: TokenInfo, now: float
    ) -> sqlite3.Row:
        """The gateway's row, touched (live); created for `who`'s organisation if new."""
        row = db.execute("SELECT * FROM gateways WHERE gateway_id = ?", (gateway_id,)).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO gateways (gateway_id, org, last_seen) VALUES (?, ?, ?)",
                (gateway_id, who.org, now),
            )
            return db.execute(
                "SELECT * FROM gateways WHERE gateway_id = ?", (gateway_id,)
            ).fetchone()
        if not self._may(who, row["org"]):
            raise _forbidden(f"gateway {gateway_id} belongs to another organisation")
        db.execute("UPDATE gateways SET last_seen = ? WHERE gateway_id = ?", (now, gateway_id))
        return row

    def _silent(self, db: sqlite3.Connection, gateway_id: str, now: float) -> str | None:
        """Why the gateway counts as silent (no call within the liveness timeout), or None."""
        gw = db.execute(
            "SELECT last_seen FROM gateways WHERE gateway_id = ?", (gateway_id,)
        ).fetchone()
        if gw is None or now - gw["last_seen"] > self.liveness_timeout:
            since = iso(gw["last_seen"]) if gw is not None else "ever"
            return f"gateway {gateway_id} silent since {since}"
        return None

    def _offline_reason(
        self, db: sqlite3.Connection, machine: sqlite3.Row, avail: sqlite3.Row | None, now: float
    ) -> str | None:
        """Why the pool treats the machine as offline whatever it reported, or None."""
        if avail is not None and avail["absent"]:
            return "absent from its gateway's last snapshot"
        return self._silent(db, machine["gateway_id"], now)

    @staticmethod
    def _busy(db: sqlite3.Connection, machine_id: str) -> list[Span]:
        rows = db.execute(
            'SELECT start, "end" FROM bookings WHERE machine_id = ? AND status = ?',
            (machine_id, "confirmed"),
        ).fetchall()
        return [(r["start"], r["end"]) for r in rows]

    # -- machines ----------------------------------------------------------------------------

    def put_machine(
        self,
        machine_id: str,
        body: MachineProfileIn,
        who: TokenInfo,
        now: float,
    ) -> tuple[int, dict[str, Any]]:
        profile = body.model_dump(mode="json", exclude={"restricted"})
        if profile["owner_ref"] is None:
            del profile["owner_ref"]
        restricted = (
            json.dumps(body.restricted.model_dump(mode="json", exclude_none=True))
            if body.restricted is not None
            else None
        )
        with self._tx() as db:
            m = db.execute("SELECT * FROM machines WHERE machine_id = ?", (machine_id,)).fetchone()
            if m is not None and not self._may(who, m["org"]):
                raise _forbidden(f"machine {machine_id} belongs to another organisation")
            self._claim_gateway(db, body.gateway_id, who, now)
            if m is None:
                db.execute(
                    "INSERT INTO machines (machine_id, org, gateway_id, version, profile,"
                    " restricted, registered_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        machine_id,
                        who.org,
                        body.gateway_id,
                        body.version,
                        json.dumps(profile),
                        restricted,
                        now,
                        now,
                    ),
                )
                return 201, {"machine_id": machine_id, "version": body.version, "result": "created"}
            if body.version > m["version"]:
                db.execute(
                    "UPDATE machines SET gateway_id = ?, version = ?, profile = ?, restricted = ?,"
                    " retired = 0, updated_at = ? WHERE machine_id = ?",
                    (
                        body.gateway_id,
                        body.version,
                        json.dumps(profile),
                        restricted,
                        now,
                        machine_id,
                    ),
                )
                return 200, {"machine_id": machine_id, "version": body.version, "result": "updated"}
            result = "unchanged" if body.version == m["version"] else "stale"
            return 200, {"machine_id": machine_id, "version": m["version"], "result": result}

    def retire_machine(self, machine_id: str, who: TokenInfo, now: float) -> dict[str, Any]:
        with self._tx() as db:
            m = db.execute("SELECT * FROM machines WHERE machine_id = ?", (machine_id,)).fetchone()
            if m is None:
                raise _not_found(f"no machine {machine_id}")
            if not self._may(who, m["org"]):
                raise _forbidden(f"machine {machine_id} belongs to another organisation")
            if m["retired"]:
                return {"machine_id": machine_id, "result": "already_retired"}
            db.execute(
                "UPDATE machines SET retired = 1, updated_at = ? WHERE machine_id = ?",
                (now, machine_id),
            )
            return {"machine_id": machine_id, "result": "retired"}

    def get_machine(self, machine_id: str, who: TokenInfo, now: float) -> dict[str, Any]:
        with self._tx() as db:
            m = db.execute("SELECT * FROM machines WHERE machine_id = ?", (machine_id,)).fetchone()
            if m is None:
                raise _not_found(f"no machine {machine_id}")
            a = db.execute(
                "SELECT * FROM availability WHERE machine_id = ?", (machine_id,)
            ).fetchone()
            view: dict[str, Any] = {"machine_id": machine_id, **json.loads(m["profile"])}
            if m["restricted"] is not None and who.org == view["owner_org"]:
                view["restricted"] = json.loads(m["restricted"])
            view["retired"] = bool(m["retired"])
            view["registered_at"] = iso(m["registered_at"])
            view["updated_at"] = iso(m["updated_at"])
            view["availability"] = None
            if a is not None:
                state = json.loads(a["state"])
                offline = self._offline_reason(db, m, a, now)
                silent = self._silent(db, m["gateway_id"], now)
                view["availability"] = {
                    "seq": a["seq"],
                    "ts": iso(state["ts"]),
                    "received_at": iso(a["received_at"]),
                    "status": "offline" if offline else state["status"],
                    "available": "none" if offline else state["available"],
                    "reason": offline or state["reason"],
                    "health": state["health"],
                    "windows": [{"start": iso(s), "end": iso(e)} for s, e in state["windows"]],
                    "live": silent is None,
                }
            return view

    # -- availability ------------------------------------------------------------------------

    def _apply(
        self, db: sqlite3.Connection, item: AvailabilityIn, who: TokenInfo, now: float
    ) -> dict[str, Any]:
        def result(r: str) -> dict[str, Any]:
            return {"machine_id": item.machine_id, "seq": item.seq, "result": r}

        m = db.execute(
            "SELECT org, gateway_id, retired FROM machines WHERE machine_id = ?",
            (item.machine_id,),
        ).fetchone()
        if (
            m is None
            or m["retired"]
            or m["gateway_id"] != item.gateway_id
            or not self._may(who, m["org"])
        ):
            return result("unknown_machine")
        db.execute("UPDATE gateways SET last_seen = ? WHERE gateway_id = ?", (now, item.gateway_id))
        if db.execute(
            "SELECT 1 FROM applied_keys WHERE machine_id = ? AND key = ?",
            (item.machine_id, item.idempotency_key),
        ).fetchone():
            return result("duplicate")
        a = db.execute(
            "SELECT seq FROM availability WHERE machine_id = ?", (item.machine_id,)
        ).fetchone()
        if a is not None and item.seq <= a["seq"]:
            return result("stale")
        state = {
            "ts": item.ts.timestamp(),
            "status": item.status,
            "available": item.available,
            "reason": item.reason,
            "health": item.health.model_dump(),
            "windows": merge([(w.start.timestamp(), w.end.timestamp()) for w in item.windows]),
        }
        db.execute(
            "INSERT INTO availability (machine_id, seq, state, received_at, absent)"
            " VALUES (?, ?, ?, ?, 0) ON CONFLICT (machine_id) DO UPDATE SET seq = excluded.seq,"
            " state = excluded.state, received_at = excluded.received_at, absent = 0",
            (item.machine_id, item.seq, json.dumps(state), now),
        )
        db.execute(
            "INSERT INTO applied_keys (machine_id, key, seq) VALUES (?, ?, ?)",
            (item.machine_id, item.idempotency_key, item.seq),
        )
        return result("applied")

    def post_availability(
        self, items: list[AvailabilityIn], who: TokenInfo, now: float
    ) -> dict[str, Any]:
        with self._tx() as db:
            return {"results": [self._apply(db, item, who, now) for item in items]}

    def put_snapshot(
        self, gateway_id: str, body: SnapshotIn, who: TokenInfo, now: float
    ) -> dict[str, Any]:
        for i, item in enumerate(body.items):
            if item.gateway_id != gateway_id:
                raise _unprocessable(
                    f"items.{i}.gateway_id is {item.gateway_id}, not the path's {gateway_id}"
                )
        with self._tx() as db:
            gw = self._claim_gateway(db, gateway_id, who, now)
            results = [self._apply(db, item, who, now) for item in body.items]
            marked: list[str] = []
            newer = body.seq > gw["snapshot_seq"]
            if newer:
                present = {item.machine_id for item in body.items}
                rows = db.execute(
                    "SELECT m.machine_id FROM machines m JOIN availability a USING (machine_id)"
                    " WHERE m.gateway_id = ? AND m.retired = 0 AND a.absent = 0"
                    " ORDER BY m.machine_id",
                    (gateway_id,),
                ).fetchall()
                marked = [r["machine_id"] for r in rows if r["machine_id"] not in present]
                db.executemany(
                    "UPDATE availability SET absent = 1 WHERE machine_id = ?",
                    [(mid,) for mid in marked],
                )
                db.execute(
                    "UPDATE gateways SET snapshot_seq = ? WHERE gateway_id = ?",
                    (body.seq, gateway_id),
                )
            return {
                "gateway_id": gateway_id,
                "seq": body.seq,
                "result": "applied" if newer else "stale",
                "results": results,
                "marked_offline": marked,
            }

    # -- bookings ----------------------------------------------------------------------------

    def booking_feed(
        self, gateway_id: str, since: int, limit: int, who: TokenInfo, now: float
    ) -> dict[str, Any]:
        with self._tx() as db:
            self._claim_gateway(db, gateway_id, who, now)
            rows = db.execute(
                "SELECT b.* FROM bookings b JOIN machines m USING (machine_id)"
                " WHERE m.gateway_id = ? AND b.version > ? ORDER BY b.version LIMIT ?",
                (gateway_id, since, limit + 1),
            ).fetchall()
        more = len(rows) > limit
        bookings = [_booking_view(r) for r in rows[:limit]]
        return {
            "gateway_id": gateway_id,
            "bookings": bookings,
            "next_since_version": bookings[-1]["version"] if bookings else since,
            "has_more": more,
        }

    def _demand(self, db: sqlite3.Connection, demand_id: str, who: TokenInfo) -> Demand:
        row = db.execute("SELECT * FROM demands WHERE demand_id = ?", (demand_id,)).fetchone()
        if row is None or not self._may(who, row["org"]):
            raise _not_found(f"no demand {demand_id}")
        return Demand(**json.loads(row["body"]))

    def post_booking(
        self, demand_id: str, body: BookingIn, who: TokenInfo, now: float
    ) -> dict[str, Any]:
        start, end = body.start.timestamp(), body.end.timestamp()
        with self._tx() as db:
            demand = self._demand(db, demand_id, who)
            if start < demand.start or end > demand.end:
                raise _unprocessable("the booking must lie within the demand's window")
            m = db.execute(
                "SELECT * FROM machines WHERE machine_id = ?", (body.machine_id,)
            ).fetchone()
            if m is None:
                raise _not_found(f"no machine {body.machine_id}")
            a = db.execute(
                "SELECT * FROM availability WHERE machine_id = ?", (body.machine_id,)
            ).fetchone()
            self._check_bookable(db, m, a, start, end, now)
            version = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM bookings").fetchone()[0]
            booking_id = "b-" + secrets.token_hex(6)
            db.execute(
                'INSERT INTO bookings (booking_id, machine_id, demand_id, start, "end", status,'
                " version, customer_org, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    booking_id,
                    body.machine_id,
                    demand_id,
                    start,
                    end,
                    "confirmed",
                    version,
                    who.org,
                    now,
                ),
            )
            row = db.execute(
                "SELECT * FROM bookings WHERE booking_id = ?", (booking_id,)
            ).fetchone()
            return _booking_view(row)

    def _check_bookable(
        self,
        db: sqlite3.Connection,
        m: sqlite3.Row,
        a: sqlite3.Row | None,
        start: float,
        end: float,
        now: float,
    ) -> None:
        mid = m["machine_id"]
        profile = json.loads(m["profile"])
        if m["retired"]:
            raise _conflict(f"{mid} is retired")
        if not profile["sharing"]["shared"]:
            raise _conflict(f"{mid} is not shared by its owner")
        if a is None:
            raise _conflict(f"{mid} has reported no availability")
        offline = self._offline_reason(db, m, a, now)
        if offline is not None:
            raise _conflict(f"{mid} is offline: {offline}")
        state = json.loads(a["state"])
        if state["status"] == "offline" or state["available"] == "none":
            raise _conflict(f"{mid} is not available: {state['reason'] or state['status']}")
        if (end - start) / 3600.0 < profile["sharing"]["min_booking_hours"]:
            raise _conflict(
                f"{mid} takes bookings of at least {profile['sharing']['min_booking_hours']:g} h"
            )
        for bs, be in self._busy(db, mid):
            if bs < end and start < be:
                raise _conflict(f"{mid} is booked from {iso(bs)} to {iso(be)}")
        if covered((start, end), [tuple(w) for w in state["windows"]]) < end - start:
            raise _conflict(f"{mid} is not available for the whole of {iso(start)}–{iso(end)}")

    def cancel_booking(self, booking_id: str, who: TokenInfo, now: float) -> dict[str, Any]:
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM bookings WHERE booking_id = ?", (booking_id,)
            ).fetchone()
            if row is None:
                raise _not_found(f"no booking {booking_id}")
            if not self._may(who, row["customer_org"]):
                raise _forbidden(f"booking {booking_id} belongs to another organisation")
            if row["status"] == "confirmed":
                version = db.execute("SELECT MAX(version) + 1 FROM bookings").fetchone()[0]
                db.execute(
                    "UPDATE bookings SET status = 'cancelled', version = ? WHERE booking_id = ?",
                    (version, booking_id),
                )
                row = db.execute(
                    "SELECT * FROM bookings WHERE booking_id = ?", (booking_id,)
                ).fetchone()
            return _booking_view(row)

    # -- demands -----------------------------------------------------------------------------

    def post_demand(self, body: DemandIn, who: TokenInfo, now: float) -> dict[str, Any]:
        demand = Demand(
            capability=body.capability,
            quantity=body.quantity,
            unit=body.unit,
            lat=body.location.lat,
            lon=body.location.lon,
            max_distance_km=body.max_distance_km,
            start=body.window.start.timestamp(),
            end=body.window.end.timestamp(),
            min_health=body.min_health,
        )
        demand_id = "d-" + secrets.token_hex(6)
        with self._tx() as db:
            db.execute(
                "INSERT INTO demands (demand_id, org, body, created_at) VALUES (?, ?, ?, ?)",
                (demand_id, who.org, json.dumps(dataclasses.asdict(demand)), now),
            )
        return {"demand_id": demand_id}

    def matches(self, demand_id: str, who: TokenInfo, now: float) -> dict[str, Any]:
        with self._tx() as db:
            demand = self._demand(db, demand_id, who)
            out = []
            for m in db.execute("SELECT * FROM machines WHERE retired = 0").fetchall():
                profile = {"machine_id": m["machine_id"], **json.loads(m["profile"])}
                if not any(c["name"] == demand.capability for c in profile["capabilities"]):
                    continue
                a = db.execute(
                    "SELECT * FROM availability WHERE machine_id = ?", (m["machine_id"],)
                ).fetchone()
                out.append(
                    score_machine(
                        demand,
                        profile,
                        json.loads(a["state"]) if a is not None else None,
                        offline_reason=self._offline_reason(db, m, a, now),
                        busy=self._busy(db, m["machine_id"]),
                    )
                )
        return {"demand_id": demand_id, "computed_at": iso(now), "matches": rank(out)}

    # -- usage -------------------------------------------------------------------------------

    def post_usage(
        self, records: list[UsageRecordIn], raw: list[dict[str, Any]], who: TokenInfo, now: float
    ) -> dict[str, Any]:
        results = []
        with self._tx() as db:
            for rec, raw_rec in zip(records, raw, strict=True):

                def result(r: str, detail: str | None = None, rid: str = rec.record_id) -> None:
                    results.append({"record_id": rid, "result": r, "detail": detail})

                expected = usage_record_id(raw_rec)
                if expected != rec.record_id:
                    result("invalid", f"record_id does not match the record (expected {expected})")
                    continue
                if usage_chain_hash(rec.prev_hash, rec.record_id) != rec.hash:
                    result("invalid", "hash is not sha256(prev_hash + record_id)")
                    continue
                if db.execute(
                    "SELECT 1 FROM usage WHERE record_id = ?", (rec.record_id,)
                ).fetchone():
                    result("duplicate")
                    continue
                b = db.execute(
                    "SELECT m.org FROM bookings b JOIN machines m USING (machine_id)"
                    " WHERE b.booking_id = ? AND b.machine_id = ?",
                    (rec.booking_id, rec.machine_id),
                ).fetchone()
                if b is None or not self._may(who, b["org"]):
                    result("unknown_booking", f"no booking {rec.booking_id} of {rec.machine_id}")
                    continue
                db.execute(
                    "INSERT INTO usage (record_id, booking_id, machine_id, record, received_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (rec.record_id, rec.booking_id, rec.machine_id, json.dumps(raw_rec), now),
                )
                result("applied")
        return {"results": results}

    def booking_targets(self, booking_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(gateway id, booking) of one booking or of all, in version order: what the MQTT
        bridge publishes. Read-only: unlike the feed it touches no gateway's liveness."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT m.gateway_id, b.* FROM bookings b JOIN machines m USING (machine_id)"
                " WHERE ? IS NULL OR b.booking_id = ? ORDER BY b.version",
                (booking_id, booking_id),
            ).fetchall()
        return [(r["gateway_id"], _booking_view(r)) for r in rows]

    def usage_records(self, booking_id: str) -> list[dict[str, Any]]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT record FROM usage WHERE booking_id = ? ORDER BY received_at, rowid",
                (booking_id,),
            ).fetchall()
        return [json.loads(r["record"]) for r in rows]


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def _problem(
    status: int, title: str, detail: str, *, errors: list[dict[str, str]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"title": title, "status": status, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


_IdPath = Annotated[str, PathParam(pattern=ID_PATTERN)]


def _need(*roles: Role) -> Any:
    """A dependency: the caller's token, of one of `roles` (any role when none) or an
    operator's. Dependencies run before the body is validated, so 401/403 come first."""

    def check(request: Request) -> TokenInfo:
        pool: CentralPool = request.app.state.pool
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        info = pool.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            raise PoolError(401, "Unauthorized", "a known bearer token is required")
        if roles and info.role not in roles and info.role is not Role.OPERATOR:
            allowed = " or ".join(r.value for r in roles)
            raise _forbidden(f"a {info.role.value} token may not do this (needs {allowed})")
        return info

    return Depends(check)


Anyone = Annotated[TokenInfo, _need()]
Gateway = Annotated[TokenInfo, _need(Role.GATEWAY)]
Cooperative = Annotated[TokenInfo, _need(Role.COOPERATIVE)]


def create_app(pool: CentralPool) -> FastAPI:
    """The pool's FastAPI app: exactly the contract's operations."""
    app = FastAPI(
        title="Millrace central matching pool",
        version=API_VERSION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.pool = pool

    @app.exception_handler(PoolError)
    async def _pool_error(_r: Request, exc: PoolError) -> JSONResponse:
        return _problem(exc.status, exc.title, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"location": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in exc.errors()
        ]
        n = len(errors)
        detail = f"{n} problem{'s' if n != 1 else ''} in the request"
        return _problem(422, "Unprocessable request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem(exc.status_code, str(exc.detail), f"{exc.detail}")

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "api_version": API_VERSION, "time": iso(pool.now())})

    @app.put("/v1/machines/{machine_id}")
    async def put_machine(
        who: Gateway, machine_id: _IdPath, body: MachineProfileIn
    ) -> JSONResponse:
        if body.restricted is not None and who.org != body.owner_org:
            raise _forbidden("restricted fields are accepted only from the owner organisation")
        status, out = await pool.call(pool.store.put_machine, machine_id, body, who, pool.now())
        return JSONResponse(out, status_code=status)

    @app.get("/v1/machines/{machine_id}")
    async def get_machine(who: Anyone, machine_id: _IdPath) -> JSONResponse:
        return JSONResponse(await pool.call(pool.store.get_machine, machine_id, who, pool.now()))

    @app.delete("/v1/machines/{machine_id}")
    async def retire_machine(who: Gateway, machine_id: _IdPath) -> JSONResponse:
        return JSONResponse(await pool.call(pool.store.retire_machine, machine_id, who, pool.now()))

    @app.post("/v1/availability")
    async def post_availability(who: Gateway, body: AvailabilityBatchIn) -> JSONResponse:
        out = await pool.call(pool.store.post_availability, body.items, who, pool.now())
        return JSONResponse(out)

    @app.put("/v1/gateways/{gateway_id}/snapshot")
    async def put_snapshot(who: Gateway, gateway_id: _IdPath, body: SnapshotIn) -> JSONResponse:
        out = await pool.call(pool.store.put_snapshot, gateway_id, body, who, pool.now())
        return JSONResponse(out)

    @app.get("/v1/gateways/{gateway_id}/bookings")
    async def gateway_bookings(
        who: Gateway,
        gateway_id: _IdPath,
        since_version: Annotated[int, QueryParam(ge=0)] = 0,
        limit: Annotated[int, QueryParam(ge=1, le=1000)] = 500,
    ) -> JSONResponse:
        out = await pool.call(
            pool.store.booking_feed, gateway_id, since_version, limit, who, pool.now()
        )
        return JSONResponse(out)

    @app.post("/v1/demands")
    async def post_demand(who: Cooperative, body: DemandIn) -> JSONResponse:
        out = await pool.call(pool.store.post_demand, body, who, pool.now())
        return JSONResponse(out, status_code=201)

    @app.get("/v1/demands/{demand_id}/matches")
    async def get_matches(who: Cooperative, demand_id: _IdPath) -> JSONResponse:
        return JSONResponse(await pool.call(pool.store.matches, demand_id, who, pool.now()))

    @app.post("/v1/demands/{demand_id}/bookings")
    async def post_booking(who: Cooperative, demand_id: _IdPath, body: BookingIn) -> JSONResponse:
        out = await pool.call(pool.store.post_booking, demand_id, body, who, pool.now())
        await pool.booking_changed(out["booking_id"])
        return JSONResponse(out, status_code=201)

    @app.delete("/v1/bookings/{booking_id}")
    async def cancel_booking(who: Cooperative, booking_id: _IdPath) -> JSONResponse:
        out = await pool.call(pool.store.cancel_booking, booking_id, who, pool.now())
        await pool.booking_changed(booking_id)
        return JSONResponse(out)

    @app.post("/v1/usage")
    async def post_usage(request: Request, who: Gateway, body: UsageBatchIn) -> JSONResponse:
        # record_id hashes the record as sent (numbers as written): hash the parsed JSON, not
        # the validated model (which would turn 12 into 12.0).
        raw = (await request.json())["records"]
        out = await pool.call(pool.store.post_usage, body.records, raw, who, pool.now())
        return JSONResponse(out)

    return app


# --------------------------------------------------------------------------------------------
# The in-process server
# --------------------------------------------------------------------------------------------


class CentralPool(Service):
    """The reference pool on `host:port` (0 = any free port) as an async context manager.

    `tokens`: {token: TokenInfo or {"org", "role", "site"?}}. `db_path`: an SQLite file (kept
    across restarts) or None for a private in-memory database. `clock`: epoch seconds
    (default `time.time`); `advance_clock(s)` moves the pool's time forward on top of it.
    `mqtt`: (host, port) of a broker to take the retained-MQTT transport from as well
    (`simulators/central_pool_mqtt.py`), with `mqtt_gateway_tokens` {gateway_id: token}
    saying whose token applies to each gateway's topics."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        db_path: str | Path | None = None,
        tokens: Mapping[str, TokenInfo | Mapping[str, str]] | None = None,
        clock: Callable[[], float] = time.time,
        liveness_timeout: float = LIVENESS_TIMEOUT,
        mqtt: tuple[str, int] | None = None,
        mqtt_gateway_tokens: Mapping[str, str] | None = None,
        mqtt_prefix: str = "millrace-pool/v1",
    ) -> None:
        self.host, self._port = host, port
        self.mqtt, self.mqtt_prefix = mqtt, mqtt_prefix
        self.mqtt_gateway_tokens = dict(mqtt_gateway_tokens or {})
        self.mqtt_bridge: Any = None  # a central_pool_mqtt.PoolMqttBridge while running
        self.db_path = str(db_path) if db_path is not None else ":memory:"
        self.tokens = _token_table(DEMO_TOKENS if tokens is None else tokens)
        self._clock = clock
        self._offset = 0.0
        self.liveness_timeout = liveness_timeout
        self.store = _Store(self.db_path, liveness_timeout)
        self.app = create_app(self)
        self._executor: ThreadPoolExecutor | None = None
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    # -- time --------------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock() + self._offset

    def advance_clock(self, seconds: float) -> float:
        """Move the pool's clock forward (liveness, timestamps); returns the new time."""
        self._offset += seconds
        return self.now()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    def describe(self) -> str:
        text = (
            f"central pool on {self.url} (API /v1, db {self.db_path}, {len(self.tokens)} tokens,"
            f" liveness {self.liveness_timeout:g} s)"
        )
        if self.mqtt is not None:
            text += f" and mqtt://{self.mqtt[0]}:{self.mqtt[1]} under {self.mqtt_prefix}/"
        return text

    async def booking_changed(self, booking_id: str) -> None:
        """A booking was made or cancelled: publish it to its gateway over MQTT, if bridged."""
        if self.mqtt_bridge is not None:
            await self.mqtt_bridge.publish_bookings(booking_id)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a store method in the pool's database thread."""
        assert self._executor is not None, "the pool is not running"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def usage_records(self, booking_id: str) -> list[dict[str, Any]]:
        """The usage records applied for a booking, in arrival order (for tests and the demo)."""
        return await self.call(self.store.usage_records, booking_id)

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="central-pool-db")
        try:
            await self.call(self.store.open)
            self._sock = _bind(self.host, self._port)
            self._port = self._sock.getsockname()[1]
        except BaseException:
            await self._close_store()
            raise
        self._server = embedded_server(self.app, timeout_graceful_shutdown=2)
        self._task = asyncio.create_task(
            self._server.serve(sockets=[self._sock]), name="central-pool-api"
        )
        while not self._server.started:
            if self._task.done():
                await self.stop()
                raise OSError(f"central pool: the API did not start on {self.url}")
            await asyncio.sleep(0.01)
        if self.mqtt is not None:
            from simulators.central_pool_mqtt import PoolMqttBridge  # paho only when asked

            self.mqtt_bridge = PoolMqttBridge(
                self,
                *self.mqtt,
                gateway_tokens=self.mqtt_gateway_tokens,
                prefix=self.mqtt_prefix,
            )
            await self.mqtt_bridge.start()

    async def stop(self) -> None:
        if self.mqtt_bridge is not None:  # first: it applies messages through the store
            await self.mqtt_bridge.stop()
            self.mqtt_bridge = None
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        await self._close_store()

    async def _close_store(self) -> None:
        if self._executor is not None:
            with contextlib.suppress(Exception):
                await self.call(self.store.close)
            self._executor.shutdown(wait=True)
            self._executor = None


def _bind(host: str, port: int) -> socket.socket:
    try:
        return bind(host, port)
    except OSError as exc:
        raise OSError(f"central pool: {exc.strerror}") from exc


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulators.central_pool",
        description="The reference central matching pool (sync/pool_api.yaml) on FastAPI + SQLite.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="TCP port (default %(default)s; 0 = any)"
    )
    p.add_argument("--db", default=None, help="SQLite file (default: in memory, lost on exit)")
    p.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN:ROLE:ORG",
        help="a bearer token, its role (gateway|cooperative|operator) and organisation;"
        " repeatable (default: gw-token and coop-token of the demo cooperatives)",
    )
    p.add_argument(
        "--liveness-timeout",
        type=float,
        default=LIVENESS_TIMEOUT,
        help="seconds a gateway may stay silent before its machines count as offline"
        " (default %(default)s)",
    )
    p.add_argument(
        "--mqtt",
        default=None,
        metavar="HOST:PORT",
        help="also take the retained-MQTT transport (sync/pool_mqtt.py) from this broker",
    )
    p.add_argument(
        "--mqtt-gateway",
        action="append",
        default=[],
        metavar="GATEWAY_ID:TOKEN",
        help="with --mqtt: apply this gateway's topics with this token's rights; repeatable"
        " (a gateway without one is refused)",
    )
    p.add_argument(
        "--mqtt-prefix", default="millrace-pool/v1", help="topic prefix (default %(default)s)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log requests and more")
    return p


def parse_endpoint(spec: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:1883` for IPv6) -> (host, port)."""
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--mqtt wants HOST:PORT, got {spec!r}")
    return host.strip("[]"), int(port)


def parse_gateway_token(spec: str) -> tuple[str, str]:
    """`GATEWAY_ID:TOKEN` (the CLI's `--mqtt-gateway`) -> (gateway id, token)."""
    gateway_id, sep, token = spec.partition(":")
    if not sep or not gateway_id or not token:
        raise ValueError(f"--mqtt-gateway wants GATEWAY_ID:TOKEN, got {gateway_id!r}:…")
    return gateway_id, token


async def _serve(args: argparse.Namespace) -> None:
    tokens = dict(parse_token(t) for t in args.token) if args.token else None
    if args.mqtt_gateway and args.mqtt is None:
        raise ValueError("--mqtt-gateway needs --mqtt HOST:PORT")
    pool = CentralPool(
        args.host,
        args.port,
        db_path=args.db,
        tokens=tokens,
        liveness_timeout=args.liveness_timeout,
        mqtt=parse_endpoint(args.mqtt) if args.mqtt is not None else None,
        mqtt_gateway_tokens=dict(parse_gateway_token(g) for g in args.mqtt_gateway),
        mqtt_prefix=args.mqtt_prefix,
    )
    await serve_until_signal(pool, pool.describe)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pool until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad arguments or port."""
    args = _parser().parse_args(argv)
    return run_cli("central_pool", lambda: _serve(args), verbose=args.verbose, quiet=("uvicorn",))


if __name__ == "__main__":
    sys.exit(main())
