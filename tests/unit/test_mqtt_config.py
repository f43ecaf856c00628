"""MQTT config models: defaults, the built-in farm profile, and every refusal naming the
field and the reason before any I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from drivers.mqtt.config import MqttDevice, MqttProfile, check_profile
from drivers.mqtt.parse import DataType, PayloadFormat, PayloadParser, TimestampForm
from gateway.types import DataClass

PROFILES = Path(__file__).resolve().parents[2] / "drivers" / "profiles"


def device(**over: Any) -> MqttDevice:
    data = {
        "id": "coop-broker",
        "protocol": "mqtt",
        "profile": "farm-machinery",
        "host": "10.0.0.9",
        "topics": ["coop/{equipment}/telemetry"],
        **over,
    }
    return MqttDevice.model_validate(data)


def profile(**over: Any) -> MqttProfile:
    return MqttProfile.model_validate({"name": "p", "points": [{"name": "v", "path": "v"}], **over})


def refused(model: type[BaseModel], data: dict[str, Any], *fragments: str) -> str:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    text = str(err.value)
    for fragment in fragments:
        assert fragment in text, text
    return text


def test_device_defaults() -> None:
    d = device()
    assert (d.port, d.mqtt_version, d.qos, d.keepalive) == (1883, "5", 1, 30.0)
    assert d.effective_client_id == "millrace-coop-broker"
    assert d.connection_key == "mqtt://10.0.0.9:1883#coop-broker"
    assert d.max_payload_bytes == 256 * 1024
    assert d.accept_unknown_equipment is False and d.enabled is True
    assert (d.stale_after, d.session_expiry) == (120.0, 86400.0)
    assert (d.backoff_initial, d.backoff_max, d.connect_timeout) == (1.0, 60.0, 5.0)
    assert d.username is None and d.password is None and d.tls is None


def test_device_options_parse_units_and_hide_the_password() -> None:
    d = device(
        port=8883,
        mqtt_version="3.1.1",
        client_id="gw-7",
        username="farm",
        password="hunter2",
        tls={"ca": "certs/ca.pem", "cert": "certs/gw.pem", "key": "certs/gw.key"},
        stale_after="5m",
        max_payload_bytes="64KiB",
        keepalive="1m",
    )
    assert d.effective_client_id == "gw-7"
    assert (d.stale_after, d.max_payload_bytes, d.keepalive) == (300.0, 65536, 60.0)
    assert d.password is not None and d.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(d) and "hunter2" not in str(d.model_dump())
    assert d.tls is not None and d.tls.insecure is False


@pytest.mark.parametrize(
    ("over", "fragments"),
    [
        ({"topics": []}, ("topics",)),
        ({"topics": ["coop/#"]}, ("'#' is not allowed",)),
        ({"topics": ["coop/telemetry"]}, ("{equipment} exactly once",)),
        ({"topics": ["coop/tractor-{equipment}"]}, ("whole level",)),
        ({"topics": ["coop/{machine}"]}, ("unknown placeholder",)),
        ({"topics": ["a/{equipment}", "a/{equipment}"]}, ("same filter twice", "a/+")),
        ({"password": "x"}, ("a password needs a username",)),
        ({"tls": {"cert": "c.pem"}}, ("both cert and key",)),
        ({"tls": {"ca": "ca.pem", "verify": False}}, ("verify", "Extra inputs")),
        ({"mqtt_version": "3.1"}, ("mqtt_version",)),
        ({"qos": 3}, ("qos",)),
        ({"port": 0}, ("port",)),
        ({"id": "coop.broker"}, ("id",)),
        ({"keepalive": 2}, ("keepalive",)),
        ({"stale_after": 0}, ("greater than zero",)),
        ({"backoff_initial": 10, "backoff_max": 5}, ("backoff_initial",)),
        ({"max_payload_bytes": "1GiB"}, ("16 MiB",)),
        ({"protocol": "mqtts"}, ("protocol",)),
        ({"hostname": "x"}, ("hostname", "Extra inputs")),
    ],
)
def test_device_refusals(over: dict[str, Any], fragments: tuple[str, ...]) -> None:
    data = {
        "id": "coop-broker",
        "protocol": "mqtt",
        "profile": "farm-machinery",
        "host": "h",
        "topics": ["coop/{equipment}/telemetry"],
        **over,
    }
    refused(MqttDevice, data, *fragments)


def test_models_are_frozen() -> None:
    d = device()
    with pytest.raises(ValidationError):
        d.port = 1  # type: ignore[misc]


def test_the_farm_machinery_profile() -> None:
    raw = yaml.safe_load((PROFILES / "farm-machinery.yaml").read_text(encoding="utf-8"))
    prof = MqttProfile.model_validate(raw)
    assert prof.name == "farm-machinery" and prof.format is PayloadFormat.JSON
    assert prof.timestamp is not None and prof.timestamp.form is TimestampForm.EPOCH_MS
    by_name = {p.name: p for p in prof.points}
    for name in (
        "lat",
        "lon",
        "speed",
        "heading",
        "engine_rpm",
        "engine_temp",
        "fuel_level",
        "engine_hours",
        "work_state",
        "area_done",
        "tank_level",
        "spray_flow",
        "cane_harvested",
        "fault_code",
    ):
        assert name in by_name, name
    assert by_name["engine_rpm"].data_type is DataType.INT
    assert by_name["work_state"].data_type is DataType.STRING
    assert by_name["fault_active"].data_type is DataType.BOOL
    assert by_name["lat"].data_class is DataClass.RESTRICTED
    assert by_name["fuel_level"].unit == "%" and by_name["fuel_level"].max == 100
    PayloadParser(prof)  # every path compiles
    assert check_profile(device(), prof) == []


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"points": []}, ("points",)),
        ({"points": [{"name": "v", "path": "a"}, {"name": "v", "path": "b"}]}, ("duplicate",)),
        ({"points": [{"name": "v"}]}, ("json profile locates points by path",)),
        ({"points": [{"name": "v", "path": "a..b"}]}, ("empty key",)),
        ({"points": [{"name": "v", "path": "a", "column": 1}]}, ("by path",)),
        ({"format": "csv", "points": [{"name": "v", "path": "a"}]}, ("by column",)),
        ({"format": "number", "points": [{"name": "v", "column": 0}]}, ("{point}",)),
        ({"points": [{"name": "v", "path": "a", "min": 5, "max": 1}]}, ("min 5.0",)),
        (
            {"points": [{"name": "v", "path": "a", "data_type": "string", "max": 1}]},
            ("min/max apply to numbers",),
        ),
        ({"points": [{"name": "v", "path": "a", "data_type": "double"}]}, ("data_type",)),
        ({"timestamp": {"path": "ts", "column": 1}}, ("exactly one",)),
        ({"timestamp": {"column": 1}}, ("json profile gives the timestamp's path",)),
        ({"timestamp": {"path": "ts", "form": "unix"}}, ("form",)),
        (
            {"format": "number", "points": [{"name": "v"}], "timestamp": {"path": "t"}},
            ("no timestamp",),
        ),
        (
            {"format": "csv", "csv_delimiter": ";;", "points": [{"name": "v", "column": 0}]},
            ("csv_delimiter",),
        ),
        ({"protocol": "modbus"}, ("protocol",)),
    ],
)
def test_profile_refusals(data: dict[str, Any], fragments: tuple[str, ...]) -> None:
    refused(MqttProfile, {"name": "p", "points": [{"name": "v", "path": "v"}], **data}, *fragments)


def test_checks_that_need_device_and_profile() -> None:
    number = profile(format="number", points=[{"name": "a"}, {"name": "b"}])
    problems = check_profile(device(), number)
    assert len(problems) == 1 and "must name the point with {point}" in problems[0]
    assert check_profile(device(topics=["s/{equipment}/{point}"]), number) == []
    one = profile(format="number", points=[{"name": "level"}])
    assert check_profile(device(), one) == []
    problems = check_profile(device(topics=["s/{equipment}/{point}"]), profile())
    assert problems == ["topics.0: {point} is only for number payloads; profile p is json"]


# -- item topics -------------------------------------------------------------------------------

FRUIT = {"name": "fruit", "topic": "grading/{equipment}/fruit/{item}"}
IMAGE = {"name": "image", "topic": "grading/{equipment}/image/{item}"}


def test_item_topics_defaults_sizes_and_filters() -> None:
    d = device(items=[{**FRUIT, "max_payload_bytes": "64KiB"}, IMAGE])
    fruit, image = d.items
    assert (fruit.name, fruit.max_payload_bytes) == ("fruit", 65536)
    assert image.max_payload_bytes == 1024 * 1024  # an image is far larger than telemetry
    assert image.template.filter == "grading/+/image/+" and image.template.has_item
    assert device(items=[{"name": "score", "topic": "p/+/{equipment}/score"}]).items[0].topic
    assert device(items=[{**IMAGE, "max_payload_bytes": "16MiB"}]).items[0].max_payload_bytes == (
        16 * 1024 * 1024
    )
    assert device().items == []


@pytest.mark.parametrize("topics", [None, []])
def test_a_device_may_have_item_topics_only(topics: list[str] | None) -> None:
    data: dict[str, Any] = {
        "id": "packhouse",
        "protocol": "mqtt",
        "profile": "grading-line",
        "host": "h",
        "items": [IMAGE],
    }
    if topics is not None:
        data["topics"] = topics
    d = MqttDevice.model_validate(data)
    assert d.topics == [] and [i.name for i in d.items] == ["image"]
    # No telemetry topic, so no {point} requirement even for a many-point number profile.
    assert check_profile(d, profile(format="number", points=[{"name": "a"}, {"name": "b"}])) == []


@pytest.mark.parametrize(
    ("over", "fragments"),
    [
        ({"topics": [], "items": []}, ("topics is empty and there are no items", "(items)")),
        ({"topics": None}, ("topics",)),
        (
            {"items": [{"name": "fruit", "topic": "grading/{equipment}/{point}"}]},
            ("items.0.topic", "{point} is only for telemetry topics"),
        ),
        ({"items": [{"name": "f", "topic": "grading/{equipment}/#"}]}, ("'#' is not allowed",)),
        ({"items": [{"name": "f", "topic": "grading/fruit/{item}"}]}, ("{equipment} exactly",)),
        (
            {"items": [{"name": "f", "topic": "g/{equipment}/{item}/{item}"}]},
            ("{item} may appear at most once",),
        ),
        ({"items": [{"name": "f", "topic": "g/{equipment}/x{item}"}]}, ("whole level",)),
        ({"items": [{"name": "f", "topic": "g/{equipment}/{fruit}"}]}, ("unknown placeholder",)),
        ({"items": [{"name": "f", "topic": ""}]}, ("non-empty",)),
        ({"topics": ["g/{equipment}/{item}"]}, ("{item} is only for item topics",)),
        ({"items": [FRUIT, {**IMAGE, "name": "fruit"}]}, ("duplicate item names (got fruit)",)),
        (
            {"items": [FRUIT, {"name": "any", "topic": "grading/{equipment}/fruit/+"}]},
            ("items.0 (grading/{equipment}/fruit/{item}) and items.1", "grading/+/fruit/+"),
        ),
        (
            {
                "topics": ["coop/{equipment}/telemetry", "grading/{equipment}/fruit/{point}"],
                "items": [IMAGE, FRUIT],
            },
            (
                "items.1 (grading/{equipment}/fruit/{item}) and "
                "topics.1 (grading/{equipment}/fruit/{point}) subscribe to the same filter "
                "grading/+/fruit/+",
            ),
        ),
        ({"items": [{**IMAGE, "max_payload_bytes": "17MiB"}]}, ("16 MiB",)),
        ({"items": [{**IMAGE, "max_payload_bytes": 0}]}, ("greater than 0",)),
        ({"items": [{**IMAGE, "name": "fruit.jpg"}]}, ("items.0.name",)),
        ({"items": [{**IMAGE, "qos": 2}]}, ("qos", "Extra inputs")),
        (
            {"items": [{"name": f"c{i}", "topic": f"g/{{equipment}}/c{i}"} for i in range(17)]},
            ("at most 16",),
        ),
    ],
)
def test_item_refusals(over: dict[str, Any], fragments: tuple[str, ...]) -> None:
    data = {
        "id": "packhouse",
        "protocol": "mqtt",
        "profile": "grading-line",
        "host": "h",
        "topics": ["coop/{equipment}/telemetry"],
        **over,
    }
    refused(MqttDevice, data, *fragments)


def test_item_problems_read_well_in_the_config_report() -> None:
    """Through the loader, as a technician sees them: field path, reason, the bad value."""
    from gateway.configload import load_config_data
    from gateway.errors import ConfigError

    def problems(**over: Any) -> list[str]:
        dev = {"id": "packhouse", "protocol": "mqtt", "host": "h", "profile": "farm-machinery"}
        data = {"gateway": {"id": "gw", "site": "s"}, "devices": [{**dev, **over}]}
        with pytest.raises(ConfigError) as err:
            load_config_data(data, base_dir=Path("."))
        return err.value.problems

    assert problems() == [
        "devices.0: topics is empty and there are no items: give at least one telemetry topic "
        "(topics) or item topic (items) (got packhouse)"
    ]
    assert problems(items=[FRUIT, {**IMAGE, "name": "fruit"}]) == [
        "devices.0.items: duplicate item names (got fruit)"
    ]
    assert problems(items=[{"name": "f", "topic": "g/{equipment}/{point}"}]) == [
        "devices.0.items.0.topic: topic 'g/{equipment}/{point}': {point} is only for telemetry "
        "topics; an item topic names {equipment} and optionally {item} (got g/{equipment}/{point})"
    ]


def test_the_documented_item_example_is_valid() -> None:
    """The YAML in the module docstring is what a technician copies: it must validate."""
    import drivers.mqtt.config as module

    doc = module.__doc__ or ""
    example = yaml.safe_load(doc.split("```yaml\n", 1)[1].split("```", 1)[0])
    d = MqttDevice.model_validate(example["devices"][0])
    assert [(i.name, i.max_payload_bytes) for i in d.items] == [
        ("fruit", 64 * 1024),
        ("image", 2 * 1024 * 1024),
    ]
    assert example["equipment"][0]["device"] == d.id
