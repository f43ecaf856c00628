"""Usage metering: counters across resets, wraps and glitches; the hash chain catches every
edit, removal and reordering; the log on disk is append-only and delivers each record once."""

from __future__ import annotations

import copy
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.equipment.errors import EquipmentError
from gateway.equipment.metering import (
    GENESIS,
    CounterTracker,
    MeteringLog,
    chain_hash,
    make_record,
    meter_usage,
    meters_of,
    record_id_of,
    verify_chain,
)
from gateway.equipment.model import MachineType, MeterSpec, Quantity, parse_machine
from tests import pool_contract

T0 = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)


def hours(h: float) -> float:
    return (T0 + timedelta(hours=h)).timestamp()


def spec(**kw: Any) -> MeterSpec:
    return MeterSpec(**{"quantity": Quantity.HECTARES, "point": "area_done", **kw})


def feed(tracker: CounterTracker, values: list[float]) -> float:
    for v in values:
        tracker.feed(v)
    return tracker.total


def test_a_counter_adds_its_rise() -> None:
    assert feed(CounterTracker(spec()), [1234.5, 1234.75, 1235.0, 1236.25]) == 1.75


def test_a_reset_counts_what_was_counted_since() -> None:
    t = CounterTracker(spec())
    # a job counter: 3.2 ha done, new job restarts at 0, reaches 0.5 ha
    assert feed(t, [1.0, 3.2, 0.1, 0.5]) == pytest.approx(2.2 + 0.1 + 0.4)
    assert (t.resets, t.glitches) == (1, 0)


def test_a_small_fall_is_a_glitch_not_a_reset() -> None:
    t = CounterTracker(spec(quantity=Quantity.ENGINE_HOURS, point="engine_hours"))
    # counted once, even after the glitch recovers: 1234.5 -> 1234.6 is 0.1 h
    assert feed(t, [1234.5, 1234.4, 1234.6]) == pytest.approx(0.1)
    assert (t.resets, t.glitches) == (0, 1)


def test_a_wrapping_counter_wraps() -> None:
    t = CounterTracker(spec(quantity=Quantity.ENERGY_KWH, point="energy_total", rollover=65536))
    assert feed(t, [65000, 65500, 200]) == 500 + 36 + 200
    assert t.resets == 1


def test_meter_usage_takes_the_value_at_start_and_stops_at_end() -> None:
    meters = [
        spec(quantity=Quantity.ENGINE_HOURS, point="engine_hours"),
        spec(quantity=Quantity.HECTARES, point="area_done"),
        spec(quantity=Quantity.TONNES, point="cane_harvested", scale=0.001),  # kg counter
    ]
    samples = [
        ("engine_hours", 100.0, hours(-1)),
        ("engine_hours", 100.5, hours(0)),  # the value at start
        ("engine_hours", 103.0, hours(2.5)),
        ("engine_hours", None, hours(3)),  # a BAD reading
        ("engine_hours", 106.0, hours(5.5)),
        ("engine_hours", 107.0, hours(7)),  # after the end
        ("area_done", 2.0, hours(1)),  # no sample before start: the first inside is the base
        ("area_done", 4.5, hours(3)),
        ("area_done", 0.25, hours(4)),  # a new job
        ("area_done", 1.25, hours(6)),
        ("speed", 9.0, hours(1)),  # not a meter
        ("cane_harvested", 5000, hours(2)),
    ]
    usage = meter_usage(meters, samples, T0, T0 + timedelta(hours=6))
    assert usage.quantities == {"engine_hours": 5.5, "hectares": 3.75, "tonnes": 0.0}
    assert (usage.resets, usage.no_data) == (1, ("tonnes",))


def test_default_meters_read_profile_points() -> None:
    m = parse_machine({"id": "h-1", "type": "sugarcane_harvester", "device": "d"})
    assert [(s.quantity.value, s.point) for s in meters_of(m)] == [
        ("engine_hours", "engine_hours"),
        ("hectares", "area_done"),
        ("tonnes", "cane_harvested"),
    ]
    pump = parse_machine({"id": "p-1", "type": "pump", "device": "d"})
    assert [s.point for s in meters_of(pump)] == ["run_hours", "energy_total"]
    mill = parse_machine({"id": "m-1", "type": MachineType.CNC_MILL, "device": "d"})
    assert meters_of(mill) == ()


