"""A fleet of farm machines publishing MQTT telemetry: tractors, sugarcane harvesters and drone
sprayers working the cane fields of Guangxi (around Nanning and Chongzuo).

Each machine publishes one JSON message (the `farm-machinery` profile's shape, timestamp in
epoch milliseconds, a per-machine `seq` counter) on `coop/{equipment}/telemetry` every
`interval` seconds, QoS 1, from one paho client with a persistent session. Machines move
(working a field lane by lane, transiting between fields, idling), burn fuel, count engine
hours, harvest cane or empty their spray tank, and now and then raise a fault. The motion is
seeded: the same seed and the same clock give the same messages.

Run it alone::

    python -m simulators.mqtt_farm --host 127.0.0.1 --port 1883 --machines 6 --interval 1
    python -m simulators.mqtt_farm --port 1883 --malformed-rate 0.05     # 5 % garbage
    python -m simulators.mqtt_farm --port 1883 --rate 5000 --duration 30  # benchmark load

It prints where it publishes, runs until SIGINT or SIGTERM (or `--duration`), prints what it
sent, and exits 0.

In-process::

    async with MqttFarm("127.0.0.1", port, machines=6, interval=0.5) as farm:
        ...
        farm.published["tractor-01"]     # good messages sent per machine
        farm.inject("not_json")          # one malformed message now
        farm.publish_round()             # one message per machine now
        await farm.drain()               # until the broker acknowledged every QoS 1 message

Malformed kinds (`MALFORMED_KINDS`, counted in `farm.malformed`): `not_json` (cut-off JSON),
`not_utf8`, `wrong_types` (every field the wrong type), `huge` (300 KiB), `deep` (nested 200
levels), `nan` (a NaN literal), `bad_timestamp` (seconds where milliseconds belong), `empty`,
and `unknown_equipment` (a good message from a machine nobody configured). With
`malformed_rate` > 0 each message is replaced by a random kind with that probability.

Bench mode (`rate=` / `--rate`): instead of one message per machine per interval, publish
`rate` messages per second spread over the machines, as evenly as the event loop allows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from simulators._acks import QosLink
from simulators._cli import run_cli, stop_event
from simulators._service import Service

__all__ = [
    "FIELDS",
    "KINDS",
    "MALFORMED_KINDS",
    "Machine",
    "MqttFarm",
    "machine_ids",
    "main",
]

_log = logging.getLogger(__name__)

DEFAULT_TOPIC = "coop/{equipment}/telemetry"
KINDS = ("tractor", "harvester", "drone")
MALFORMED_KINDS = (
    "not_json",
    "not_utf8",
    "wrong_types",
    "huge",
    "deep",
    "nan",
    "bad_timestamp",
    "empty",
    "unknown_equipment",
)

#: Sugarcane areas of Guangxi (name, lat, lon): Fusui, Jiangzhou (Chongzuo), Long'an south,
#: Yongning and Jiangnan (Nanning), Ningming east. The fleet stays in lat 22.3-23.0,
#: lon 107.3-108.6.
FIELDS = (
    ("Fusui", 22.635, 107.905),
    ("Jiangzhou", 22.405, 107.375),
    ("Long'an south", 22.930, 107.745),
    ("Yongning", 22.760, 108.490),
    ("Jiangnan", 22.700, 108.265),
    ("Ningming east", 22.330, 107.420),
)
LAT_RANGE = (22.3, 23.0)
LON_RANGE = (107.3, 108.6)
_M_PER_DEG = 111_320.0

_FAULTS = {
    "tractor": ("SPN110 FMI0", "SPN100 FMI1", "SPN94 FMI18"),  # coolant hot, oil low, fuel p
    "harvester": ("SPN110 FMI0", "HYD-PRESS-LOW", "CHOPPER-JAM"),
    "drone": ("NOZZLE-CLOG", "PUMP-FAULT", "GNSS-WEAK"),
}
_IMPLEMENT = {"tractor": ("ripper", "planter", "cultivator"), "harvester": ("chopper",)}
#: Working width (m), working speed (km/h), rated rpm, transit speed (km/h).
_SPEC = {
    "tractor": (3.0, 7.0, 1900, 22.0),
    "harvester": (1.5, 5.0, 2100, 15.0),
    "drone": (6.0, 18.0, 0, 30.0),
}


def machine_ids(count: int) -> list[str]:
    """tractor-01, harvester-01, drone-01, tractor-02, ... (`count` of them)."""
    return [f"{KINDS[i % 3]}-{i // 3 + 1:02d}" for i in range(count)]


def _kind_of(machine_id: str) -> str:
    return next((k for k in KINDS if machine_id.startswith(k)), "tractor")


@dataclass
class Machine:
    """One machine's state, advanced by `step(dt)`; `payload(ts)` is its telemetry message."""

    id: str
    kind: str
    rng: random.Random
    lat: float
    lon: float
    ground: float  # metres above sea level
    heading: float = 90.0
    speed: float = 0.0
    state: str = "idle"
    state_left: float = 5.0
    lane_left: float = 200.0
    rpm: int = 0
    temp: float = 28.0
    load: float = 0.0
    fuel: float = 100.0
    hours: float = 0.0
    battery: float = 100.0
    area: float = 0.0
    cane: float = 0.0
    tank: float = 40.0
    flow: float = 0.0
    fault_code: str = ""
    implement: str = ""
    seq: int = 0

    @classmethod
    def create(cls, machine_id: str, seed: int) -> Machine:
        rng = random.Random(f"{seed}:{machine_id}")
        kind = _kind_of(machine_id)
        _, lat, lon = FIELDS[rng.randrange(len(FIELDS))]
        return cls(
            id=machine_id,
            kind=kind,
            rng=rng,
            lat=lat + rng.uniform(-0.03, 0.03),
            lon=lon + rng.uniform(-0.03, 0.03),
            ground=rng.uniform(75.0, 160.0),
            heading=rng.choice((90.0, 270.0)),
            fuel=rng.uniform(40.0, 100.0),
            hours=round(rng.uniform(150.0, 6000.0), 1) if kind != "drone" else 0.0,
            implement=rng.choice(_IMPLEMENT.get(kind, ("sprayer",))),
            state_left=rng.uniform(2.0, 20.0),
        )

    # -- motion and machinery ---------------------------------------------------------------

    def step(self, dt: float) -> None:
        if dt <= 0:
            return
        rng = self.rng
        width, work_kmh, rated, transit_kmh = _SPEC[self.kind]
        self.state_left -= dt
        if self.state_left <= 0:
            self._next_state()
        if self.state != "fault" and rng.random() < 0.0004 * dt:
            self.state, self.state_left = "fault", rng.uniform(20.0, 90.0)
            self.fault_code = rng.choice(_FAULTS[self.kind])
        if (
            self.kind == "drone"
            and self.state == "working"
            and (self.tank <= 0.5 or self.battery <= 25.0)
        ):
            self.state, self.state_left = "transit", rng.uniform(15.0, 40.0)  # back to refill

        target_kmh = {"working": work_kmh, "transit": transit_kmh}.get(self.state, 0.0)
        self.speed += (target_kmh * rng.uniform(0.9, 1.1) - self.speed) * min(1.0, dt / 3.0)
        self.speed = max(0.0, self.speed)
        metres = self.speed / 3.6 * dt
        if self.state == "working":
            self.lane_left -= metres
            if self.lane_left <= 0:  # end of the lane: shift over one width and turn back
                self.heading = (self.heading + 180.0) % 360.0
                self.lane_left = rng.uniform(180.0, 320.0)
                self._move(width, (self.heading + 90.0) % 360.0)
            self.area += metres * width / 10_000.0
        elif self.state == "transit":
            self.heading = (self.heading + rng.uniform(-4.0, 4.0) * dt) % 360.0
        self._move(metres, self.heading)

        working = self.state == "working"
        if self.kind == "drone":
            self.rpm = 0
            drain = (0.05 if working else 0.03) if self.state in ("working", "transit") else 0.0
            self.battery = max(0.0, self.battery - drain * dt)
            self.flow = rng.uniform(8.0, 12.0) if working else 0.0
            self.tank = max(0.0, self.tank - self.flow / 60.0 * dt)
            if self.state == "idle":  # on the ground: fresh battery, tank refilled
                self.battery, self.tank = 100.0, 40.0
        else:
            target_rpm = {
                "working": rated,
                "transit": int(rated * 0.8),
                "idle": 800,
            }.get(self.state, 0)
            self.rpm = int(target_rpm + rng.uniform(-40, 40)) if target_rpm else 0
            self.load = (
                {"working": rng.uniform(55, 85), "transit": rng.uniform(25, 45), "idle": 8.0}
            ).get(self.state, 0.0)
            target_temp = 28.0 + (60.0 if self.rpm else 0.0) + (self.load / 100.0) * 10.0
            if self.fault_code == "SPN110 FMI0":
                target_temp = 112.0  # coolant overheating
            self.temp += (target_temp - self.temp) * min(1.0, dt / 120.0)
            if self.rpm:
                self.hours += dt / 3600.0
                litres_per_hour = 4.0 + 20.0 * self.load / 100.0
                self.fuel = max(0.0, self.fuel - litres_per_hour * dt / 3600.0 / 3.0)
            if self.fuel < 10.0 and self.state == "idle":
                self.fuel = 100.0  # the fuel bowser came by
            if self.kind == "harvester" and working:
                self.flow = rng.uniform(50.0, 80.0)
                self.cane += self.flow * dt / 3600.0
            else:
                self.flow = 0.0

    def _next_state(self) -> None:
        rng = self.rng
        if self.state == "fault":
            self.fault_code = ""
        if self.state in ("idle", "fault"):
            self.state = rng.choices(("working", "transit"), (0.75, 0.25))[0]
        elif self.state == "working":
            self.state = rng.choices(("idle", "transit", "working"), (0.3, 0.2, 0.5))[0]
        else:
            self.state = rng.choices(("working", "idle"), (0.7, 0.3))[0]
        self.state_left = {
            "working": rng.uniform(60.0, 300.0),
            "transit": rng.uniform(20.0, 60.0),
            "idle": rng.uniform(10.0, 60.0),
        }[self.state]

    def _move(self, metres: float, heading: float) -> None:
        rad = math.radians(heading)
        lat = self.lat + metres * math.cos(rad) / _M_PER_DEG
        lon = self.lon + metres * math.sin(rad) / (_M_PER_DEG * math.cos(math.radians(self.lat)))
        if not LAT_RANGE[0] < lat < LAT_RANGE[1] or not LON_RANGE[0] < lon < LON_RANGE[1]:
            self.heading = (self.heading + 180.0) % 360.0  # turn back into the region
            return
        self.lat, self.lon = lat, lon

    # -- the message --------------------------------------------------------------------------

    def payload(self, ts: float) -> dict[str, Any]:
        """This machine's telemetry message now (and the next `seq`)."""
        msg: dict[str, Any] = {
            "ts": round(ts * 1000),
            "seq": self.seq,
            "type": self.kind,
            "pos": {
                "lat": round(self.lat, 6),
                "lon": round(self.lon, 6),
                "alt": round(self.ground + (3.0 if self.kind == "drone" and self.speed else 0), 1),
                "speed": round(self.speed, 2),
                "heading": round(self.heading, 1),
            },
            "work": {
                "state": self.state,
                "implement": self.implement,
                "area_ha": round(self.area, 4),
            },
            "fault": {"active": bool(self.fault_code), "code": self.fault_code},
        }
        self.seq += 1
        if self.kind == "drone":
            msg["power"] = {"battery_pct": round(self.battery, 1)}
            msg["spray"] = {
                "tank_l": round(self.tank, 2),
                "flow_lpm": round(self.flow, 2),
                "rate_l_ha": 15.0,
            }
        else:
            msg["engine"] = {
                "rpm": self.rpm,
                "temp": round(self.temp, 1),
                "load": round(self.load, 1),
                "fuel": round(self.fuel, 2),
                "hours": round(self.hours, 2),
            }
        if self.kind == "harvester":
            msg["harvest"] = {
                "cane_t": round(self.cane, 3),
                "chopper_rpm": 1100 if self.state == "working" else 0,
                "flow_tph": round(self.flow, 1),
            }
        return msg


