"""MQTT payload and topic parsing, without sockets: field paths, coercion tables, timestamps,
the three formats, hostile input, and property tests that any bytes give values or a
ParseError — never another exception."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.mqtt.config import MqttProfile
from drivers.mqtt.parse import (
    MAX_JSON_DEPTH,
    MAX_STRING,
    PARSE_REASONS,
    DataType,
    ParsedValue,
    ParseError,
    PayloadParser,
    TimestampForm,
    TopicTemplate,
    check_topic_template,
    coerce,
    compile_path,
    match_topic,
    parse_payload,
    parse_timestamp,
)

TS = 1_718_000_000.0  # 2024-06-10T06:13:20Z


def profile(**data: Any) -> MqttProfile:
    return MqttProfile.model_validate({"name": "p", **data})


JSON_PROFILE = profile(
    format="json",
    timestamp={"path": "ts", "form": "epoch_ms"},
    points=[
        {"name": "rpm", "path": "engine.rpm", "data_type": "int"},
        {"name": "temp", "path": "engine.temp"},
        {"name": "lat", "path": "position.lat"},
        {"name": "first", "path": "readings[0].value"},
        {"name": "second", "path": "readings[1].value"},
        {"name": "state", "path": "work.state", "data_type": "string"},
        {"name": "running", "path": "running", "data_type": "bool"},
    ],
)


def values(parsed: list[ParsedValue]) -> dict[str, Any]:
    return {v.point: v.value for v in parsed if v.problem is None}


def problems(parsed: list[ParsedValue]) -> dict[str, str]:
    return {v.point: v.problem for v in parsed if v.problem is not None}


def raises(code: str, payload: bytes, prof: MqttProfile = JSON_PROFILE, **kw: Any) -> ParseError:
    with pytest.raises(ParseError) as err:
        parse_payload(payload, prof, **kw)
    assert err.value.code == code, str(err.value)
    assert err.value.code in PARSE_REASONS
    assert str(err.value).startswith(f"{code}: ")
    return err.value


# -- field paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("engine.rpm", ("engine", "rpm")),
        ("position.lat", ("position", "lat")),
        ("readings[0].value", ("readings", 0, "value")),
        ("a[2][3]", ("a", 2, 3)),
        ("[1].x", (1, "x")),
        ("ts", ("ts",)),
        ("with space.and-dash", ("with space", "and-dash")),
    ],
)
def test_field_paths_compile(path: str, expected: tuple[Any, ...]) -> None:
    assert compile_path(path) == expected


@pytest.mark.parametrize(
    "path", ["", ".a", "a.", "a..b", "a[", "a[x]", "a[-1]", "a]", "a[0]b", "a.[0]", "[0]]"]
)
def test_bad_field_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        compile_path(path)


def test_field_paths_are_bounded() -> None:
    with pytest.raises(ValueError, match="deeper"):
        compile_path(".".join(["a"] * 40))


# -- coercion ------------------------------------------------------------------------------

GOOD_COERCIONS = [
    (12.5, DataType.FLOAT, 12.5),
    (12, DataType.FLOAT, 12.0),
    (" 12.5 ", DataType.FLOAT, 12.5),
    ("1e3", DataType.FLOAT, 1000.0),
    (1200, DataType.INT, 1200),
    (1200.0, DataType.INT, 1200),
    ("1200", DataType.INT, 1200),
    ("-7", DataType.INT, -7),
    ("12.0", DataType.INT, 12),
    (2**63 - 1, DataType.INT, 2**63 - 1),
    (True, DataType.BOOL, True),
    (0, DataType.BOOL, False),
    (1.0, DataType.BOOL, True),
    ("ON", DataType.BOOL, True),
    (" no ", DataType.BOOL, False),
    ("yes", DataType.BOOL, True),
    ("working", DataType.STRING, "working"),
    (12.5, DataType.STRING, "12.5"),
    (0, DataType.STRING, "0"),
    (False, DataType.STRING, "false"),
    ("", DataType.STRING, ""),
]


@pytest.mark.parametrize(("raw", "data_type", "expected"), GOOD_COERCIONS)
def test_coercion_table(raw: Any, data_type: DataType, expected: Any) -> None:
    value, problem = coerce(raw, data_type)
    assert problem is None
    assert value == expected and type(value) is type(expected)


BAD_COERCIONS = [
    (True, DataType.FLOAT, "got a boolean"),
    ("fast", DataType.FLOAT, "got text"),
    ("nan", DataType.FLOAT, "finite"),
    ("inf", DataType.FLOAT, "finite"),
    (float("inf"), DataType.FLOAT, "finite"),
    (10**400, DataType.FLOAT, "finite"),
    ([1], DataType.FLOAT, "got an array"),
    ({"v": 1}, DataType.FLOAT, "got an object"),
    (12.5, DataType.INT, "integer"),
    (2**63, DataType.INT, "64 bits"),
    ("12.5", DataType.INT, "integer"),
    ("x" * 100, DataType.INT, "integer"),
    (False, DataType.INT, "got a boolean"),
    (2, DataType.BOOL, "got 2"),
    ("maybe", DataType.BOOL, "got text"),
    ([True], DataType.BOOL, "got an array"),
    ({"a": 1}, DataType.STRING, "got an object"),
    (["a"], DataType.STRING, "got an array"),
    ("x" * (MAX_STRING + 1), DataType.STRING, "longer"),
]


@pytest.mark.parametrize(("raw", "data_type", "why"), BAD_COERCIONS)
def test_coercion_refusals_say_why(raw: Any, data_type: DataType, why: str) -> None:
    value, problem = coerce(raw, data_type)
    assert value is None
    assert problem is not None and why in problem


# -- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "form", "expected"),
    [
        (TS, TimestampForm.EPOCH_S, TS),
        (int(TS), TimestampForm.EPOCH_S, TS),
        ("1718000000.5", TimestampForm.EPOCH_S, TS + 0.5),
        (TS * 1000 + 250, TimestampForm.EPOCH_MS, TS + 0.25),
        ("2024-06-10T06:13:20Z", TimestampForm.ISO8601, TS),
        ("2024-06-10T14:13:20+08:00", TimestampForm.ISO8601, TS),  # Guangxi local time
        ("2024-06-10T06:13:20.500", TimestampForm.ISO8601, TS + 0.5),  # no zone: UTC
        ("2024-06-10 06:13:20", TimestampForm.ISO8601, TS),
    ],
)
def test_timestamps(raw: Any, form: TimestampForm, expected: float) -> None:
    assert parse_timestamp(raw, form) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("raw", "form"),
    [
        (TS, TimestampForm.EPOCH_MS),  # seconds where milliseconds belong: 1970
        (TS * 1000, TimestampForm.EPOCH_S),  # year 56000
        (0, TimestampForm.EPOCH_S),
        ("yesterday", TimestampForm.EPOCH_S),
        (True, TimestampForm.EPOCH_S),
        ("2024-13-40T00:00:00Z", TimestampForm.ISO8601),
        (1718000000, TimestampForm.ISO8601),
        ("0001-01-01T00:00:00+14:00", TimestampForm.ISO8601),
        ("9999-12-31T23:59:59-14:00", TimestampForm.ISO8601),
    ],
)
def test_bad_timestamps(raw: Any, form: TimestampForm) -> None:
    with pytest.raises(ParseError) as err:
        parse_timestamp(raw, form)
    assert err.value.code == "bad_timestamp"


# -- json ----------------------------------------------------------------------------------


def test_json_fields_types_and_source_timestamp() -> None:
    doc = {
        "ts": TS * 1000,
        "engine": {"rpm": 1850, "temp": 88.5},
        "position": {"lat": 22.81},
        "readings": [{"value": 1.5}, {"value": "2.5"}],
        "work": {"state": "working"},
        "running": True,
        "ignored": {"anything": [1, 2, 3]},
    }
    parsed = parse_payload(json.dumps(doc).encode(), JSON_PROFILE)
    assert values(parsed) == {
        "rpm": 1850,
        "temp": 88.5,
        "lat": 22.81,
        "first": 1.5,
        "second": 2.5,
        "state": "working",
        "running": True,
    }
    assert type(values(parsed)["rpm"]) is int
    assert {v.ts_source for v in parsed} == {TS}


def test_json_missing_and_null_fields_are_not_in_the_message() -> None:
    parsed = parse_payload(b'{"engine": {"rpm": 900, "temp": null}, "readings": []}', JSON_PROFILE)
    assert values(parsed) == {"rpm": 900}
    assert parsed[0].ts_source is None  # no timestamp field: the gateway's time is used


def test_json_partly_wrong_types_give_bad_values_beside_good_ones() -> None:
    parsed = parse_payload(
        b'{"engine": {"rpm": "fast", "temp": 70}, "position": 5, "running": "maybe"}',
        JSON_PROFILE,
    )
    assert values(parsed) == {"temp": 70.0}
    assert problems(parsed) == {
        "rpm": "field rpm: expected an integer, got text 'fast'",
        "lat": "field lat: expected an object before 'lat', found a number",
        "running": "field running: expected a boolean, got text 'maybe'",
    }


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "not_json"),
        (b"{not json", "not_json"),
        (b'{"engine": {"rpm": NaN}}', "not_json"),
        (b'{"engine": {"rpm": Infinity}}', "not_json"),
        (b'{"engine": {"rpm": -Infinity}}', "not_json"),
        (b'{"engine": {"rpm": ' + b"9" * 5000 + b"}}", "not_json"),  # past int digit limit
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"a": "\xed\xa0\x80"}', "not_utf8"),  # an encoded surrogate
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1), "too_deep"),
        (b'{"other": 1}', "no_values"),
        (b"42", "wrong_type"),
        (b'"text"', "wrong_type"),
        (b"[1, 2]", "wrong_type"),
        (b'{"engine": "broken", "position": [], "work": 1, "running": {}}', "wrong_type"),
        (b'{"ts": "yesterday", "engine": {"rpm": 1}}', "bad_timestamp"),
        (b'{"ts": 1718000000, "engine": {"rpm": 1}}', "bad_timestamp"),  # s for ms
        (b'{"ts": {"ms": 1}, "engine": {"rpm": 1}}', "bad_timestamp"),
    ],
)
def test_hostile_json_is_a_parse_error(payload: bytes, code: str) -> None:
    raises(code, payload)


def test_depth_just_inside_the_bound_is_fine_and_a_bom_is_dropped() -> None:
    nested = '{"a":' * (MAX_JSON_DEPTH - 2) + "1" + "}" * (MAX_JSON_DEPTH - 2)
    text = '\ufeff{"engine": {"rpm": 5}, "deep": ' + nested + "}"
    assert values(parse_payload(text.encode(), JSON_PROFILE)) == {"rpm": 5}


def test_size_bound_comes_before_decoding() -> None:
    big = json.dumps({"engine": {"rpm": 1}, "pad": "x" * 2000}).encode()
    err = raises("too_large", big, max_bytes=1000)
    assert str(len(big)) in err.detail
    assert values(parse_payload(big, JSON_PROFILE, max_bytes=len(big))) == {"rpm": 1}


def test_iso_timestamp_in_json() -> None:
    prof = profile(
        timestamp={"path": "meta.time", "form": "iso8601"},
        points=[{"name": "v", "path": "v"}],
    )
    parsed = parse_payload(b'{"meta": {"time": "2024-06-10T14:13:20+08:00"}, "v": 1}', prof)
    assert parsed == [ParsedValue("v", 1.0, TS)]


# -- csv -----------------------------------------------------------------------------------

CSV_PROFILE = profile(
    format="csv",
    timestamp={"column": 0, "form": "iso8601"},
    points=[
        {"name": "rpm", "column": 1, "data_type": "int"},
        {"name": "temp", "column": 2},
        {"name": "state", "column": 3, "data_type": "string"},
        {"name": "spare", "column": 9},
    ],
)


def test_csv_columns_by_index_with_timestamp() -> None:
    parsed = parse_payload(b"2024-06-10T06:13:20Z,1850,88.5,working\r\n", CSV_PROFILE)
    assert values(parsed) == {"rpm": 1850, "temp": 88.5, "state": "working"}
    assert {v.ts_source for v in parsed} == {TS}


def test_csv_quotes_empty_columns_header_and_delimiter() -> None:
    assert values(parse_payload(b',1850,,"idle, waiting"', CSV_PROFILE)) == {
        "rpm": 1850,
        "state": "idle, waiting",
    }
    semi = profile(
        format="csv",
        csv_delimiter=";",
        csv_header=True,
        points=[{"name": "a", "column": 0}, {"name": "b", "column": 1, "data_type": "bool"}],
    )
    decimal_comma = parse_payload(b"a;b\n1,5;on\n", semi)
    assert values(decimal_comma) == {"b": True}
    assert problems(decimal_comma) == {"a": "column 0: expected a number, got text '1,5'"}
    assert values(parse_payload(b"a;b\n15;on\n", semi)) == {"a": 15.0, "b": True}


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "not_csv"),
        (b"1,2,3\n4,5,6", "not_csv"),
        (b'x,"unterminated', "not_csv"),
        (b',"b"c,1', "not_csv"),
        (b"not a time,1,2,3", "bad_timestamp"),
        (b",fast,hot,", "wrong_type"),
        (b",,,", "no_values"),
    ],
)
def test_hostile_csv(payload: bytes, code: str) -> None:
    raises(code, payload, CSV_PROFILE)


# -- number --------------------------------------------------------------------------------

NUMBER_PROFILE = profile(
    format="number",
    points=[
        {"name": "rpm", "data_type": "int"},
        {"name": "temp"},
        {"name": "running", "data_type": "bool"},
        {"name": "mode", "data_type": "string"},
    ],
)


@pytest.mark.parametrize(
    ("point", "payload", "expected"),
    [
        ("rpm", b"1850", 1850),
        ("temp", b" 88.5\n", 88.5),
        ("running", b"true", True),
        ("running", b"0", False),
        ("mode", b"auto", "auto"),
    ],
)
def test_number_payloads(point: str, payload: bytes, expected: Any) -> None:
    (parsed,) = parse_payload(payload, NUMBER_PROFILE, point=point)
    assert parsed == ParsedValue(point, expected, None)
    assert type(parsed.value) is type(expected)


def test_number_payload_problems() -> None:
    raises("no_values", b"1", NUMBER_PROFILE)  # no point named, several in the profile
    raises("no_values", b"1", NUMBER_PROFILE, point="nope")
    raises("no_values", b"   ", NUMBER_PROFILE, point="rpm")
    raises("wrong_type", b"fast", NUMBER_PROFILE, point="rpm")
    raises("wrong_type", b"NaN", NUMBER_PROFILE, point="temp")
    single = profile(format="number", points=[{"name": "level", "unit": "%"}])
    assert parse_payload(b"42", single) == [ParsedValue("level", 42.0, None)]


# -- topics --------------------------------------------------------------------------------


def test_topic_templates_become_filters_and_match_back() -> None:
    t = TopicTemplate("coop/{equipment}/telemetry")
    assert t.filter == "coop/+/telemetry"
    assert t.match("coop/tractor-01/telemetry") == ("tractor-01", None, None)
    assert t.match("coop/tractor-01/status") is None
    assert t.match("coop/a/b/telemetry") is None
    assert t.match("coop/telemetry") is None
    assert t.topic_for("drone-02") == "coop/drone-02/telemetry"

    p = TopicTemplate("sensors/+/{equipment}/{point}")
    assert p.filter == "sensors/+/+/+"
    assert p.has_point and not t.has_point
    assert p.match("sensors/site-9/pump-1/rpm") == ("pump-1", "rpm", None)
    assert p.topic_for("pump-1") == "sensors/+/pump-1/+"
    assert match_topic([t, p], "sensors/x/pump-2/temp") == ("pump-2", "temp", None)
    assert match_topic([t, p], "elsewhere") is None


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("", "non-empty"),
        ("coop/telemetry", "exactly once"),
        ("coop/{equipment}/{equipment}", "exactly once"),
        ("coop/#", "'#'"),
        ("coop/{equipment}/x+", "whole level"),
        ("coop/tractor-{equipment}", "whole level"),
        ("coop/{machine}", "unknown placeholder"),
        ("coop/{equipment}/{point}/{point}", "at most once"),
        ("coop/{equipment}/a}b", "stray brace"),
        ("coop/{equipment}/\x00", "NUL"),
    ],
)
def test_bad_topic_templates(template: str, why: str) -> None:
    problem = check_topic_template(template)
    assert problem is not None and why in problem
    with pytest.raises(ValueError):
        TopicTemplate(template)


def test_item_templates_name_the_item_and_never_a_point() -> None:
    t = TopicTemplate("grading/{equipment}/image/{item}", kind="item")
    assert t.kind == "item" and t.filter == "grading/+/image/+"
    assert t.has_item and not t.has_point
    m = t.match("grading/line-1/image/000042")
    assert m is not None and m.item == "000042" and m.equipment == "line-1"
    assert m == ("line-1", None, "000042")
    assert t.match("grading/line-1/fruit/000042") is None
    assert t.match("grading/line-1/image") is None
    assert t.match("grading/line-1/image/") == ("line-1", None, "")  # the level as sent
    assert t.topic_for("line-1") == "grading/line-1/image/+"
    assert t.topic_for("line-1", item="7") == "grading/line-1/image/7"

    plain = TopicTemplate("packhouse/+/{equipment}/score", kind="item")
    assert plain.filter == "packhouse/+/+/score" and not plain.has_item
    assert plain.match("packhouse/north/grader-2/score") == ("grader-2", None, None)

    telemetry = TopicTemplate("coop/{equipment}/telemetry")
    assert telemetry.kind == "telemetry" and not telemetry.has_item
    assert match_topic([telemetry, t], "grading/l/image/9") == ("l", None, "9")


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("grading/{equipment}/{point}", "{point} is only for telemetry topics"),
        ("grading/{equipment}/#", "'#'"),
        ("grading/image/{item}", "{equipment} exactly once"),
        ("grading/{equipment}/{item}/{item}", "{item} may appear at most once"),
        ("grading/{equipment}/fruit-{item}", "whole level"),
        ("grading/{equipment}/{machine}", "use {equipment} and {item}"),
        ("grading/{equipment}/a+", "whole level"),
        ("", "non-empty"),
    ],
)
def test_bad_item_templates(template: str, why: str) -> None:
    problem = check_topic_template(template, kind="item")
    assert problem is not None and why in problem, problem
    with pytest.raises(ValueError):
        TopicTemplate(template, kind="item")


def test_item_is_not_a_telemetry_placeholder() -> None:
    problem = check_topic_template("grading/{equipment}/{item}")
    assert problem is not None and "{item} is only for item topics" in problem
    with pytest.raises(ValueError, match="only for item topics"):
        TopicTemplate("grading/{equipment}/{item}")


# -- properties ------------------------------------------------------------------------------

PARSERS = [
    PayloadParser(JSON_PROFILE, max_bytes=4096),
    PayloadParser(CSV_PROFILE, max_bytes=4096),
    PayloadParser(NUMBER_PROFILE, max_bytes=4096),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["engine", "rpm", "temp", "ts", "readings", "value", "position", "x"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


def _check(result: list[ParsedValue]) -> None:
    assert result and all(isinstance(v, ParsedValue) for v in result)
    assert any(v.problem is None for v in result)
    for v in result:
        assert (v.value is None) == (v.problem is not None)
        if isinstance(v.value, float):
            assert math.isfinite(v.value)
        if v.ts_source is not None:
            assert 946_684_800.0 <= v.ts_source <= 4_102_444_800.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(max_size=600),
    which=st.integers(0, 2),
    point=st.sampled_from([None, "rpm", "temp", "running", "mode", "nope"]),
)
def test_any_bytes_give_values_or_parse_error(
    payload: bytes, which: int, point: str | None
) -> None:
    try:
        result = PARSERS[which].parse(payload, point=point)
    except ParseError as exc:
        assert exc.code in PARSE_REASONS
        return
    _check(result)


@settings(max_examples=300, deadline=None)
@given(doc=json_values)
def test_any_json_document_gives_values_or_parse_error(doc: Any) -> None:
    payload = json.dumps(doc).encode()
    try:
        result = PARSERS[0].parse(payload)
    except ParseError as exc:
        assert exc.code in PARSE_REASONS
        return
    _check(result)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_gives_values_or_parse_error(text: str) -> None:
    for parser in PARSERS:
        try:
            _check(parser.parse(text.encode("utf-8", "surrogatepass"), point="temp"))
        except ParseError as exc:
            assert exc.code in PARSE_REASONS


@settings(max_examples=200, deadline=None)
@given(topic=st.text(max_size=80))
def test_topic_matching_never_raises(topic: str) -> None:
    t = TopicTemplate("coop/{equipment}/telemetry")
    m = t.match(topic)
    assert m is None or (topic == f"coop/{m.equipment}/telemetry" and "/" not in m.equipment)


# A topic level: any UTF-8 text but the separator and the MQTT wildcards (which a published
# topic cannot hold); empty is a legal level too.
levels = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/+#\x00"),
    max_size=12,
)
literals = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/+#{}\x00"),
    min_size=1,
    max_size=8,
)


@st.composite
def item_templates(draw: st.DrawFn) -> str:
    segments = draw(st.lists(literals | st.just("+"), max_size=5))
    segments.insert(draw(st.integers(0, len(segments))), "{equipment}")
    if draw(st.booleans()):
        segments.insert(draw(st.integers(0, len(segments))), "{item}")
    return "/".join(segments)


@settings(max_examples=300, deadline=None)
@given(template=item_templates(), equipment=levels, item=levels, filler=levels)
def test_item_topic_round_trip(template: str, equipment: str, item: str, filler: str) -> None:
    """format then match gives back the same equipment and item; the topic is inside the
    subscription filter."""
    t = TopicTemplate(template, kind="item")
    # The template's own `+` levels get arbitrary text: equipment, item and literals hold no
    # `+`, so only those are replaced.
    topic = t.topic_for(equipment, item=item).replace("+", filler)
    m = t.match(topic)
    assert m is not None, (template, topic)
    assert m.equipment == equipment
    assert m.item == (item if t.has_item else None)
    assert m.point is None
    levels_ = topic.split("/")
    flt = t.filter.split("/")
    assert len(levels_) == len(flt)
    assert all(f in ("+", lv) for f, lv in zip(flt, levels_, strict=True))
