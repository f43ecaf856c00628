"""The Modbus plant simulator over real sockets: what a client reads is what the plant serves.

Everything goes through pymodbus clients on 127.0.0.1 (and a socat pty pair for RTU); the
clock is a `ManualClock` wherever a test needs exact values or simulated days.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType

from drivers.modbus.codec import decode, encode
from drivers.modbus.config import ModbusPoint, ModbusProfile, Table
from gateway.readings import Value
from simulators.modbus_plant import ModbusPlant, SimulatedUnit, build_units, load_profile
from simulators.signals import ManualClock, point_range

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400.0

ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
DEVICE_FAILURE = 4
DEVICE_BUSY = 6
GATEWAY_NO_RESPONSE = 0x0B


# -- helpers ---------------------------------------------------------------------------------


Client = AsyncModbusTcpClient | AsyncModbusSerialClient


async def read_table(client: Client, table: Table, address: int, count: int, unit: int):
    if table is Table.INPUT_REGISTER:
        return await client.read_input_registers(address, count=count, device_id=unit)
    if table is Table.HOLDING_REGISTER:
        return await client.read_holding_registers(address, count=count, device_id=unit)
    if table is Table.COIL:
        return await client.read_coils(address, count=count, device_id=unit)
    return await client.read_discrete_inputs(address, count=count, device_id=unit)


def contiguous_spans(profile: ModbusProfile) -> list[tuple[Table, int, int]]:
    """(table, start, count) for each run of mapped addresses: one request per run."""
    spans: list[tuple[Table, int, int]] = []
    for table in Table:
        addresses = sorted(
            {
                a
                for p in profile.points
                if p.table is table
                for a in range(p.address, p.address + p.width)
            }
        )
        for a in addresses:
            if spans and spans[-1][0] is table and spans[-1][1] + spans[-1][2] == a:
                spans[-1] = (table, spans[-1][1], spans[-1][2] + 1)
            else:
                spans.append((table, a, 1))
    return spans


async def read_all(client: Client, unit: int, profile: ModbusProfile) -> dict[str, Value]:
    """Read every point of a unit with as few requests as the map allows, decode with the codec."""
    image: dict[Table, dict[int, int | bool]] = {t: {} for t in Table}
    for table, start, count in contiguous_spans(profile):
        response = await read_table(client, table, start, count, unit)
        assert not response.isError(), (table, start, count, response)
        data = response.bits[:count] if table.is_bits else response.registers
        assert len(data) == count
        image[table].update(zip(range(start, start + count), data, strict=True))
    values: dict[str, Value] = {}
    for p in profile.points:
        if p.table.is_bits:
            values[p.name] = bool(image[p.table][p.address])
        else:
            regs = [int(image[p.table][a]) for a in range(p.address, p.address + p.width)]
            values[p.name] = decode(regs, p.codec())
    return values


async def read_point(client: Client, unit: int, point: ModbusPoint) -> Value:
    response = await read_table(client, point.table, point.address, point.width, unit)
    assert not response.isError(), response
    if point.table.is_bits:
        return bool(response.bits[0])
    return decode(response.registers, point.codec())


def point(profile: ModbusProfile, name: str) -> ModbusPoint:
    return next(p for p in profile.points if p.name == name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def plant(clock: ManualClock) -> AsyncIterator[ModbusPlant]:
    async with ModbusPlant.tcp(["pump-station:1", "sugarcane-press:2"], clock=clock) as p:
        yield p
    await assert_no_tasks_left()


async def assert_no_tasks_left() -> None:
    """After the plant stops (and clients close) nothing of it may still be running."""
    for _ in range(5):
        await asyncio.sleep(0)
    left = asyncio.all_tasks() - {asyncio.current_task()}
    assert not left, left


@pytest.fixture
async def client(plant: ModbusPlant) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient("127.0.0.1", port=int(plant.port), timeout=1.0, retries=0)
    assert await c.connect()
    yield c
    c.close()


@pytest.fixture
def pump() -> ModbusProfile:
    return load_profile("pump-station")


@pytest.fixture
def press() -> ModbusProfile:
    return load_profile("sugarcane-press")


# -- values ----------------------------------------------------------------------------------


async def test_pump_values_read_over_tcp_are_what_the_plant_serves(
    plant: ModbusPlant, client: AsyncModbusTcpClient, pump: ModbusProfile
) -> None:
    read = await read_all(client, 1, pump)
    assert read == plant.units[1].current_values()
    assert 80 <= read["flow_rate"] <= 160
    assert 0.2 <= read["suction_pressure"] < read["discharge_pressure"] <= 8
    assert read["motor_speed"] == read["speed_setpoint"] == 1480
    assert 20 <= read["motor_current"] <= 100
    assert 1.5 <= read["bearing_vibration"] <= 2.2
    assert 0 <= read["well_level"] <= 100
    assert read["running"] is True and read["drive_fault"] is False
    assert read["remote_mode"] is True and read["fault_code"] == 0
    assert read["pump_enable"] is True
    assert read["energy_total"] > 0 and read["run_hours"] > 0
    assert isinstance(read["drive_serial"], str) and len(read["drive_serial"]) == 12


async def test_press_values_read_over_tcp_are_what_the_plant_serves(
    plant: ModbusPlant, client: AsyncModbusTcpClient, press: ModbusProfile
) -> None:
    read = await read_all(client, 2, press)
    assert read == plant.units[2].current_values()
    assert 80 <= read["cane_feed_rate"] <= 140
    assert 300 <= read["roller_load"] <= 900
    assert 3 <= read["roller_speed"] <= 6
    assert 10 <= read["juice_brix"] <= 20
    assert 50 <= read["juice_flow"] <= 150
    assert 100 <= read["motor_power"] <= 1200
    assert read["load_setpoint"] == 600 and read["imbibition_ratio"] == 250
    assert read["press_running"] is True
    assert isinstance(read["batch_id"], str) and read["batch_id"].startswith("CS")
    assert read["cane_crushed_total"] > 0


async def test_values_change_over_time_and_counters_count_up(
    plant: ModbusPlant, client: AsyncModbusTcpClient, clock: ManualClock, pump: ModbusProfile
) -> None:
    before = await read_all(client, 1, pump)
    press_before = plant.units[2].current_values()
    clock.advance(3600)
    after = await read_all(client, 1, pump)
    press_after = plant.units[2].current_values()
    for name in ("flow_rate", "discharge_pressure", "well_level", "motor_current"):
        assert after[name] != before[name], name
    assert after["run_hours"] == pytest.approx(before["run_hours"] + 1.0, abs=0.11)
    assert after["energy_total"] - before["energy_total"] == pytest.approx(36, abs=2)
    assert press_after["cane_feed_rate"] != press_before["cane_feed_rate"]
    crushed = press_after["cane_crushed_total"] - press_before["cane_crushed_total"]
    assert 80 <= crushed <= 140  # one hour at 80-140 t/h


async def test_values_move_with_the_real_clock(pump: ModbusProfile) -> None:
    async with ModbusPlant.tcp(["pump-station:1"]) as plant:
        c = AsyncModbusTcpClient("127.0.0.1", port=int(plant.port), timeout=1.0, retries=0)
        await c.connect()
        try:
            flow = point(pump, "flow_rate")
            first = await read_point(c, 1, flow)
            await asyncio.sleep(0.25)
            second = await read_point(c, 1, flow)
        finally:
            c.close()
    assert first != second
    assert abs(first - second) < 5  # noise, not jumps


def test_models_are_deterministic_for_a_seed_and_a_time(clock: ManualClock) -> None:
    specs = ["pump-station:1", "sugarcane-press:2"]
    a = build_units(specs, seed=7, clock=clock)
    b = build_units(specs, seed=7, clock=clock)
    c = build_units(specs, seed=8, clock=clock)
    clock.advance(12_345.6)
    for x, y, z in zip(a, b, c, strict=True):
        assert x.current_values() == y.current_values()
        assert x.current_values() != z.current_values()


# -- addressing and writes -------------------------------------------------------------------


async def test_a_request_touching_an_unmapped_address_fails_whole(
    client: AsyncModbusTcpClient,
) -> None:
    # pump input registers 0-17 and 20-25 are mapped, 18-19 are not
    assert not (await client.read_input_registers(0, count=18, device_id=1)).isError()
    for address, count in ((17, 2), (18, 1), (16, 10), (26, 1)):
        response = await client.read_input_registers(address, count=count, device_id=1)
        assert response.isError() and response.exception_code == ILLEGAL_ADDRESS, address
    response = await client.read_coils(1, count=1, device_id=1)
    assert response.isError() and response.exception_code == ILLEGAL_ADDRESS
    response = await client.read_holding_registers(0, count=3, device_id=2)
    assert response.isError() and response.exception_code == ILLEGAL_ADDRESS


async def test_writes_stick_and_the_pump_reacts(
    plant: ModbusPlant, client: AsyncModbusTcpClient, clock: ManualClock, pump: ModbusProfile
) -> None:
    response = await client.write_register(0, 1200, device_id=1)
    assert not response.isError()
    assert (await client.read_holding_registers(0, count=1, device_id=1)).registers == [1200]
    clock.advance(1.0)  # the drive ramps at 1500 rpm/s
    read = await read_all(client, 1, pump)
    assert read["speed_setpoint"] == 1200 and read["motor_speed"] == 1200
    assert plant.units[1].current_values()["speed_setpoint"] == 1200

    pressure = point(pump, "pressure_setpoint")
    registers = encode(6.5, pressure.codec())
    assert not (await client.write_registers(1, registers, device_id=1)).isError()
    assert await read_point(client, 1, pressure) == 6.5

    assert not (await client.write_coil(0, False, device_id=1)).isError()
    stopped = await read_all(client, 1, pump)
    assert stopped["pump_enable"] is False and stopped["running"] is False
    assert stopped["motor_speed"] == 0 and stopped["flow_rate"] == 0.0
    assert stopped["motor_current"] == 0
    assert stopped == plant.units[1].current_values()

    assert not (await client.write_coil(0, True, device_id=1)).isError()
    clock.advance(2.0)
    restarted = await read_all(client, 1, pump)
    assert restarted["running"] is True and restarted["motor_speed"] == 1200
    assert restarted["flow_rate"] > 50


async def test_press_writes_of_float_setpoints_stick(
    plant: ModbusPlant, client: AsyncModbusTcpClient, press: ModbusProfile
) -> None:
    ratio = point(press, "imbibition_ratio")  # float64 in 4 registers
    assert not (
        await client.write_registers(202, encode(312.25, ratio.codec()), device_id=2)
    ).isError()
    assert await read_point(client, 2, ratio) == 312.25
    assert not (await client.write_coil(10, False, device_id=2)).isError()
    stopped = await read_all(client, 2, press)
    assert stopped["press_running"] is False and stopped["cane_feed_rate"] == 0.0
    assert stopped == plant.units[2].current_values()


async def test_writes_to_read_only_or_out_of_range_points_are_refused(
    plant: ModbusPlant, client: AsyncModbusTcpClient, press: ModbusProfile
) -> None:
    before = plant.units[2].current_values()
    # roller_speed is a holding register but read-only in the profile
    response = await client.write_register(100, 5, device_id=2)
    assert response.isError() and response.exception_code == ILLEGAL_ADDRESS
    # a multi-register write that strays off the writable points fails as a whole
    load = point(press, "load_setpoint")
    response = await client.write_registers(199, [0, *encode(500.0, load.codec())], device_id=2)
    assert response.isError() and response.exception_code == ILLEGAL_ADDRESS
    response = await client.write_coil(11, True, device_id=2)  # unmapped coil
    assert response.isError() and response.exception_code == ILLEGAL_ADDRESS
    # outside the point's min..max (0..900 kN, 0..2950 rpm): refused by the device
    response = await client.write_registers(200, encode(950.0, load.codec()), device_id=2)
    assert response.isError() and response.exception_code == ILLEGAL_VALUE
    response = await client.write_register(0, 3000, device_id=1)
    assert response.isError() and response.exception_code == ILLEGAL_VALUE
    after = plant.units[2].current_values()
    assert after["load_setpoint"] == before["load_setpoint"] == 600
    assert plant.units[1].current_values()["speed_setpoint"] == 1480


async def test_unknown_unit_gets_an_error(client: AsyncModbusTcpClient) -> None:
    response = await client.read_input_registers(0, count=2, device_id=99)
    assert response.isError() and response.exception_code == GATEWAY_NO_RESPONSE
    # the connection is still fine for the real units
    assert not (await client.read_input_registers(0, count=2, device_id=1)).isError()


# -- faults ----------------------------------------------------------------------------------


async def test_exception_fault_per_unit_and_for_all(
    plant: ModbusPlant, client: AsyncModbusTcpClient
) -> None:
    plant.set_fault("exception", unit=1, code=DEVICE_BUSY)
    response = await client.read_input_registers(0, count=2, device_id=1)
    assert response.isError() and response.exception_code == DEVICE_BUSY
    assert not (await client.read_holding_registers(100, count=2, device_id=2)).isError()

    plant.set_fault("exception", code=DEVICE_FAILURE)
    for unit, call in ((1, client.read_input_registers), (2, client.read_holding_registers)):
        response = await call(100 if unit == 2 else 0, count=1, device_id=unit)
        assert response.isError() and response.exception_code == DEVICE_FAILURE
    response = await client.write_register(0, 1000, device_id=1)
    assert response.isError() and response.exception_code == DEVICE_FAILURE
    assert plant.units[1].current_values()["speed_setpoint"] == 1480  # refused, not applied

    plant.set_fault("exception", unit=1, code=ILLEGAL_ADDRESS)
    response = await client.read_input_registers(0, count=1, device_id=1)
    assert response.exception_code == ILLEGAL_ADDRESS

    plant.clear_faults()
    assert not (await client.read_input_registers(0, count=2, device_id=1)).isError()
    assert not (await client.read_holding_registers(100, count=2, device_id=2)).isError()


async def test_silent_fault_times_the_client_out_and_clearing_restores(
    plant: ModbusPlant, pump: ModbusProfile
) -> None:
    c = AsyncModbusTcpClient("127.0.0.1", port=int(plant.port), timeout=0.3, retries=0)
    assert await c.connect()
    try:
        plant.set_fault("silent", unit=1)
        started = time.monotonic()
        with pytest.raises(ModbusIOException):
            await c.read_input_registers(0, count=2, device_id=1)
        assert time.monotonic() - started >= 0.29
        # the other unit behind the same connection still answers
        assert not (await c.read_holding_registers(100, count=2, device_id=2)).isError()
        plant.clear_faults()
        # the held request is dropped, not answered late: the next answer is the right one
        assert await read_all(c, 1, pump) == plant.units[1].current_values()
    finally:
        c.close()


async def test_slow_fault_answers_after_the_delay(
    plant: ModbusPlant, client: AsyncModbusTcpClient
) -> None:
    plant.set_fault("slow", delay=0.4)
    started = time.monotonic()
    response = await client.read_input_registers(7, count=1, device_id=1)
    elapsed = time.monotonic() - started
    assert not response.isError() and response.registers == [1480]
    assert 0.4 <= elapsed < 0.75
    # a write is set-then-read-back inside pymodbus: it must still be delayed only once
    started = time.monotonic()
    assert not (await client.write_register(0, 1400, device_id=1)).isError()
    assert 0.4 <= time.monotonic() - started < 0.75
    plant.clear_faults()
    started = time.monotonic()
    assert not (await client.read_input_registers(7, count=1, device_id=1)).isError()
    assert time.monotonic() - started < 0.2


async def test_stop_then_start_on_the_same_port(plant: ModbusPlant) -> None:
    port = int(plant.port)
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.5, retries=0, reconnect_delay=0)
    assert await c.connect()
    assert not (await c.read_input_registers(0, count=2, device_id=1)).isError()
    c.close()

    await plant.stop()
    assert not plant.running
    dead = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.5, retries=0, reconnect_delay=0)
    assert not await dead.connect()
    dead.close()

    await plant.start()
    assert plant.running and plant.port == port
    again = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.5, retries=0)
    assert await again.connect()
    try:
        assert not (await again.read_input_registers(0, count=2, device_id=1)).isError()
    finally:
        again.close()


async def test_stop_is_prompt_with_requests_held_and_clients_connected(plant: ModbusPlant) -> None:
    c = AsyncModbusTcpClient("127.0.0.1", port=int(plant.port), timeout=0.5, retries=0)
    assert await c.connect()
    try:
        plant.set_fault("silent")
        pending = asyncio.create_task(c.read_input_registers(0, count=1, device_id=1))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await plant.stop()
        assert time.monotonic() - started < 0.3  # held requests are cancelled, not awaited
        with pytest.raises(ModbusIOException):
            await pending
    finally:
        c.close()


# -- bearing wear ----------------------------------------------------------------------------


async def test_the_pump_bearing_wears_over_simulated_weeks(
    plant: ModbusPlant, client: AsyncModbusTcpClient, clock: ManualClock, pump: ModbusProfile
) -> None:
    day0 = await read_all(client, 1, pump)
    clock.advance(30 * DAY)
    day30 = await read_all(client, 1, pump)
    assert day30["bearing_vibration"] > day0["bearing_vibration"] + 1.0
    assert day30["bearing_temperature"] > day0["bearing_temperature"]
    assert day30["run_hours"] == pytest.approx(day0["run_hours"] + 720, abs=0.2)
    assert day30["drive_fault"] is False and day30["fault_code"] == 0

    plant.set_wear_rate(20.0)  # a demo speeds wear up
    clock.advance(5 * DAY)
    worn = await read_all(client, 1, pump)
    assert worn["bearing_vibration"] > 7.1  # ISO 10816 zone D
    assert worn["drive_fault"] is True and worn["fault_code"] == 16
    assert worn == plant.units[1].current_values()


def test_wear_stops_while_the_pump_is_stopped(clock: ManualClock) -> None:
    (unit,) = build_units(["pump-station:1"], clock=clock)
    clock.advance(10 * DAY)
    unit.write_value("pump_enable", False)
    clock.advance(20 * DAY)
    unit.write_value("pump_enable", True)
    clock.advance(10.0)
    paused = unit.current_values()
    (fresh,) = build_units(["pump-station:1"], clock=ManualClock(clock.now - 20 * DAY - 10))
    assert paused["run_hours"] == pytest.approx(fresh.current_values()["run_hours"] + 240, abs=0.2)
    assert paused["bearing_vibration"] < 2.5


# -- any profile, many units -----------------------------------------------------------------


def bench_profile(count: int = 30) -> dict:
    types = [
        {"data_type": "float32", "min": 0, "max": 250},
        {"data_type": "uint16", "scale": 0.1},
        {"data_type": "int16", "scale": 0.1, "min": -40, "max": 120},
        {"data_type": "uint32", "order": "CDAB"},
        {"data_type": "int32"},
        {"data_type": "float64", "min": 1000, "max": 2000},
        {"data_type": "uint64", "scale": 0.001},
    ]
    points: list[dict] = []
    address = 0
    for i in range(count - 5):
        spec = types[i % len(types)]
        width = {"float32": 2, "uint32": 2, "int32": 2, "float64": 4, "uint64": 4}.get(
            spec["data_type"], 1
        )
        points.append(
            {"name": f"p{i:02d}", "table": "holding_register", "address": address, **spec}
        )
        address += width
    hr = "holding_register"
    points += [
        {"name": "status_a", "table": hr, "address": address, "data_type": "bit", "bit": 0},
        {"name": "status_b", "table": hr, "address": address, "data_type": "bit", "bit": 5},
        {"name": "tag", "table": hr, "address": address + 1, "data_type": "string", "length": 12},
        {"name": "enable", "table": "coil", "address": 0, "data_type": "bool", "writable": True},
        {"name": "setpoint", "table": hr, "address": 500, "data_type": "uint16",
         "writable": True, "min": 10, "max": 90},
    ]  # fmt: skip
    return {"name": "bench-30", "protocol": "modbus", "points": points}


async def test_generic_model_serves_any_profile_for_many_units(tmp_path: Path) -> None:
    (tmp_path / "bench-30.yaml").write_text(yaml.safe_dump(bench_profile()))
    profile = load_profile("bench-30", [tmp_path])
    assert len(profile.points) == 30
    clock = ManualClock()
    async with ModbusPlant.tcp(
        ["pump-station:1", "bench-30:10-59"], profile_dirs=[tmp_path], clock=clock
    ) as plant:
        assert sorted(plant.context.device_ids()) == [1, *range(10, 60)]
        c = AsyncModbusTcpClient("127.0.0.1", port=int(plant.port), timeout=1.0, retries=0)
        assert await c.connect()
        try:
            first = await read_all(c, 10, profile)
            assert first == plant.units[10].current_values()
            for p in profile.points:
                value = first[p.name]
                if isinstance(value, bool | str):
                    continue
                lo, hi = point_range(p)
                step = abs(p.scale)
                assert lo - step <= value <= hi + step, (p.name, value, lo, hi)
            assert first["tag"] == "bench-30-10"
            other = await read_all(c, 59, profile)
            assert other["p00"] != first["p00"]  # units do not move in lock-step
            clock.advance(45.0)
            later = await read_all(c, 10, profile)
            assert sum(later[k] != first[k] for k in first) >= 15
            assert not (await c.write_register(500, 42, device_id=10)).isError()
            assert (await read_all(c, 10, profile))["setpoint"] == 42
            response = await c.write_register(500, 95, device_id=10)
            assert response.isError() and response.exception_code == ILLEGAL_VALUE
        finally:
            c.close()


async def test_many_connections_at_once(plant: ModbusPlant) -> None:
    async def worker(n: int) -> int:
        c = AsyncModbusTcpClient("127.0.0.1", port=int(plant.port), timeout=2.0, retries=0)
        assert await c.connect()
        ok = 0
        try:
            for _ in range(10):
                unit = 1 + n % 2
                r = await (
                    c.read_input_registers(0, count=18, device_id=1)
                    if unit == 1
                    else c.read_holding_registers(100, count=22, device_id=2)
                )
                ok += not r.isError()
        finally:
            c.close()
        return ok

    results = await asyncio.gather(*(worker(n) for n in range(25)))
    assert results == [10] * 25


def test_unit_spec_and_profile_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        build_units(["no-such-profile:1"])
    with pytest.raises(ValueError, match="PROFILE:ID"):
        build_units(["pump-station"])
    with pytest.raises(ValueError, match="twice"):
        build_units(["pump-station:1-3", "sugarcane-press:3"])
    units = build_units(["pump-station:4-6"])
    assert [u.unit_id for u in units] == [4, 5, 6]
    assert isinstance(units[0], SimulatedUnit)


# -- CLI -------------------------------------------------------------------------------------


def test_cli_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulators.modbus_plant", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert "--unit" in result.stdout and "--serial" in result.stdout


async def test_cli_serves_and_exits_cleanly_on_sigterm(pump: ModbusProfile) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.modbus_plant", "--port", str(port),
        "--unit", "pump-station:1", "--unit", "sugarcane-press:2",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert f"127.0.0.1:{port}" in line and "pump-station" in line and "sugarcane-press" in line
        c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
        assert await c.connect()
        try:
            read = await read_all(c, 1, pump)
            assert 80 <= read["flow_rate"] <= 160
        finally:
            c.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        stderr = await proc.stderr.read() if proc.stderr else b""
        assert b"Traceback" not in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- RTU -------------------------------------------------------------------------------------


async def test_rtu_over_a_pty_pair(
    pty_pair: tuple[str, str], clock: ManualClock, pump: ModbusProfile, press: ModbusProfile
) -> None:
    server_end, client_end = pty_pair
    async with ModbusPlant.rtu(
        ["pump-station:1", "sugarcane-press:2"], port=server_end, baudrate=19200, clock=clock
    ) as plant:
        assert plant.port == server_end
        c = AsyncModbusSerialClient(
            port=client_end, framer=FramerType.RTU, baudrate=19200, timeout=0.5, retries=0
        )
        assert await c.connect()
        try:
            assert await read_all(c, 1, pump) == plant.units[1].current_values()
            assert await read_all(c, 2, press) == plant.units[2].current_values()
            assert not (await c.write_register(0, 1300, device_id=1)).isError()
            assert plant.units[1].current_values()["speed_setpoint"] == 1300
            # nobody on the bus has unit 7: no answer at all
            with pytest.raises(ModbusIOException):
                await c.read_input_registers(0, count=1, device_id=7)
            plant.set_fault("exception", unit=2, code=DEVICE_FAILURE)
            response = await c.read_holding_registers(100, count=1, device_id=2)
            assert response.isError() and response.exception_code == DEVICE_FAILURE
        finally:
            c.close()


def test_float_values_survive_the_wire_exactly(clock: ManualClock) -> None:
    (unit,) = build_units(["pump-station:1"], clock=clock)
    flow = unit.current_values()["flow_rate"]
    assert isinstance(flow, float) and math.isfinite(flow)
    assert unit.read(Table.INPUT_REGISTER, 0, 2) == encode(
        flow, point(unit.profile, "flow_rate").codec()
    )
