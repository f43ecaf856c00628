"""Pure conversions between OPC UA values and the gateway's `Value` (no I/O, no sessions).

Read direction (`to_value`, `reading_from_datavalue`), by the Variant's built-in type:

| OPC UA                                   | gateway Value                                   |
| ---------------------------------------- | ----------------------------------------------- |
| Null                                     | None                                            |
| Boolean                                  | bool                                            |
| SByte, Byte, Int16 … UInt64, enumeration | int                                             |
| Float, Double                            | float (Float exactly as on the wire)            |
| String, XmlElement                       | str                                             |
| DateTime                                 | str, ISO 8601 UTC (`2024-05-01T10:00:00.5Z`)    |
| Guid                                     | str (`09087e75-8e5e-...`)                       |
| ByteString                               | str, base64 (as OPC UA's JSON encoding does)    |
| LocalizedText                            | str, the text (locale dropped)                  |
| QualifiedName                            | str, `ns:Name`                                  |
| NodeId, ExpandedNodeId                   | str, `ns=2;s=...`                               |
| StatusCode                               | str, its name (`BadNodeIdUnknown`)              |
| arrays / matrices, structures            | str, compact JSON text (elements as above, NaN  |
|                                          | and ±inf as null; structures as objects)        |

Arrays are JSON *text*, not Python lists, so every reading stays a scalar the store, the API and
every uplink already handle; `json.loads(value)` gives the list back.

Quality (`status_quality`): the StatusCode's severity decides, its symbolic name is the reason:
Good… → GOOD (reason only for Good sub-codes such as GoodClamped), Uncertain… → UNCERTAIN, Bad… →
BAD with no value. A non-finite Float/Double with a Good status is BAD (`server sent nan`), as in
the Modbus driver; a value outside the point's declared min/max is UNCERTAIN.

Timestamps: `ts_source` is the SourceTimestamp, else the ServerTimestamp, else None (the
DateTime minimum, 1601-01-01, counts as absent); epoch seconds.

Declared type (`expected`, the built-in type of the node's DataType read at connect): a Good
value of another kind — a Double node sending a String, ByteString, Boolean or Null — is BAD
with the reason `wrong type: node is Double, server sent String` (`type_mismatch`). Within a
kind the width may change (Int32 -> Int64, Float -> Double). Only numbers, Boolean and text are
checked; an array whose elements have the node's type passes (the value rank is not read).

Write direction (`to_variant`): an engineering value becomes a Variant of the node's built-in
type, or `WriteRejected` says why not (wrong kind of value, not an integer, outside the type's
range or the point's min/max, unsupported type). The driver adds the device and point context.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from gateway.errors import WriteRejected
from gateway.readings import Quality, Reading, Value

__all__ = [
    "INTEGER_RANGES",
    "check_range",
    "reading_from_datavalue",
    "status_name",
    "status_quality",
    "timestamp",
    "to_value",
    "to_variant",
    "type_mismatch",
    "variant_type_for_datatype",
]

VT = ua.VariantType

#: Inclusive value range of each integer built-in type.
INTEGER_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    VT.SByte: (-(2**7), 2**7 - 1),
    VT.Byte: (0, 2**8 - 1),
    VT.Int16: (-(2**15), 2**15 - 1),
    VT.UInt16: (0, 2**16 - 1),
    VT.Int32: (-(2**31), 2**31 - 1),
    VT.UInt32: (0, 2**32 - 1),
    VT.Int64: (-(2**63), 2**63 - 1),
    VT.UInt64: (0, 2**64 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38

#: DateTimes at or before this are the OPC UA "null" DateTime (encoded as 0).
_NULL_DATETIME = datetime(1601, 1, 2, tzinfo=UTC)

#: ns=0 DataType ids that are not built-in types themselves, with the built-in type they are
#: encoded as (Part 3 / Part 5). Custom and abstract types are looked up on the server.
_DERIVED_DATATYPES: dict[int, ua.VariantType] = {
    29: VT.Int32,  # Enumeration (enum types deriving from it in ns=0 are looked up)
    30: VT.ByteString,  # Image
    256: VT.Int32,  # IdType
    257: VT.Int32,  # NodeClass
    288: VT.UInt32,  # IntegerId
    289: VT.UInt32,  # Counter
    290: VT.Double,  # Duration
    291: VT.String,  # NumericRange
    294: VT.DateTime,  # UtcTime
    295: VT.String,  # LocaleId
    311: VT.ByteString,  # ApplicationInstanceCertificate
    852: VT.Int32,  # ServerState
    2000: VT.ByteString,  # ImageBMP
    2003: VT.ByteString,  # ImagePNG
    12877: VT.String,  # NormalizedString
    12878: VT.String,  # DecimalString
    12879: VT.String,  # DurationString
    12880: VT.String,  # TimeString
    12881: VT.String,  # DateString
}


# --------------------------------------------------------------------------------------------
# Read direction
# --------------------------------------------------------------------------------------------


def status_name(code: int) -> str:
    """Symbolic name of a status code, ignoring the info bits (limit, overflow)."""
    name, doc = ua.status_codes.get_name_and_doc(code & 0xFFFF0000)
    unknown = name.startswith("Unknown") or doc.startswith("Unknown StatusCode")
    return f"0x{code & 0xFFFF0000:08X}" if unknown else name


def _limit_note(code: int) -> str:
    # Part 4 §7.34.1: InfoType DataValue (0x400) enables LimitBits (0x300) and Overflow (0x80).
    if not code & 0x400:
        return ""
    limit = {0x100: "low", 0x200: "high", 0x300: "constant"}.get(code & 0x300)
    notes = [f"limit {limit}"] if limit else []
    if code & 0x80:
        notes.append("overflow")
    return f" ({', '.join(notes)})" if notes else ""


def status_quality(status: ua.StatusCode | int | None) -> tuple[Quality, str | None]:
    """(quality, reason) for a StatusCode: severity bits decide, the name is the reason."""
    if status is None:
        return Quality.GOOD, None
    code = int(status.value if isinstance(status, ua.StatusCode) else status)
    if code == 0:
        return Quality.GOOD, None
    severity = code & 0xC0000000
    if severity == 0:
        quality = Quality.GOOD
    elif severity == 0x40000000:
        quality = Quality.UNCERTAIN
    else:
        quality = Quality.BAD
    return quality, status_name(code) + _limit_note(code)


def timestamp(value: datetime | None) -> float | None:
    """Epoch seconds of an OPC UA DateTime; None for absent or the 1601 "null" DateTime."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if value <= _NULL_DATETIME:
        return None
    return value.timestamp()


