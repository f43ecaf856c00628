"""OPC UA value conversion against values of any type a server may send (and any value a
write may carry). Reading never raises and never lets a value of another kind pass as GOOD;
writing refuses with WriteRejected only, and what it accepts fits the node's type."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from typing import Any

from asyncua import ua
from hypothesis import given
from hypothesis import strategies as st

from drivers.opcua.convert import (
    INTEGER_RANGES,
    reading_from_datavalue,
    to_variant,
    type_mismatch,
)
from gateway.errors import WriteRejected
from gateway.readings import Quality
from tests.fuzz._fuzz import fuzz, tried

VT = ua.VariantType
SCALARS: list[tuple[ua.VariantType, st.SearchStrategy[Any]]] = [
    (VT.Boolean, st.booleans()),
    (VT.SByte, st.integers(-128, 127)),
    (VT.Byte, st.integers(0, 255)),
    (VT.Int16, st.integers(-(2**15), 2**15 - 1)),
    (VT.UInt32, st.integers(0, 2**32 - 1)),
    (VT.Int64, st.integers(-(2**63), 2**63 - 1)),
    (VT.UInt64, st.integers(0, 2**64 - 1)),
    (VT.Float, st.floats(width=32)),
    (VT.Double, st.floats()),
    (VT.String, st.text(max_size=50)),
    (VT.ByteString, st.binary(max_size=50)),
    (VT.DateTime, st.datetimes(dt.datetime(1601, 1, 1), dt.datetime(9999, 1, 1))),
    (VT.Guid, st.uuids()),
    (VT.LocalizedText, st.text(max_size=20).map(ua.LocalizedText)),
    (VT.NodeId, st.integers(0, 2**32 - 1).map(lambda i: ua.NodeId(i, 2))),
    (VT.StatusCode, st.sampled_from([0, 0x80340000, 0x40000000]).map(ua.StatusCode)),
]  # fmt: skip


@st.composite
def variants(draw: st.DrawFn) -> ua.Variant | None:
    choice = draw(st.integers(0, len(SCALARS) + 1))
    if choice == len(SCALARS):
        return None if draw(st.booleans()) else ua.Variant(None, VT.Null)
    vtype, values = SCALARS[choice % len(SCALARS)]
    if choice == len(SCALARS) + 1:
        return ua.Variant(draw(st.lists(values, max_size=5)), vtype, is_array=True)
    return ua.Variant(draw(values), vtype)


@fuzz(300)
@given(
    variant=variants(),
    expected=st.one_of(st.none(), st.sampled_from([v for v, _ in SCALARS])),
    status=st.sampled_from([0, 0x00A20000, 0x40000000, 0x80340000]),
    bounds=st.tuples(st.none() | st.floats(-1e6, 0), st.none() | st.floats(0, 1e6)),
)
def test_any_value_of_any_type_becomes_a_sound_reading(
    variant: ua.Variant | None, expected: ua.VariantType | None, status: int, bounds: Any
) -> None:
    tried("opcua.reading_from_datavalue")
    dv = ua.DataValue(variant, StatusCode=ua.StatusCode(status))
    r = reading_from_datavalue(
        "d.p", dv, 1.0, minimum=bounds[0], maximum=bounds[1], expected=expected
    )
    assert r.value is None or isinstance(r.value, bool | int | float | str)
    if isinstance(r.value, float):
        assert math.isfinite(r.value)
    if r.quality is Quality.BAD:
        assert r.value is None and r.reason
    elif expected is not None and type_mismatch(variant, expected) is not None:
        raise AssertionError(f"a {variant} passed as {r.quality} for a {expected.name} node")


WRITABLE = [
    VT.Boolean,
    *INTEGER_RANGES,
    VT.Float,
    VT.Double,
    VT.String,
    VT.ByteString,
    VT.DateTime,
    VT.Guid,
]


@fuzz(250)
@given(
    value=st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=40)
    ),
    vtype=st.sampled_from(WRITABLE),
    bounds=st.tuples(st.none() | st.floats(-1e6, 0), st.none() | st.floats(0, 1e6)),
)
def test_writes_of_any_value_are_converted_or_rejected(
    value: Any, vtype: ua.VariantType, bounds: Any
) -> None:
    tried("opcua.to_variant")
    try:
        variant = to_variant(value, vtype, minimum=bounds[0], maximum=bounds[1])
    except WriteRejected as exc:
        assert str(exc)
        return
    assert variant.VariantType is vtype
    if vtype in INTEGER_RANGES:
        lo, hi = INTEGER_RANGES[vtype]
        assert lo <= variant.Value <= hi
    if vtype is VT.Guid:
        assert isinstance(variant.Value, uuid.UUID)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if bounds[0] is not None:
            assert value >= bounds[0]
        if bounds[1] is not None:
            assert value <= bounds[1]
    variant.to_binary() if hasattr(variant, "to_binary") else ua.ua_binary.variant_to_binary(
        variant
    )
