"""The demo's small broker speaks enough MQTT 3.1.1 for a real client (paho) to use it."""

from __future__ import annotations

import asyncio
import threading

import paho.mqtt.client as mqtt

from simulators.mqtt_broker import MiniBroker, topic_matches


def test_topic_matching() -> None:
    assert topic_matches("coop/+/telemetry", "coop/tractor-1/telemetry")
    assert not topic_matches("coop/+/telemetry", "coop/a/b/telemetry")
    assert topic_matches("coop/#", "coop/a/b")
    assert topic_matches("coop/#", "coop")
    assert not topic_matches("coop/x", "coop/y")


async def test_paho_publishes_and_subscribes_through_it() -> None:
    async with MiniBroker(port=0) as broker:
        got: list[tuple[str, bytes, bool]] = []
        subscribed = threading.Event()
        arrived = threading.Event()

        def on_connect(c, _u, _f, rc, _p):  # type: ignore[no-untyped-def]
            c.subscribe("coop/+/telemetry", qos=1)

        def on_subscribe(*_a):  # type: ignore[no-untyped-def]
            subscribed.set()

        def on_message(_c, _u, msg):  # type: ignore[no-untyped-def]
            got.append((msg.topic, msg.payload, bool(msg.retain)))
            if len(got) == 3:
                arrived.set()

        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        # paho's waits block: run them off the loop that runs the broker.
        sent = pub.publish("coop/old/telemetry", b"retained", qos=1, retain=True)
        await asyncio.to_thread(sent.wait_for_publish, 5)

        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        sub.on_connect, sub.on_subscribe, sub.on_message = on_connect, on_subscribe, on_message
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        try:
            assert await asyncio.to_thread(subscribed.wait, 5)
            sent = pub.publish("coop/tractor-1/telemetry", b'{"rpm": 1800}', qos=1)
            await asyncio.to_thread(sent.wait_for_publish, 5)
            pub.publish("coop/t2/telemetry", b"2", qos=0)
            sent = pub.publish("other/topic", b"ignored", qos=1)
            await asyncio.to_thread(sent.wait_for_publish, 5)
            assert await asyncio.to_thread(arrived.wait, 5)
        finally:
            for c in (pub, sub):
                c.disconnect()
                c.loop_stop()
        assert got[0] == ("coop/old/telemetry", b"retained", True)
        assert ("coop/tractor-1/telemetry", b'{"rpm": 1800}', False) in got
        assert all(topic != "other/topic" for topic, _, _ in got)
        assert broker.published == 4