def _iso(value: datetime) -> str | None:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if value <= _NULL_DATETIME:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _scalar(value: Any) -> Value:
    """One non-array value as a gateway Value (see the module table)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return int(value.value) if isinstance(value.value, int) else str(value.name)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, ua.LocalizedText):
        return value.Text if value.Text is not None else ""
    if isinstance(value, ua.QualifiedName):
        return value.to_string()
    if isinstance(value, ua.NodeId):
        return value.to_string()
    if isinstance(value, ua.StatusCode):
        return status_name(int(value.value))
    if isinstance(value, ua.Variant):
        return to_value(value.Value, value.VariantType)
    if isinstance(value, ua.DataValue):
        return to_value(value.Value.Value if value.Value is not None else None)
    return json.dumps(_jsonable(value), separators=(",", ":"), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    """A JSON-ready form of any decoded OPC UA value (arrays, structures, scalars)."""
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, ua.ExtensionObject):
        body = base64.b64encode(value.Body).decode("ascii") if value.Body else None
        return {"TypeId": value.TypeId.to_string(), "Body": body}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, ua.StatusCode):
            return status_name(int(value.value))
        if isinstance(value, ua.LocalizedText | ua.NodeId | ua.Variant | ua.DataValue):
            return _scalar(value)
        return {
            f.name: _jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name != "Encoding"
        }
    scalar = _scalar(value)
    if isinstance(scalar, float) and not math.isfinite(scalar):
        return None
    return scalar


def to_value(value: Any, variant_type: ua.VariantType | None = None) -> Value:
    """Any decoded Variant value (scalar, array, structure) as a gateway Value."""
    if isinstance(value, list | tuple):
        return json.dumps(_jsonable(list(value)), separators=(",", ":"), ensure_ascii=False)
    return _scalar(value)


#: Built-in types of one kind: a node of one may send another of the same kind, never of
#: another kind (a number node sending text is a server whose type changed under us).
_KINDS: tuple[frozenset[ua.VariantType], ...] = (
    frozenset(INTEGER_RANGES) | {VT.Float, VT.Double},
    frozenset({VT.Boolean}),
    frozenset({VT.String, VT.XmlElement, VT.LocalizedText}),
)


def type_mismatch(variant: ua.Variant | None, expected: ua.VariantType | None) -> str | None:
    """Why a value cannot be of the node's declared type, or None when it can (or when the
    declared type is unknown or not one of the checked kinds)."""
    if expected is None:
        return None
    kind = next((k for k in _KINDS if expected in k), None)
    if kind is None:
        return None
    if variant is None or variant.VariantType == VT.Null or variant.Value is None:
        return f"node is {expected.name}, server sent no value (Null)"
    if variant.VariantType not in kind:
        return f"node is {expected.name}, server sent {variant.VariantType.name}"
    return None


def reading_from_datavalue(
    point: str,
    dv: ua.DataValue,
    ts_gateway: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    expected: ua.VariantType | None = None,
) -> Reading:
    """A Reading from a DataValue (a read result or a data change notification)."""
    quality, reason = status_quality(dv.StatusCode)
    ts_source = timestamp(dv.SourceTimestamp)
    if ts_source is None:
        ts_source = timestamp(dv.ServerTimestamp)
    if quality is Quality.BAD:
        return Reading(point, None, quality, ts_gateway, ts_source, reason)
    variant = dv.Value
    problem = type_mismatch(variant, expected)
    if problem is not None:
        return Reading(point, None, Quality.BAD, ts_gateway, ts_source, f"wrong type: {problem}")
    value = None if variant is None else to_value(variant.Value, variant.VariantType)
    if isinstance(value, float) and not math.isfinite(value):
        return Reading(point, None, Quality.BAD, ts_gateway, ts_source, f"server sent {value}")
    if quality is Quality.GOOD and isinstance(value, int | float) and not isinstance(value, bool):
        if minimum is not None and value < minimum:
            return Reading(
                point,
                value,
                Quality.UNCERTAIN,
                ts_gateway,
                ts_source,
                f"below declared min {minimum}",
            )
        if maximum is not None and value > maximum:
            return Reading(
                point,
                value,
                Quality.UNCERTAIN,
                ts_gateway,
                ts_source,
                f"above declared max {maximum}",
            )
    return Reading(point, value, quality, ts_gateway, ts_source, reason)


# --------------------------------------------------------------------------------------------
# Write direction
# --------------------------------------------------------------------------------------------


def variant_type_for_datatype(datatype: ua.NodeId | None) -> ua.VariantType | None:
    """The built-in type a node of this DataType is written as, when known without asking the
    server: the built-in types themselves (ns=0, i=1..25) and a few common derived ones. None
    for abstract (BaseDataType, Number, Integer, UInteger), structure and custom types."""
    if datatype is None or datatype.NamespaceIndex != 0 or not isinstance(datatype.Identifier, int):
        return None
    ident = int(datatype.Identifier)
    if 1 <= ident <= 25 and ident not in (22, 23, 24, 25):
        return VT(ident)
    return _DERIVED_DATATYPES.get(ident)


def check_range(value: Value, minimum: float | None, maximum: float | None) -> None:
    """Refuse a number outside the point's declared min/max (non-numbers pass)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and math.isnan(value):
        raise WriteRejected("NaN is not a value that can be written")
    if minimum is not None and value < minimum:
        raise WriteRejected(f"{value} is below min {minimum}")
    if maximum is not None and value > maximum:
        raise WriteRejected(f"{value} is above max {maximum}")


