"""Device writes through the API over a real Modbus simulator: a valid write changes the
register, every refused one leaves it unchanged, and each attempt is in the audit log with
the token that made it."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.api import check_value
from gateway.auth import Role
from gateway.runtime import Gateway
from simulators.modbus_plant import ModbusPlant
from tests.integration.gwutil import eventually, make_token, plant_config


@pytest.fixture
async def plant() -> AsyncIterator[ModbusPlant]:
    async with ModbusPlant.tcp(port=0) as p:
        yield p


def test_check_value_converts_or_says_why() -> None:
    assert check_value(1, "bool") is True and check_value(False, "bit") is False
    assert check_value(12, "uint16", 0, 100) == 12
    assert check_value("abc", "string") == "abc"
    for value, dtype, why in [
        (2, "bool", "true/false or 0/1"),
        ("1", "uint16", "takes a number"),
        (True, "float32", "takes a number"),
        (5, "string", "takes text"),
        (math.nan, "float32", "not a finite number"),
        (math.inf, "float64", "not a finite number"),
        (101, "uint16", "above the point's max 100"),
        (-0.5, "float32", "below the point's min 0"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_value(value, dtype, 0, 100)


async def test_writes_are_checked_before_anything_is_sent(
    plant: ModbusPlant, tmp_path: Path
) -> None:
    async with Gateway(plant_config(tmp_path, plant.port)) as gw:
        await eventually(lambda: gw.online_share() == (2, 2), what="online")
        tech = make_token(gw.loaded, Role.TECHNICIAN, subject="tech")
        viewer = make_token(gw.loaded, Role.VIEWER, subject="viewer")
        pump = plant.units[1]
        async with httpx.AsyncClient(
            base_url=gw.api_url, headers={"Authorization": f"Bearer {tech}"}
        ) as api:
            r = await api.post("/points/pump-1.speed_setpoint/write", json={"value": 1200})
            assert r.status_code == 200, r.text
            assert r.json()["written"] is True and r.json()["value"] == 1200
            assert pump.current_values()["speed_setpoint"] == 1200  # the register changed
            r = await api.post("/points/pump-1.pump_enable/write", json={"value": 0})
            assert r.status_code == 200 and pump.current_values()["pump_enable"] is False

            writable = ("speed_setpoint", "pressure_setpoint", "pump_enable")

            def setpoints() -> dict[str, object]:
                return {k: v for k, v in pump.current_values().items() if k in writable}

            before = setpoints()
            refused = [
                ("pump-1.flow_rate", 10.0, 422, "not writable"),
                ("pump-1.speed_setpoint", 5000, 422, "above the point's max 2950"),
                ("pump-1.speed_setpoint", -1, 422, "below the point's min 0"),
                ("pump-1.speed_setpoint", "fast", 422, "takes a number"),
                ("pump-1.speed_setpoint", True, 422, "takes a number"),
                ("pump-1.speed_setpoint", 70000.5, 422, "above the point's max"),
                ("pump-1.pressure_setpoint", 10.5, 422, "above the point's max 10"),
                ("pump-1.pump_enable", 7, 422, "true/false or 0/1"),
                ("pump-1.nope", 1, 404, "no point"),
            ]
            for point, value, status, why in refused:
                r = await api.post(f"/points/{point}/write", json={"value": value})
                assert r.status_code == status, (point, value, r.text)
                assert why in r.json()["detail"], (point, value, r.text)
            # JSON that Python reads as NaN, a value that is no scalar, an unknown field
            r = await api.post(
                "/points/pump-1.pressure_setpoint/write",
                content=b'{"value": NaN}',
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 422 and "not a finite number" in r.json()["detail"]
            for body in ({"value": [1]}, {"value": 1, "force": True}, {}):
                r = await api.post("/points/pump-1.speed_setpoint/write", json=body)
                assert r.status_code == 422, body
            r = await api.post(
                "/points/pump-1.speed_setpoint/write",
                json={"value": 1},
                headers={"Authorization": f"Bearer {viewer}"},
            )
            assert r.status_code == 403
            assert setpoints() == before  # nothing refused reached the device

        entries = [e for e in gw.audit.entries(limit=1000) if e.action == "device.write"]
        written = [e for e in entries if e.detail["result"] == "written"]
        sent = [e for e in entries if e.detail["result"] == "sending"]
        refused_entries = [e for e in entries if e.detail["result"] == "refused"]
        assert [e.target for e in written] == ["pump-1.speed_setpoint", "pump-1.pump_enable"]
        assert len(sent) == 2 and written[0].detail["after"] == sent[0].seq
        assert all(e.who.startswith("tech [token ") for e in entries)
        assert len(refused_entries) == len(refused) + 1  # + the NaN
        assert {e.detail["reason"] for e in refused_entries} >= {
            "point pump-1.flow_rate is not writable"
        }
        (denied,) = gw.audit.entries(action="access.denied")
        assert denied.who.startswith("viewer [token ") and "write" in denied.target
        assert gw.audit.verify().ok


async def test_a_device_refusal_is_a_502_and_audited(plant: ModbusPlant, tmp_path: Path) -> None:
    from simulators.modbus_plant import FaultMode

    async with Gateway(plant_config(tmp_path, plant.port)) as gw:
        await eventually(lambda: gw.online_share() == (2, 2), what="online")
        tech = make_token(gw.loaded, Role.TECHNICIAN)
        plant.set_fault(FaultMode.EXCEPTION, unit=1, code=6)
        async with httpx.AsyncClient(
            base_url=gw.api_url, headers={"Authorization": f"Bearer {tech}"}
        ) as api:
            r = await api.post("/points/pump-1.speed_setpoint/write", json={"value": 100})
        assert r.status_code == 502 and "exception 6" in r.json()["detail"]
        results = [e.detail["result"] for e in gw.audit.entries(action="device.write")]
        assert results == ["sending", "failed"]
