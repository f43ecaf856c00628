"""`GET /events` (viewer): the box's live state as server-sent events, for the technician's
page and any other client that wants pushes instead of polling.

One stream per client, built from what the gateway already holds in memory (the latest-value
cache, device health, the engine's status, the sharing service): nothing here touches a
device, and each step is a few dictionary walks, so a stream never holds up the loop.

Events (`event:` name, `data:` one JSON value); "on change" events come at most every
`batch_s` (1 s), `overview` at most every `summary_s` (2 s):

* `hello` (first): gateway, site, version, the caller's role, `heartbeat_s`, `batch_s`;
* `points`: what changed, the first one every point the caller may see, as
  `{point id: [value, quality, ts_gateway epoch ms, reason when not good]}`;
* `devices` (on change): per device state, since, last contact, last error;
* `models` (on change): per model state, latency p50/p99 against its budget, calls, active
  alarms, latest outputs;
* `equipment` (on change): per machine status and why, health, availability and windows;
* `overview` (on change): status, devices online, active alarms, uplink backlog and hours
  of autonomy, machines by availability;
* `bye`: the gateway is stopping; the stream then ends.

A comment line (`: heartbeat <epoch s>`) comes every `heartbeat_s` (3 s) whatever else is
sent, so a client that hears nothing for two of them knows the gateway is gone, not quiet.
Points the caller may not see (data classes, as `/points`) are never in a stream.

A stream ends when the client goes (Starlette cancels it on disconnect) and when the gateway
starts stopping (checked every `TICK_S`), so shutdown never waits on an open page; new
streams are refused with 503 while the gateway is not running and beyond `max_streams`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from gateway import __version__
from gateway.api import iso
from gateway.auth import Principal, Viewer
from gateway.readings import Quality, Reading
from gateway.runtime import GatewayState
from gateway.types import DataClass

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("millrace.api.live")

router = APIRouter(tags=["live"])

HEARTBEAT_S = 3.0
BATCH_S = 1.0
SUMMARY_S = 2.0
#: How often a stream looks at the gateway's state (a stopping gateway ends it this fast).
TICK_S = 0.25
#: Open streams at once; a box serves a handful of phones, not a crowd.
MAX_STREAMS = 16

_UPLINK_FIELDS = (
    "name",
    "state",
    "connected",
    "pending",
    "oldest_pending_age_s",
    "autonomy_hours",
    "sent_per_s",
    "ingest_per_s",
    "last_error",
)
_MODEL_FIELDS = (
    "id",
    "model",
    "version",
    "equipment",
    "state",
    "error",
    "latency_budget_ms",
    "latency_p50_ms",
    "latency_p99_ms",
    "calls",
    "failures",
    "fallback_runs",
    "over_budget",
    "active_alarms",
    "last_values",
)


@dataclass
class LiveSettings:
    """The stream's pace and limit (per app; tests shorten them)."""

    heartbeat_s: float = HEARTBEAT_S
    batch_s: float = BATCH_S
    summary_s: float = SUMMARY_S
    max_streams: int = MAX_STREAMS
    #: Streams open now.
    open_streams: int = 0
    #: The newest overview (monotonic time, data), shared by every open page.
    _overview: tuple[float, dict[str, Any]] | None = None
    _overview_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Overviews built (what the sharing saves is visible in tests).
    overviews_built: int = 0

    async def overview(self, gw: Gateway) -> dict[str, Any]:
        """The overview every page is sent: built at most once per half summary interval
        whatever the number of pages, since it reads the store once per uplink."""
        async with self._overview_lock:
            now = time.monotonic()
            if self._overview is None or now - self._overview[0] >= self.summary_s / 2:
                self._overview = (now, await build_overview(gw, gw.engine.status()))
                self.overviews_built += 1
            return self._overview[1]


def live_settings(app: Any) -> LiveSettings:
    state = app.state
    if getattr(state, "live", None) is None:
        state.live = LiveSettings()
    return state.live


