"""What leaves the box, built from arbitrary stored readings: InfluxDB line protocol and the
MQTT uplink's JSON. Hostile text (separators, quotes, backslashes, line breaks, lone
surrogates) can never break a line or a document, the escaping reads back to the original,
and the only refusal is the documented UnencodableReading."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.readings import Quality
from gateway.store import StoredReading
from gateway.types import DataClass
from sync.base import PointMeta
from sync.lineproto import LineEncoder, UnencodableReading
from sync.mqtt import encode_reading, reading_object
from tests.fuzz._fuzz import fuzz, tried

SPECIAL = [*",= \"\\'\n\r\t#{}[]:", "\x00", "\ud800", "é", "🙂"]
hostile_text = st.text(st.one_of(st.sampled_from(SPECIAL), st.characters()), max_size=30)
values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), hostile_text
)
timestamps = st.one_of(st.floats(0, 4e9), st.floats())
BREAKS = re.compile(r"[\n\r\t]")


@st.composite
def readings(draw: st.DrawFn) -> StoredReading:
    return StoredReading(
        id=draw(st.integers(1, 2**62)),
        point=draw(hostile_text.filter(bool)),
        value=draw(values),
        quality=draw(st.sampled_from(list(Quality))),
        ts_gateway=draw(timestamps),
        ts_source=draw(st.none() | timestamps),
        reason=draw(st.none() | hostile_text),
    )


def split(text: str, seps: str, *, quotes: bool = False) -> list[str]:
    """Split at unescaped `seps` (outside double quotes when `quotes`), keeping escapes."""
    out: list[str] = []
    cur: list[str] = []
    in_str = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if quotes and ch == '"':
            in_str = not in_str
        if ch in seps and not in_str:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def _head(line: str) -> tuple[str, str, str]:
    head = split(line, " ")[0]
    return head, " ", line[len(head) + 1 :]


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


def pairs(section: str, *, quotes: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in split(section, ",", quotes=quotes):
        key, value = split(part, "=", quotes=quotes)[:2] if "=" in part else (part, "")
        out[unescape(key)] = value
    return out


@fuzz(250)
@given(r=readings(), unit=hostile_text, site=hostile_text, equipment=st.none() | hostile_text)
def test_line_protocol_from_hostile_readings(
    r: StoredReading, unit: str, site: str, equipment: str | None
) -> None:
    tried("lineproto.line")
    meta = PointMeta("dev", "p", unit, equipment or None, DataClass.PUBLIC)
    enc = LineEncoder(site=site, gateway="gw-1")
    try:
        line = enc.line(r, meta)
    except UnencodableReading as exc:
        assert str(exc)
        stamp = r.ts_source if r.ts_source is not None else r.ts_gateway
        assert not math.isfinite(stamp) or not -9.2e9 < stamp < 9.2e9
        return
    assert "\n" not in line and "\r" not in line  # one reading, one line, always
    assert not line.startswith("#")
    # measurement+tags (a quote is literal there), fields (strings quoted), timestamp
    head, _, rest = _head(line)
    sections = split(rest, " ", quotes=True)
    assert len(sections) == 2, line
    fields, stamp = sections
    assert stamp.lstrip("-").isdigit()
    tags = pairs(head, quotes=False)
    keys = list(tags)[1:]  # after the measurement
    assert keys == sorted(keys)
    if not BREAKS.search(r.point):
        assert unescape(tags["point"]) == r.point
    if site and not BREAKS.search(site):
        assert unescape(tags["site"]) == site
    if unit and not BREAKS.search(unit):
        assert unescape(tags["unit"]) == unit
    got = pairs(fields, quotes=True)
    assert got["id"] == f"{r.id}i"
    if isinstance(r.value, str) and not re.search(r"[\n\r]", r.value):
        assert unescape(got["value"][1:-1]) == r.value


def strict_json(payload: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a payload that must be strict JSON")

    return json.loads(payload.decode("utf-8"), parse_constant=refuse)


@fuzz(250)
@given(r=readings())
def test_mqtt_payload_from_hostile_readings(r: StoredReading) -> None:
    tried("sync.mqtt encode_reading")
    try:
        expected = reading_object(r)
    except ValueError:  # a gateway timestamp that is no number of milliseconds
        assert not math.isfinite(r.ts_gateway * 1000.0)
        return
    payload = encode_reading(r)
    doc = strict_json(payload)  # valid UTF-8 and strict JSON, whatever the text held
    if not re.search("[\ud800-\udfff]", json.dumps(expected, ensure_ascii=False)):
        assert doc == expected
    assert doc["id"] == r.id and isinstance(doc["ts"], int)
    if isinstance(r.value, float) and not math.isfinite(r.value):
        assert doc["value"] is None and "non-finite" in doc["reason"]
