"""The local API (FastAPI). Views of health, devices, points, history, models, uplinks,
metrics and the audit log; actions: a device write and an uplink replay. It binds to
127.0.0.1 unless the config says otherwise.

Access (gateway.auth, docs/security.md): only `/health`, the API's own description (`/docs`,
`/openapi.json`) and the technician's page (`/` redirects to `/ui/`; its static files,
`gateway.api_ui`) answer without a bearer token: none of them holds data of the box.

| endpoint | role |
| --- | --- |
| GET /devices, /points, /points/{id}, /points/{id}/history, /models, /uplinks, /metrics | viewer |
| GET /whoami, GET /events (server-sent live state), GET /equipment…, /pool | viewer |
| GET /dead-letters (raw payloads of any class) | technician |
| POST /points/{id}/write, POST /uplinks/{name}/replay | technician |
| POST/PATCH/DELETE /equipment…, POST /equipment/validate, POST /commissioning | technician |
| GET /audit | admin |

Restricted and private points are filtered by the caller's organisation and site
(`AccessControl.can_see`). Writes (accepted, refused or failed), replays and history reads of
non-public points are appended to the audit log naming the token used.

Timestamps are ISO 8601 in UTC with milliseconds; `since`/`until` accept ISO 8601 or epoch
seconds.
"""

import asyncio
import logging
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from gateway import __version__
from gateway.auth import Admin, Principal, Technician, Viewer
from gateway.errors import DeviceError, MillraceError, TransportError, WriteRejected
from gateway.metrics import render
from gateway.readings import Quality, Value
from gateway.types import DataClass

log = logging.getLogger("millrace.api")

if TYPE_CHECKING:
    from gateway.runtime import Gateway


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HealthOut(BaseModel):
    status: str  # ok | degraded | starting | stopping
    gateway: str
    site: str
    version: str
    uptime_s: float
    devices_online: int
    devices_total: int
    store_queued: int
    store_error: str | None


class DeviceOut(BaseModel):
    id: str
    protocol: str
    endpoint: str
    state: str
    since: str | None
    last_contact: str | None
    last_error: str | None
    points: int
    points_read: int
    polls_ok: int
    polls_failed: int
    requests: int
    reconnects: int
    overruns: int


class PointOut(BaseModel):
    id: str
    device: str
    name: str
    value: Value
    unit: str
    quality: str | None
    reason: str | None
    ts_source: str | None
    ts_gateway: str | None
    data_type: str
    data_class: str
    writable: bool
    equipment: list[str]


class HistoryItem(BaseModel):
    id: int
    value: Value
    quality: str
    reason: str | None
    ts_source: str | None
    ts_gateway: str


class DeadLetterOut(BaseModel):
    id: int
    ts: str
    source: str
    topic: str
    reason: str
    payload: str
    payload_size: int


class ModelOut(BaseModel):
    id: str
    model: str
    version: str | None
    file: str
    equipment: str | None
    state: str  # loading | ready | fallback | failed | disabled
    error: str | None
    providers: list[str]
    trigger: str | None
    latency_budget_ms: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    calls: int
    rows_run: int
    failures: int
    fallback_runs: int
    over_budget: int
    rows_incomplete: int
    items_in: int
    items_refused: int
    items_bad: int
    queued: int
    active_alarms: list[str]
    last_run: str | None
    last_values: dict[str, Value]
    pool_available: bool | None


class UplinkOut(BaseModel):
    name: str
    state: str  # connecting | connected | idle | sending | backing_off | throttled | stopped
    connected: bool
    cursor: int
    seq: int
    pending: int
    oldest_pending_age_s: float
    sent: int
    sent_per_s: float
    ingest_per_s: float
    autonomy_hours: float | None
    bytes_per_reading: float
    batches: int
    withheld_private: int
    retries: int
    throttled: int
    errors: int
    last_error: str | None
    transport_error: str | None
    last_sent: str | None
    dropped_unsent: int
    compacted: int
    replayed: int
    replays_queued: int
    transport: dict[str, float | int | bool | str | None]


class ReplayOut(BaseModel):
    uplink: str
    since: str
    until: str
    queued: int


