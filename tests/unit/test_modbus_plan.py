"""Request planning: as few reads as the device allows, answers split back exactly."""

from __future__ import annotations

import pytest

from drivers.modbus.codec import decode
from drivers.modbus.config import ModbusPoint
from drivers.modbus.plan import PlanError, plan_reads, split_registers


def pt(
    name: str,
    address: int,
    data_type: str = "uint16",
    table: str = "holding_register",
    **kw: object,
) -> ModbusPoint:
    return ModbusPoint(name=name, table=table, address=address, data_type=data_type, **kw)


def spans(requests: list) -> list[tuple[str, int, int]]:
    return [(str(r.table), r.start, r.count) for r in requests]


def test_contiguous_points_become_one_request() -> None:
    points = [pt("a", 0), pt("b", 1, "float32"), pt("c", 3, "uint64"), pt("d", 7)]
    reqs = plan_reads("dev", points, max_registers=125, max_bits=2000)
    assert spans(reqs) == [("holding_register", 0, 8)]
    assert [(p.point_id, p.offset, p.width) for p in reqs[0].points] == [
        ("dev.a", 0, 1),
        ("dev.b", 1, 2),
        ("dev.c", 3, 4),
        ("dev.d", 7, 1),
    ]


def test_split_at_the_device_maximum() -> None:
    points = [pt(f"p{i}", i) for i in range(10)]
    reqs = plan_reads("dev", points, max_registers=4, max_bits=2000)
    assert spans(reqs) == [
        ("holding_register", 0, 4),
        ("holding_register", 4, 4),
        ("holding_register", 8, 2),
    ]


def test_a_wide_value_is_never_split_across_requests() -> None:
    points = [pt("a", 0), pt("b", 1), pt("c", 2, "float64")]
    reqs = plan_reads("dev", points, max_registers=4, max_bits=2000)
    assert spans(reqs) == [("holding_register", 0, 2), ("holding_register", 2, 4)]


def test_gaps_split_unless_allowed() -> None:
    points = [pt("a", 0), pt("b", 5)]
    assert len(plan_reads("dev", points, max_registers=125, max_bits=2000)) == 2
    merged = plan_reads("dev", points, max_registers=125, max_bits=2000, max_gap=4)
    assert spans(merged) == [("holding_register", 0, 6)]
    assert [p.offset for p in merged[0].points] == [0, 5]


def test_tables_are_planned_apart_and_in_table_order() -> None:
    points = [
        pt("ir", 0, table="input_register"),
        pt("hr", 0),
        pt("c1", 0, "bool", table="coil"),
        pt("c2", 1, "bool", table="coil"),
        pt("di", 7, "bool", table="discrete_input"),
    ]
    reqs = plan_reads("dev", points, max_registers=125, max_bits=2000)
    assert spans(reqs) == [
        ("coil", 0, 2),
        ("discrete_input", 7, 1),
        ("holding_register", 0, 1),
        ("input_register", 0, 1),
    ]


def test_bits_in_one_register_share_the_read() -> None:
    points = [pt("b0", 16, "bit", bit=0), pt("b1", 16, "bit", bit=1), pt("w", 17)]
    reqs = plan_reads("dev", points, max_registers=125, max_bits=2000)
    assert spans(reqs) == [("holding_register", 16, 2)]
    parts = split_registers(reqs[0], [0b10, 42])
    assert [decode(regs, p.codec) for regs, p in zip(parts, reqs[0].points, strict=True)] == [
        False,
        True,
        42,
    ]


def test_a_point_wider_than_the_limit_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="dev point s: 6 registers exceed"):
        plan_reads("dev", [pt("s", 0, "string", length=12)], max_registers=4, max_bits=2000)


def test_split_registers_gives_each_point_its_slice() -> None:
    points = [pt("a", 10, "uint32"), pt("b", 12), pt("c", 13, "int16")]
    (req,) = plan_reads("dev", points, max_registers=125, max_bits=2000)
    assert split_registers(req, [1, 2, 3, 0xFFFF]) == [[1, 2], [3], [0xFFFF]]
