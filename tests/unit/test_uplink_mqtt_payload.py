"""The MQTT uplink's pure half: routing, payloads, splitting, state, PUBACK codes, config.
No sockets: `sync.mqtt`'s pure functions against the published JSON Schema."""

from __future__ import annotations

import json
import math
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

import sync
from gateway.readings import Quality, Value
from gateway.store import StoredReading
from gateway.types import DataClass
from sync.base import OutboxBatch, PointMeta
from sync.mqtt import (
    Envelope,
    MqttUplinkConfig,
    encode_json,
    encode_reading,
    merge_state,
    puback_action,
    reading_object,
    route,
    split_batch,
    state_message,
    tls_context,
    topic_level,
)
from tests.integration.mosquitto import make_tls

SCHEMA_PATH = Path(sync.__file__).parent / "schemas" / "telemetry-batch.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
BATCH = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
STATE = Draft202012Validator(
    {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": "#/$defs/state"}
)
ENV = Envelope("millrace", "plant-a", "gw-1", "central")
T0 = 1_718_000_000.123

META = {
    "pump-1.flow": PointMeta("pump-1", "flow", "m3/h", "station-1", DataClass.PUBLIC),
    "pump-1.pressure": PointMeta("pump-1", "pressure", "bar", "station-1", DataClass.PUBLIC),
    "press.torque": PointMeta("press", "torque", "Nm", None, DataClass.PUBLIC),
    "mill-1.event": PointMeta("mill-1", "event", "", "line-1", DataClass.PUBLIC),
    "mill-1.alarm_failure_predicted": PointMeta(
        "mill-1", "alarm_failure_predicted", "", "line-1", DataClass.PUBLIC
    ),
}


def meta(point: str) -> PointMeta | None:
    return META.get(point)


def reading(
    rid: int,
    point: str,
    value: Value = 1.0,
    quality: Quality = Quality.GOOD,
    *,
    ts: float | None = None,
    ts_source: float | None = None,
    reason: str | None = None,
) -> StoredReading:
    return StoredReading(
        rid, point, value, quality, T0 + rid if ts is None else ts, ts_source, reason
    )


def batch_of(readings: list[StoredReading], seq: int = 7) -> OutboxBatch:
    prev = readings[0].id - 1 if readings else 0
    last = readings[-1].id if readings else 0
    return OutboxBatch("central", seq, prev, last, readings)


def decode(payload: bytes) -> dict[str, Any]:
    return json.loads(payload.decode("utf-8"))


def check_split(
    batch: OutboxBatch, max_bytes: int, point_meta: Any = meta
) -> tuple[list[dict[str, Any]], list[int]]:
    """Split, then check every invariant the far side relies on; returns the decoded
    payloads and the rejected ids."""
    split = split_batch(batch, ENV, point_meta, max_bytes=max_bytes)
    docs = [decode(m.payload) for m in split.messages]
    for m, doc in zip(split.messages, docs, strict=True):
        assert len(m.payload) <= max_bytes
        BATCH.validate(doc)
        assert not m.retain
        assert m.topic == ENV.topic(doc["equipment"], m.kind)
        assert [r["id"] for r in doc["readings"]] == [r.id for r in m.readings]
        assert (doc["seq"], doc["prev_id"], doc["last_id"]) == (
            batch.seq,
            batch.prev_id,
            batch.last_id,
        )
        assert all(route(r.point, point_meta(r.point)) == (doc["equipment"], m.kind)
                   for r in m.readings)  # fmt: skip
    assert [d["part"] for d in docs] == list(range(1, len(docs) + 1))
    assert {d["parts"] for d in docs} <= {len(docs)}
    rejected = [x.reading.id for x in split.rejected]
    sent = [r["id"] for d in docs for r in d["readings"]]
    # every reading exactly once: sent or rejected
    assert Counter(sent + rejected) == Counter(r.id for r in batch.readings)
    # id order within each (equipment, kind) across its parts
    by_group: dict[tuple[str, str], list[int]] = {}
    for m, d in zip(split.messages, docs, strict=True):
        by_group.setdefault((d["equipment"], m.kind), []).extend(r["id"] for r in d["readings"])
    for ids in by_group.values():
        assert ids == sorted(ids)
    return docs, rejected


# -- routing and topics ----------------------------------------------------------------------


def test_equipment_comes_from_meta_then_device_then_the_point_id() -> None:
    assert route("pump-1.flow", meta("pump-1.flow")) == ("station-1", "telemetry")
    assert route("press.torque", meta("press.torque")) == ("press", "telemetry")
    assert route("ghost.x", None) == ("ghost", "telemetry")
    assert route("lonely", None) == ("lonely", "telemetry")


def test_events_and_alarms_go_to_the_events_topic() -> None:
    assert route("mill-1.event", meta("mill-1.event")) == ("line-1", "events")
    assert route("mill-1.alarm_failure_predicted", meta("mill-1.alarm_failure_predicted")) == (
        "line-1",
        "events",
    )
    assert route("gone.alarm_x", None) == ("gone", "events")
    assert route("gone.eventful", None) == ("gone", "telemetry")


def test_topics_follow_the_documented_scheme_and_escape_odd_ids() -> None:
    assert ENV.topic("pump-1", "telemetry") == "millrace/plant-a/gw-1/pump-1/telemetry"
    assert ENV.topic("pump-1", "state") == "millrace/plant-a/gw-1/pump-1/state"
    assert ENV.status_topic == "millrace/plant-a/gw-1/status"
    assert topic_level("a/b+c#d\0e") == "a_b_c_d_e"
    assert topic_level("") == "_"
    odd = Envelope("acme/millrace", "site/x", "gw+1", "up")
    assert odd.topic("eq#1", "events") == "acme/millrace/site_x/gw_1/eq_1/events"


# -- payloads ----------------------------------------------------------------------------------


def test_one_batch_one_message_per_equipment_and_kind_numbered_across_the_batch() -> None:
    readings = [
        reading(101, "pump-1.flow", 12.5),
        reading(102, "mill-1.event", '{"kind":"alarm_raised"}'),
        reading(103, "pump-1.pressure", 3),
        reading(104, "press.torque", None, Quality.BAD, reason="device down: timeout"),
        reading(105, "mill-1.alarm_failure_predicted", True, ts_source=T0 - 1),
        reading(106, "ghost.level", "high", Quality.UNCERTAIN),
    ]
    docs, rejected = check_split(batch_of(readings), 256 * 1024)
    assert rejected == []
    assert [(d["equipment"], [r["id"] for r in d["readings"]]) for d in docs] == [
        ("station-1", [101, 103]),
        ("line-1", [102, 105]),
        ("press", [104]),
        ("ghost", [106]),
    ]
    assert all(d["parts"] == 4 for d in docs)
    first = docs[0]
    assert {k: first[k] for k in ("v", "gateway", "site", "uplink", "seq", "prev_id")} == {
        "v": 1,
        "gateway": "gw-1",
        "site": "plant-a",
        "uplink": "central",
        "seq": 7,
        "prev_id": 100,
    }
    assert first["last_id"] == 106
    assert first["readings"][0] == {
        "id": 101,
        "point": "pump-1.flow",
        "value": 12.5,
        "quality": "good",
        "ts": round((T0 + 101) * 1000),
        "ts_source": None,
        "reason": None,
    }
    alarm = docs[1]["readings"][1]
    assert alarm["value"] is True and alarm["ts_source"] == round((T0 - 1) * 1000)
    assert docs[2]["readings"][0]["quality"] == "bad"
    assert docs[2]["readings"][0]["reason"] == "device down: timeout"


def test_payloads_are_compact_utf8_json() -> None:
    split = split_batch(
        batch_of([reading(1, "pump-1.flow", "Durchfluß ✓")]), ENV, meta, max_bytes=4096
    )
    payload = split.messages[0].payload
    assert b" " not in payload.replace("Durchfluß ✓".encode(), b"")
    assert "Durchfluß ✓".encode() in payload  # not \\u-escaped


@pytest.mark.parametrize(
    ("value", "sent", "note"),
    [
        (math.nan, None, "non-finite value: NaN"),
        (math.inf, None, "non-finite value: Infinity"),
        (-math.inf, None, "non-finite value: -Infinity"),
        (None, None, None),
        (True, True, None),
        (False, False, None),
        (0, 0, None),
        (2**70, 2**70, None),
        (-0.5, -0.5, None),
        (1e300, 1e300, None),
        ("", "", None),
        ('{"a": [1, 2]}', '{"a": [1, 2]}', None),
    ],
)
def test_values_and_non_finite_floats(value: Value, sent: Value, note: str | None) -> None:
    for quality in (Quality.GOOD, Quality.UNCERTAIN):
        docs, _ = check_split(batch_of([reading(5, "pump-1.flow", value, quality)]), 4096)
        got = docs[0]["readings"][0]
        assert got["value"] == sent and type(got["value"]) is type(sent)
        assert got["quality"] == quality.name.lower()  # quality is kept
        assert got["reason"] == note


def test_the_fast_encoder_matches_json_dumps_for_every_type() -> None:
    for value in (None, True, False, 0, -(2**80), 0.1, -0.0, 1e-310, 1e300, math.nan, -math.inf):
        for reason in (None, 'why "so" \\ é\n', "\udc80"):
            r = reading(3, 'odd"point\\', value, Quality.BAD, ts_source=T0, reason=reason)
            assert encode_reading(r) == encode_json(reading_object(r))
    for text in ("", "plain", "é ✓ 𝄞", "\x00\x1f\x7f", "\ud800x", '{"json": [1]}'):
        r = reading(4, "pump-1.flow", text)
        assert encode_reading(r) == encode_json(reading_object(r))


def test_a_non_finite_value_keeps_the_reason_it_had() -> None:
    r = reading(5, "mill-1.rul", math.nan, Quality.UNCERTAIN, reason="model:pdm-rul@1.0.0")
    assert reading_object(r)["reason"] == "model:pdm-rul@1.0.0; non-finite value: NaN"


def test_timestamps_are_integer_milliseconds() -> None:
    obj = reading_object(reading(1, "a.b", ts=1.0005, ts_source=math.nan))
    assert obj["ts"] == 1000 or obj["ts"] == 1001
    assert obj["ts_source"] is None
    assert reading_object(reading(1, "a.b", ts=2.5, ts_source=1.25))["ts_source"] == 1250


def test_unencodable_readings_are_rejected_not_sent() -> None:
    good = reading(1, "pump-1.flow")
    no_time = reading(2, "pump-1.flow", ts=math.nan)
    surrogate = reading(3, "pump-1.flow", "bad \udc80 byte")
    docs, rejected = check_split(batch_of([good, no_time, surrogate]), 4096)
    assert rejected == [2]
    assert docs[0]["readings"][1]["value"] == "bad \ufffd byte"


def test_a_batch_is_split_so_no_payload_exceeds_the_limit() -> None:
    readings = [reading(1000 + i, f"pump-1.p{i % 7}", i * 0.25) for i in range(600)]
    readings += [reading(2000 + i, "mill-1.event", "x" * (i % 50)) for i in range(100)]
    docs, rejected = check_split(batch_of(readings), 2048)
    assert rejected == []
    assert len(docs) > 20
    assert {d["parts"] for d in docs} == {len(docs)}
    # parts are as full as they can be: the next reading would not have fitted
    sizes = [len(json.dumps(d, separators=(",", ":")).encode()) for d in docs]
    assert max(sizes) > 1800


def test_a_reading_larger_than_a_message_is_rejected_and_the_rest_is_sent() -> None:
    readings = [
        reading(1, "pump-1.flow", 1.5),
        reading(2, "pump-1.note", "n" * 5000),
        reading(3, "pump-1.flow", 2.5),
    ]
    split = split_batch(batch_of(readings), ENV, meta, max_bytes=1024)
    assert [x.reading.id for x in split.rejected] == [2]
    assert "too large for one message" in split.rejected[0].reason
    docs, _ = check_split(batch_of(readings), 1024)
    assert [r["id"] for r in docs[0]["readings"]] == [1, 3]
    # what was not sent is not the state either
    assert split.latest == {
        "station-1": {"pump-1.flow": (3, split.latest["station-1"]["pump-1.flow"][1])}
    }


def test_split_is_deterministic_for_resends() -> None:
    readings = [reading(i, f"eq{i % 3}.v", float(i)) for i in range(1, 300)]
    a = split_batch(batch_of(readings), ENV, meta, max_bytes=1500)
    b = split_batch(batch_of(readings), ENV, meta, max_bytes=1500)
    assert [(m.topic, m.payload) for m in a.messages] == [(m.topic, m.payload) for m in b.messages]


# -- state -------------------------------------------------------------------------------------


def test_state_keeps_the_newest_reading_per_point_and_never_moves_back() -> None:
    first = split_batch(
        batch_of([reading(1, "pump-1.flow", 1.0), reading(2, "pump-1.flow", 2.0)]),
        ENV,
        meta,
        max_bytes=4096,
    )
    state, touched, refused = merge_state({}, first.latest)
    assert touched == ["station-1"] and refused == 0
    second = split_batch(
        batch_of([reading(3, "pump-1.pressure", 4.0), reading(4, "mill-1.event", "{}")]),
        ENV,
        meta,
        max_bytes=4096,
    )
    merged, touched, _ = merge_state(state, second.latest)
    assert touched == ["station-1"]  # the event is not state
    assert set(merged["station-1"]) == {"pump-1.flow", "pump-1.pressure"}
    assert merged["station-1"]["pump-1.flow"][0] == 2
    assert set(state["station-1"]) == {"pump-1.flow"}  # the old map is untouched
    older, _, _ = merge_state(merged, first.latest | {"station-1": {"pump-1.flow": (1, b"1")}})
    assert older["station-1"]["pump-1.flow"][0] == 2

    msg = state_message(ENV, "station-1", merged["station-1"], seq=9, last_id=4)
    assert msg.retain and msg.topic == "millrace/plant-a/gw-1/station-1/state"
    doc = decode(msg.payload)
    STATE.validate(doc)
    assert doc["seq"] == 9 and doc["last_id"] == 4
    assert doc["points"]["pump-1.flow"]["value"] == 2.0
    assert doc["points"]["pump-1.pressure"]["id"] == 3


def test_state_is_bounded() -> None:
    latest = {f"eq{i}": {f"eq{i}.p{j}": (j + 1, b"{}") for j in range(5)} for i in range(4)}
    state, touched, refused = merge_state({}, latest, max_equipment=3, max_points=4)
    assert touched == ["eq0", "eq1", "eq2"] and len(state) == 3
    assert all(len(points) == 4 for points in state.values())
    assert refused == 3 * 1 + 5


# -- broker answers, TLS, config -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (0x00, "ok"),
        (0x10, "ok"),
        (0x80, "retry"),
        (0x83, "retry"),
        (0x87, "retry"),
        (0x90, "retry"),
        (0x91, "retry"),
        (0x97, "throttle"),
        (0x99, "drop"),
    ],
)
def test_puback_reason_codes(code: int, action: str) -> None:
    assert puback_action(code) == action