def clean(value: Any) -> Any:
    """JSON the browser can parse: NaN and infinities (a device can send them) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def sse(event: str, data: Any) -> str:
    """One event; compact JSON has no raw newline, so one `data:` line is the whole of it."""
    text = json.dumps(clean(data), separators=(",", ":"), ensure_ascii=False, default=str)
    return f"event: {event}\ndata: {text}\n\n"


def _ms(ts: float | None) -> int | None:
    return None if ts is None else int(ts * 1000)


class LiveView:
    """What one client has been sent. Each method returns the next event's data, or None
    when nothing changed since the last call."""

    def __init__(self, gw: Gateway, who: Principal) -> None:
        self.gw = gw
        self.who = who
        self._sent: dict[str, Reading] = {}
        self._last: dict[str, Any] = {}
        self._classes: dict[DataClass, bool] = {}

    def _visible(self, point_id: str) -> bool:
        info = self.gw.points.get(point_id)
        if info is None:
            return False
        cls = info.data_class
        seen = self._classes.get(cls)
        if seen is None:
            seen = self._classes[cls] = self.gw.access.can_see(self.who, cls)
        return seen

    def _changed(self, kind: str, data: Any) -> Any:
        if self._last.get(kind) == data:
            return None
        self._last[kind] = data
        return data

    def points(self) -> dict[str, list[Any]] | None:
        changed: dict[str, list[Any]] = {}
        sent = self._sent
        for pid, r in self.gw.latest.all().items():
            if sent.get(pid) is r or not self._visible(pid):
                continue
            sent[pid] = r
            quality = Quality(r.quality).name.lower()
            row: list[Any] = [r.value, quality, _ms(r.ts_gateway)]
            if quality != "good" and r.reason:
                row.append(r.reason)
            changed[pid] = row
        return changed or None

    def devices(self) -> list[dict[str, Any]] | None:
        return self._changed(
            "devices",
            [
                {
                    "id": h.device,
                    "protocol": h.protocol,
                    "state": str(h.state),
                    "since": iso(h.since),
                    "last_contact": iso(h.last_contact),
                    "last_error": h.last_error,
                    "points": h.points,
                    "points_read": h.points_read,
                }
                for h in self.gw.device_health()
            ],
        )

    def models(self, status: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        return self._changed(
            "models",
            [
                {**{k: m.get(k) for k in _MODEL_FIELDS}, "last_run": iso(m.get("last_run"))}
                for m in status
            ],
        )

    def equipment(self) -> list[dict[str, Any]] | None:
        return self._changed(
            "equipment", [live.to_dict() for live in self.gw.sharing.live.values()]
        )

    def fast(self) -> list[str]:
        """The events due every batch interval."""
        out = []
        if (points := self.points()) is not None:
            out.append(sse("points", points))
        if (devices := self.devices()) is not None:
            out.append(sse("devices", devices))
        if (models := self.models(self.gw.engine.status())) is not None:
            out.append(sse("models", models))
        if (equipment := self.equipment()) is not None:
            out.append(sse("equipment", equipment))
        return out

    async def summary(self, live: LiveSettings) -> list[str]:
        data = self._changed("overview", await live.overview(self.gw))
        return [] if data is None else [sse("overview", data)]


async def build_overview(gw: Gateway, status: list[dict[str, Any]]) -> dict[str, Any]:
    """What the overview view shows (the same for every role: no point values in it)."""
    online, total = gw.online_share()
    uplinks = []
    for u in gw.uplinks:
        d = await u.details()
        uplinks.append({k: d.get(k) for k in _UPLINK_FIELDS})
    autonomy = [u["autonomy_hours"] for u in uplinks if u["autonomy_hours"] is not None]
    machines: dict[str, int] = {}
    for live in gw.sharing.live.values():
        if not live.record.retired:
            avail = live.availability
            level = "unknown" if avail is None else avail.available.value
            machines[level] = machines.get(level, 0) + 1
    st = gw.store.stats()
    return {
        # as /health says it
        "status": "ok" if online == total else "degraded",
        "devices_online": online,
        "devices_total": total,
        "alarms": [
            {"model": m["id"], "equipment": m.get("equipment"), "alarm": a}
            for m in status
            for a in m.get("active_alarms", [])
        ],
        "uplinks": uplinks,
        "backlog": sum(u["pending"] or 0 for u in uplinks),
        "autonomy_hours": min(autonomy) if autonomy else None,
        "store_queued": st.queued,
        "store_error": st.last_error,
        "machines": machines,
    }


async def stream(
    gw: Gateway, who: Principal, live: LiveSettings, token: str | None = None
) -> AsyncIterator[str]:
    """The event stream of one client (module docstring); ends when the gateway stops, and
    when `token` (checked again at every heartbeat) is revoked or expires: a revocation
    must cut a page that is already open, not only its next request."""
    live.open_streams += 1
    try:
        view = LiveView(gw, who)
        yield sse(
            "hello",
            {
                "gateway": gw.config.gateway.id,
                "site": gw.config.gateway.site,
                "version": __version__,
                "role": str(who.role),
                "heartbeat_s": live.heartbeat_s,
                "batch_s": live.batch_s,
                "time": _ms(time.time()),
            },
        )
        loop = asyncio.get_running_loop()
        next_batch = next_summary = loop.time()
        next_beat = loop.time() + live.heartbeat_s
        summary_failed = False
        while True:
            if gw.state is not GatewayState.RUNNING:
                yield sse("bye", {"reason": f"gateway {gw.state}"})
                return
            now = loop.time()
            parts: list[str] = []
            if now >= next_batch:
                next_batch = now + live.batch_s
                parts += view.fast()
            if now >= next_summary:
                next_summary = now + live.summary_s
                try:
                    parts += await view.summary(live)
                    summary_failed = False
                except Exception as exc:  # a store hiccup must not end every page's stream
                    if not summary_failed:
                        log.warning("live overview failed", extra={"error": str(exc)})
                    summary_failed = True
            if now >= next_beat:
                next_beat = now + live.heartbeat_s
                if token is not None and not await asyncio.to_thread(_still_valid, gw, token):
                    yield "".join(parts) + sse("bye", {"reason": "token revoked or expired"})
                    return
                parts.append(f": heartbeat {int(time.time())}\n\n")
            if parts:
                yield "".join(parts)
            due = min(next_batch, next_summary, next_beat) - loop.time()
            await asyncio.sleep(min(TICK_S, max(0.0, due)))
    finally:
        live.open_streams -= 1


def _still_valid(gw: Gateway, token: str) -> bool:
    return gw.access.tokens.check(token) is not None


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "event stream"}},
)
async def events(request: Request, who: Viewer) -> StreamingResponse:
    """Server-sent events of the live state (module docstring). Send the token in the
    `Authorization` header (a browser reads the stream with `fetch`: a token in the URL
    would end up in access logs). 503 while the gateway is not running or too many
    streams are open."""
    gw: Gateway = request.app.state.gateway
    if gw.state is not GatewayState.RUNNING:
        raise HTTPException(503, f"the gateway is {gw.state}", headers={"Retry-After": "5"})
    live = live_settings(request.app)
    if live.open_streams >= live.max_streams:
        raise HTTPException(
            503, f"{live.open_streams} live streams are open already", headers={"Retry-After": "10"}
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return StreamingResponse(
        stream(gw, who, live, token.strip() if scheme.lower() == "bearer" else None),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