def _number(value: Value, vtype: ua.VariantType) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRejected(f"{vtype.name} needs a number (got {type(value).__name__} {value!r})")
    return value


def _integer(value: Value, vtype: ua.VariantType) -> int:
    number = _number(value, vtype)
    if isinstance(number, float):
        if not math.isfinite(number) or not number.is_integer():
            raise WriteRejected(f"{vtype.name} needs a whole number (got {number!r})")
        number = int(number)
    lo, hi = INTEGER_RANGES[vtype]
    if not lo <= number <= hi:
        raise WriteRejected(f"{number} does not fit {vtype.name} ({lo}..{hi})")
    return number


def _float(value: Value, vtype: ua.VariantType) -> float:
    number = float(_number(value, vtype))
    if not math.isfinite(number):
        raise WriteRejected(f"{vtype.name} write needs a finite number (got {number!r})")
    if vtype is VT.Float and abs(number) > FLOAT32_MAX:
        raise WriteRejected(f"{number} does not fit Float (±{FLOAT32_MAX:.7g})")
    return number


def _text(value: Value, vtype: ua.VariantType) -> str:
    if not isinstance(value, str):
        raise WriteRejected(f"{vtype.name} needs text (got {type(value).__name__} {value!r})")
    return value


def _boolean(value: Value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise WriteRejected(f"Boolean needs true/false (or 0/1) (got {value!r})")


def _datetime(value: Value) -> datetime:
    if isinstance(value, str):
        text = value.strip()
        try:
            dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            raise WriteRejected(f"DateTime needs ISO 8601 text (got {value!r})") from None
        return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise WriteRejected(f"DateTime needs a finite epoch (got {value!r})")
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise WriteRejected(f"{value!r} is not a representable epoch time") from None
    raise WriteRejected(f"DateTime needs ISO 8601 text or epoch seconds (got {value!r})")


def _guid(value: Value) -> uuid.UUID:
    try:
        return uuid.UUID(_text(value, VT.Guid))
    except ValueError:
        raise WriteRejected(f"Guid needs text like 09087e75-8e5e-... (got {value!r})") from None


def _bytes(value: Value) -> bytes:
    try:
        return base64.b64decode(_text(value, VT.ByteString).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise WriteRejected(f"ByteString needs base64 text (got {value!r})") from None


def to_variant(
    value: Value,
    vtype: ua.VariantType,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> ua.Variant:
    """`value` as a Variant of `vtype`, after the min/max and type-range checks."""
    if value is None:
        raise WriteRejected("cannot write an empty value")
    check_range(value, minimum, maximum)
    if vtype is VT.Boolean:
        return ua.Variant(_boolean(value), vtype)
    if vtype in INTEGER_RANGES:
        return ua.Variant(_integer(value, vtype), vtype)
    if vtype in (VT.Float, VT.Double):
        return ua.Variant(_float(value, vtype), vtype)
    if vtype in (VT.String, VT.XmlElement):
        return ua.Variant(_text(value, vtype), vtype)
    if vtype is VT.LocalizedText:
        return ua.Variant(ua.LocalizedText(_text(value, vtype)), vtype)
    if vtype is VT.DateTime:
        return ua.Variant(_datetime(value), vtype)
    if vtype is VT.Guid:
        return ua.Variant(_guid(value), vtype)
    if vtype is VT.ByteString:
        return ua.Variant(_bytes(value), vtype)
    raise WriteRejected(f"writing {vtype.name} values is not supported")
