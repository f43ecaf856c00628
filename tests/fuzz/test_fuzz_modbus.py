"""Modbus codec and read planning against arbitrary input: what a device can send and what a
profile can declare. Decoding never raises anything but CodecError, encoding round-trips for
every type x order x scale, and a plan covers every point within the request limits."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus import codec
from drivers.modbus.codec import TYPES, CodecError, DataType, Kind, Order, PointCodec
from drivers.modbus.config import ModbusPoint, Table
from drivers.modbus.plan import plan_reads, split_registers
from tests.fuzz._fuzz import fuzz, tried

NUMERIC = [t for t in DataType if TYPES[t].kind in (Kind.INTEGER, Kind.FLOAT)]


@st.composite
def codecs(draw: st.DrawFn) -> PointCodec:
    dt = draw(st.sampled_from(list(DataType)))
    spec = TYPES[dt]
    return PointCodec(
        dt,
        draw(st.sampled_from(list(Order))),
        scale=draw(st.sampled_from([1.0, 0.1, 0.01, 2.0, -1.0, 1e-6, 1000.0])),
        offset=draw(st.sampled_from([0.0, -40.0, 273.15, 1e6])),
        bit=draw(st.integers(0, 15)) if spec.needs_bit else None,
        length=draw(st.integers(1, 250)) if spec.needs_length else None,
    )


@fuzz(150)
@given(pc=codecs(), regs=st.lists(st.integers(-(2**17), 2**17), max_size=130))
def test_decode_any_registers_raises_only_codec_error(pc: PointCodec, regs: list[int]) -> None:
    """A device may answer anything: wrong count, values outside 0..65535."""
    tried("modbus.decode(any registers)")
    try:
        value = codec.decode(regs, pc)
    except CodecError as exc:
        assert str(exc)  # says what was wrong
        return
    assert len(regs) == pc.registers and all(0 <= r <= 0xFFFF for r in regs)
    assert value is None or isinstance(value, bool | int | float | str)


@fuzz(250)
@given(data=st.data())
def test_encode_decode_round_trip_every_type_and_order(data: st.DataObject) -> None:
    dt = data.draw(st.sampled_from([*NUMERIC, DataType.BOOL, DataType.STRING]))
    spec = TYPES[dt]
    order = data.draw(st.sampled_from(list(Order)))
    if spec.kind is Kind.STRING:
        length = data.draw(st.integers(1, 40))
        pc = PointCodec(dt, order, length=length)
        text = data.draw(
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=length)
        )
        assert codec.decode(codec.encode(text, pc), pc) == text
    elif spec.kind is Kind.BOOL:
        pc = PointCodec(dt, order)
        b = data.draw(st.booleans())
        assert codec.decode(codec.encode(b, pc), pc) is b
    elif spec.kind is Kind.INTEGER:
        assert spec.minimum is not None and spec.maximum is not None
        raw = data.draw(st.integers(spec.minimum, spec.maximum))
        pc = PointCodec(dt, order)
        regs = codec.encode(raw, pc)
        assert len(regs) == pc.registers and all(0 <= r <= 0xFFFF for r in regs)
        assert codec.decode(regs, pc) == raw
    else:
        width = 32 if dt is DataType.FLOAT32 else 64
        x = data.draw(st.floats(width=width, allow_nan=False, allow_infinity=False))
        pc = PointCodec(dt, order)
        assert codec.decode(codec.encode(x, pc), pc) == x
    tried("modbus.encode/decode round trip")


@fuzz(150)
@given(pc=codecs(), value=st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300),
    st.binary(max_size=20), st.lists(st.integers(), max_size=3),
))  # fmt: skip
def test_encode_any_value_raises_only_codec_error(pc: PointCodec, value: Any) -> None:
    """A write request may carry anything; it is refused before any I/O or encoded exactly."""
    tried("modbus.encode(any value)")
    if pc.data_type is DataType.BIT:
        return  # bit points are written with set_bit (read-modify-write)
    try:
        regs = codec.encode(value, pc)
    except CodecError as exc:
        assert str(exc)
        return
    assert len(regs) == pc.registers and all(0 <= r <= 0xFFFF for r in regs)
    back = codec.decode(regs, pc)
    if isinstance(back, float) and isinstance(value, int | float) and math.isfinite(back):
        # within one raw step of what was asked (integers round, float32 keeps 24 bits of
        # the raw value, so its error grows with the raw magnitude)
        raw = codec.from_engineering(value, pc)
        assert isinstance(raw, int | float)
        step = abs(pc.scale) * (1 + abs(raw) * 2**-22) + 1e-9 * abs(pc.offset)
        assert math.isclose(back, value, rel_tol=1e-6, abs_tol=step)


@st.composite
def points(draw: st.DrawFn) -> list[ModbusPoint]:
    n = draw(st.integers(1, 40))
    out = []
    for i in range(n):
        table = draw(st.sampled_from(list(Table)))
        if table.is_bits:
            dt, extra = DataType.BOOL, {}
        else:
            dt = draw(st.sampled_from([d for d in DataType if d is not DataType.BOOL]))
            extra = {}
            if dt is DataType.BIT:
                extra["bit"] = draw(st.integers(0, 15))
            if dt is DataType.STRING:
                extra["length"] = draw(st.integers(1, 250))
        out.append(
            ModbusPoint(
                name=f"p{i}",
                table=table,
                address=draw(st.integers(0, 400)),
                data_type=dt,
                **extra,
            )
        )
    return out


@fuzz(120)
@given(
    pts=points(),
    max_registers=st.integers(1, 125),
    max_bits=st.integers(1, 2000),
    max_gap=st.integers(0, 20),
)
def test_read_plan_covers_every_point_within_limits(
    pts: list[ModbusPoint], max_registers: int, max_bits: int, max_gap: int
) -> None:
    tried("modbus.plan_reads")
    too_wide = [p for p in pts if p.width > (max_bits if p.table.is_bits else max_registers)]
    try:
        plan = plan_reads(
            "dev", pts, max_registers=max_registers, max_bits=max_bits, max_gap=max_gap
        )
    except ValueError as exc:
        assert too_wide and "dev" in str(exc) and "exceed" in str(exc)
        return
    assert not too_wide
    planned = [pp for req in plan for pp in req.points]
    assert sorted(pp.point.name for pp in planned) == sorted(p.name for p in pts)
    for req in plan:
        limit = max_bits if req.table.is_bits else max_registers
        assert 1 <= req.count <= limit
        for pp in req.points:
            assert pp.point.table is req.table
            assert req.start + pp.offset == pp.point.address
            assert pp.offset + pp.width <= req.count
        answer = list(range(req.start, req.end))
        for pp, part in zip(req.points, split_registers(req, answer), strict=True):
            assert list(part) == list(range(pp.point.address, pp.point.address + pp.width))


@fuzz(100)
@given(register=st.integers(0, 0xFFFF), bit=st.integers(0, 15), order=st.sampled_from(list(Order)))
def test_set_bit_touches_only_its_bit(register: int, bit: int, order: Order) -> None:
    tried("modbus.set_bit")
    pc = PointCodec(DataType.BIT, order, bit=bit)
    for value in (True, False):
        new = codec.set_bit(register, value, pc)
        assert codec.decode([new], pc) is value
        others = [b for b in range(16) if b != bit]
        for b in others:
            o = PointCodec(DataType.BIT, order, bit=b)
            assert codec.decode([new], o) == codec.decode([register], o)
