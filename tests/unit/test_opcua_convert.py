"""OPC UA value conversion, both ways, without a server.

Read-side values go through asyncua's own binary encoder and decoder first (`wire`), so each
test sees exactly the Python objects a real notification or read result carries."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import uuid

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import variant_from_binary, variant_to_binary

from drivers.opcua.convert import (
    INTEGER_RANGES,
    check_range,
    reading_from_datavalue,
    status_name,
    status_quality,
    timestamp,
    to_value,
    to_variant,
    variant_type_for_datatype,
)
from gateway.errors import WriteRejected
from gateway.readings import Quality

VT = ua.VariantType
GUID = uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a")
WHEN = dt.datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=dt.UTC)


def wire(variant: ua.Variant) -> ua.Variant:
    """The variant as a client receives it: encoded and decoded by asyncua."""
    return variant_from_binary(Buffer(variant_to_binary(variant)))


def value_of(value: object, vtype: ua.VariantType | None = None) -> object:
    received = wire(ua.Variant(value, vtype))
    return to_value(received.Value, received.VariantType)


# -- read direction: every built-in type --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "vtype", "expected"),
    [
        (True, VT.Boolean, True),
        (False, VT.Boolean, False),
        (-128, VT.SByte, -128),
        (255, VT.Byte, 255),
        (-32768, VT.Int16, -32768),
        (65535, VT.UInt16, 65535),
        (-(2**31), VT.Int32, -(2**31)),
        (2**32 - 1, VT.UInt32, 2**32 - 1),
        (-(2**63), VT.Int64, -(2**63)),
        (2**64 - 1, VT.UInt64, 2**64 - 1),
        (1.5, VT.Float, 1.5),
        (0.1, VT.Float, 0.10000000149011612),  # float32 exactly as on the wire
        (1500.25, VT.Double, 1500.25),
        ("running", VT.String, "running"),
        ("", VT.String, ""),
        (WHEN, VT.DateTime, "2024-05-01T10:00:00.500000Z"),
        (GUID, VT.Guid, str(GUID)),
        (b"\x00\x01recipe", VT.ByteString, base64.b64encode(b"\x00\x01recipe").decode()),
        (ua.LocalizedText("Ana Souza", "pt-BR"), VT.LocalizedText, "Ana Souza"),
        (ua.LocalizedText(None), VT.LocalizedText, ""),
        (ua.QualifiedName("SpindleSpeed", 2), VT.QualifiedName, "2:SpindleSpeed"),
        (ua.NodeId("Mill1", 2), VT.NodeId, "ns=2;s=Mill1"),
        (ua.NodeId(2258, 0), VT.NodeId, "i=2258"),
        (ua.StatusCode(ua.StatusCodes.BadTimeout), VT.StatusCode, "BadTimeout"),
        (ua.StatusCode(ua.StatusCodes.Good), VT.StatusCode, "Good"),
        (None, VT.Null, None),
    ],
)
def test_every_builtin_type_reads_as_a_gateway_value(
    value: object, vtype: ua.VariantType, expected: object
) -> None:
    got = value_of(value, vtype)
    assert got == expected
    assert type(got) is type(expected)


def test_integers_and_floats_keep_their_kind() -> None:
    assert type(value_of(5, VT.UInt16)) is int
    assert type(value_of(5.0, VT.Double)) is float
    assert type(value_of(True, VT.Boolean)) is bool


def test_string_types_not_on_the_wire() -> None:
    # XmlElement and ExpandedNodeId come as str / NodeId subclasses from asyncua
    assert to_value("<a/>", VT.XmlElement) == "<a/>"
    expanded = ua.ExpandedNodeId("x", 3, NamespaceUri="urn:x")
    assert to_value(expanded, VT.ExpandedNodeId) == "ns=3;s=x;nsu=urn:x"


def test_naive_datetime_is_utc_and_null_datetime_is_none() -> None:
    assert to_value(dt.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05Z"
    assert to_value(dt.datetime(1601, 1, 1, tzinfo=dt.UTC)) is None


def test_enumeration_values_are_integers() -> None:
    assert to_value(ua.ServerState.Shutdown) == int(ua.ServerState.Shutdown)
    assert value_of(ua.ServerState.Suspended, VT.Int32) == int(ua.ServerState.Suspended)


def test_arrays_are_compact_json_text() -> None:
    assert value_of([21.5, 22.75, 23.0], VT.Double) == "[21.5,22.75,23.0]"
    assert json.loads(value_of([1, 2, 3], VT.UInt16)) == [1, 2, 3]  # type: ignore[arg-type]
    assert value_of([[1, 2], [3, 4]], VT.Int32) == "[[1,2],[3,4]]"
    assert value_of([True, False], VT.Boolean) == "[true,false]"
    assert value_of(["a", "ü"], VT.String) == '["a","ü"]'
    assert value_of([], VT.Double) == "[]"
    texts = [ua.LocalizedText("a"), ua.LocalizedText("b", "de")]
    assert value_of(texts, VT.LocalizedText) == '["a","b"]'
    assert value_of([WHEN], VT.DateTime) == '["2024-05-01T10:00:00.500000Z"]'
    assert value_of([GUID], VT.Guid) == f'["{GUID}"]'
    assert value_of([b"\x01"], VT.ByteString) == '["AQ=="]'


def test_non_finite_array_elements_become_null() -> None:
    text = value_of([1.0, math.nan, math.inf, -math.inf], VT.Double)
    assert json.loads(text) == [1.0, None, None, None]  # type: ignore[arg-type]


def test_structures_are_json_objects() -> None:
    eu = ua.EUInformation(
        NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
        UnitId=5067859,
        DisplayName=ua.LocalizedText("rpm"),
        Description=ua.LocalizedText("revolutions per minute"),
    )
    data = json.loads(value_of(eu, VT.ExtensionObject))  # type: ignore[arg-type]
    assert data == {
        "NamespaceUri": "http://www.opcfoundation.org/UA/units/un/cefact",
        "UnitId": 5067859,
        "DisplayName": "rpm",
        "Description": "revolutions per minute",
    }
    rng = json.loads(value_of(ua.Range(Low=0.0, High=math.inf), VT.ExtensionObject))  # type: ignore[arg-type]
    assert rng == {"Low": 0.0, "High": None}


def test_undecoded_extension_object_keeps_type_and_body() -> None:
    raw = ua.ExtensionObject(ua.NodeId(9999, 2), Body=b"xyz")
    data = json.loads(value_of(raw, VT.ExtensionObject))  # type: ignore[arg-type]
    assert data == {"TypeId": "ns=2;i=9999", "Body": base64.b64encode(b"xyz").decode()}


def test_nested_variant_and_datavalue_unwrap() -> None:
    assert to_value(ua.Variant(7, VT.Int16)) == 7
    assert to_value(ua.DataValue(ua.Variant("x"))) == "x"


# -- status codes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "quality", "reason"),
    [
        (ua.StatusCodes.Good, Quality.GOOD, None),
        (ua.StatusCodes.GoodClamped, Quality.GOOD, "GoodClamped"),
        (ua.StatusCodes.UncertainLastUsableValue, Quality.UNCERTAIN, "UncertainLastUsableValue"),
        (
            ua.StatusCodes.UncertainSensorNotAccurate,
            Quality.UNCERTAIN,
            "UncertainSensorNotAccurate",
        ),
        (ua.StatusCodes.BadNodeIdUnknown, Quality.BAD, "BadNodeIdUnknown"),
        (ua.StatusCodes.BadCommunicationError, Quality.BAD, "BadCommunicationError"),
        (ua.StatusCodes.BadShutdown, Quality.BAD, "BadShutdown"),
        (0x40000000 | 0x400 | 0x200, Quality.UNCERTAIN, "Uncertain (limit high)"),
        (
            ua.StatusCodes.BadOutOfRange | 0x400 | 0x100 | 0x80,
            Quality.BAD,
            "BadOutOfRange (limit low, overflow)",
        ),
        (0x80FF0000, Quality.BAD, "0x80FF0000"),
        (0xC0000000, Quality.BAD, "0xC0000000"),  # severity 11: treat as bad
    ],
)
def test_status_code_quality_and_reason(code: int, quality: Quality, reason: str | None) -> None:
    assert status_quality(ua.StatusCode(code)) == (quality, reason)
    assert status_quality(code) == (quality, reason)


def test_missing_status_is_good() -> None:
    assert status_quality(None) == (Quality.GOOD, None)
    assert status_name(ua.StatusCodes.BadTimeout) == "BadTimeout"


# -- readings from data values --------------------------------------------------------------------


def test_reading_prefers_source_timestamp() -> None:
    src = dt.datetime(2024, 5, 1, 10, 0, 0, tzinfo=dt.UTC)
    srv = src + dt.timedelta(seconds=2)
    dv = ua.DataValue(ua.Variant(1500.0, VT.Double), SourceTimestamp=src, ServerTimestamp=srv)
    r = reading_from_datavalue("line1.speed", dv, 1234.5)
    assert (r.point, r.value, r.quality, r.reason) == ("line1.speed", 1500.0, Quality.GOOD, None)
    assert r.ts_source == src.timestamp()
    assert r.ts_gateway == 1234.5


def test_reading_falls_back_to_server_timestamp_then_none() -> None:
    srv = dt.datetime(2024, 5, 1, 10, 0, 2, tzinfo=dt.UTC)
    dv = ua.DataValue(ua.Variant(1, VT.Int32), ServerTimestamp=srv)
    assert reading_from_datavalue("d.p", dv, 0.0).ts_source == srv.timestamp()
    null = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)
    dv = ua.DataValue(ua.Variant(1, VT.Int32), SourceTimestamp=null)
    assert reading_from_datavalue("d.p", dv, 0.0).ts_source is None


def test_bad_status_has_no_value_and_says_why() -> None:
    dv = ua.DataValue(
        ua.Variant(3.0, VT.Double), StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure)
    )
    r = reading_from_datavalue("d.p", dv, 0.0)
    assert (r.value, r.quality, r.reason) == (None, Quality.BAD, "BadSensorFailure")


def test_uncertain_status_keeps_value() -> None:
    dv = ua.DataValue(
        ua.Variant(3.0, VT.Double),
        StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue),
    )
    r = reading_from_datavalue("d.p", dv, 0.0)
    assert (r.value, r.quality, r.reason) == (3.0, Quality.UNCERTAIN, "UncertainLastUsableValue")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_value_is_bad(value: float) -> None:
    r = reading_from_datavalue("d.p", ua.DataValue(ua.Variant(value, VT.Double)), 0.0)
    assert r.quality is Quality.BAD and r.value is None
    assert r.reason == f"server sent {value}"


def test_declared_range_marks_uncertain() -> None:
    def read(v: float) -> tuple[object, Quality, str | None]:
        r = reading_from_datavalue("d.p", ua.DataValue(ua.Variant(v)), 0.0, minimum=0, maximum=150)
        return r.value, r.quality, r.reason

    assert read(100.0) == (100.0, Quality.GOOD, None)
    assert read(-1.0) == (-1.0, Quality.UNCERTAIN, "below declared min 0")
    assert read(151.0) == (151.0, Quality.UNCERTAIN, "above declared max 150")


def test_timestamp_helper() -> None:
    assert timestamp(None) is None
    assert timestamp(dt.datetime(1970, 1, 1, 0, 0, 10)) == 10.0  # naive is UTC
    assert timestamp(WHEN) == WHEN.timestamp()


# -- write direction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "vtype", "expected"),
    [
        (True, VT.Boolean, True),
        (0, VT.Boolean, False),
        (1.0, VT.Boolean, True),
        (-128, VT.SByte, -128),
        (255, VT.Byte, 255),
        (250.0, VT.UInt16, 250),  # an integral float is an integer
        (-5, VT.Int32, -5),
        (2**64 - 1, VT.UInt64, 2**64 - 1),
        (80, VT.Double, 80.0),  # an int is written as the node's Double
        (1.5, VT.Float, 1.5),
        ("auto", VT.String, "auto"),
        ("<a/>", VT.XmlElement, "<a/>"),
        ("2024-05-01T10:00:00.5Z", VT.DateTime, WHEN),
        (WHEN.timestamp(), VT.DateTime, WHEN),
        (str(GUID), VT.Guid, GUID),
        ("AQI=", VT.ByteString, b"\x01\x02"),
    ],
)
def test_write_conversion(value: object, vtype: ua.VariantType, expected: object) -> None:
    variant = to_variant(value, vtype)  # type: ignore[arg-type]
    assert variant.VariantType is vtype
    assert variant.Value == expected
    assert type(variant.Value) is type(expected)
    if vtype is not VT.XmlElement:  # the written variant survives the wire
        assert wire(variant).Value == expected


def test_write_localized_text() -> None:
    variant = to_variant("Ana", VT.LocalizedText)
    assert wire(variant).Value == ua.LocalizedText("Ana")


@pytest.mark.parametrize(("vtype", "bounds"), sorted(INTEGER_RANGES.items()))
def test_integer_type_ranges(vtype: ua.VariantType, bounds: tuple[int, int]) -> None:
    lo, hi = bounds
    assert to_variant(lo, vtype).Value == lo
    assert to_variant(hi, vtype).Value == hi
    for outside in (lo - 1, hi + 1):
        with pytest.raises(WriteRejected, match=f"does not fit {vtype.name}"):
            to_variant(outside, vtype)


@pytest.mark.parametrize(
    ("value", "vtype", "message"),
    [
        (1.5, VT.UInt16, "UInt16 needs a whole number"),
        (math.inf, VT.Int32, "needs a whole number"),
        (True, VT.Int32, "Int32 needs a number (got bool True)"),
        ("12", VT.Double, "Double needs a number (got str '12')"),
        (1e39, VT.Float, "does not fit Float"),
        (math.inf, VT.Double, "finite number"),
        (math.nan, VT.Double, "NaN"),
        (2, VT.Boolean, "Boolean needs true/false"),
        ("yes", VT.Boolean, "Boolean needs true/false"),
        (5, VT.String, "String needs text (got int 5)"),
        ("yesterday", VT.DateTime, "ISO 8601"),
        (True, VT.DateTime, "DateTime needs"),
        (math.inf, VT.DateTime, "finite epoch"),
        (1e20, VT.DateTime, "not a representable epoch"),
        ("not-a-guid", VT.Guid, "Guid needs text"),
        ("***", VT.ByteString, "ByteString needs base64"),
        ("ns=2;s=x", VT.NodeId, "writing NodeId values is not supported"),
        (1, VT.ExtensionObject, "writing ExtensionObject values is not supported"),
        (None, VT.Double, "cannot write an empty value"),
    ],
)
def test_write_conversion_errors(value: object, vtype: ua.VariantType, message: str) -> None:
    with pytest.raises(WriteRejected) as info:
        to_variant(value, vtype)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_write_range_from_the_profile() -> None:
    assert to_variant(150, VT.Double, minimum=0, maximum=150).Value == 150.0
    with pytest.raises(WriteRejected, match="151 is above max 150"):
        to_variant(151, VT.Double, minimum=0, maximum=150)
    with pytest.raises(WriteRejected, match="-1 is below min 0"):
        to_variant(-1, VT.UInt16, minimum=0)
    check_range("text", 0, 1)  # non-numbers are not range-checked
    check_range(True, 5, 6)  # nor booleans


@pytest.mark.parametrize(
    ("datatype", "expected"),
    [
        (ua.NodeId(ua.ObjectIds.Boolean), VT.Boolean),
        (ua.NodeId(ua.ObjectIds.UInt16), VT.UInt16),
        (ua.NodeId(ua.ObjectIds.Double), VT.Double),
        (ua.NodeId(ua.ObjectIds.LocalizedText), VT.LocalizedText),
        (ua.NodeId(ua.ObjectIds.Duration), VT.Double),
        (ua.NodeId(ua.ObjectIds.UtcTime), VT.DateTime),
        (ua.NodeId(ua.ObjectIds.Enumeration), VT.Int32),
        (ua.NodeId(ua.ObjectIds.BaseDataType), None),  # abstract: ask the server
        (ua.NodeId(ua.ObjectIds.Number), None),
        (ua.NodeId(ua.ObjectIds.Structure), None),
        (ua.NodeId(ua.ObjectIds.EUInformation), None),
        (ua.NodeId(3003, 2), None),  # a vendor type
        (None, None),
    ],
)
def test_datatype_to_variant_type(
    datatype: ua.NodeId | None, expected: ua.VariantType | None
) -> None:
    assert variant_type_for_datatype(datatype) is expected
