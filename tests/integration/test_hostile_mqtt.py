"""Hostile MQTT payloads through a real Mosquitto into the whole gateway (issue 8).

Each payload below is published (QoS 1) on a configured machine's telemetry topic while good
messages flow around it. Each must end up in the dead letters with its reason, be counted on
the machine (`errors.<reason>`) and on /metrics, cost nothing already stored, and leave the
gateway running and reading the next good message.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers.mqtt.driver import DEAD_LETTER_BYTES
from gateway.runtime import Gateway, GatewayState
from tests.fuzz._hostile import assert_nothing_lost, stored
from tests.integration import mosquitto as _broker
from tests.integration.gwutil import api_client, eventually, farm_broker, plant_config
from tests.integration.mosquitto import Mosquitto

mosquitto = _broker.mosquitto  # fixture: a real broker on a free port
mosquitto_factory = _broker.mosquitto_factory

TOPIC = "coop/tractor-01/telemetry"

#: (what, payload, reason code the dead letter must start with)
HOSTILE: list[tuple[str, bytes, str]] = [
    ("1 MiB payload", b'{"seq": 1, "pad": "' + b"a" * (1 << 20) + b'"}', "too_large"),
    ("100k levels of [", b"[" * 100_000, "too_deep"),
    ("100k levels, closed", b"[" * 50_000 + b"1" + b"]" * 50_000, "too_deep"),
    ("deep objects", b'{"a":' * 20_000 + b"1" + b"}" * 20_000, "too_deep"),
    ("not UTF-8", b'\xff\xfe{"seq": 1}', "not_utf8"),
    ("broken UTF-8 in a string", b'{"seq": 1, "work": {"state": "\xc3\x28"}}', "not_utf8"),
    ("NaN", b'{"seq": NaN}', "not_json"),
    ("Infinity", b'{"engine": {"temp": Infinity}}', "not_json"),
    ("-Infinity", b'{"engine": {"temp": -Infinity}}', "not_json"),
    ("5000-digit integer", b'{"seq": ' + b"9" * 5000 + b"}", "not_json"),
    ("truncated JSON", b'{"seq": 1, "engine": {"rpm": 18', "not_json"),
    ("empty payload", b"", "not_json"),
    ("NUL bytes", b"\x00" * 64, "not_json"),
    ("a bare number", b"42", "wrong_type"),
    ("a bare string", b'"tractor"', "wrong_type"),
    ("null", b"null", "wrong_type"),
    ("every field of the wrong type", b'{"seq": "x", "engine": {"rpm": [1, 2]}}', "wrong_type"),
    ("fields where objects belong", b'{"engine": 5, "pos": "north"}', "wrong_type"),
    ("nothing the profile knows", b'{"hello": "world"}', "no_values"),
    ("timestamp in seconds, not ms", b'{"ts": 1718000000, "seq": 3}', "bad_timestamp"),
]


def good(seq: int) -> bytes:
    return json.dumps(
        {"ts": int(time.time() * 1000), "seq": seq, "engine": {"rpm": 1500 + seq, "temp": 80.5}}
    ).encode()


async def test_hostile_payloads_are_dead_lettered_counted_and_lose_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    device = farm_broker(mosquitto.port, "millrace-hostile-gw")
    equipment = [{"id": "tractor-01", "type": "tractor", "device": "coop-broker"}]
    loaded = plant_config(tmp_path, 0, devices=[device], equipment=equipment)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        async with Gateway(loaded) as gw, api_client(gw) as api:

            def send(payload: bytes, topic: str = TOPIC) -> None:
                pub.publish(topic, payload, qos=1).wait_for_publish(5)

            async def seq_is(n: int) -> bool:
                r = gw.latest.get("tractor-01.seq")
                return r is not None and r.value == n

            # The subscription exists once a first good message comes through.
            for n in range(1, 50):
                send(good(n))
                if await seq_is(n):
                    break
                await asyncio.sleep(0.1)
            await eventually(lambda: seq_is(n), what="first good message stored")
            before = await stored(gw.store)
            assert before

            for i, (_, payload, _) in enumerate(HOSTILE):
                send(payload)
                send(good(1000 + i))  # a good message right behind each bad one
            send(b'{"seq": 7}', topic="coop/ghost-99/telemetry")  # nobody configured it
            last = 1000 + len(HOSTILE) - 1
            await eventually(lambda: seq_is(last), timeout=15, what="the good messages")

            async def all_dead() -> list[dict]:
                rows = (await api.get("/dead-letters", params={"limit": 1000})).json()
                return rows if len(rows) >= len(HOSTILE) + 1 else []

            rows = await eventually(all_dead, timeout=15, what="every hostile payload dead")
            assert len(rows) == len(HOSTILE) + 1
            rows.reverse()  # newest first -> publish order
            for (what, payload, code), row in zip(HOSTILE, rows, strict=False):
                assert row["reason"].startswith(code + ":"), (what, row["reason"])
                assert row["topic"] == TOPIC and row["source"] == "coop-broker"
                # The first bytes are kept (bounded); the reason says how big it really was.
                assert row["payload_size"] == min(len(payload), DEAD_LETTER_BYTES), what
                if code == "too_large":
                    assert f"{len(payload)} bytes" in row["reason"], row["reason"]
            assert rows[-1]["reason"].startswith("unknown_equipment")

            health = next(h for h in gw.device_health() if h.device == "tractor-01")
            expected: dict[str, int] = {}
            for _, _, code in HOSTILE:
                expected[code] = expected.get(code, 0) + 1
            for code, count in expected.items():
                assert health.extra.get(f"errors.{code}") == count, (code, health.extra)
            assert health.polls_failed == len(HOSTILE)
            assert health.extra["dead_lettered"] == len(HOSTILE)
            metrics = (await api.get("/metrics")).text
            assert 'stat="errors.too_deep"} 3' in metrics

            assert gw.state is GatewayState.RUNNING
            assert (await api.get("/health")).status_code == 200
            # Every good message behind a bad one was stored, and nothing before was lost.
            after = await stored(gw.store)
            assert_nothing_lost(before, after, gw.store)
            seqs = {int(v) for _, (p, v, _) in after.items() if p == "tractor-01.seq"}
            assert {1000 + i for i in range(len(HOSTILE))} <= seqs
    finally:
        pub.disconnect()
        pub.loop_stop()
