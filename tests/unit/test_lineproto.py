"""Tests for the pure line-protocol codec (sync/lineproto.py).

Golden lines are written by hand from the line protocol spec's escaping rules (measurement:
comma, space; tag keys/values: comma, equals sign, space; string fields: double quote,
backslash; a backslash written doubled everywhere). The property tests parse every line back
with `parse_line`, a small reference parser written here from the spec (not from the codec),
so a symmetric bug in escaping and in the test cannot hide.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.readings import Quality, Value
from gateway.store import StoredReading
from gateway.types import DataClass
from sync.base import PointMeta
from sync.lineproto import (
    MAX_NS,
    LineEncoder,
    UnencodableReading,
    encode,
    escape_measurement,
    escape_string,
    escape_tag,
    format_value,
    timestamp_ns,
)

TS = 1_700_000_000.25  # exact in binary: no rounding question in the golden lines
TS_NS = 1_700_000_000_250_000_000


def reading(
    value: Value,
    *,
    rid: int = 7,
    point: str = "pump-1.flow",
    quality: Quality = Quality.GOOD,
    ts_gateway: float = TS,
    ts_source: float | None = None,
    reason: str | None = None,
) -> StoredReading:
    return StoredReading(rid, point, value, quality, ts_gateway, ts_source, reason)


def meta(
    device: str = "pump-1",
    name: str = "flow",
    unit: str = "m3/h",
    equipment: str | None = "pump-A",
) -> PointMeta:
    return PointMeta(device, name, unit, equipment, DataClass.PUBLIC)


ENC = LineEncoder(measurement="millrace", site="plant-1", gateway="gw-01")
PREFIX = "millrace,device=pump-1,equipment=pump-A,gateway=gw-01,point=pump-1.flow,site=plant-1"


# -- a reference parser, from the spec -------------------------------------------------------


class _Scanner:
    def __init__(self, line: str) -> None:
        self.s = line
        self.i = 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self, expected: str) -> None:
        assert self.peek() == expected, f"expected {expected!r} at {self.i} in {self.s!r}"
        self.i += 1

    def name(self, stops: str, escapable: str) -> str:
        """Read up to an unescaped stop character. `\\x` with x escapable is x; any other
        backslash is literal."""
        out: list[str] = []
        while self.i < len(self.s) and self.s[self.i] not in stops:
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < len(self.s) and self.s[self.i + 1] in escapable:
                out.append(self.s[self.i + 1])
                self.i += 2
            else:
                out.append(c)
                self.i += 1
        return "".join(out)

    def string(self) -> str:
        self.take('"')
        out: list[str] = []
        while True:
            assert self.i < len(self.s), f"unterminated string in {self.s!r}"
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < len(self.s) and self.s[self.i + 1] in '"\\':
                out.append(self.s[self.i + 1])
                self.i += 2
            elif c == '"':
                self.i += 1
                return "".join(out)
            else:
                out.append(c)
                self.i += 1


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, Value], int]:
    """measurement, tags, fields (typed), timestamp: the line protocol grammar, strictly."""
    assert "\n" not in line and "\r" not in line, f"raw line break in {line!r}"
    assert not line.startswith("#"), "a line starting with # is a comment"
    sc = _Scanner(line)
    measurement = sc.name(", ", ", \\")
    assert measurement, "empty measurement"
    tags: dict[str, str] = {}
    keys: list[str] = []
    while sc.peek() == ",":
        sc.take(",")
        key = sc.name("=", ",= \\")
        sc.take("=")
        value = sc.name(", ", ",= \\")
        assert key and value, f"empty tag key or value in {line!r}"
        assert key not in tags, f"duplicate tag {key!r}"
        tags[key] = value
        keys.append(key)
    assert keys == sorted(keys), "tags are not in key order"
    sc.take(" ")
    fields: dict[str, Value] = {}
    while True:
        key = sc.name("=", ",= \\")
        sc.take("=")
        if sc.peek() == '"':
            fields[key] = sc.string()
        else:
            raw = sc.name(", ", "")
            if raw in ("true", "false"):
                fields[key] = raw == "true"
            elif raw.endswith("i"):
                fields[key] = int(raw[:-1])
            else:
                number = float(raw)
                assert math.isfinite(number), f"non-finite float {raw!r}"
                fields[key] = number
        if sc.peek() != ",":
            break
        sc.take(",")
    sc.take(" ")
    stamp = sc.s[sc.i :]
    assert stamp.lstrip("-").isdigit(), f"bad timestamp {stamp!r}"
    return measurement, tags, fields, int(stamp)


# -- escaping: golden cases from the spec ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("myMeasurement", "myMeasurement"),
        ("my Measurement", "my\\ Measurement"),
        ("my,Measurement", "my\\,Measurement"),
        ("my=Measurement", "my=Measurement"),  # '=' is not special in a measurement
        ("C:\\dir", "C:\\\\dir"),
        ("trailing\\", "trailing\\\\"),
        ("two\nlines", "two\\nlines"),
    ],
)
def test_measurement_escaping(raw: str, escaped: str) -> None:
    assert escape_measurement(raw) == escaped


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("tagValue1", "tagValue1"),
        ("tag Key1", "tag\\ Key1"),
        ("tag,Key1", "tag\\,Key1"),
        ("tag=Key1", "tag\\=Key1"),
        ('"quoted"', '"quoted"'),  # quotes are plain in tags
        ("m³/h", "m³/h"),
        ("°C", "°C"),
        ("a\\", "a\\\\"),  # a trailing backslash must not escape the next separator
        ("\\,", "\\\\\\,"),
        ("tab\there", "tab\\there"),
        ("cr\rlf\n", "cr\\rlf\\n"),
    ],
)
def test_tag_escaping(raw: str, escaped: str) -> None:
    assert escape_tag(raw) == escaped


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("string value", "string value"),
        ('"string" within a string', '\\"string\\" within a string'),
        ("C:\\path", "C:\\\\path"),
        ("ends with \\", "ends with \\\\"),
        ("a,b=c d", "a,b=c d"),  # nothing else is special inside quotes
        ("Launch 🚀", "Launch 🚀"),
        ("two\nlines\r", "two\\nlines\\r"),
        ("tab\tkept", "tab\tkept"),
    ],
)
def test_string_field_escaping(raw: str, escaped: str) -> None:
    assert escape_string(raw) == escaped


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (21.5, "21.5"),
        (-0.001, "-0.001"),
        (1e-05, "1e-05"),
        (1e16, "1e+16"),
        (3.0, "3.0"),
        (0.1, "0.1"),  # shortest round-trip text, not 0.1000000000000000055...
        (42, "42i"),
        (-7, "-7i"),
        (0, "0i"),
        (2**63 - 1, "9223372036854775807i"),
        (-(2**63), "-9223372036854775808i"),
        (2**64 - 1, "1.8446744073709552e+19"),  # beyond int64: written as a float
        (True, "true"),
        (False, "false"),
        ("running", '"running"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("", '""'),
        (None, None),
        (math.nan, None),
        (math.inf, None),
        (-math.inf, None),
    ],
)
def test_format_value(value: Value, text: str | None) -> None:
    assert format_value(value) == text


def test_good_float_line() -> None:
    assert ENC.line(reading(21.5), meta()) == (
        f"{PREFIX},unit=m3/h value=21.5,quality=0i,id=7i {TS_NS}"
    )


def test_int_bool_and_string_lines() -> None:
    assert ENC.line(reading(42), meta()).split(" ")[1] == "value=42i,quality=0i,id=7i"
    assert ENC.line(reading(True), meta()).split(" ")[1] == "value=true,quality=0i,id=7i"
    line = ENC.line(reading('{"alarm": "hot, very"}', rid=9), meta(unit=""))
    assert line == (f'{PREFIX} value="{{\\"alarm\\": \\"hot, very\\"}}",quality=0i,id=9i {TS_NS}')


def test_bad_reading_without_value_has_quality_and_id_only() -> None:
    r = reading(None, quality=Quality.BAD, reason="device down: no answer (timeout)")
    assert ENC.line(r, meta()) == f"{PREFIX},unit=m3/h quality=2i,id=7i {TS_NS}"


@pytest.mark.parametrize(("value", "name"), [(math.nan, "NaN"), (math.inf, "+Inf")])
def test_non_finite_value_is_named_not_written(value: float, name: str) -> None:
    r = reading(value, quality=Quality.UNCERTAIN)
    assert ENC.line(r, meta()) == (
        f'{PREFIX},unit=m3/h nonfinite="{name}",quality=1i,id=7i {TS_NS}'
    )
    assert ENC.line(reading(-math.inf), meta()).split(" ")[1] == (
        'nonfinite="-Inf",quality=0i,id=7i'
    )


def test_tags_left_out_when_unknown_and_device_from_point_id() -> None:
    enc = LineEncoder()  # default measurement, no site, no gateway
    assert enc.line(reading(1.5), None) == (
        f"millrace,device=pump-1,point=pump-1.flow value=1.5,quality=0i,id=7i {TS_NS}"
    )
    assert enc.line(reading(1.5, point="orphan"), None).startswith("millrace,point=orphan ")
    no_equipment = enc.line(reading(1.5), meta(equipment=None, unit=""))
    assert no_equipment.startswith("millrace,device=pump-1,point=pump-1.flow ")


def test_escaped_tags_and_measurement_in_a_whole_line() -> None:
    enc = LineEncoder(measurement="plant data,v2", site="North Field, Plot=3", gateway="gw 1")
    line = enc.line(reading(1.0), meta(unit="kg m\\s"))
    assert line == (
        "plant\\ data\\,v2,device=pump-1,equipment=pump-A,gateway=gw\\ 1,point=pump-1.flow,"
        "site=North\\ Field\\,\\ Plot\\=3,unit=kg\\ m\\\\s value=1.0,quality=0i,id=7i "
        f"{TS_NS}"
    )
    measurement, tags, _, _ = parse_line(line)
    assert measurement == "plant data,v2"
    assert tags["site"] == "North Field, Plot=3"
    assert tags["unit"] == "kg m\\s"


def test_measurement_must_not_be_a_comment_or_empty() -> None:
    with pytest.raises(ValueError, match="#"):
        LineEncoder(measurement="#millrace")
    with pytest.raises(ValueError, match="empty"):
        LineEncoder(measurement="")


def test_prefix_follows_changed_metadata() -> None:
    enc = LineEncoder()
    assert "unit=bar" in enc.line(reading(1.0), meta(unit="bar"))
    assert "unit=psi" in enc.line(reading(1.0), meta(unit="psi"))


# -- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "ns"),
    [
        (0.0, 0),
        (0.1, 100_000_000),
        (1.5, 1_500_000_000),
        (-1.5, -1_500_000_000),
        (1_700_000_000.123456, 1_700_000_000_123_456_000),
        (1_700_000_000.000001, 1_700_000_000_000_001_000),
        (1_700_000_000.999999, 1_700_000_000_999_999_000),
        (1_700_000_000.9999996, 1_700_000_001_000_000_000),  # rounds up across the second
    ],
)
def test_timestamp_ns_exact(ts: float, ns: int) -> None:
    assert timestamp_ns(ts) == ns


def test_timestamp_float_multiplication_would_drift() -> None:
    """Why integer arithmetic: `ts * 1e9` lands on arbitrary nanoseconds."""
    ts = 1_700_000_000.999999
    assert round(ts * 1e9) == 1_700_000_000_999_998_976
    assert timestamp_ns(ts) == 1_700_000_000_999_999_000


@given(st.integers(min_value=-(2**31) * 10**6, max_value=2**31 * 10**6))
def test_timestamp_microseconds_survive_the_float(us: int) -> None:
    """Any µs timestamp up to 2038, once a float, comes back as exactly that µs."""
    assert timestamp_ns(us / 1_000_000) == us * 1000


def test_source_time_wins_over_gateway_time() -> None:
    r = reading(1.0, ts_gateway=TS, ts_source=1_600_000_000.5)
    assert ENC.line(r, meta()).endswith(" 1600000000500000000")
    assert ENC.line(reading(1.0, ts_source=None), meta()).endswith(f" {TS_NS}")


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf, 1e12, -1e11])
def test_unwritable_timestamps(ts: float) -> None:
    with pytest.raises(UnencodableReading):
        timestamp_ns(ts)


def test_timestamp_range_edge() -> None:
    assert timestamp_ns(9_223_372_036.0) <= MAX_NS


def test_lines_keep_going_past_an_unencodable_reading() -> None:
    rs = [reading(1.0, rid=1), reading(2.0, rid=2, ts_gateway=math.nan), reading(3.0, rid=3)]
    done, failed = ENC.lines(rs, {"pump-1.flow": meta()})
    assert [r.id for r, _ in done] == [1, 3]
    assert [f.reading.id for f in failed] == [2]
    assert "finite" in failed[0].reason
    with pytest.raises(UnencodableReading):
        encode(rs, lambda _p: None)


def test_encode_one_line_per_reading() -> None:
    rs = [reading(float(i), rid=i) for i in range(1, 6)]
    lines = encode(rs, {}, measurement="m", site="s", gateway="g")
    assert len(lines) == 5
    assert [parse_line(x)[2]["id"] for x in lines] == [1, 2, 3, 4, 5]


# -- properties: any text, a well-formed line that parses back -------------------------------


def _in_names(text: str) -> str:
    """What the far side reads for a name: line breaks and tabs as backslash + letter."""
    return text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _in_strings(text: str) -> str:
    return text.replace("\n", "\\n").replace("\r", "\\r")


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
_measurements = st.text(min_size=1, max_size=20).filter(lambda m: not m.startswith("#"))


@settings(max_examples=400, deadline=None)
@given(
    measurement=_measurements,
    site=st.text(max_size=20),
    gateway=st.text(max_size=20),
    device=st.text(max_size=20),
    name=st.text(max_size=20),
    unit=st.text(max_size=12),
    equipment=st.none() | st.text(max_size=20),
    value=_values,
    quality=st.sampled_from(list(Quality)),
    rid=st.integers(min_value=1, max_value=2**63 - 1),
    ts=st.floats(min_value=-2e9, max_value=4e9),
)
def test_any_text_gives_a_line_that_parses_back(
    measurement: str,
    site: str,
    gateway: str,
    device: str,
    name: str,
    unit: str,
    equipment: str | None,
    value: Value,
    quality: Quality,
    rid: int,
    ts: float,
) -> None:
    point = f"{device}.{name}"
    enc = LineEncoder(measurement=measurement, site=site, gateway=gateway)
    pm = PointMeta(device, name, unit, equipment, DataClass.PUBLIC)
    line = enc.line(reading(value, rid=rid, point=point, quality=quality, ts_gateway=ts), pm)

    got_measurement, tags, fields, stamp = parse_line(line)
    assert got_measurement == _in_names(measurement)
    expected_tags = {
        k: _in_names(v)
        for k, v in {
            "device": device,
            "equipment": equipment or "",
            "gateway": gateway,
            "point": point,
            "site": site,
            "unit": unit,
        }.items()
        if v
    }
    assert tags == expected_tags
    assert fields["quality"] == int(quality)
    assert fields["id"] == rid
    if value is None:
        assert set(fields) == {"quality", "id"}
    elif isinstance(value, float) and not math.isfinite(value):
        assert "value" not in fields
        assert fields["nonfinite"] in ("NaN", "+Inf", "-Inf")
    elif isinstance(value, str):
        assert fields["value"] == _in_strings(value)
    elif isinstance(value, bool):
        assert fields["value"] is value
    elif isinstance(value, int) and -(2**63) <= value < 2**63:
        assert fields["value"] == value
    else:
        assert fields["value"] == float(value)
    assert stamp % 1000 == 0
    assert abs(stamp - Fraction(ts) * 10**9) <= 500  # the float's exact value, to the µs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=8))
def test_a_batch_joins_and_splits_on_newlines(texts: list[str]) -> None:
    rs = [reading(t, rid=i + 1) for i, t in enumerate(texts)]
    lines = encode(rs, {}, site="a\nb", gateway="c\rd")
    assert "\n".join(lines).split("\n") == lines
    assert [parse_line(x)[2]["value"] for x in lines] == [_in_strings(t) for t in texts]
