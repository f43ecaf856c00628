"""The retained-MQTT pool transport's pure half: topics, payloads, which availability updates
are published, the booking feed, and the connection config. No sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from sync.config import PoolMqttConfig, PoolSyncConfig
from sync.pool_mqtt import (
    PoolTopics,
    availability_message,
    booking_feed,
    booking_message,
    is_retirement,
    link_config,
    machine_message,
    merge_booking,
    parse_topic,
    pool_filters,
    read_booking,
    retired_message,
    snapshot_message,
    triage,
    usage_message,
)

P = "millrace-pool/v1"
T = PoolTopics(P, "gw-1")


def update(machine: str, seq: int) -> dict[str, Any]:
    return {"machine_id": machine, "gateway_id": "gw-1", "seq": seq, "idempotency_key": f"k{seq}"}


def booking(bid: str, version: int, status: str = "confirmed") -> dict[str, Any]:
    return {
        "booking_id": bid,
        "machine_id": "pump-1",
        "demand_id": "d-1",
        "start": "2026-01-05T06:00:00Z",
        "end": "2026-01-05T18:00:00Z",
        "status": status,
        "version": version,
        "customer_org": "Coop",
    }


def test_topics_of_one_gateway() -> None:
    assert T.machine("pump-1") == "millrace-pool/v1/gw-1/machines/pump-1"
    assert T.availability("pump-1") == "millrace-pool/v1/gw-1/availability/pump-1"
    assert T.snapshot == "millrace-pool/v1/gw-1/snapshot"
    assert T.usage("ab12") == "millrace-pool/v1/gw-1/usage/ab12"
    assert T.booking("b-1") == "millrace-pool/v1/gw-1/bookings/b-1"
    assert T.bookings_filter == "millrace-pool/v1/gw-1/bookings/+"
    assert T.status == "millrace-pool/v1/gw-1/status"
    # an id can never add a level or a wildcard
    assert PoolTopics(P, "a/b+#").machine("x/y") == "millrace-pool/v1/a_b__/machines/x_y"


def test_the_pool_subscribes_profiles_first() -> None:
    assert pool_filters(P) == [
        "millrace-pool/v1/+/machines/+",
        "millrace-pool/v1/+/availability/+",
        "millrace-pool/v1/+/snapshot",
        "millrace-pool/v1/+/usage/+",
    ]


@pytest.mark.parametrize(
    ("topic", "parsed"),
    [
        (T.machine("pump-1"), ("gw-1", "machines", "pump-1")),
        (T.availability("pump-1"), ("gw-1", "availability", "pump-1")),
        (T.snapshot, ("gw-1", "snapshot", "")),
        (T.usage("ab12"), ("gw-1", "usage", "ab12")),
        (T.booking("b-1"), ("gw-1", "bookings", "b-1")),
        (T.status, ("gw-1", "status", "")),
        ("other/v1/gw-1/snapshot", None),
        ("millrace-pool/v1/gw-1/machines", None),
        ("millrace-pool/v1/gw-1/machines/a/b", None),
        ("millrace-pool/v1/gw-1/telemetry/x", None),
        ("millrace-pool/v1//snapshot", None),
        ("millrace-pool/v1/gw-1/machines/", None),
        ("millrace-pool/v10/gw-1/snapshot", None),
    ],
)
def test_parse_topic(topic: str, parsed: tuple[str, str, str] | None) -> None:
    assert parse_topic(P, topic) == parsed


def test_payloads_are_the_contract_bodies_with_the_right_retain_flag() -> None:
    profile = {"gateway_id": "gw-1", "version": 4, "make": "Généric"}
    m = machine_message(T, "pump-1", profile)
    assert m.retain and m.topic == T.machine("pump-1")
    assert m.payload == '{"gateway_id":"gw-1","version":4,"make":"Généric"}'.encode()
    r = retired_message(T, "pump-1", 4)
    assert (
        r.retain and r.topic == m.topic and json.loads(r.payload) == {"retired": True, "version": 4}
    )
    assert is_retirement(json.loads(r.payload)) and not is_retirement(profile)
    assert not is_retirement({"retired": 1}) and not is_retirement([True])
    a = availability_message(T, update("pump-1", 7))
    assert a.retain and a.topic == T.availability("pump-1") and json.loads(a.payload)["seq"] == 7
    s = snapshot_message(T, 12, "2026-01-05T06:00:00Z", [update("pump-1", 7)])
    assert s.retain and json.loads(s.payload) == {
        "seq": 12,
        "ts": "2026-01-05T06:00:00Z",
        "items": [update("pump-1", 7)],
    }
    u = usage_message(T, {"record_id": "ab12", "engine_hours": 1.5})
    assert not u.retain and u.topic == T.usage("ab12")
    b = booking_message(T, booking("b-1", 3))
    assert b.retain and b.topic == T.booking("b-1") and json.loads(b.payload) == booking("b-1", 3)


def test_only_the_newest_update_of_a_machine_is_published_and_never_an_older_one() -> None:
    items = [update("a", 3), update("b", 1), update("a", 5), update("a", 4), update("a", 5)]
    assert triage(items, {}) == [
        (0, "stale"),
        (1, "publish"),
        (2, "publish"),
        (3, "stale"),
        (4, "duplicate"),
    ]
    # what the broker already PUBACKed decides too
    assert triage([update("a", 5), update("b", 2), update("c", 1)], {"a": 5, "b": 3}) == [
        (0, "duplicate"),
        (1, "stale"),
        (2, "publish"),
    ]
    assert triage([], {"a": 1}) == []


def test_reading_booking_messages() -> None:
    good = booking("b-1", 3)
    assert read_booking("b-1", json.dumps(good).encode()) == good
    assert read_booking("b-1", b"") is None  # a retained message cleared
    assert read_booking("b-1", b"{not json") is None
    assert read_booking("b-2", json.dumps(good).encode()) is None  # topic and body disagree
    for version in (0, "3", True, None, 1.5):
        assert read_booking("b-1", json.dumps({**good, "version": version}).encode()) is None
    assert read_booking("b-1", b"[1]") is None


def test_bookings_keep_the_newest_version_and_serve_the_feed_in_order() -> None:
    held: dict[str, dict[str, Any]] = {}
    assert merge_booking(held, booking("b-2", 5))
    assert merge_booking(held, booking("b-1", 3))
    assert not merge_booking(held, booking("b-1", 3))  # the same again
    assert merge_booking(held, booking("b-1", 7, "cancelled"))
    assert not merge_booking(held, booking("b-1", 6))  # an older one arriving late
    feed = booking_feed("gw-1", held.values(), 0)
    assert [(b["booking_id"], b["version"]) for b in feed["bookings"]] == [("b-2", 5), ("b-1", 7)]
    assert feed["next_since_version"] == 7 and feed["has_more"] is False
    assert feed["gateway_id"] == "gw-1" and feed["bookings"][1]["status"] == "cancelled"
    assert booking_feed("gw-1", held.values(), 5)["bookings"][0]["version"] == 7
    empty = booking_feed("gw-1", held.values(), 7)
    assert empty["bookings"] == [] and empty["next_since_version"] == 7
    # bounded: the lowest versions make room
    for i in range(10):
        merge_booking(held, booking(f"x-{i}", 100 + i), limit=4)
    assert sorted(b["version"] for b in held.values()) == [106, 107, 108, 109]


def pool_config(**mqtt: Any) -> PoolSyncConfig:
    return PoolSyncConfig.model_validate(
        {
            "url": "https://pool.example.org",
            "token": "t",
            "transport": "mqtt",
            "mqtt": {"host": "broker.example.org", **mqtt},
        }
    )


def test_the_connection_is_the_uplinks_with_a_stable_pool_client_id() -> None:
    cfg = link_config(
        pool_config(tls={"ca": "ca.pem"}, username="gw-1", password="pw", mqtt_version="3.1.1"),
        "gw-1",
    )
    assert cfg.client_id == "millrace-pool-gw-1" and cfg.port == 8883
    assert cfg.mqtt_version == "3.1.1" and cfg.tls is not None and cfg.tls.ca == "ca.pem"
    assert cfg.username == "gw-1" and cfg.password is not None
    assert cfg.password.get_secret_value() == "pw" and "pw" not in repr(cfg)
    assert cfg.topic_prefix == P and cfg.retain_state is False
    assert link_config(pool_config(client_id="mine"), "gw-1").client_id == "mine"
    assert link_config(pool_config(), "gw-1").port == 1883


def test_pool_mqtt_config_is_checked_at_start_up() -> None:
    with pytest.raises(ValidationError, match="a password needs a username"):
        PoolMqttConfig(host="b", password="pw")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="keepalive"):
        PoolMqttConfig(host="b", keepalive=1)
    with pytest.raises(ValidationError, match="topic_prefix"):
        PoolMqttConfig(host="b", topic_prefix="a/#")
    with pytest.raises(ValidationError, match="needs an `mqtt:`"):
        PoolSyncConfig.model_validate(
            {"url": "https://pool.example.org", "token": "t", "transport": "mqtt"}
        )