def malformed_payload(kind: str, good: dict[str, Any], ts: float) -> bytes:
    """The bytes of one malformed message of `kind` (see the module docstring)."""
    if kind == "not_json":
        return json.dumps(good).encode()[:40]
    if kind == "not_utf8":
        return b"\xff\xfe" + json.dumps(good).encode("utf-16-le")
    if kind == "wrong_types":
        return json.dumps(
            {
                "ts": int(ts * 1000),
                "seq": "seven",
                "pos": {"lat": "north", "lon": [107], "alt": {}, "speed": True, "heading": "E"},
                "engine": {"rpm": "fast", "temp": [88], "load": {}, "fuel": "full", "hours": "x"},
                "power": {"battery_pct": "ok"},
                "work": {"state": {"s": 1}, "implement": [], "area_ha": "big"},
                "harvest": {"cane_t": "lots", "chopper_rpm": 1.5, "flow_tph": None},
                "spray": {"tank_l": "half", "flow_lpm": [], "rate_l_ha": {}},
                "fault": {"active": "maybe", "code": {"spn": 110}},
            }
        ).encode()
    if kind == "huge":
        return json.dumps({**good, "blob": "x" * (300 * 1024)}).encode()
    if kind == "deep":
        return ('{"a":' * 200 + "1" + "}" * 200).encode()
    if kind == "nan":
        text = json.dumps(good)
        return text.replace('"pos": {', '"pos": {"nan": NaN, ', 1).encode()
    if kind == "bad_timestamp":
        return json.dumps({**good, "ts": int(ts)}).encode()  # seconds, the profile says ms
    if kind == "empty":
        return b""
    if kind == "unknown_equipment":
        return json.dumps(good).encode()
    raise ValueError(f"unknown malformed kind {kind!r}; one of {', '.join(MALFORMED_KINDS)}")


