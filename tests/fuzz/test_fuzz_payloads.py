"""Payload parsers against hostile bytes: MQTT telemetry (JSON, CSV, number), inference item
records and camera images. Each raises only its documented error, with a reason, whatever
arrives; a payload that parses yields values of the point's declared type."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from drivers.mqtt.config import MqttProfile
from drivers.mqtt.parse import PARSE_REASONS, ParseError, PayloadParser
from gateway.inference.features import InputError, decode_image, record_row
from gateway.inference.manifest import InputSpec
from tests.fuzz._fuzz import fuzz, tried

POINTS = [
    {"name": "rpm", "path": "engine.rpm", "data_type": "int"},
    {"name": "temp", "path": "engine.temp"},
    {"name": "first", "path": "readings[0].value"},
    {"name": "state", "path": "work.state", "data_type": "string"},
    {"name": "running", "path": "running", "data_type": "bool"},
]
JSON = PayloadParser(
    MqttProfile.model_validate(
        {
            "name": "j",
            "format": "json",
            "timestamp": {"path": "ts", "form": "epoch_ms"},
            "points": POINTS,
        }
    ),
    max_bytes=64 * 1024,
)
CSV = PayloadParser(
    MqttProfile.model_validate(
        {
            "name": "c",
            "format": "csv",
            "csv_header": True,
            "timestamp": {"column": 0, "form": "iso8601"},
            "points": [
                {"name": "a", "column": 1},
                {"name": "b", "column": 2, "data_type": "int"},
                {"name": "c", "column": 3, "data_type": "bool"},
            ],
        }
    )
)
NUMBER = PayloadParser(
    MqttProfile.model_validate(
        {"name": "n", "format": "number", "points": [{"name": "v", "data_type": "float"}]}
    )
)
EXACT = {"int": int, "float": float, "string": str, "bool": bool}
TYPES = {p["name"]: p.get("data_type", "float") for p in POINTS} | {
    "a": "float",
    "b": "int",
    "c": "bool",
    "v": "float",
}


def check(parser: PayloadParser, payload: bytes, target: str) -> None:
    tried(target)
    try:
        values = parser.parse(payload)
    except ParseError as exc:
        assert exc.code in PARSE_REASONS
        assert str(exc).startswith(exc.code + ": ") and exc.detail
        return
    assert values
    for v in values:
        if v.problem is not None:
            assert (v.value is None and v.point in v.problem) or v.problem
            continue
        assert isinstance(v.value, EXACT[TYPES[v.point]]), (v, TYPES[v.point])
        if isinstance(v.value, float):
            assert math.isfinite(v.value)
        if v.ts_source is not None:
            assert 946_684_800.0 <= v.ts_source <= 4_102_444_800.0


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_docs = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "engine",
                    "rpm",
                    "temp",
                    "readings",
                    "value",
                    "work",
                    "state",
                    "running",
                    "ts",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=30,
)


@fuzz(200)
@given(payload=st.binary(max_size=512))
def test_mqtt_json_random_bytes(payload: bytes) -> None:
    check(JSON, payload, "mqtt.parse json (random bytes)")


@fuzz(200)
@given(doc=json_docs)
def test_mqtt_json_shaped_documents(doc: Any) -> None:
    check(JSON, json.dumps(doc).encode(), "mqtt.parse json (shaped documents)")


@fuzz(100)
@given(
    depth=st.integers(1, 200_000),
    opener=st.sampled_from(["[", '{"a":', '{"engine":']),
    closed=st.booleans(),
)
def test_mqtt_json_deep_nesting_is_refused_not_recursed(
    depth: int, opener: str, closed: bool
) -> None:
    closer = "]" if opener == "[" else "}"
    payload = (opener * depth + ("1" + closer * depth if closed else "")).encode()
    tried("mqtt.parse json (deep nesting)")
    try:
        JSON.parse(payload)
    except ParseError as exc:
        assert exc.code in ("too_large", "too_deep", "not_json", "no_values", "wrong_type")
        if len(payload) <= JSON.max_bytes and depth > 32 and closed:
            assert exc.code == "too_deep", exc


@fuzz(120)
@given(
    text=st.text(max_size=200),
    constant=st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "1e999", "9" * 5000, "-0", "1.0e-400"]
    ),
)
def test_mqtt_json_hostile_numbers(text: str, constant: str) -> None:
    engine = f'"engine": {{"rpm": {constant}, "temp": {constant}}}'
    payload = f'{{{engine}, "work": {{"state": {json.dumps(text)}}}}}'
    check(JSON, payload.encode("utf-8", "surrogatepass"), "mqtt.parse json (hostile numbers)")


@fuzz(150)
@given(
    lines=st.lists(
        st.lists(st.text(max_size=12), max_size=6).map(lambda cells: ",".join(cells)), max_size=4
    )
)
def test_mqtt_csv(lines: list[str]) -> None:
    check(CSV, "\n".join(lines).encode("utf-8", "surrogatepass"), "mqtt.parse csv")


@fuzz(120)
@given(
    payload=st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )
)
def test_mqtt_number(payload: bytes) -> None:
    check(NUMBER, payload, "mqtt.parse number")


RECORD = InputSpec.model_validate(
    {
        "name": "x",
        "dtype": "float32",
        "shape": [1, 2],
        "source": "payload",
        "features": [{"field": "size", "index": 0}, {"field": "weight", "index": 1}],
    }
)
IMAGE = InputSpec.model_validate(
    {
        "name": "image",
        "dtype": "float32",
        "shape": [1, 3, 8, 8],
        "source": "payload",
        "preprocessing": {"resize": {"width": 8, "height": 8, "method": "bilinear"}},
    }
)


@fuzz(150)
@given(
    payload=st.one_of(
        st.binary(max_size=256),
        json_docs.map(lambda d: json.dumps({"size": d, "weight": 1.5}).encode()),
    )
)
def test_item_record_rows(payload: bytes) -> None:
    tried("inference.record_row")
    try:
        row = record_row(payload, RECORD)
    except InputError as exc:
        assert str(exc)
        return
    assert row.shape == (2,) and row.dtype == np.float32 and np.isfinite(row).all()


def _image(fmt: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 60)).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = [
    _image("PNG", (16, 12)),
    _image("JPEG", (16, 12)),
    _image("GIF", (4, 4)),
    _image("BMP", (4, 4)),
]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut])


def test_decode_image_takes_only_jpeg_and_png() -> None:
    """Other formats are refused before their decoder runs (EPS would reach Ghostscript)."""
    assert decode_image(SEEDS[0], IMAGE).shape == (3, 8, 8)
    assert decode_image(SEEDS[1], IMAGE).shape == (3, 8, 8)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    for other in (SEEDS[2], SEEDS[3], eps):
        try:
            decode_image(other, IMAGE)
        except InputError as exc:
            assert "JPEG or PNG" in str(exc)
        else:
            raise AssertionError(f"accepted {other[:8]!r}")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # refused below
@fuzz(150)
@given(payload=st.one_of(st.binary(max_size=300), mutated_images()))
def test_decode_image_hostile_bytes(payload: bytes) -> None:
    tried("inference.decode_image")
    try:
        arr = decode_image(payload, IMAGE)
    except InputError as exc:
        assert str(exc)
        return
    assert arr.shape == (3, 8, 8) and arr.dtype == np.float32
    assert float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0
