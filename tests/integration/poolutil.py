"""What the pool-sync tests (over HTTP and over MQTT) share: the owner and customer tokens of
the reference pool, the shared pump, the simulated plant it runs on, a cooperative's client,
and a demand for pumping near the pump."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from simulators.central_pool import CentralPool
from simulators.modbus_plant import ModbusPlant
from simulators.signals import ManualClock

OWNER = "Demo Cane Cooperative"
CUSTOMER = "Demo Fruit Cooperative"
TOKENS = {
    "gw-token": {"org": OWNER, "role": "gateway"},
    "coop-token": {"org": CUSTOMER, "role": "cooperative"},
}
EXACT = (22.81734, 108.36651)
CONTACT = {"contact_name": "Li Wei", "phone": "+86 138 0000 0000", "email": "li.wei@example.org"}
ALL_WEEK = [
    {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"}
]
PUMP = "booster-pump-1"


def pump_machine(**extra: Any) -> dict[str, Any]:
    """The pump on unit 1 of the plant, shared all week, with personal and restricted data
    that must not leave as public data."""
    return {
        "id": PUMP,
        "type": "pump",
        "name": "Booster pump 1",
        "make": "Generic",
        "model": "PS-VFD-1",
        "serial_number": "PS-0042",
        "owner": {"org": OWNER, **CONTACT},
        "location": {"lat": EXACT[0], "lon": EXACT[1], "timezone": "Asia/Shanghai"},
        "capabilities": [{"name": "pumping", "capacity": 120, "unit": "m3/h"}],
        "sharing": {"shared": True, "weekly": ALL_WEEK, "min_booking_hours": 1},
        "device": "pump-1",
        **extra,
    }


@pytest.fixture
async def plant() -> AsyncIterator[ModbusPlant]:
    """The Modbus plant with a frozen clock: the pump's status changes only by writes."""
    async with ModbusPlant.tcp(port=0, clock=ManualClock(1_000_000.0)) as p:
        yield p


def client(pool: CentralPool, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=pool.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def coop(pool: CentralPool) -> httpx.AsyncClient:
    """The customer cooperative at the pool."""
    return client(pool, "coop-token")


async def pool_state(http: httpx.AsyncClient, machine: str) -> dict[str, Any] | None:
    resp = await http.get(f"/v1/machines/{machine}")
    if resp.status_code != 200:
        return None
    return resp.json()


async def status_at_pool(http: httpx.AsyncClient, machine: str = PUMP) -> str | None:
    view = await pool_state(http, machine)
    avail = (view or {}).get("availability") or {}
    return avail.get("status")


async def post_pumping_demand(http: httpx.AsyncClient, start: datetime, end: datetime) -> str:
    """300 m3 of pumping near the pump between `start` and `end`; the demand's id."""
    demand = {
        "capability": "pumping",
        "quantity": 300,
        "unit": "m3",
        "location": {"lat": 22.80, "lon": 108.35},
        "max_distance_km": 50,
        "window": {"start": start.isoformat(), "end": end.isoformat()},
    }
    resp = await http.post("/v1/demands", json=demand)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["demand_id"])