class MqttFarm(Service):
    """The fleet and its one MQTT client; an async context manager (see module docstring)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        machines: int | Sequence[str] = 6,
        interval: float = 1.0,
        topic: str = DEFAULT_TOPIC,
        malformed_rate: float = 0.0,
        rate: float | None = None,
        seed: int = 0,
        qos: int = 1,
        mqtt_version: str = "5",
        client_id: str = "millrace-farm-sim",
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if "{equipment}" not in topic:
            raise ValueError("the topic needs {equipment}")
        if not 0.0 <= malformed_rate <= 1.0:
            raise ValueError("malformed_rate is a probability (0..1)")
        ids = machine_ids(machines) if isinstance(machines, int) else list(machines)
        if not ids:
            raise ValueError("a farm needs at least one machine")
        self.host, self.port = host, port
        self.topic = topic
        self.interval = interval
        self.malformed_rate = malformed_rate
        self.rate = rate
        self.qos = qos
        self.clock = clock
        self.machines = {m: Machine.create(m, seed) for m in ids}
        self.published: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()
        self.last: dict[str, dict[str, Any]] = {}
        self._rng = random.Random(f"{seed}:farm")
        self._sim_t: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused = asyncio.Event()
        self._paused.set()  # set = publishing
        v5 = mqtt_version == "5"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else False,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        # No in-flight window (paho's default is 20 unacknowledged QoS 1 messages): the bench
        # mode's rate would otherwise be bound by round trips, not by the gateway under test.
        self._client.max_inflight_messages_set(0)
        self._client.reconnect_delay_set(1, 2)
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls_ca is not None:
            self._client.tls_set_context(ssl.create_default_context(cafile=tls_ca))
        # QoS 1 message ids are tracked through on_publish, not
        # MQTTMessageInfo.is_published(): that raises forever for a message published while
        # disconnected, even after paho resent it and the broker acknowledged it.
        self._link = QosLink(self._client, qos, name="farm simulator")
        self._props: Properties | None = None
        if v5:
            self._props = Properties(PacketTypes.CONNECT)
            self._props.SessionExpiryInterval = 3600
        self._v5 = v5
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, *, wait: float | None = 10.0) -> None:
        """Connect (paho's network thread) and start publishing. With `wait`, return once
        connected or raise ConnectionError after that many seconds."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(
            self.host,
            self.port,
            keepalive=30,
            clean_start=False if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=self._props,
        )
        self._client.loop_start()
        if wait is not None and not await self._link.wait_connected(wait):
            await self.stop()
            raise ConnectionError(
                f"farm simulator: no broker at {self.host}:{self.port} ({self._link.error})"
            )
        if self.interval > 0 or self.rate:
            self._task = asyncio.create_task(self._publish_loop(), name="mqtt-farm-publisher")

    async def stop(self, *, drain: float = 2.0) -> None:
        """Stop publishing, give the broker `drain` seconds to ack what is in flight,
        disconnect and join paho's thread."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self._started:
            return
        self._started = False
        await self._link.close(drain)

    @property
    def connected(self) -> bool:
        return self._link.connected.is_set()

    def pause(self) -> None:
        """Stop the periodic publishing (inject/publish_round still work)."""
        self._paused.clear()

    def resume(self) -> None:
        self._paused.set()

    # -- publishing ---------------------------------------------------------------------------

    def topic_for(self, machine: str) -> str:
        return self.topic.replace("{equipment}", machine)

    def publish_round(self) -> None:
        """One message from every machine, now."""
        now = self.clock()
        dt = 0.0 if self._sim_t is None else now - self._sim_t
        self._sim_t = now
        for machine in self.machines.values():
            machine.step(dt)
            self._publish_machine(machine, now)

    def inject(self, kind: str, equipment: str | None = None) -> str:
        """Publish one malformed message of `kind` now; returns the topic it went to."""
        machine = self.machines[equipment] if equipment else next(iter(self.machines.values()))
        now = self.clock()
        good = machine.payload(now)
        machine.seq -= 1  # a malformed message does not consume the machine's counter
        target = "ghost-99" if kind == "unknown_equipment" else machine.id
        topic = self.topic_for(target)
        self._send(topic, malformed_payload(kind, good, now))
        self.malformed[kind] += 1
        return topic

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until the broker acknowledged every QoS 1 message sent so far."""
        await self._link.pubacks.drain(timeout)

    @property
    def unacknowledged(self) -> int:
        """QoS 1 messages sent (or queued while disconnected) and not acknowledged yet."""
        return self._link.pubacks.unacknowledged

    def _publish_machine(self, machine: Machine, now: float) -> None:
        if self.malformed_rate and self._rng.random() < self.malformed_rate:
            self.inject(self._rng.choice(MALFORMED_KINDS), machine.id)
            return
        msg = machine.payload(now)
        self._send(self.topic_for(machine.id), json.dumps(msg, separators=(",", ":")).encode())
        self.last[machine.id] = msg
        self.published[machine.id] += 1

    def _send(self, topic: str, payload: bytes) -> None:
        self._link.send(topic, payload)

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self.rate:
            await self._bench_loop(loop, self.rate)
            return
        next_at = loop.time()
        while True:
            await self._paused.wait()
            self.publish_round()
            next_at += self.interval
            delay = next_at - loop.time()
            if delay < 0:  # fell behind: skip ticks rather than burst
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    async def _bench_loop(self, loop: asyncio.AbstractEventLoop, rate: float) -> None:
        machines = list(self.machines.values())
        start = loop.time()
        sent = 0
        i = 0
        while True:
            await self._paused.wait()
            due = int((loop.time() - start) * rate)
            now = self.clock()
            # At most 0.1 s worth per tick, so a stall does not become a burst.
            for _ in range(min(due - sent, max(1, int(rate / 10)))):
                machine = machines[i % len(machines)]
                i += 1
                machine.step(len(machines) / rate)
                self._publish_machine(machine, now)
                sent += 1
            if due - sent > rate:  # more than a second behind: drop the backlog, say so
                _log.warning("farm bench cannot keep up with %s msg/s", rate)
                sent = due
            await asyncio.sleep(0.005)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulators.mqtt_farm",
        description="Tractors, sugarcane harvesters and drone sprayers publishing MQTT telemetry.",
    )
    p.add_argument("--host", default="127.0.0.1", help="broker host (default %(default)s)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default %(default)s)")
    p.add_argument("--machines", type=int, default=6, help="fleet size (default %(default)s)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between messages")
    p.add_argument("--topic", default=DEFAULT_TOPIC, help="topic template (default %(default)s)")
    p.add_argument("--malformed-rate", type=float, default=0.0, help="share of garbage (0..1)")
    p.add_argument("--rate", type=float, help="bench mode: messages per second in total")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--qos", type=int, choices=[0, 1], default=1)
    p.add_argument("--mqtt-version", choices=["3.1.1", "5"], default="5")
    p.add_argument("--client-id", default="millrace-farm-sim")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--tls-ca", help="CA file: connect with TLS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