class HistoryOut(BaseModel):
    point: str
    unit: str
    count: int
    items: list[HistoryItem]


class WriteIn(BaseModel):
    """The engineering value to write (bool, number or text as the point's type needs)."""

    model_config = ConfigDict(extra="forbid")
    value: bool | int | float | str


class WriteOut(BaseModel):
    point: str
    value: Value
    written: bool
    audit_seq: int


class AuditEntryOut(BaseModel):
    seq: int
    ts: str
    who: str
    action: str
    target: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    entries: list[AuditEntryOut]
    #: Pass as `after` for the next page; null at the end.
    next_after: int | None


_BOOL_TYPES = {"bool", "bit", "boolean"}
_TEXT_TYPES = {"string", "localizedtext", "text"}


def check_value(
    value: Value, data_type: str, minimum: float | None = None, maximum: float | None = None
) -> Value:
    """The value converted to what the point's type takes, or ValueError saying why: a
    bool for bool points (0/1 accepted), a finite number (not a bool) within min..max for
    numeric ones, text for text ones. The driver checks again and encodes (a value the
    register type cannot hold is refused there), still before any I/O."""
    kind = data_type.lower()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    if kind in _BOOL_TYPES:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"a {data_type} point takes true/false or 0/1 (got {value!r})")
    if kind in _TEXT_TYPES:
        if isinstance(value, str):
            return value
        raise ValueError(f"a {data_type} point takes text (got {value!r})")
    # every other declared type is numeric
    if kind and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"a {data_type} point takes a number (got {value!r})")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if minimum is not None and value < minimum:
            raise ValueError(f"{value} is below the point's min {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"{value} is above the point's max {maximum}")
    return value


def _quality(q: Quality | int | None) -> str | None:
    return None if q is None else Quality(q).name.lower()


def create_app(gw: "Gateway") -> FastAPI:
    app = FastAPI(
        title="Millrace gateway",
        version=__version__,
        description="Local API of a Millrace edge gateway. Every endpoint but /health needs "
        "a bearer token (`millrace tokens create`); roles viewer < technician < admin.",
    )
    app.state.gateway = gw
    limit_max = gw.config.api.history_limit
    access = gw.access

    def visible(who: Principal, point_id: str) -> None:
        """404 for an unknown point, 403 for one the caller's org/site may not see."""
        info = gw.points.get(point_id)
        if info is None:
            raise HTTPException(404, f"no point {point_id!r}")
        if not access.can_see(who, info.data_class):
            raise HTTPException(
                403, f"point {point_id} is {info.data_class} data of another organisation/site"
            )

    @app.get("/health", response_model=HealthOut)
    async def health() -> HealthOut:
        """Liveness and a one-line summary. Devices being down is `degraded`, not a failure:
        an orchestrator must not restart the gateway because a PLC is switched off."""
        online, total = gw.online_share()
        st = gw.store.stats()
        state = gw.state.value
        status = "ok" if online == total else "degraded"
        if state in ("starting", "stopping", "stopped", "created"):
            status = state
        return HealthOut(
            status=status,
            gateway=gw.config.gateway.id,
            site=gw.config.gateway.site,
            version=__version__,
            uptime_s=round(gw.uptime_s, 3),
            devices_online=online,
            devices_total=total,
            store_queued=st.queued,
            store_error=st.last_error,
        )

    @app.get("/devices", response_model=list[DeviceOut])
    async def devices(who: Viewer) -> list[DeviceOut]:
        return [
            DeviceOut(
                id=h.device,
                protocol=h.protocol,
                endpoint=h.endpoint,
                state=str(h.state),
                since=iso(h.since),
                last_contact=iso(h.last_contact),
                last_error=h.last_error,
                points=h.points,
                points_read=h.points_read,
                polls_ok=h.polls_ok,
                polls_failed=h.polls_failed,
                requests=h.requests,
                reconnects=h.reconnects,
                overruns=h.overruns,
            )
            for h in gw.device_health()
        ]

    def point_out(pid: str) -> PointOut:
        info = gw.points[pid]
        r = gw.latest.get(pid)
        return PointOut(
            id=pid,
            device=info.device,
            name=info.name,
            value=r.value if r else None,
            unit=info.unit,
            quality=_quality(r.quality) if r else None,
            reason=r.reason if r else None,
            ts_source=iso(r.ts_source) if r else None,
            ts_gateway=iso(r.ts_gateway) if r else None,
            data_type=info.data_type,
            data_class=str(info.data_class),
            writable=info.writable,
            equipment=list(info.equipment),
        )

    @app.get("/points", response_model=list[PointOut])
    async def points(
        who: Viewer,
        device: Annotated[str | None, Query(max_length=64)] = None,
        equipment: Annotated[str | None, Query(max_length=64)] = None,
    ) -> list[PointOut]:
        """Latest value of every configured point the caller may see (value null until
        first read)."""
        ids = [
            pid
            for pid, info in gw.points.items()
            if (device is None or info.device == device)
            and (equipment is None or equipment in info.equipment)
            and access.can_see(who, info.data_class)
        ]
        return [point_out(pid) for pid in ids]

    @app.get("/points/{point_id}", response_model=PointOut)
    async def point(point_id: str, who: Viewer) -> PointOut:
        visible(who, point_id)
        return point_out(point_id)

    @app.get("/points/{point_id}/history", response_model=HistoryOut)
    async def history(
        point_id: str,
        who: Viewer,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=limit_max)] = 1000,
    ) -> HistoryOut:
        """Stored readings of one point, oldest first; the newest `limit` of the range. A
        read of restricted or private data is an export: it is audited."""
        visible(who, point_id)
        t0 = since.timestamp() if since else None
        t1 = until.timestamp() if until else None
        if t0 is not None and t1 is not None and t0 > t1:
            raise HTTPException(422, "since is after until")
        rows = await gw.store.history(point_id, since=t0, until=t1, limit=limit)
        data_class = gw.points[point_id].data_class
        if data_class is not DataClass.PUBLIC:
            await gw.audit.append(
                "data.export",
                who.who,
                point_id,
                {
                    "via": "history",
                    "class": str(data_class),
                    "since": iso(t0),
                    "until": iso(t1),
                    "rows": len(rows),
                    "role": str(who.role),
                },
            )
        items = [
            HistoryItem(
                id=r.id,
                value=r.value,
                quality=_quality(r.quality) or "bad",
                reason=r.reason,
                ts_source=iso(r.ts_source),
                ts_gateway=iso(r.ts_gateway) or "",
            )
            for r in rows
        ]
        return HistoryOut(
            point=point_id, unit=gw.points[point_id].unit, count=len(items), items=items
        )

    @app.get("/dead-letters", response_model=list[DeadLetterOut])
    async def dead_letters(
        who: Technician,
        source: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[DeadLetterOut]:
        """Input a driver could not use (unparsable payloads, unknown equipment), newest
        first, with why it was refused and the first bytes as text (invalid UTF-8 escaped)."""
        rows = await gw.store.dead_letters(limit=limit, source=source)
        return [
            DeadLetterOut(
                id=d.id,
                ts=iso(d.ts) or "",
                source=d.source,
                topic=d.topic,
                reason=d.reason,
                payload=d.payload.decode("utf-8", errors="backslashreplace"),
                payload_size=d.payload_size,
            )
            for d in rows
        ]

    @app.get("/models", response_model=list[ModelOut])
    async def models(who: Viewer) -> list[ModelOut]:
        """Each bound model: state (a `fallback` model's manifest rules are running in its
        place, `error` says why), call latency p50/p99 against its budget, counters, the
        alarms it holds active and its newest outputs."""
        return [ModelOut(**{**m, "last_run": iso(m["last_run"])}) for m in gw.engine.status()]

    def runner(name: str) -> Any:
        found = next((u for u in gw.uplinks if u.name == name), None)
        if found is None:
            raise HTTPException(404, f"no uplink {name!r}")
        return found

    @app.get("/uplinks", response_model=list[UplinkOut])
    async def uplinks(who: Viewer) -> list[UplinkOut]:
        """Per uplink: readings waiting and the oldest one's age, sent/s against the ingest
        rate, hours the disk can keep buffering at that rate, retries, errors, drops."""
        out = []
        for u in gw.uplinks:
            d = await u.details()
            out.append(UplinkOut(**{**d, "last_sent": iso(d["last_sent"])}))
        return out

    @app.post("/uplinks/{name}/replay", response_model=ReplayOut, status_code=202)
    async def replay(
        name: str, who: Technician, since: datetime, until: datetime | None = None
    ) -> ReplayOut:
        """Re-send every stored reading with since <= time < until (default: now) on this
        uplink, for a far side that found a gap. Pages carry `replay: true`; the cursor does
        not move; the far side de-duplicates by reading id. A replay is an export: audited."""
        up = runner(name)
        t0 = since.timestamp()
        t1 = until.timestamp() if until else time.time()
        if t0 >= t1:
            raise HTTPException(422, "since must be before until")
        try:
            queued = up.replay(t0, t1)
        except ValueError as exc:
            raise HTTPException(429, str(exc)) from exc
        await gw.audit.append(
            "data.export",
            who.who,
            f"uplink:{name}",
            {"via": "replay", "since": iso(t0), "until": iso(t1), "role": str(who.role)},
        )
        return ReplayOut(uplink=name, since=iso(t0) or "", until=iso(t1) or "", queued=queued)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(who: Viewer) -> PlainTextResponse:
        return PlainTextResponse(render(gw), media_type="text/plain; version=0.0.4")

    @app.post("/points/{point_id}/write", response_model=WriteOut)
    async def write(point_id: str, who: Technician, body: Annotated[WriteIn, Body()]) -> WriteOut:
        """Write one engineering value to a device point. Refused with 422 and the reason,
        before anything is sent, when the point is not writable, the value is the wrong type
        or outside the point's min/max; 502 when the device refuses or does not answer.
        Every attempt is in the audit log with the token that made it."""
        target = point_id
        detail: dict[str, Any] = {"value": body.value, "role": str(who.role)}

        async def refuse(status: int, reason: str) -> HTTPException:
            await gw.audit.append(
                "device.write", who.who, target, {**detail, "result": "refused", "reason": reason}
            )
            return HTTPException(status, reason)

        info = gw.points.get(point_id)
        if info is None:
            raise await refuse(404, f"no point {point_id!r}")
        if not access.can_see(who, info.data_class):
            raise await refuse(
                403, f"point {point_id} is {info.data_class} data of another organisation/site"
            )
        if not info.writable:
            raise await refuse(422, f"point {point_id} is not writable")
        try:
            value = check_value(body.value, info.data_type, info.min, info.max)
        except ValueError as exc:
            raise await refuse(422, f"point {point_id}: {exc}") from None
        # Recorded before it is sent: no write reaches a device without its audit entry.
        entry = await gw.audit.append(
            "device.write", who.who, target, {**detail, "value": value, "result": "sending"}
        )
        try:
            await gw.write_point(point_id, value)
        except WriteRejected as exc:
            raise await refuse(422, str(exc)) from None
        except (DeviceError, TransportError, MillraceError) as exc:
            await gw.audit.append(
                "device.write",
                who.who,
                target,
                {**detail, "result": "failed", "reason": str(exc), "after": entry.seq},
            )
            raise HTTPException(502, f"point {point_id}: {exc}") from None
        done = await gw.audit.append(
            "device.write",
            who.who,
            target,
            {**detail, "value": value, "result": "written", "after": entry.seq},
        )
        log.info("point written", extra={"point": point_id, "who": who.who})
        return WriteOut(point=point_id, value=value, written=True, audit_seq=done.seq)

    @app.get("/audit", response_model=AuditPage)
    async def audit(
        who: Admin,
        after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        action: Annotated[str | None, Query(max_length=64)] = None,
    ) -> AuditPage:
        """Audit entries with seq > `after`, oldest first, `limit` at a time."""
        rows = await asyncio.to_thread(gw.audit.entries, after=after, limit=limit, action=action)
        return AuditPage(
            entries=[AuditEntryOut(**{**e.as_dict(), "ts": iso(e.ts) or ""}) for e in rows],
            next_after=rows[-1].seq if len(rows) == limit else None,
        )

    from gateway import api_commissioning, api_equipment, api_live, api_session, api_ui

    for module in (api_equipment, api_session, api_live, api_commissioning, api_ui):
        app.include_router(module.router)
    return app