def chain(n: int = 5) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    prev = GENESIS
    for i in range(n):
        rec = make_record(
            booking_id=f"b-{i}",
            machine_id="harvester-3",
            period=(T0 + timedelta(days=i), T0 + timedelta(days=i, hours=6)),
            quantities={"engine_hours": 5.5 + i, "hectares": 6.2},
            prev_hash=prev,
        )
        out.append(rec)
        prev = rec["hash"]
    return out


def test_the_contract_example_record_hashes_the_same() -> None:
    rec = make_record(
        booking_id="b-0f3a9c2e71d4",
        machine_id="harvester-3",
        period=(T0, T0 + timedelta(hours=6)),
        quantities={"engine_hours": 5.5, "hectares": 6.2},
        prev_hash=GENESIS,
    )
    assert rec == {
        "record_id": "dd0f3702350ee4e1f6245fff046bbbac7d8f9c0ca782db76993ab066143afdc3",
        "booking_id": "b-0f3a9c2e71d4",
        "machine_id": "harvester-3",
        "engine_hours": 5.5,
        "hectares": 6.2,
        "tonnes": None,
        "energy_kwh": None,
        "period": {"start": "2026-01-05T06:00:00Z", "end": "2026-01-05T12:00:00Z"},
        "prev_hash": GENESIS,
        "hash": "e3a9cea59064b23b444e1fe5b5b1b146787b13367368473c6eef372f768f1f4d",
    }
    contract_validator("UsageRecord").validate(rec)


def test_an_intact_chain_verifies() -> None:
    records = chain()
    assert verify_chain(records).ok
    assert verify_chain(records, head=records[-1]["hash"]).ok
    assert verify_chain(records[2:], prev_hash=records[1]["hash"]).ok
    assert verify_chain([]).ok


def test_an_edit_is_caught_at_the_edited_record() -> None:
    records = chain()
    records[2]["hectares"] = 60.2
    check = verify_chain(records)
    assert (check.ok, check.bad_index) == (False, 2)
    assert "edited" in check.reason


def test_an_edit_with_both_hashes_redone_is_caught_at_the_next_record() -> None:
    records = chain()
    records[2]["hectares"] = 60.2
    records[2]["record_id"] = record_id_of(records[2])
    records[2]["hash"] = chain_hash(records[2]["prev_hash"], records[2]["record_id"])
    check = verify_chain(records)
    assert (check.ok, check.bad_index) == (False, 3)


def test_an_edited_hash_or_prev_hash_is_caught() -> None:
    records = chain()
    records[1]["hash"] = "f" * 64
    assert verify_chain(records).bad_index == 1
    records = chain()
    records[3]["prev_hash"] = GENESIS
    assert verify_chain(records).bad_index == 3


@pytest.mark.parametrize(("removed", "bad"), [(0, 0), (2, 2), (3, 3)])
def test_a_removal_is_caught(removed: int, bad: int) -> None:
    records = chain()
    del records[removed]
    check = verify_chain(records)
    assert (check.ok, check.bad_index) == (False, bad)
    assert "removed" in check.reason


def test_cutting_the_end_is_caught_only_against_a_known_head() -> None:
    records = chain()
    head = records[-1]["hash"]
    assert verify_chain(records[:-1]).ok  # a shorter chain is a valid chain
    check = verify_chain(records[:-1], head=head)
    assert (check.ok, check.bad_index) == (False, 4)


@pytest.mark.parametrize(("i", "j"), [(0, 1), (1, 3), (3, 4)])
def test_a_reordering_is_caught(i: int, j: int) -> None:
    records = chain()
    records[i], records[j] = records[j], records[i]
    check = verify_chain(records)
    assert (check.ok, check.bad_index) == (False, i)