async def _serve(args: argparse.Namespace) -> None:
    farm = MqttFarm(
        args.host,
        args.port,
        machines=args.machines,
        interval=args.interval,
        topic=args.topic,
        malformed_rate=args.malformed_rate,
        rate=args.rate,
        seed=args.seed,
        qos=args.qos,
        mqtt_version=args.mqtt_version,
        client_id=args.client_id,
        username=args.username,
        password=args.password,
        tls_ca=args.tls_ca,
    )
    stop = stop_event()
    started = time.monotonic()
    await farm.start(wait=None)  # keep trying until a broker answers
    what = f"{args.rate:g} msg/s" if args.rate else f"every {args.interval:g} s"
    print(
        f"MQTT farm simulator: {len(farm.machines)} machines -> mqtt://{args.host}:{args.port} "
        f"{args.topic} ({what}, QoS {args.qos}, MQTT {args.mqtt_version})",
        flush=True,
    )
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
    finally:
        await farm.stop()
    took = time.monotonic() - started
    total = sum(farm.published.values())
    print(
        f"sent {total} messages in {took:.1f} s ({total / max(took, 1e-9):.0f}/s), "
        f"malformed {sum(farm.malformed.values())}, "
        f"not acknowledged by the broker {farm.unacknowledged}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM or --duration; 0 on a clean stop, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    return run_cli("mqtt_farm", lambda: _serve(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
