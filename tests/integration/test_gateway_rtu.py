"""Modbus RTU through the whole gateway, over a socat pseudo-terminal pair."""

from __future__ import annotations

import math
from pathlib import Path

from gateway.runtime import Gateway
from simulators.modbus_plant import ModbusPlant
from simulators.signals import ManualClock
from tests.integration.gwutil import eventually, plant_config


async def test_rtu_units_on_one_line(pty_pair: tuple[str, str], tmp_path: Path) -> None:
    server_end, client_end = pty_pair
    clock = ManualClock()
    line = {
        "protocol": "modbus-rtu",
        "port": client_end,
        "baudrate": 19200,
        "timeout": 0.5,
        "retries": 0,
        "poll_interval": 0.3,
        "poll_groups": {"slow": 1.0},
    }
    devices = [
        {"id": "pump-1", "unit_id": 1, "profile": "pump-station", **line},
        {"id": "press-1", "unit_id": 2, "profile": "sugarcane-press", **line},
    ]
    async with ModbusPlant.rtu(
        ["pump-station:1", "sugarcane-press:2"], port=server_end, baudrate=19200, clock=clock
    ) as plant:
        loaded = plant_config(tmp_path, 0, devices=devices, api={"enabled": False})
        async with Gateway(loaded) as gw:
            assert len(gw.drivers) == 1  # two units, one serial line, one poller

            def all_good() -> bool:
                return all(
                    (r := gw.latest.get(pid)) is not None and r.quality.name == "GOOD"
                    for pid in gw.points
                )

            await eventually(all_good, timeout=15, what="every RTU point GOOD")
            for unit, dev in ((1, "pump-1"), (2, "press-1")):
                for name, value in plant.units[unit].current_values().items():
                    got = gw.latest.get(f"{dev}.{name}").value
                    if isinstance(value, float):
                        assert math.isclose(got, value, rel_tol=1e-9), (dev, name, got, value)
                    else:
                        assert got == value, (dev, name, got, value)
            await gw.write_point("pump-1.speed_setpoint", 900)
            assert plant.units[1].current_values()["speed_setpoint"] == 900
            health = {h.device: h for h in gw.device_health()}
            assert health["press-1"].endpoint == f"rtu://{client_end}#2"
            assert health["pump-1"].state == "online"
