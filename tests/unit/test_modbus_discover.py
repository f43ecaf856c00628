"""Pure parts of Modbus discovery: unit lists, ranges, order guessing, starting profiles."""

from __future__ import annotations

import struct

import pytest

from drivers.modbus.codec import DataType, Order
from drivers.modbus.config import ModbusProfile, Table
from drivers.modbus.discover import (
    UnitReport,
    consistent_candidates,
    merge_ranges,
    order_candidates,
    parse_tcp_url,
    parse_units,
    starting_profile,
)


def test_parse_units() -> None:
    assert parse_units("1-3,7, 5") == [1, 2, 3, 5, 7]
    for bad in ("", "x", "5-2", "300"):
        with pytest.raises(ValueError):
            parse_units(bad)


def test_parse_tcp_url() -> None:
    assert parse_tcp_url("tcp://10.0.0.5:5020") == ("10.0.0.5", 5020)
    assert parse_tcp_url("plc.local") == ("plc.local", 502)
    with pytest.raises(ValueError):
        parse_tcp_url("opc.tcp://x:4840")


def test_merge_ranges() -> None:
    assert merge_ranges([5, 1, 2, 3, 7, 8, 2]) == [(1, 3), (5, 5), (7, 8)]
    assert merge_ranges([]) == []


def test_cdab_float_is_found_from_a_plausible_range() -> None:
    a, b = struct.unpack(">HH", struct.pack(">f", 123.5))
    best = order_candidates([b, a], 0, 500)[0]  # word-swapped on the wire
    assert (best.data_type, best.order, best.value) == (DataType.FLOAT32, Order.CDAB, 123.5)


def test_integers_when_no_float_fits() -> None:
    cands = order_candidates([0x0000, 0x1234], 4000, 5000)  # 0x1234 = 4660
    assert cands[0].data_type in (DataType.INT32, DataType.UINT32)
    assert cands[0].order is Order.ABCD and cands[0].value == 4660
    assert order_candidates([0xFFFF, 0xFFFF], 0, 1) == []
    with pytest.raises(ValueError):
        order_candidates([1], 0, 1)


def test_starting_profile_validates_and_uses_guesses() -> None:
    report = UnitReport(1, {Table.INPUT_REGISTER: [(0, 3)], Table.COIL: [(4, 4)]})
    guesses = {(Table.INPUT_REGISTER, 0): order_candidates([0x0000, 0x42F6], 0, 500)[0]}
    profile = starting_profile("found", report, guesses)
    names = [p["name"] for p in profile["points"]]
    assert names == ["ir0", "ir2", "ir3", "c4"]
    assert ModbusProfile.model_validate(profile).points[0].order is Order.CDAB


def test_a_byte_order_that_fits_one_value_by_chance_is_dropped_by_the_next_values() -> None:

    def cdab(value: float) -> list[int]:
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))
        return [lo, hi]  # word-swapped, as the simulated pump's flow_rate is

    # find a flow value whose BADC reading also lands in 0..500 (a coincidence)
    lucky = next(
        v / 100
        for v in range(100, 50_000)
        if any(c.order == "BADC" for c in order_candidates(cdab(v / 100), 0, 500))
    )
    alone = order_candidates(cdab(lucky), 0, 500)
    assert {c.order for c in alone} >= {"BADC", "CDAB"}
    samples = [cdab(lucky), cdab(lucky + 0.37), cdab(lucky + 1.91)]
    best = consistent_candidates(samples, 0, 500)[0]
    assert (best.data_type, best.order) == ("float32", "CDAB")
    assert best.value == pytest.approx(lucky + 1.91, rel=1e-6)


def test_an_order_that_fits_every_sample_but_jumps_by_decades_ranks_last() -> None:
    def cdab(value: float) -> list[int]:
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))
        return [lo, hi]

    # Seen in CI: flow 104.6, 107.6, 111.1 m3/h read word-swapped (ABCD) as 0.009, 1.06,
    # 38.1, all "in range" and ordinary floats, and ABCD ranks before CDAB on one sample.
    flows = [104.61733083081968, 107.62408475376425, 111.12908645304867, 107.62408475376425]
    samples = [cdab(v) for v in flows]
    newest = order_candidates(samples[-1], 0, 500)
    assert [c.order for c in newest[:2]] == ["ABCD", "CDAB"]  # one sample cannot tell
    ranked = consistent_candidates(samples, 0, 500)
    assert {"ABCD", "CDAB"} <= {c.order for c in ranked if c.data_type == "float32"}
    assert (ranked[0].data_type, ranked[0].order) == ("float32", "CDAB")
    assert ranked[0].value == pytest.approx(flows[-1], rel=1e-6)
