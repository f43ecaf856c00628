"""End to end over real TCP sockets: simulator -> Modbus driver -> bus -> SQLite store ->
local API, with values checked against what the simulator served."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import DeviceError, WriteRejected
from gateway.runtime import Gateway
from simulators.modbus_plant import FaultMode, ModbusPlant
from simulators.signals import ManualClock
from tests.integration.gwutil import api_client, eventually, plant_config


@pytest.fixture
async def plant():
    clock = ManualClock()
    async with ModbusPlant.tcp(port=0, clock=clock) as p:
        p.test_clock = clock  # type: ignore[attr-defined]
        yield p


def value_of(gw: Gateway, point: str) -> object:
    r = gw.latest.get(point)
    return None if r is None else r.value


def is_good(gw: Gateway, point: str) -> bool:
    r = gw.latest.get(point)
    return r is not None and r.quality.name == "GOOD"


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


async def test_values_flow_from_simulator_to_api(plant: ModbusPlant, tmp_path: Path) -> None:
    loaded = plant_config(tmp_path, plant.port)
    async with Gateway(loaded) as gw, api_client(gw) as api:
        expected = {f"pump-1.{k}": v for k, v in plant.units[1].current_values().items()} | {
            f"press-1.{k}": v for k, v in plant.units[2].current_values().items()
        }
        assert len(expected) == 21 + 16

        async def all_read() -> bool:
            points = (await api.get("/points")).json()
            return all(p["quality"] == "good" for p in points)

        await eventually(all_read, what="every point read GOOD")
        points = {p["id"]: p for p in (await api.get("/points")).json()}
        assert set(points) == set(expected)
        for pid, value in expected.items():
            assert same(points[pid]["value"], value), (pid, points[pid]["value"], value)
        flow = points["pump-1.flow_rate"]
        assert flow["unit"] == "m3/h" and flow["data_type"] == "float32"
        assert flow["ts_gateway"].endswith("Z") and flow["ts_source"] is None
        assert points["pump-1.drive_serial"]["data_class"] == "restricted"
        assert points["pump-1.speed_setpoint"]["writable"] is True

        devices = {d["id"]: d for d in (await api.get("/devices")).json()}
        assert devices["pump-1"]["state"] == "online"
        assert devices["pump-1"]["endpoint"] == f"tcp://127.0.0.1:{plant.port}#1"
        # 21 pump points are merged into 5 reads per default poll (IR 0-11, IR 16-17, HR 0-2,
        # coil 0, DI 0-1) and 2 per slow poll (IR 12-15, IR 20-25): never one per point.
        assert devices["pump-1"]["requests"] <= devices["pump-1"]["polls_ok"] * 5

        health = (await api.get("/health")).json()
        assert health["status"] == "ok" and health["devices_online"] == 2

        # The store has it too, with history served from disk.
        await gw.store.flush()
        hist = (await api.get("/points/press-1.roller_load/history")).json()
        assert hist["count"] >= 1 and hist["unit"] == "kN"
        assert same(hist["items"][-1]["value"], expected["press-1.roller_load"])
        stored = {r.point: r.value for r in await gw.store.latest()}
        assert same(stored["pump-1.discharge_pressure"], expected["pump-1.discharge_pressure"])

        metrics = (await api.get("/metrics")).text
        assert 'millrace_device_up{device="pump-1",protocol="modbus-tcp"} 1' in metrics
        assert "millrace_store_committed_total" in metrics

        # Values that change on the device change in the API.
        plant.test_clock.advance(3600.0)  # type: ignore[attr-defined]
        new = plant.units[1].current_values()["motor_temperature"]

        async def moved() -> bool:
            p = (await api.get("/points/pump-1.run_hours")).json()
            return p["value"] != points["pump-1.run_hours"]["value"]

        await eventually(moved, what="run_hours to move after an hour")
        await eventually(
            lambda: value_of(gw, "pump-1.motor_temperature") == new,
            what="motor temperature to follow",
        )


async def test_history_filters_and_bad_requests(plant: ModbusPlant, tmp_path: Path) -> None:
    async with (
        Gateway(plant_config(tmp_path, plant.port)) as gw,
        api_client(gw) as api,
    ):
        await eventually(lambda: gw.store.stats().committed > 200, what="readings stored")
        await gw.store.flush()
        all_items = (await api.get("/points/pump-1.motor_speed/history")).json()["items"]
        assert len(all_items) >= 2
        ids = [i["id"] for i in all_items]
        assert ids == sorted(ids)
        one = (await api.get("/points/pump-1.motor_speed/history?limit=1")).json()
        assert one["items"][0]["id"] == ids[-1]  # the newest of the range
        since = all_items[-1]["ts_gateway"]
        later = (
            await api.get("/points/pump-1.motor_speed/history", params={"since": since})
        ).json()
        assert all(i["ts_gateway"] >= since for i in later["items"])
        assert (await api.get("/points/nope.x/history")).status_code == 404
        assert (await api.get("/points/pump-1.motor_speed/history?limit=0")).status_code == 422
        r = await api.get(
            "/points/pump-1.motor_speed/history",
            params={"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
        )
        assert r.status_code == 422
        assert (
            await api.get("/points/pump-1.motor_speed/history?since=yesterday")
        ).status_code == 422


async def test_device_that_stops_answering_goes_down_and_comes_back(
    plant: ModbusPlant, tmp_path: Path
) -> None:
    async with (
        Gateway(plant_config(tmp_path, plant.port)) as gw,
        api_client(gw) as api,
    ):

        async def state(dev: str) -> str:
            devices = {d["id"]: d for d in (await api.get("/devices")).json()}
            return devices[dev]["state"]

        await eventually(lambda: _is(state("pump-1"), "online"), what="pump online")
        # Online comes from any group's first poll; wait until flow_rate itself was read.
        await eventually(lambda: is_good(gw, "pump-1.flow_rate"), what="flow_rate read")
        plant.set_fault(FaultMode.SILENT, unit=1)
        await eventually(lambda: _is(state("pump-1"), "down"), what="pump marked down")
        assert await state("press-1") == "online"  # the other unit on the line carries on
        flow = (await api.get("/points/pump-1.flow_rate")).json()
        assert flow["quality"] == "bad" and flow["reason"].startswith("device down")
        assert flow["value"] is None
        health = (await api.get("/health")).json()
        assert health["status"] == "degraded" and health["devices_online"] == 1
        assert (
            'millrace_device_up{device="pump-1",protocol="modbus-tcp"} 0'
            in (await api.get("/metrics")).text
        )

        plant.clear_faults()
        await eventually(lambda: _is(state("pump-1"), "online"), what="pump back online")
        await eventually(lambda: is_good(gw, "pump-1.flow_rate"), what="good values again")
        await gw.store.flush()
        history = await gw.store.history("pump-1.flow_rate", limit=10_000)
        qualities = [r.quality.name for r in history]
        # good -> bad (down, recorded once with the reason) -> good again
        assert "BAD" in qualities and qualities[-1] == "GOOD"
        assert qualities.index("BAD") > 0


async def test_whole_server_gone_and_back(tmp_path: Path) -> None:
    clock = ManualClock()
    plant = ModbusPlant.tcp(port=0, clock=clock)
    await plant.start()
    try:
        async with Gateway(plant_config(tmp_path, plant.port)) as gw:
            await eventually(lambda: gw.online_share() == (2, 2), what="both online")
            await plant.stop()
            await eventually(lambda: gw.online_share() == (0, 2), what="both down")
            await asyncio.sleep(0.5)  # a few backoff rounds against a closed port
            await plant.start()
            await eventually(lambda: gw.online_share() == (2, 2), timeout=15, what="recovered")
            health = {h.device: h for h in gw.device_health()}
            assert health["pump-1"].reconnects >= 1
    finally:
        await plant.stop()


async def test_exception_responses_become_bad_quality_with_reason(
    plant: ModbusPlant, tmp_path: Path
) -> None:
    async with Gateway(plant_config(tmp_path, plant.port)) as gw:
        await eventually(lambda: gw.online_share() == (2, 2), what="online")
        plant.set_fault(FaultMode.EXCEPTION, unit=2, code=4)

        def press_bad() -> bool:
            r = gw.latest.get("press-1.roller_speed")
            return r is not None and r.quality.name == "BAD"

        await eventually(press_bad, what="press points BAD")
        r = gw.latest.get("press-1.roller_speed")
        assert r.reason == "modbus exception 4 (server device failure)"
        health = {h.device: h for h in gw.device_health()}
        assert health["press-1"].state == "online"  # it answers: alive, just refusing
        assert health["press-1"].last_error == "modbus exception 4 (server device failure)"
        await eventually(lambda: is_good(gw, "pump-1.flow_rate"), what="pump unaffected")


async def test_writes_only_to_writable_points_within_limits(
    plant: ModbusPlant, tmp_path: Path
) -> None:
    async with Gateway(plant_config(tmp_path, plant.port)) as gw:
        await eventually(lambda: gw.online_share() == (2, 2), what="online")
        await gw.write_point("pump-1.speed_setpoint", 1200)
        await gw.write_point("pump-1.pressure_setpoint", 4.25)
        await gw.write_point("press-1.imbibition_ratio", 212.5)
        await gw.write_point("press-1.press_running", False)
        sim = plant.units[1].current_values()
        assert sim["speed_setpoint"] == 1200 and sim["pressure_setpoint"] == 4.25
        assert plant.units[2].current_values()["imbibition_ratio"] == 212.5
        assert plant.units[2].current_values()["press_running"] is False
        await eventually(
            lambda: value_of(gw, "pump-1.speed_setpoint") == 1200, what="written value read back"
        )
        for point, value, message in [
            ("pump-1.flow_rate", 10.0, "not writable"),
            ("pump-1.speed_setpoint", 5000, "> max 2950"),
            ("pump-1.speed_setpoint", -1, "< min 0"),
            ("pump-1.speed_setpoint", "fast", "needs a number"),
            ("pump-1.pump_enable", 7, "needs true/false"),
            ("pump-1.nope", 1, "no such point"),
        ]:
            with pytest.raises(WriteRejected, match=message):
                await gw.write_point(point, value)
        assert plant.units[1].current_values()["speed_setpoint"] == 1200  # nothing sent

        plant.set_fault(FaultMode.EXCEPTION, unit=1, code=6)
        with pytest.raises(DeviceError, match="exception 6"):
            await gw.write_point("pump-1.speed_setpoint", 1000)


async def test_deadband_suppresses_small_changes(plant: ModbusPlant, tmp_path: Path) -> None:
    async with Gateway(plant_config(tmp_path, plant.port)) as gw:
        await eventually(lambda: gw.store.stats().committed > 100, what="stored")
        await asyncio.sleep(1.0)  # clock frozen: values constant
        await gw.store.flush()
        # flow_rate has a deadband (0.5): emitted once while constant; motor_speed has none.
        with_deadband = await gw.store.history("pump-1.flow_rate", limit=10_000)
        without = await gw.store.history("pump-1.motor_speed", limit=10_000)
        assert len(with_deadband) == 1
        assert len(without) >= 5


async def _is(awaitable, expected: str) -> bool:  # type: ignore[no-untyped-def]
    return (await awaitable) == expected


async def test_clean_stop_commits_every_published_reading(
    plant: ModbusPlant, tmp_path: Path
) -> None:
    """Shutdown order: intake stops first, then the store flushes, so every reading the bus
    carried is on disk when stop() returns, and the counters say nothing was dropped."""
    loaded = plant_config(tmp_path, plant.port)
    gw = Gateway(loaded)
    await gw.start()
    await eventually(lambda: gw.bus.readings > 150, what="traffic")
    problems = await gw.stop()
    assert problems == []
    published = gw.bus.readings
    stats = gw.store.stats()
    assert stats.committed == stats.submitted == published
    assert sum(stats.dropped.values()) == 0
    with sqlite3.connect(tmp_path / "gw.db") as con:
        assert con.execute("SELECT count(*) FROM readings").fetchone()[0] == published
    assert gw.state == "stopped"
    assert await gw.stop() == []  # idempotent
