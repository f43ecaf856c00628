"""The reference central pool over real HTTP on loopback (httpx, uvicorn, SQLite file), no
mocks. Every answer is checked against the response schema the contract gives for that
operation and status (`sync/pool_api.yaml`)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator

from simulators.central_pool import LIVENESS_TIMEOUT, CentralPool
from simulators.signals import ManualClock
from tests import pool_contract
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = pool_contract.document()

CANE, FRUIT, OTHER = "Demo Cane Cooperative", "Demo Fruit Cooperative", "Other Farm Co"
TOKENS = {
    "gw-token": {"org": CANE, "role": "gateway"},
    "gw-other": {"org": OTHER, "role": "gateway"},
    "coop-token": {"org": FRUIT, "role": "cooperative"},
    "coop-cane": {"org": CANE, "role": "cooperative"},
    "op-token": {"org": "Pool Operations", "role": "operator"},
}
T0 = datetime(2026, 1, 4, 20, 0, tzinfo=UTC)  # the evening before the demand window
DAY1 = datetime(2026, 1, 5, tzinfo=UTC)
HERE = (22.82, 108.32)
ZERO = "0" * 64


def ts(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def span(start: datetime, hours: float) -> dict[str, str]:
    return {"start": ts(start), "end": ts(start + timedelta(hours=hours))}


# --------------------------------------------------------------------------------------------
# A client that checks every answer against the contract
# --------------------------------------------------------------------------------------------


def response_validator(ref: str) -> Draft202012Validator:
    return pool_contract.validator(ref)


class Pool:
    def __init__(self, client: httpx.AsyncClient, pool: CentralPool) -> None:
        self.client, self.pool = client, pool
        self.checked: set[tuple[str, str, int]] = set()

    async def call(
        self,
        method: str,
        template: str,
        token: str | None,
        *,
        expect: int,
        json: Any = None,
        params: dict[str, Any] | None = None,
        **path: str,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = await self.client.request(
            method, template.format(**path), headers=headers, json=json, params=params
        )
        assert r.status_code == expect, f"{method} {template}: {r.status_code} {r.text}"
        responses = CONTRACT["paths"][template][method.lower()]["responses"]
        assert str(expect) in responses, f"{method} {template} {expect} is not in the contract"
        spec = responses[str(expect)]
        if "$ref" in spec:
            spec = CONTRACT["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
        (media_type, content), *_ = spec["content"].items()
        assert r.headers["content-type"].split(";")[0] == media_type
        body = r.json()
        response_validator(content["schema"]["$ref"]).validate(body)
        if expect == 401:
            assert r.headers["www-authenticate"] == "Bearer"
        self.checked.add((method, template, expect))
        return body

    # shorthands -----------------------------------------------------------------------------

    async def put_machine(
        self, mid: str, body: dict[str, Any], token: str = "gw-token", *, expect: int = 201
    ) -> Any:
        return await self.call(
            "PUT", "/v1/machines/{machine_id}", token, json=body, expect=expect, machine_id=mid
        )

    async def machine(self, mid: str, token: str = "gw-token") -> Any:
        return await self.call(
            "GET", "/v1/machines/{machine_id}", token, expect=200, machine_id=mid
        )

    async def availability(self, *items: dict[str, Any], token: str = "gw-token") -> list[str]:
        body = await self.call(
            "POST", "/v1/availability", token, json={"items": list(items)}, expect=200
        )
        assert [(r["machine_id"], r["seq"]) for r in body["results"]] == [
            (i["machine_id"], i["seq"]) for i in items
        ]
        return [r["result"] for r in body["results"]]

    async def snapshot(self, gw: str, seq: int, *items: dict[str, Any], expect: int = 200) -> Any:
        return await self.call(
            "PUT",
            "/v1/gateways/{gateway_id}/snapshot",
            "gw-token",
            json={"seq": seq, "ts": ts(T0), "items": list(items)},
            expect=expect,
            gateway_id=gw,
        )

    async def demand(self, token: str = "coop-token", **over: Any) -> str:
        body = {
            "capability": "harvesting",
            "quantity": 20,
            "unit": "ha",
            "location": {"lat": HERE[0], "lon": HERE[1]},
            "max_distance_km": 50,
            "window": span(DAY1, 48),
            **over,
        }
        out = await self.call("POST", "/v1/demands", token, json=body, expect=201)
        return out["demand_id"]

    async def matches(self, demand_id: str, token: str = "coop-token") -> list[dict[str, Any]]:
        body = await self.call(
            "GET", "/v1/demands/{demand_id}/matches", token, expect=200, demand_id=demand_id
        )
        assert body["demand_id"] == demand_id
        return body["matches"]

    async def book(
        self,
        demand_id: str,
        mid: str,
        start: datetime,
        hours: float,
        *,
        expect: int = 201,
        token: str = "coop-token",
    ) -> Any:
        return await self.call(
            "POST",
            "/v1/demands/{demand_id}/bookings",
            token,
            json={"machine_id": mid, **span(start, hours)},
            expect=expect,
            demand_id=demand_id,
        )

    async def feed(self, gw: str, since: int = 0, token: str = "gw-token", **params: Any) -> Any:
        return await self.call(
            "GET",
            "/v1/gateways/{gateway_id}/bookings",
            token,
            params={"since_version": since, **params},
            expect=200,
            gateway_id=gw,
        )

    async def usage(self, *records: dict[str, Any], token: str = "gw-token") -> list[str]:
        body = await self.call(
            "POST", "/v1/usage", token, json={"records": list(records)}, expect=200
        )
        assert [r["record_id"] for r in body["results"]] == [r["record_id"] for r in records]
        return [r["result"] for r in body["results"]]


def profile(
    *,
    gateway: str = "gw-1",
    version: int = 1,
    at: tuple[float, float] = HERE,
    capacity: float = 12,
    unit: str = "ha/day",
    capability: str = "harvesting",
    shared: bool = True,
    min_hours: float = 0,
    owner_org: str = CANE,
    restricted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "gateway_id": gateway,
        "version": version,
        "type": "sugarcane_harvester",
        "make": "Case IH",
        "model": "Austoft 8810",
        "owner_org": owner_org,
        "owner_ref": hashlib.sha256(b"owner:li-wei").hexdigest(),
        "capabilities": [{"name": capability, "capacity": capacity, "unit": unit}],
        "location": {"lat": at[0], "lon": at[1], "precision_m": 1000},
        "sharing": {
            "shared": shared,
            "timezone": "Asia/Shanghai",
            "windows": [
                {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "06:00", "end": "18:00"}
            ],
            "blackout_dates": ["2026-02-17"],
            "rate": {"amount": 180, "currency": "CNY", "per": "hectare"},
            "min_booking_hours": min_hours,
        },
    }
    if restricted is not None:
        body["restricted"] = restricted
    return body


def update(
    mid: str,
    seq: int,
    *,
    gateway: str = "gw-1",
    key: str | None = None,
    status: str = "idle",
    available: str = "full",
    reason: str | None = None,
    risk: float | None = 0.0,
    rul: float | None = None,
    windows: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    return {
        "machine_id": mid,
        "gateway_id": gateway,
        "seq": seq,
        "idempotency_key": key or f"{mid}:{seq}",
        "ts": ts(T0),
        "status": status,
        "health": {
            "failure_risk": risk,
            "rul_hours": rul,
            "source": "pdm-rul@1.0.0" if risk is not None else None,
        },
        "available": available,
        "reason": reason,
        "windows": [span(DAY1, 48)] if windows is None else windows,
    }


def usage_record(booking_id: str, mid: str, prev_hash: str, **metered: Any) -> dict[str, Any]:
    """A record built from the contract's words alone (not the pool's helpers)."""
    fields = {
        "booking_id": booking_id,
        "machine_id": mid,
        "engine_hours": metered.get("engine_hours", 5.5),
        "hectares": metered.get("hectares", 6.2),
        "tonnes": metered.get("tonnes"),
        "energy_kwh": metered.get("energy_kwh"),
        "period": metered.get("period", span(DAY1 + timedelta(hours=6), 6)),
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    record_id = hashlib.sha256(canonical.encode()).hexdigest()
    chain = hashlib.sha256((prev_hash + record_id).encode()).hexdigest()
    return {"record_id": record_id, **fields, "prev_hash": prev_hash, "hash": chain}


@pytest_asyncio.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    clock = ManualClock(T0.timestamp())
    async with (
        CentralPool(db_path=tmp_path / "pool.db", tokens=TOKENS, clock=clock) as central,
        httpx.AsyncClient(base_url=central.url, timeout=10) as client,
    ):
        yield Pool(client, central)


# --------------------------------------------------------------------------------------------
# Machines and availability
# --------------------------------------------------------------------------------------------


async def test_health_needs_no_token(pool: Pool) -> None:
    body = await pool.call("GET", "/v1/health", None, expect=200)
    assert body == {"status": "ok", "api_version": "1", "time": "2026-01-04T20:00:00Z"}


async def test_register_then_availability_is_applied(pool: Pool) -> None:
    assert await pool.put_machine("h-1", profile()) == {
        "machine_id": "h-1",
        "version": 1,
        "result": "created",
    }
    view = await pool.machine("h-1")
    assert view["availability"] is None and view["retired"] is False
    assert await pool.availability(update("h-1", 1, risk=0.04, rul=310)) == ["applied"]
    state = (await pool.machine("h-1", "coop-token"))["availability"]
    assert state["status"] == "idle" and state["available"] == "full" and state["live"]
    assert state["health"] == {"failure_risk": 0.04, "rul_hours": 310, "source": "pdm-rul@1.0.0"}
    assert state["windows"] == [span(DAY1, 48)]
    # a profile is idempotent by version
    assert (await pool.put_machine("h-1", profile(), expect=200))["result"] == "unchanged"
    moved = profile(version=2, at=(22.9, 108.4))
    assert (await pool.put_machine("h-1", moved, expect=200))["result"] == "updated"
    stale = await pool.put_machine("h-1", profile(version=1), expect=200)
    assert stale == {"machine_id": "h-1", "version": 2, "result": "stale"}
    assert (await pool.machine("h-1"))["location"]["lat"] == 22.9


async def test_duplicates_and_stale_sequences_change_nothing(pool: Pool) -> None:
    await pool.put_machine("h-1", profile())
    assert await pool.availability(update("h-1", 5, status="working")) == ["applied"]
    assert await pool.availability(update("h-1", 5, status="working")) == ["duplicate"]
    assert await pool.availability(update("h-1", 4, status="fault", available="none")) == ["stale"]
    assert await pool.availability(update("h-1", 5, key="other", status="fault")) == ["stale"]
    assert (await pool.machine("h-1"))["availability"]["status"] == "working"
    # out of order inside one batch: the newer wins, the older is stale
    assert await pool.availability(
        update("h-1", 7, status="in_transit"), update("h-1", 6, status="fault")
    ) == ["applied", "stale"]
    state = (await pool.machine("h-1"))["availability"]
    assert (state["seq"], state["status"]) == (7, "in_transit")
    # unknown, foreign gateway, other organisation
    assert await pool.availability(update("nope", 1)) == ["unknown_machine"]
    assert await pool.availability(update("h-1", 8, gateway="gw-2")) == ["unknown_machine"]
    assert await pool.availability(update("h-1", 9), token="gw-other") == ["unknown_machine"]
    assert (await pool.machine("h-1"))["availability"]["seq"] == 7


async def test_snapshot_converges_and_marks_missing_machines_offline(pool: Pool) -> None:
    for mid in ("a", "b", "c"):
        await pool.put_machine(mid, profile())
        assert await pool.availability(update(mid, 1)) == ["applied"]
    await pool.put_machine("elsewhere", profile(gateway="gw-2"))
    await pool.availability(update("elsewhere", 1, gateway="gw-2"))

    # the pool missed a's fault; b is unchanged; c was retired on the box (not in the snapshot)
    fault = update("a", 2, status="fault", available="none", reason="hydraulic pressure low")
    out = await pool.snapshot("gw-1", 1, fault, update("b", 1))
    assert out["result"] == "applied"
    assert [r["result"] for r in out["results"]] == ["applied", "duplicate"]
    assert out["marked_offline"] == ["c"]
    assert (await pool.machine("a"))["availability"]["status"] == "fault"
    c = (await pool.machine("c"))["availability"]
    assert (c["status"], c["available"], c["live"]) == ("offline", "none", True)
    assert (await pool.machine("elsewhere"))["availability"]["status"] == "idle"
    # a repeated or older snapshot marks nothing and older items are stale
    again = await pool.snapshot("gw-1", 1, update("a", 1, key="late"), update("b", 1))
    assert again["result"] == "stale" and again["marked_offline"] == []
    assert [r["result"] for r in again["results"]] == ["stale", "duplicate"]
    # c comes back with its next update
    assert await pool.availability(update("c", 2)) == ["applied"]
    assert (await pool.machine("c"))["availability"]["status"] == "idle"
    # an item of another gateway inside the snapshot is refused as a whole
    problem = await pool.snapshot("gw-1", 2, update("elsewhere", 2, gateway="gw-2"), expect=422)
    assert "gateway_id" in problem["detail"]


async def test_silent_gateway_goes_offline_and_reconnect_converges(pool: Pool) -> None:
    await pool.put_machine("h-1", profile())
    await pool.availability(update("h-1", 1))
    pool.pool.advance_clock(LIVENESS_TIMEOUT + 60)  # 16 minutes without a word
    state = (await pool.machine("h-1"))["availability"]
    assert (state["status"], state["available"], state["live"]) == ("offline", "none", False)
    assert "silent" in state["reason"]
    demand = await pool.demand()
    [match] = await pool.matches(demand)
    assert match["decision"] == "rejected" and "silent" in match["reason"]
    # reconnect: one snapshot and the machine is live, with what the gateway says now
    out = await pool.snapshot("gw-1", 1, update("h-1", 2, status="working"))
    assert [r["result"] for r in out["results"]] == ["applied"]
    state = (await pool.machine("h-1"))["availability"]
    assert (state["status"], state["live"]) == ("working", True)
    [match] = await pool.matches(demand)
    assert match["decision"] == "recommended"


async def test_retired_machines_are_unknown_until_registered_again(pool: Pool) -> None:
    await pool.put_machine("h-1", profile())
    await pool.availability(update("h-1", 1))
    delete = ("DELETE", "/v1/machines/{machine_id}")
    assert (await pool.call(*delete, "gw-token", expect=200, machine_id="h-1"))[
        "result"
    ] == "retired"
    assert (await pool.call(*delete, "gw-token", expect=200, machine_id="h-1"))[
        "result"
    ] == "already_retired"
    await pool.call(*delete, "gw-token", expect=404, machine_id="never")
    assert await pool.availability(update("h-1", 2)) == ["unknown_machine"]
    assert await pool.matches(await pool.demand()) == []
    assert (await pool.put_machine("h-1", profile(version=2), expect=200))["result"] == "updated"
    assert (await pool.machine("h-1"))["retired"] is False
    assert await pool.availability(update("h-1", 2)) == ["applied"]


# --------------------------------------------------------------------------------------------
# Matching and bookings
# --------------------------------------------------------------------------------------------


async def register(
    pool: Pool, mid: str, seq: int = 1, prof: dict[str, Any] | None = None, **upd: Any
) -> None:
    prof = prof or profile()
    await pool.put_machine(mid, prof)
    assert await pool.availability(update(mid, seq, gateway=prof["gateway_id"], **upd)) == [
        "applied"
    ]


async def test_matches_are_ranked_with_decisions_at_the_thresholds(pool: Pool) -> None:
    """A demand for 20 ha over 2 days (10 ha/day) at HERE within 50 km."""
    far_30km = (round(HERE[0] + 0.27, 2), HERE[1])  # 30.0 km north
    # 0.35·1 + 0.25·1 + 0.25·1 + 0.15·0.98 = 0.997
    await register(pool, "best", risk=0.02)
    # 0.35·0.5 + 0.25·1 + 0.25·0.5 + 0.15·1 = 0.70 (capacity half, one day of two)
    await register(pool, "review", prof=profile(capacity=5), windows=[span(DAY1, 24)])
    # exactly 0.80: 0.35 + 0.25 + 0.25·0.2 + 0.15 (window 9.6 h of 48)
    await register(pool, "edge-80", windows=[span(DAY1, 9.6)])
    # exactly 0.60: 0.35·0.2 + 0.25 + 0.25·0.52 + 0.15 (2 ha/day of 10; 24.96 h of 48)
    await register(pool, "edge-60", prof=profile(capacity=2), windows=[span(DAY1, 24.96)])
    # 0.35·0.2 + 0.25·0.4 + 0.25·0.25 + 0.15·0.5 = 0.3075
    await register(
        pool, "weak", prof=profile(capacity=2, at=far_30km), risk=0.5, windows=[span(DAY1, 12)]
    )
    # hard rules, whatever the score
    await register(pool, "broken", status="fault", available="none", reason="hydraulics")
    await register(pool, "too-far", prof=profile(at=(round(HERE[0] + 0.54, 2), HERE[1])))
    await register(pool, "worn", risk=0.1, rul=10)  # 10 h of life for a 48 h job
    await register(pool, "private", prof=profile(shared=False))
    await register(pool, "limited", available="limited", reason="elevated failure risk", risk=0.3)
    await register(pool, "grader", prof=profile(capability="grading", unit="t/h"))
    await pool.put_machine("silent", profile())  # registered, never reported

    matches = await pool.matches(await pool.demand())
    by_id = {m["machine_id"]: m for m in matches}
    assert "grader" not in by_id
    expected = {
        "best": (0.997, "recommended"),
        "limited": (0.955, "recommended"),
        "edge-80": (0.8, "recommended"),
        "review": (0.7, "manual_review"),
        "edge-60": (0.6, "manual_review"),
        "weak": (0.3075, "rejected"),
    }
    for mid, (score, decision) in expected.items():
        got = (by_id[mid]["score"], by_id[mid]["decision"])
        assert got == (pytest.approx(score, abs=0.001), decision), mid
    assert (by_id["edge-80"]["score"], by_id["edge-60"]["score"]) == (0.8, 0.6)
    assert by_id["review"]["components"] == {
        "capability": 0.5,
        "distance": 1.0,
        "window_overlap": 0.5,
        "health": 1.0,
    }
    assert by_id["weak"]["distance_km"] == pytest.approx(30.0, abs=0.1)
    assert by_id["weak"]["components"]["distance"] == pytest.approx(0.4, abs=0.002)
    assert by_id["limited"]["reason"] == "limited: elevated failure risk"
    assert by_id["best"]["reason"] is None
    rejected = {
        "broken": "not available: hydraulics",
        "too-far": "beyond 50 km",
        "worn": "remaining useful life 10 h",
        "private": "not shared",
        "silent": "no availability reported",
    }
    for mid, why in rejected.items():
        assert by_id[mid]["decision"] == "rejected" and why in by_id[mid]["reason"], mid
    assert by_id["too-far"]["score"] == 0.75  # rejected by the rule, not by the score
    order = [m["machine_id"] for m in matches]
    assert order[:5] == ["best", "limited", "edge-80", "review", "edge-60"]
    assert all(m["decision"] == "rejected" for m in matches[5:])
    assert [m["score"] for m in matches[5:]] == sorted(
        (m["score"] for m in matches[5:]), reverse=True
    )

    # min_health: the worn and the risky fall out, the healthy stay
    strict = await pool.matches(await pool.demand(min_health=0.9))
    decisions = {m["machine_id"]: m["decision"] for m in strict}
    assert decisions["best"] == "recommended" and decisions["limited"] == "rejected"
    # only the demand's organisation (or an operator) sees its matches
    demand = await pool.demand()
    await pool.call(
        "GET", "/v1/demands/{demand_id}/matches", "coop-cane", expect=404, demand_id=demand
    )
    assert len(await pool.matches(demand, "op-token")) == len(matches)


async def test_bookings_conflict_feed_and_cancel(pool: Pool) -> None:
    await register(
        pool,
        "h-1",
        prof=profile(min_hours=4),
        windows=[span(DAY1 + timedelta(hours=6), 12), span(DAY1 + timedelta(hours=30), 12)],
    )
    await register(pool, "broken", available="none", reason="fault", status="fault")
    await register(pool, "other-gw", prof=profile(gateway="gw-2"))
    demand = await pool.demand()
    morning = DAY1 + timedelta(hours=6)
    b1 = await pool.book(demand, "h-1", morning, 12)
    assert (b1["status"], b1["machine_id"], b1["customer_org"]) == ("confirmed", "h-1", FRUIT)
    assert b1["start"] == ts(morning) and b1["demand_id"] == demand

    conflict = await pool.book(demand, "h-1", morning + timedelta(hours=6), 4, expect=409)
    assert "booked from" in conflict["detail"]
    assert (
        "whole"
        in (await pool.book(demand, "h-1", DAY1 + timedelta(hours=20), 12, expect=409))["detail"]
    )
    assert (
        "at least 4 h"
        in (await pool.book(demand, "h-1", DAY1 + timedelta(hours=30), 2, expect=409))["detail"]
    )
    assert "not available" in (await pool.book(demand, "broken", morning, 8, expect=409))["detail"]
    await pool.book(demand, "h-1", DAY1 + timedelta(days=3), 8, expect=422)  # outside the demand
    await pool.book(demand, "nope", morning, 8, expect=404)
    await pool.book(demand, "h-1", morning, 8, token="coop-cane", expect=404)  # not their demand
    # the booked day no longer counts as free
    [h1] = [m for m in await pool.matches(demand) if m["machine_id"] == "h-1"]
    assert h1["components"]["window_overlap"] == 0.25

    b2 = await pool.book(demand, "h-1", DAY1 + timedelta(hours=30), 12)
    b3 = await pool.book(demand, "other-gw", morning, 8)
    assert b1["version"] < b2["version"] < b3["version"]
    feed = await pool.feed("gw-1")
    assert [b["booking_id"] for b in feed["bookings"]] == [b1["booking_id"], b2["booking_id"]]
    assert (feed["next_since_version"], feed["has_more"]) == (b2["version"], False)
    page = await pool.feed("gw-1", limit=1)
    assert (len(page["bookings"]), page["has_more"], page["next_since_version"]) == (
        1,
        True,
        b1["version"],
    )
    assert (await pool.feed("gw-1", since=b2["version"]))["bookings"] == []
    assert [b["booking_id"] for b in (await pool.feed("gw-2"))["bookings"]] == [b3["booking_id"]]

    cancel = ("DELETE", "/v1/bookings/{booking_id}")
    await pool.call(*cancel, "coop-cane", expect=403, booking_id=b1["booking_id"])
    cancelled = await pool.call(*cancel, "coop-token", expect=200, booking_id=b1["booking_id"])
    assert cancelled["status"] == "cancelled" and cancelled["version"] > b3["version"]
    again = await pool.call(*cancel, "coop-token", expect=200, booking_id=b1["booking_id"])
    assert again == cancelled
    await pool.call(*cancel, "coop-token", expect=404, booking_id="b-nope")
    feed = await pool.feed("gw-1", since=b2["version"])
    assert [(b["booking_id"], b["status"]) for b in feed["bookings"]] == [
        (b1["booking_id"], "cancelled")
    ]
    # the window is free again
    await pool.book(demand, "h-1", morning, 12)
    # feeds belong to the gateway's organisation and role
    await pool.call(
        "GET", "/v1/gateways/{gateway_id}/bookings", "gw-other", expect=403, gateway_id="gw-1"
    )
    await pool.call(
        "GET", "/v1/gateways/{gateway_id}/bookings", "coop-token", expect=403, gateway_id="gw-1"
    )
    assert (await pool.feed("gw-new"))["bookings"] == []


# --------------------------------------------------------------------------------------------
# Usage
# --------------------------------------------------------------------------------------------


async def test_usage_is_recorded_exactly_once(pool: Pool) -> None:
    await register(pool, "h-1")
    booking = await pool.book(await pool.demand(), "h-1", DAY1 + timedelta(hours=6), 12)
    bid = booking["booking_id"]
    r1 = usage_record(bid, "h-1", ZERO)
    r2 = usage_record(
        bid,
        "h-1",
        r1["hash"],
        engine_hours=12,
        hectares=7,
        period=span(DAY1 + timedelta(hours=12), 6),
    )
    assert await pool.usage(r1, r2) == ["applied", "applied"]
    r3 = usage_record(bid, "h-1", r2["hash"], engine_hours=1.25, energy_kwh=30.5)
    assert await pool.usage(r1, r2, r3) == ["duplicate", "duplicate", "applied"]
    stored = await pool.pool.usage_records(bid)
    assert [r["record_id"] for r in stored] == [r1["record_id"], r2["record_id"], r3["record_id"]]
    assert stored[1]["engine_hours"] == 12  # integers hash as sent

    tampered = {**r1, "hectares": 60.2}
    wrong_chain = {**usage_record(bid, "h-1", ZERO, hectares=1.0), "hash": r1["hash"]}
    elsewhere = usage_record("b-nope", "h-1", ZERO)
    foreign = usage_record(bid, "h-1", ZERO, hectares=2.0)
    assert await pool.usage(tampered, wrong_chain, elsewhere) == [
        "invalid",
        "invalid",
        "unknown_booking",
    ]
    assert await pool.usage(foreign, token="gw-other") == ["unknown_booking"]
    await pool.call("POST", "/v1/usage", "coop-token", json={"records": [r1]}, expect=403)
    assert len(await pool.pool.usage_records(bid)) == 3


# --------------------------------------------------------------------------------------------
# Tokens, organisations, data classes
# --------------------------------------------------------------------------------------------


async def test_roles_and_organisations(pool: Pool) -> None:
    body = profile()
    assert (
        "cooperative" in (await pool.put_machine("h-1", body, "coop-token", expect=403))["detail"]
    )
    await pool.put_machine("h-1", body, None, expect=401)
    await pool.put_machine("h-1", body, "forged", expect=401)
    await pool.put_machine("h-1", {}, None, expect=401)  # the token is checked before the body
    await pool.put_machine("h-1", body)
    # another organisation can neither take over the machine nor its gateway id
    other = await pool.put_machine(
        "h-1", profile(version=5, owner_org=OTHER), "gw-other", expect=403
    )
    assert "another organisation" in other["detail"]
    await pool.put_machine(
        "h-2", profile(owner_org=OTHER), "gw-other", expect=403
    )  # gw-1 is CANE's
    await pool.call("DELETE", "/v1/machines/{machine_id}", "gw-other", expect=403, machine_id="h-1")
    await pool.snapshot("gw-1", 1)  # the owner's snapshot is fine
    await pool.call(
        "PUT",
        "/v1/gateways/{gateway_id}/snapshot",
        "gw-other",
        json={"seq": 9, "ts": ts(T0), "items": []},
        expect=403,
        gateway_id="gw-1",
    )
    await pool.call("POST", "/v1/demands", "gw-token", json={}, expect=403)
    await pool.call("GET", "/v1/machines/{machine_id}", "coop-token", expect=404, machine_id="nope")
    # an operator may do both sides
    assert (await pool.put_machine("h-1", profile(version=2), "op-token", expect=200))[
        "result"
    ] == "updated"
    await pool.demand(token="op-token")


async def test_restricted_fields_only_for_the_owning_organisation(pool: Pool) -> None:
    secret = {
        "exact_location": {"lat": 22.8213, "lon": 108.3177},
        "operator_name": "Li Wei",
        "operator_phone": "+86 138 0000 0000",
    }
    await pool.put_machine("h-1", profile(restricted=secret))
    assert (await pool.machine("h-1", "gw-token"))["restricted"] == secret
    assert (await pool.machine("h-1", "coop-cane"))["restricted"] == secret
    for token in ("coop-token", "gw-other", "op-token"):
        view = await pool.machine("h-1", token)
        assert "restricted" not in view, token
        assert "Li Wei" not in json.dumps(view) and "22.8213" not in json.dumps(view)
    # restricted fields are accepted only from the owner organisation
    foreign = profile(owner_org=OTHER, restricted=secret)
    assert "owner organisation" in (await pool.put_machine("h-2", foreign, expect=403))["detail"]
    # a public location must already be coarse
    exact = profile(at=(22.8213, 108.3177))
    problem = await pool.put_machine("h-3", exact, expect=422)
    assert {e["location"] for e in problem["errors"]} == {"body.location.lat", "body.location.lon"}
    assert "0.01°" in problem["errors"][0]["message"]


async def test_malformed_bodies_are_problems(pool: Pool) -> None:
    await pool.put_machine("h-1", profile())
    extra = {**update("h-1", 1), "operator_phone": "+86"}
    problem = await pool.call(
        "POST", "/v1/availability", "gw-token", json={"items": [extra]}, expect=422
    )
    assert problem["errors"][0]["location"] == "body.items.0.operator_phone"
    backwards = update(
        "h-1", 1, windows=[{"start": ts(DAY1), "end": ts(DAY1 - timedelta(hours=1))}]
    )
    await pool.call("POST", "/v1/availability", "gw-token", json={"items": [backwards]}, expect=422)
    await pool.call("POST", "/v1/availability", "gw-token", json={"items": []}, expect=422)
    await pool.put_machine("bad.id", profile(), expect=422)
    await pool.call(
        "GET",
        "/v1/gateways/{gateway_id}/bookings",
        "gw-token",
        params={"limit": 0},
        expect=422,
        gateway_id="gw-1",
    )


# --------------------------------------------------------------------------------------------
# Run alone
# --------------------------------------------------------------------------------------------


def test_runs_alone_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "simulators.central_pool",
        "--port",
        str(port),
        "--db",
        str(tmp_path / "pool.db"),
        "--token",
        "gw-token:gateway:Demo Cane Cooperative",
        "--token",
        "coop-token:cooperative:Demo Fruit Cooperative",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert f"http://127.0.0.1:{port}" in line and "2 tokens" in line, line
        r = httpx.put(
            f"http://127.0.0.1:{port}/v1/machines/h-1",
            json=profile(),
            headers={"Authorization": "Bearer gw-token"},
        )
        assert r.status_code == 201, r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert (tmp_path / "pool.db").exists()
    bad = subprocess.run(
        [*cmd[:3], "--token", "x:admin:Org"], cwd=ROOT, capture_output=True, timeout=30
    )
    assert bad.returncode == 2 and b"role must be" in bad.stderr
