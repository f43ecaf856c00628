"""Pool sync bench: how long a status change on a device takes to reach the pool's record, and
what the sync costs per machine per hour on the wire.

One process: a Modbus plant of `machines` pump units on loopback, the gateway polling each at
0.2 s, the reference central pool (its own SQLite file); all on one event loop, so the
figures include their competition for the CPU. A change is `pump_enable` written on a random
pump (working <-> idle); the latency runs from that write to the pool holding the new status
(read from the pool's store every 10 ms), so it includes the Modbus poll (<= 0.2 s), the
status evaluation (every 0.2 s), the store commit and the outbox runner.

Bytes per machine per hour are measured per operation (request + response bodies, without
HTTP headers, counted by the gateway's client) and added up for the default intervals:
bookings read every 30 s, a snapshot every 5 min, and `CHANGES_PER_HOUR` status changes per
machine.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.runtime import Gateway
from simulators.central_pool import CentralPool
from simulators.modbus_plant import ModbusPlant
from tests.integration.gwutil import plant_config

CHANGES_PER_HOUR = 6
DEFAULT_SYNC_S = 30.0
DEFAULT_SNAPSHOT_S = 300.0
TOKENS = {"gw-token": {"org": "Bench Co-op", "role": "gateway"}}
ALL_WEEK = [
    {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "06:00", "end": "18:00"}
]


def _machine(i: int) -> dict[str, Any]:
    return {
        "id": f"pump-m{i}",
        "type": "pump",
        "make": "Generic",
        "model": "PS-VFD-1",
        "owner": {"org": "Bench Co-op"},
        "location": {"lat": 22.8 + i / 1000, "lon": 108.3, "timezone": "Asia/Shanghai"},
        "capabilities": [{"name": "pumping", "capacity": 120, "unit": "m3/h"}],
        "sharing": {"shared": True, "weekly": ALL_WEEK},
        "device": f"pump-{i}",
    }


def _device(i: int, port: int) -> dict[str, Any]:
    return {
        "id": f"pump-{i}",
        "protocol": "modbus-tcp",
        "host": "127.0.0.1",
        "port": port,
        "unit_id": i,
        "profile": "pump-station",
        "poll_interval": 0.2,
        "poll_groups": {"slow": 5.0},
        "timeout": 1.0,
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _run(machines: int, changes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="millrace-bench-pool-") as tmp:
        folder = Path(tmp)
        units = [f"pump-station:{i}" for i in range(1, machines + 1)]
        async with (
            ModbusPlant.tcp(units=units, port=0) as plant,
            CentralPool(port=0, db_path=folder / "pool.db", tokens=TOKENS) as pool,
        ):
            loaded = plant_config(
                folder,
                plant.port,
                devices=[_device(i, plant.port) for i in range(1, machines + 1)],
                equipment=[_machine(i) for i in range(1, machines + 1)],
                pool={
                    "url": pool.url,
                    "token": "gw-token",
                    "token_org": "Bench Co-op",
                    "sync_interval": 1.0,
                    "snapshot_interval": 30.0,
                    "status_interval": 0.2,
                },
            )
            gw = Gateway(loaded)
            await gw.start()
            try:
                return await _measure(gw, pool, plant, machines, changes)
            finally:
                await gw.stop()


async def _pool_status(pool: CentralPool, machine: str) -> str | None:
    from simulators.central_pool import PoolError, Role, TokenInfo

    who = TokenInfo(org="Bench Co-op", role=Role.GATEWAY)
    try:
        view = await pool.call(pool.store.get_machine, machine, who, pool.now())
    except PoolError:  # not registered yet
        return None
    return ((view or {}).get("availability") or {}).get("status")


async def _wait(pool: CentralPool, machine: str, want: str, timeout: float = 20.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await _pool_status(pool, machine) == want:
            return time.monotonic() - t0
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{machine} not {want} at the pool within {timeout} s")


async def _measure(
    gw: Gateway, pool: CentralPool, plant: ModbusPlant, machines: int, changes: int
) -> dict[str, Any]:
    assert gw.pool is not None
    for i in range(1, machines + 1):
        plant.units[i].write_value("pump_enable", True)
    # every pump starts working (one the simulator runs in its worn-bearing zone D is
    # `fault` instead: such pumps are left out of the changes)
    working: list[int] = []
    for i in range(1, machines + 1):
        t0 = time.monotonic()
        while (state := await _pool_status(pool, f"pump-m{i}")) in (None, "offline"):
            if time.monotonic() - t0 > 60:
                raise TimeoutError(f"pump-m{i} never reported to the pool")
            await asyncio.sleep(0.05)
        if state == "working":
            working.append(i)
    if not working:
        raise RuntimeError("no pump is working: nothing to toggle")
    rng = random.Random(7)
    enabled = dict.fromkeys(working, True)
    lat: list[float] = []
    client = gw.pool.client
    b0 = client.bytes_out + client.bytes_in
    sent0 = gw.pool.sender.items_sent
    for _ in range(changes):
        i = rng.choice(working)
        enabled[i] = not enabled[i]
        plant.units[i].write_value("pump_enable", enabled[i])
        lat.append(await _wait(pool, f"pump-m{i}", "working" if enabled[i] else "idle"))
        await asyncio.sleep(rng.uniform(0.1, 0.4))
    # bytes per availability update, as sent (runner batches may carry several)
    per_update = (client.bytes_out + client.bytes_in - b0) / max(
        1, gw.pool.sender.items_sent - sent0
    )
    # one bookings read and one snapshot, measured alone
    b1 = client.bytes_out + client.bytes_in
    await gw.pool.pull_bookings()
    per_poll = client.bytes_out + client.bytes_in - b1
    b2 = client.bytes_out + client.bytes_in
    await gw.pool.snapshot()
    per_snapshot = client.bytes_out + client.bytes_in - b2
    hourly = (
        per_poll * 3600 / DEFAULT_SYNC_S / machines
        + per_snapshot * 3600 / DEFAULT_SNAPSHOT_S / machines
        + per_update * CHANGES_PER_HOUR
    )
    return {
        "kind": "pool",
        "name": f"pool-sync-{machines}-machines",
        "machines": machines,
        "changes": changes,
        "status_to_pool_p50_ms": round(statistics.median(lat) * 1000, 1),
        "status_to_pool_p95_ms": round(_pct(lat, 0.95) * 1000, 1),
        "status_to_pool_max_ms": round(max(lat) * 1000, 1),
        "bytes_per_update": round(per_update),
        "bytes_per_bookings_poll": per_poll,
        "bytes_per_snapshot": per_snapshot,
        "bytes_per_machine_hour": round(hourly),
    }


def pool_workload(machines: int = 20, changes: int = 40) -> dict[str, Any]:
    return asyncio.run(_run(machines, changes))


def pool_table(results: list[dict[str, Any]]) -> str:
    cols = [
        ("name", "workload"),
        ("status_to_pool_p50_ms", "change->pool p50 ms"),
        ("status_to_pool_p95_ms", "p95 ms (goal <= 2000)"),
        ("status_to_pool_max_ms", "max ms"),
        ("bytes_per_update", "B/update"),
        ("bytes_per_bookings_poll", "B/bookings poll"),
        ("bytes_per_snapshot", "B/snapshot"),
        ("bytes_per_machine_hour", "B/machine/hour"),
    ]
    rows = [[str(r.get(c, r.get("error", ""))) for c, _ in cols] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (_, h) in enumerate(cols)]
    out = [" | ".join(h.ljust(w) for (_, h), w in zip(cols, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)