def test_tls_context_refuses_below_tls_1_2_and_loads_the_client_certificate(
    tmp_path: Path,
) -> None:
    files = make_tls(tmp_path / "tls")
    from drivers.mqtt.config import MqttTls

    ctx = tls_context(
        MqttTls(ca="tls/ca.pem", cert="tls/client.pem", key="tls/client.key"), tmp_path
    )
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    insecure = tls_context(MqttTls(ca=str(files.ca), insecure=True))
    assert not insecure.check_hostname and insecure.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(OSError):
        tls_context(MqttTls(ca="missing.pem"), tmp_path)


def config(**over: Any) -> MqttUplinkConfig:
    return MqttUplinkConfig.model_validate({"type": "mqtt", "name": "central", "host": "h", **over})


def test_config_defaults_and_the_port_follows_tls() -> None:
    plain = config()
    assert plain.port == 1883 and plain.mqtt_version == "5" and plain.topic_prefix == "millrace"
    assert plain.max_inflight == 100 and plain.batch_max_bytes == 256 * 1024
    assert plain.retain_state and plain.tls is None
    assert config(tls={"ca": "ca.pem"}).port == 8883
    assert config(tls={"ca": "ca.pem"}, port=9883).port == 9883
    sized = config(batch_max_bytes="64KiB", ack_timeout="500ms", session_expiry="7d")
    assert sized.batch_max_bytes == 65536 and sized.ack_timeout == 0.5
    assert sized.session_expiry == 7 * 86400
    assert "s3cret" not in repr(config(username="gw", password="s3cret"))


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"topic_prefix": "a/+/b"}, "wildcard"),
        ({"topic_prefix": "$SYS"}, "$"),
        ({"topic_prefix": "/millrace"}, "//"),
        ({"topic_prefix": "millrace/"}, "//"),
        ({"password": "x"}, "needs a username"),
        ({"batch_max_bytes": 100}, "between"),
        ({"keepalive": 2}, "keepalive"),
        ({"mqtt_version": "3"}, "mqtt_version"),
        ({"qos": 0}, "extra"),
        ({"tls": {"cert": "c.pem"}}, "both cert and key"),
        ({"name": "has.dot"}, "name"),
    ],
)
def test_config_refuses(over: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as err:
        config(**over)
    text = str(err.value)
    assert words in text or (words == "wildcard" and "+, #" in text), text


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        config().port = 1  # type: ignore[misc]


# -- property: any batch -----------------------------------------------------------------------

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
)
points = st.sampled_from(
    [*META, "ghost.x", "ghost.alarm_y", "solo", "odd/eq.v", "press.event", ".lead", "eq."]
)


