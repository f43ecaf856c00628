"""The gateway and the reference central pool over real HTTP: a Modbus pump and an OPC UA mill
simulated on loopback, the gateway's real store, registry and ledger files, the reference
pool's real SQLite file. Nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from gateway.runtime import Gateway
from simulators.central_pool import CentralPool
from simulators.modbus_plant import ModbusPlant
from simulators.opcua_machine import OpcuaMachineLine
from tests.integration import poolutil
from tests.integration.gwutil import MILL1, eventually, plant_config
from tests.integration.poolutil import (
    ALL_WEEK,
    CONTACT,
    EXACT,
    OWNER,
    TOKENS,
    client,
    coop,
    pool_state,
    post_pumping_demand,
    pump_machine,
    status_at_pool,
)

plant = poolutil.plant


def pool_section(pool: CentralPool, **extra: Any) -> dict[str, Any]:
    return {
        "url": pool.url,
        "token": "gw-token",
        "token_org": OWNER,
        "sync_interval": 1.0,
        "snapshot_interval": 5.0,
        "status_interval": 0.2,
        **extra,
    }


def owner(pool: CentralPool) -> httpx.AsyncClient:
    """The owner organisation's token at the pool (the gateway's)."""
    return client(pool, "gw-token")


async def test_a_status_change_reaches_the_pool_and_public_data_is_desensitized(
    plant: ModbusPlant, tmp_path: Path
) -> None:
    async with CentralPool(
        port=0, db_path=str(tmp_path / "central-pool.db"), tokens=TOKENS
    ) as pool:
        loaded = plant_config(
            tmp_path, plant.port, equipment=[pump_machine()], pool=pool_section(pool)
        )
        async with Gateway(loaded) as gw, coop(pool) as them, owner(pool) as us:
            plant.units[1].write_value("pump_enable", True)

            async def working() -> bool:
                return await status_at_pool(them, "booster-pump-1") == "working"

            await eventually(working, timeout=15, what="the pump working, at the pool")
            t0 = time.monotonic()
            plant.units[1].write_value("pump_enable", False)

            async def idle() -> bool:
                return await status_at_pool(them, "booster-pump-1") == "idle"

            await eventually(idle, timeout=10, what="idle at the pool")
            took = time.monotonic() - t0
            assert took < 5, f"status change took {took:.2f} s to reach the pool"
            # the local side says the same, with the seq the pool holds
            live = gw.sharing.get("booster-pump-1")
            view = await pool_state(them, "booster-pump-1")
            assert view is not None
            assert live.status.value == "idle" and view["availability"]["seq"] == live.update["seq"]
            # what another organisation sees: coarse place, no contact, no restricted part
            text = json.dumps(view)
            assert view["location"] == {"lat": 22.82, "lon": 108.37, "precision_m": 1113}
            assert "restricted" not in view
            for secret in (*CONTACT.values(), str(EXACT[0]), str(EXACT[1]), "PS-0042"):
                assert secret not in text
            assert len(view["owner_ref"]) == 64
            # the owner organisation's token sees the restricted part, still no contact
            mine = await pool_state(us, "booster-pump-1")
            assert mine is not None
            assert mine["restricted"]["exact_location"] == {"lat": EXACT[0], "lon": EXACT[1]}
            assert mine["restricted"]["serial_number"] == "PS-0042"
            # nothing personal reached the pool's disk at all
            with sqlite3.connect(tmp_path / "central-pool.db") as db:
                dump = "\n".join(db.iterdump())
            for secret in CONTACT.values():
                assert secret not in dump
            # the updates went through the store like any reading
            stored = await gw.store.history("booster-pump-1.sharing_status", limit=100)
            assert [r.value for r in stored][-2:] == ["working", "idle"]


async def test_after_ten_minutes_offline_the_pool_converges_within_one_sync_interval(
    plant: ModbusPlant, tmp_path: Path
) -> None:
    db = str(tmp_path / "central-pool.db")
    pool = CentralPool(port=0, db_path=db, tokens=TOKENS)
    await pool.start()
    port = pool.port
    loaded = plant_config(tmp_path, plant.port, equipment=[pump_machine()], pool=pool_section(pool))
    gw = Gateway(loaded)
    await gw.start()
    try:
        plant.units[1].write_value("pump_enable", True)
        async with coop(pool) as them:
            await eventually(
                lambda: status_at_pool(them, "booster-pump-1"), timeout=15, what="first sync"
            )
        await pool.stop()  # the pool (or the line to it) is gone
        # while it is gone the pump stops, then trips on overload: two changes queue on disk
        plant.units[1].write_value("pump_enable", False)
        await eventually(
            lambda: gw.sharing.get("booster-pump-1").status.value == "idle", what="idle here"
        )
        plant.units[1].write_value("pump_enable", True)
        plant.units[1].write_value("speed_setpoint", 2800)  # trips the overload relay
        await eventually(
            lambda: gw.sharing.get("booster-pump-1").status.value == "fault",
            timeout=15,
            what="fault here",
        )
        pending = (await gw.store.pending_matching("uplink:pool", 100, ".sharing_update"))[0]
        assert len(pending) >= 2, "the changes wait in the outbox"
        # ten minutes later (the pool's clock is advanced, nobody waits) the pool is back
        pool2 = CentralPool(port=port, db_path=db, tokens=TOKENS)
        pool2.advance_clock(600)
        await pool2.start()
        t0 = time.monotonic()
        try:
            async with coop(pool2) as them:

                async def converged() -> bool:
                    view = await pool_state(them, "booster-pump-1")
                    live = gw.sharing.get("booster-pump-1")
                    return bool(
                        view
                        and view["availability"]
                        and view["availability"]["seq"] == live.update["seq"]
                        and view["availability"]["status"] == "fault"
                        and view["availability"]["available"] == "none"
                    )

                await eventually(converged, timeout=10, interval=0.05, what="convergence")
                took = time.monotonic() - t0
                assert took <= gw.config.pool.sync_interval + 1.0, f"converged in {took:.2f} s"
        finally:
            await pool2.stop()
    finally:
        await gw.stop()


async def test_duplicate_and_out_of_order_deliveries_change_nothing(
    plant: ModbusPlant, tmp_path: Path
) -> None:
    async with CentralPool(
        port=0, db_path=str(tmp_path / "central-pool.db"), tokens=TOKENS
    ) as pool:
        loaded = plant_config(
            tmp_path, plant.port, equipment=[pump_machine()], pool=pool_section(pool)
        )
        async with Gateway(loaded) as gw, coop(pool) as them:
            # working (as it starts), idle (stopped), fault (overload trip)
            steps = [("working", {}), ("idle", {"pump_enable": False})]
            steps.append(("fault", {"pump_enable": True, "speed_setpoint": 2800}))
            for want, writes in steps:
                for name, value in writes.items():
                    plant.units[1].write_value(name, value)

                async def there(want: str = want) -> bool:
                    return await status_at_pool(them, "booster-pump-1") == want

                await eventually(there, timeout=10, what=want)
            before = await pool_state(them, "booster-pump-1")
            sent = [
                json.loads(r.value)
                for r in await gw.store.history("booster-pump-1.sharing_update", limit=100)
            ]
            assert len(sent) >= 3
            # everything again, newest first, then oldest first
            results = await gw.pool.client.post_availability(sent[::-1])
            results += await gw.pool.client.post_availability(sent)
            assert {r["result"] for r in results} <= {"duplicate", "stale"}
            assert results[0]["result"] == "duplicate"
            after = await pool_state(them, "booster-pump-1")
            assert before is not None and after is not None
            assert after["availability"] == before["availability"]


async def test_a_booking_round_trip_blocks_the_window_locally_and_usage_is_metered_once(
    plant: ModbusPlant, tmp_path: Path
) -> None:
    async with CentralPool(
        port=0, db_path=str(tmp_path / "central-pool.db"), tokens=TOKENS
    ) as pool:
        loaded = plant_config(
            tmp_path, plant.port, equipment=[pump_machine()], pool=pool_section(pool)
        )
        async with Gateway(loaded) as gw, coop(pool) as them:
            plant.units[1].write_value("pump_enable", False)  # idle: full availability

            async def idle() -> bool:
                return await status_at_pool(them, "booster-pump-1") == "idle"

            await eventually(idle, timeout=15, what="idle at the pool")
            now = datetime.now(UTC).replace(microsecond=0)
            start, end = now + timedelta(hours=2), now + timedelta(hours=5)
            demand_id = await post_pumping_demand(them, start, end)
            matches = (await them.get(f"/v1/demands/{demand_id}/matches")).json()
            best = matches["matches"][0]
            assert best["machine_id"] == "booster-pump-1", matches
            assert best["decision"] == "recommended", best
            booking = (
                await them.post(
                    f"/v1/demands/{demand_id}/bookings",
                    json={
                        "machine_id": "booster-pump-1",
                        "start": start.isoformat(),
                        "end": end.isoformat(),
                    },
                )
            ).json()
            assert booking["status"] == "confirmed", booking

            def blocked_here() -> bool:
                avail = gw.sharing.get("booster-pump-1").availability
                assert avail is not None
                return all(e <= start or s >= end for s, e in avail.windows) and bool(avail.windows)

            await eventually(blocked_here, timeout=10, what="the booked window blocked locally")
            assert (
                gw.sharing.ledger.bookings("booster-pump-1")[0].booking_id == booking["booking_id"]
            )

            async def blocked_there() -> bool:
                view = await pool_state(them, "booster-pump-1")
                windows = (view or {}).get("availability", {}).get("windows", [])
                spans = [
                    (datetime.fromisoformat(w["start"]), datetime.fromisoformat(w["end"]))
                    for w in windows
                ]
                return bool(spans) and all(e <= start or s >= end for s, e in spans)

            await eventually(blocked_there, timeout=10, what="the pool's windows without it")

            # the booking ends (the gateway's clock jumps past it): metered, delivered once
            gw.sharing.clock = lambda: time.time() + 6 * 3600
            gw.sharing.poke()

            async def delivered() -> list[dict[str, Any]]:
                return await pool.usage_records(booking["booking_id"])

            (record,) = await eventually(delivered, timeout=10, what="usage at the pool")
            assert record["machine_id"] == "booster-pump-1"
            check = await gw.sharing.metering.verify()
            assert check.ok
            gw.pool.poke()
            await asyncio.sleep(2.5)  # more sync cycles: nothing is sent twice
            assert len(await pool.usage_records(booking["booking_id"])) == 1
            assert gw.pool.usage_delivered == 1


async def test_a_machine_with_a_high_predicted_failure_risk_is_withdrawn(tmp_path: Path) -> None:
    mill = {
        "id": "mill-1",
        "type": "cnc_mill",
        "make": "Generic",
        "model": "VMC-850",
        "owner": {"org": OWNER},
        "location": {"lat": 22.8, "lon": 108.3},
        "capabilities": [{"name": "milling", "capacity": 10, "unit": "parts/h"}],
        "sharing": {"shared": True, "weekly": ALL_WEEK},
        "device": "line-1",
        "point_prefix": "mill1_",
        "health": {"models": ["mill1-pdm"]},
    }
    async with (
        OpcuaMachineLine(port=0, tick=3600, machines=1) as sim,
        CentralPool(port=0, db_path=str(tmp_path / "central-pool.db"), tokens=TOKENS) as pool,
    ):
        await sim.set_value("Mill1", "ToolWear", 10)
        await sim.set_value("Mill1", "SpindleTorque", 30.0)
        loaded = plant_config(
            tmp_path,
            0,
            devices=[
                {
                    "id": "line-1",
                    "protocol": "opcua",
                    "endpoint": sim.endpoint,
                    "profile": "cnc-machine-line",
                    "publishing_interval": 0.1,
                }
            ],
            equipment=[mill],
            models=[
                {"id": "mill1-pdm", "model": "pdm-failure", "equipment": "mill-1", "inputs": MILL1}
            ],
            pool=pool_section(pool),
        )
        async with Gateway(loaded), coop(pool) as them:

            async def offered() -> bool:
                view = await pool_state(them, "mill-1")
                return ((view or {}).get("availability") or {}).get("available") in (
                    "full",
                    "limited",
                )

            await eventually(offered, timeout=20, what="the healthy mill offered")
            # worn tool under heavy torque: the model predicts an overstrain failure
            await sim.set_value("Mill1", "ToolWear", 240)
            await sim.set_value("Mill1", "SpindleTorque", 68.0)

            async def withdrawn() -> dict[str, Any] | None:
                view = await pool_state(them, "mill-1")
                avail = (view or {}).get("availability") or {}
                return avail if avail.get("available") == "none" else None

            avail = await eventually(withdrawn, timeout=20, what="the mill withdrawn")
            assert avail["health"]["failure_risk"] >= 0.5
            assert "failure" in (avail["reason"] or "")
            assert avail["status"] not in ("fault", "offline")  # withdrawn for its health


async def test_the_local_api_registers_changes_and_retires_machines_by_role(
    plant: ModbusPlant, tmp_path: Path
) -> None:
    from gateway.auth import Role
    from tests.integration.gwutil import api_client

    async with CentralPool(
        port=0, db_path=str(tmp_path / "central-pool.db"), tokens=TOKENS
    ) as pool:
        loaded = plant_config(tmp_path, plant.port, pool=pool_section(pool))
        async with (
            Gateway(loaded) as gw,
            api_client(gw, Role.VIEWER) as viewer,
            api_client(gw, Role.TECHNICIAN) as tech,
            coop(pool) as them,
        ):
            doc = pump_machine()
            assert (await viewer.post("/equipment", json=doc)).status_code == 403
            bad = await tech.post("/equipment", json={**doc, "location": {"lat": 95, "lon": 0}})
            assert bad.status_code == 422
            assert any("location.lat" in p for p in bad.json()["detail"]["problems"])
            made = await tech.post("/equipment", json=doc)
            assert made.status_code == 201, made.text
            assert made.headers["etag"] == "1"
            assert (await tech.post("/equipment", json=doc)).status_code == 409

            async def at_pool() -> bool:
                return await status_at_pool(them, "booster-pump-1") == "working"

            await eventually(at_pool, timeout=15, what="the API-registered pump at the pool")
            # a viewer of this organisation sees the restricted part, never the contact
            seen = (await viewer.get("/equipment/booster-pump-1")).json()
            assert seen["view"] == "restricted"
            assert seen["machine"]["restricted"]["serial_number"] == "PS-0042"
            assert "Li Wei" not in json.dumps(seen)
            assert seen["live"]["status"] == "working"
            # changes need the version read; a stale one is refused
            patch = {"sharing": {"shared": True, "weekly": ALL_WEEK, "min_booking_hours": 2}}
            no_version = await tech.patch("/equipment/booster-pump-1", json=patch)
            assert no_version.status_code == 428
            stale = await tech.patch(
                "/equipment/booster-pump-1", json=patch, headers={"If-Match": "7"}
            )
            assert stale.status_code == 409 and stale.json()["detail"]["current_version"] == 1
            ok = await tech.patch(
                "/equipment/booster-pump-1", json=patch, headers={"If-Match": "1"}
            )
            assert ok.status_code == 200 and ok.headers["etag"] == "2"

            async def version_two() -> bool:
                view = await pool_state(them, "booster-pump-1")
                return (view or {}).get("version") == 2

            await eventually(version_two, timeout=10, what="the new profile at the pool")
            gone = await tech.delete("/equipment/booster-pump-1", headers={"If-Match": "2"})
            assert gone.status_code == 200 and gone.json()["retired"] is True

            async def retired_there() -> bool:
                view = await pool_state(them, "booster-pump-1")
                return bool(view and view["retired"])

            await eventually(retired_there, timeout=10, what="retired at the pool")
            wanted = {"equipment.add", "equipment.update", "equipment.retire"}
            wanted |= {"pool.register", "pool.retire", "pool.snapshot", "pool.availability"}

            def audited() -> set[str]:
                return wanted - {e.action for e in gw.audit.entries(limit=1000)}

            await eventually(lambda: not audited(), timeout=5, what="audit entries")
            assert gw.audit.verify().ok
