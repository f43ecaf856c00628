"""The central platform's side of the uplink broker, as the bench and the soak read it: a
persistent QoS 1 session on `millrace/#`. What each does with a message is its own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def connect_central_reader(
    port: int, client_id: str, on_message: Callable[[Any, Any, Any], None]
) -> Any:
    """A started paho client subscribed to `millrace/#` on 127.0.0.1:`port`; raises
    RuntimeError (client stopped) when the broker has not accepted it within 10 s."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    ready = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.reconnect_delay_set(0.2, 1)
    c.on_connect = lambda cl, *_: (cl.subscribe("millrace/#", qos=1), ready.set())
    c.on_message = on_message
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    if not ready.wait(10):
        c.disconnect()
        c.loop_stop()
        raise RuntimeError(f"{client_id}: central broker did not accept us in 10 s")
    return c