@st.composite
def batches(draw: st.DrawFn) -> OutboxBatch:
    n = draw(st.integers(min_value=1, max_value=40))
    start = draw(st.integers(min_value=1, max_value=10**9))
    gaps = draw(st.lists(st.integers(min_value=1, max_value=5), min_size=n, max_size=n))
    ids = [start + sum(gaps[: i + 1]) for i in range(n)]
    readings = [
        StoredReading(
            rid,
            draw(points),
            draw(values),
            draw(st.sampled_from(list(Quality))),
            draw(st.floats(min_value=0, max_value=4e9)),
            draw(st.none() | st.floats(allow_nan=True, allow_infinity=True, width=64)),
            draw(st.none() | st.text(max_size=40)),
        )
        for rid in ids
    ]
    return OutboxBatch("central", draw(st.integers(1, 10**6)), start, ids[-1], readings)


@settings(max_examples=60, deadline=None)
@given(batch=batches(), max_bytes=st.integers(min_value=1024, max_value=8192))
def test_any_batch_splits_into_valid_bounded_payloads(batch: OutboxBatch, max_bytes: int) -> None:
    docs, rejected = check_split(batch, max_bytes)
    by_id = {r.id: r for r in batch.readings}
    for doc in docs:
        for got in doc["readings"]:
            r = by_id[got["id"]]
            assert got["point"] == r.point and got["quality"] == r.quality.name.lower()
            v = r.value
            if isinstance(v, float) and not math.isfinite(v):
                assert got["value"] is None and "non-finite value" in got["reason"]
            elif isinstance(v, str):
                assert got["value"] == v
            else:
                assert got["value"] == v and type(got["value"]) is type(v)
    for r in batch.readings:  # the hand-written encoder is json.dumps, byte for byte
        try:
            expected = encode_json(reading_object(r))
        except ValueError:
            with pytest.raises(ValueError):
                encode_reading(r)
            continue
        assert encode_reading(r) == expected
    for rid in rejected:  # only readings that cannot fit alone are refused
        assert len(json.dumps(reading_object(by_id[rid]))) > max_bytes - 400
    state, touched, _ = merge_state({}, split_batch(batch, ENV, meta, max_bytes=max_bytes).latest)
    for equipment in touched:
        STATE.validate(
            decode(state_message(ENV, equipment, state[equipment], seq=1, last_id=1).payload)
        )