def test_records_refuse_bad_quantities_and_periods() -> None:
    base: dict[str, Any] = {
        "booking_id": "b",
        "machine_id": "m",
        "period": (T0, T0 + timedelta(hours=1)),
        "prev_hash": GENESIS,
    }
    with pytest.raises(ValueError, match="unknown quantity litres"):
        make_record(**base, quantities={"litres": 1.0})
    with pytest.raises(ValueError, match="finite number >= 0"):
        make_record(**base, quantities={"hectares": -1.0})
    with pytest.raises(ValueError, match="must end after it starts"):
        make_record(**{**base, "period": (T0, T0)}, quantities={})
    with pytest.raises(ValueError, match="time zone"):
        make_record(**{**base, "period": (datetime(2026, 1, 5), T0)}, quantities={})


@pytest.fixture
async def log(tmp_path: Path) -> Any:
    async with MeteringLog(tmp_path / "metering.db") as log:
        yield log


async def test_log_appends_a_chain_once_per_booking_and_period(log: MeteringLog) -> None:
    period = (T0, T0 + timedelta(hours=6))
    first, created = await log.append(
        booking_id="b-1", machine_id="h-3", period=period, quantities={"hectares": 6.2}
    )
    assert created and first["prev_hash"] == GENESIS
    again, created = await log.append(
        booking_id="b-1", machine_id="h-3", period=period, quantities={"hectares": 9.9}
    )
    assert not created and again == first
    second, _ = await log.append(
        booking_id="b-2", machine_id="h-3", period=period, quantities={"engine_hours": 1.0}
    )
    assert second["prev_hash"] == first["hash"]
    assert await log.records() == [first, second]
    assert (await log.verify(head=second["hash"])).ok


async def test_log_delivers_each_record_once_per_consumer(log: MeteringLog) -> None:
    for i in range(3):
        await log.append(
            booking_id=f"b-{i}",
            machine_id="h-3",
            period=(T0, T0 + timedelta(hours=1)),
            quantities={"hectares": float(i)},
        )
    pending = await log.pending("pool")
    assert [p.seq for p in pending] == [0, 1, 2]
    await log.ack("pool", 1)
    assert [p.seq for p in await log.pending("pool")] == [2]
    await log.ack("pool", 0)  # cursors never move back
    assert [p.seq for p in await log.pending("pool")] == [2]
    assert len(await log.pending("audit")) == 3  # another consumer has its own cursor
    with pytest.raises(EquipmentError, match="cannot ack 7, the last record is 2"):
        await log.ack("pool", 7)


async def test_log_is_append_only_and_tampering_shows(tmp_path: Path) -> None:
    path = tmp_path / "metering.db"
    async with MeteringLog(path) as log:
        for i in range(4):
            await log.append(
                booking_id=f"b-{i}",
                machine_id="h-3",
                period=(T0, T0 + timedelta(hours=2)),
                quantities={"engine_hours": 2.0},
            )
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE records SET body = '{}' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM records WHERE seq = 1")
    # someone with the file drops the guards and edits a quantity
    conn.execute("DROP TRIGGER records_no_update")
    body = json.loads(conn.execute("SELECT body FROM records WHERE seq = 2").fetchone()[0])
    forged = copy.deepcopy(body)
    forged["engine_hours"] = 20.0
    conn.execute("UPDATE records SET body = ? WHERE seq = 2", (json.dumps(forged),))
    conn.commit()
    conn.close()
    async with MeteringLog(path) as log:  # reopening restores the triggers
        check = await log.verify()
        assert (check.ok, check.bad_index) == (False, 2)


async def test_a_closed_log_says_so(tmp_path: Path) -> None:
    log = MeteringLog(tmp_path / "m.db")
    with pytest.raises(EquipmentError, match="is new, not open"):
        await log.records()
    await log.open()
    await log.close()
    with pytest.raises(EquipmentError, match="is closed, not open"):
        await log.pending("pool")


def contract_validator(name: str) -> Any:
    return pool_contract.validator(name)
