"""The MQTT driver against a real Mosquitto: farm simulator -> broker -> driver -> emit (and a
real Store for dead letters). No mocks; every broker runs on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from drivers.base import DeviceState
from drivers.mqtt import driver as mqtt_driver
from drivers.mqtt.config import MqttDevice, MqttProfile
from drivers.mqtt.driver import MqttDriver
from gateway.aio import cancel_until_done
from gateway.config import StoreConfig
from gateway.errors import TransportError
from gateway.readings import Batch, Quality, Reading
from gateway.store import Store
from simulators.mqtt_farm import MALFORMED_KINDS, MqttFarm
from tests.integration import mosquitto as _broker
from tests.integration.mosquitto import Mosquitto, MosquittoFactory, make_tls

mosquitto = _broker.mosquitto  # fixtures: a started broker, and a factory for special ones
mosquitto_factory = _broker.mosquitto_factory

PROFILES = Path(__file__).resolve().parents[2] / "drivers" / "profiles"
FARM = MqttProfile.model_validate(
    yaml.safe_load((PROFILES / "farm-machinery.yaml").read_text(encoding="utf-8"))
)
MACHINES = ["tractor-01", "harvester-01", "drone-01"]


def make_device(broker: Mosquitto, **over: Any) -> MqttDevice:
    data: dict[str, Any] = {
        "id": "coop",
        "protocol": "mqtt",
        "profile": FARM.name,
        "host": broker.host,
        "port": broker.port,
        "topics": ["coop/{equipment}/telemetry"],
        "backoff_initial": 0.1,
        "backoff_max": 0.5,
        "connect_timeout": 2.0,
        **over,
    }
    return MqttDevice.model_validate(data)


class Collector:
    """A list-collecting `emit`: every batch as it came."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def __call__(self, batch: Batch) -> None:
        self.batches.append(batch)

    def readings(self, point: str | None = None) -> list[Reading]:
        return [r for b in self.batches for r in b if point is None or r.point == point]

    def good(self, point: str) -> list[Reading]:
        return [r for r in self.readings(point) if r.quality is Quality.GOOD]

    def seqs(self, equipment: str) -> list[int]:
        return [int(r.value) for r in self.good(f"{equipment}.seq")]  # type: ignore[arg-type]


async def eventually(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(driver: MqttDriver) -> AsyncIterator[MqttDriver]:
    """run() in a task; cancelled, awaited and closed on the way out, with the contract
    checked: the network thread is gone and nothing is emitted afterwards."""
    task = asyncio.create_task(driver.run())
    try:
        yield driver
    finally:
        await cancel_until_done(task)
        await driver.close()
        name = f"millrace-mqtt-{driver.device.id}"
        assert not [t for t in threading.enumerate() if t.name == name], "thread left running"


def driver_for(
    broker: Mosquitto,
    emit: Callable[[Batch], None],
    *,
    equipment: list[str] | None = None,
    profile: MqttProfile = FARM,
    dead_letter: Callable[[str, str, bytes, str], None] | None = None,
    committed: Callable[[], Awaitable[None]] | None = None,
    **over: Any,
) -> MqttDriver:
    dev = make_device(broker, **over)
    return MqttDriver(
        [(dev, profile)],
        emit,
        equipment=MACHINES if equipment is None else equipment,
        dead_letter=dead_letter,
        committed=committed,
    )


async def connected(driver: MqttDriver) -> None:
    await eventually(lambda: driver.connected, "the driver to connect")


def publisher(broker: Mosquitto, port: int | None = None, *, v5: bool = False) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    client.connect(broker.host, port or broker.port)
    client.loop_start()
    return client


def close_publisher(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


# -- values --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_farm_values_arrive_typed_with_source_timestamps_in_batches(
    mosquitto: Mosquitto, version: str
) -> None:
    got = Collector()
    driver = driver_for(mosquitto, got, mqtt_version=version)
    assert len(driver.points()) == len(MACHINES) * len(FARM.points)
    async with running(driver):
        await connected(driver)
        async with MqttFarm(
            mosquitto.host, mosquitto.port, machines=MACHINES, interval=0, mqtt_version=version
        ) as farm:
            for _ in range(100):
                farm.publish_round()
            # The event loop is busy (here: blocked) while the 300 messages arrive. paho's
            # thread gathers them meanwhile; they come out as one batch, not 300.
            time.sleep(1.0)  # noqa: ASYNC251 - on purpose
            await farm.drain()
            await eventually(
                lambda: all(len(got.seqs(m)) >= 100 for m in MACHINES), "every message"
            )
        for machine in MACHINES:
            assert got.seqs(machine) == list(range(100)), machine
            last = farm.last[machine]
            ts = last["ts"] / 1000
            seq = got.good(f"{machine}.seq")[-1]
            assert seq.ts_source == pytest.approx(ts) and seq.ts_gateway >= ts - 1
            lat = got.good(f"{machine}.lat")[-1]
            assert lat.value == last["pos"]["lat"] and type(lat.value) is float
            state = got.good(f"{machine}.work_state")[-1]
            assert state.value == last["work"]["state"] and type(state.value) is str
            fault = got.good(f"{machine}.fault_active")[-1]
            assert fault.value is last["fault"]["active"]
        rpm = got.good("tractor-01.engine_rpm")[-1]
        assert type(rpm.value) is int and rpm.value == farm.last["tractor-01"]["engine"]["rpm"]
        assert got.good("drone-01.tank_level")[-1].value == farm.last["drone-01"]["spray"]["tank_l"]
        assert not got.readings("drone-01.engine_rpm")  # a drone has no engine: nothing, not BAD
        assert not [r for r in got.readings() if r.quality is Quality.BAD]

        assert len(got.batches) <= 3, [len(b) for b in got.batches]
        assert len(got.batches[0]) >= 250 * 7  # >= 250 messages of 7 or more values

        health = {h.device: h for h in driver.health()}
        assert set(health) == set(MACHINES)
        for machine in MACHINES:
            h = health[machine]
            assert h.state is DeviceState.ONLINE and h.protocol == "mqtt"
            assert h.endpoint == f"coop/{machine}/telemetry"
            assert h.extra["messages"] == 100 and h.polls_ok == 100 and h.last_error is None
            assert h.extra["connection.connected"] == 1.0
    assert driver.health()[0].extra["connection.connected"] == 0.0


async def test_csv_over_mqtt_311_with_iso_timestamps(mosquitto: Mosquitto) -> None:
    profile = MqttProfile.model_validate(
        {
            "name": "grader-csv",
            "format": "csv",
            "timestamp": {"column": 0, "form": "iso8601"},
            "points": [
                {"name": "fruit_per_min", "column": 1, "data_type": "int"},
                {"name": "reject_pct", "column": 2, "unit": "%", "min": 0, "max": 100},
                {"name": "lane", "column": 3, "data_type": "string"},
            ],
        }
    )
    got = Collector()
    driver = driver_for(
        mosquitto,
        got,
        equipment=["grader-1"],
        profile=profile,
        mqtt_version="3.1.1",
        topics=["packhouse/{equipment}/csv"],
    )
    async with running(driver):
        await connected(driver)
        pub = publisher(mosquitto)
        try:
            pub.publish("packhouse/grader-1/csv", "2024-06-10T14:13:20+08:00,412,3.5,A", qos=1)
            pub.publish("packhouse/grader-1/csv", "2024-06-10T14:13:21+08:00,415,140,B", qos=1)
            await eventually(lambda: len(got.readings()) == 6, "two CSV lines")
        finally:
            close_publisher(pub)
    first = {r.point: r for r in reversed(got.readings())}  # each point's first reading
    assert first["grader-1.fruit_per_min"].value == 412
    assert first["grader-1.lane"].value == "A"
    assert first["grader-1.reject_pct"].ts_source == 1_718_000_000.0
    out_of_range = got.readings("grader-1.reject_pct")[-1]
    assert out_of_range.quality is Quality.UNCERTAIN and out_of_range.value == 140.0
    assert out_of_range.reason == "above declared max 100"


async def test_number_payloads_take_the_point_from_the_topic(mosquitto: Mosquitto) -> None:
    profile = MqttProfile.model_validate(
        {
            "name": "silo",
            "format": "number",
            "points": [{"name": "level", "unit": "%"}, {"name": "fan_on", "data_type": "bool"}],
        }
    )
    got = Collector()
    letters: list[tuple[str, str, bytes, str]] = []
    driver = driver_for(
        mosquitto,
        got,
        equipment=["silo-1", "silo-2"],
        profile=profile,
        topics=["farm/+/{equipment}/{point}"],
        dead_letter=lambda *a: letters.append(a),
    )
    async with running(driver):
        await connected(driver)
        pub = publisher(mosquitto, v5=True)
        try:
            pub.publish("farm/north/silo-1/level", "62.5", qos=1)
            pub.publish("farm/south/silo-2/fan_on", "on", qos=1)
            pub.publish("farm/south/silo-2/humidity", "40", qos=1)  # not a profile point
            pub.publish("farm/south/silo-9/level", "10", qos=1)  # not configured equipment
            await eventually(lambda: len(got.readings()) == 2 and len(letters) == 2, "4 msgs")
        finally:
            close_publisher(pub)
    assert {(r.point, r.value) for r in got.readings()} == {
        ("silo-1.level", 62.5),
        ("silo-2.fan_on", True),
    }
    assert [(topic, reason.split(":")[0]) for _, topic, _, reason in letters] == [
        ("farm/south/silo-2/humidity", "unknown_point"),
        ("farm/south/silo-9/level", "unknown_equipment"),
    ]
    assert letters[0][0] == "coop" and letters[0][2] == b"40"


# -- bad input -----------------------------------------------------------------------------


async def test_malformed_payloads_are_counted_and_dead_lettered_while_good_ones_flow(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    store = Store(tmp_path / "gw.db", StoreConfig(flush_interval=0.01))
    await store.open()
    got = Collector()

    def emit(batch: Batch) -> None:
        got(batch)
        store.submit(batch)

    driver = driver_for(mosquitto, emit, dead_letter=store.dead_letter)
    try:
        async with running(driver):
            await connected(driver)
            async with MqttFarm(
                mosquitto.host, mosquitto.port, machines=MACHINES, interval=0.05
            ) as farm:
                await eventually(lambda: len(got.seqs("tractor-01")) >= 3, "good messages")
                for kind in MALFORMED_KINDS:
                    farm.inject(kind, "tractor-01")
                farm.inject("not_json", "harvester-01")
                farm.inject("not_json", "drone-01")
                seen = len(got.seqs("tractor-01"))
                await eventually(lambda: len(got.seqs("tractor-01")) >= seen + 5, "more good")
                farm.pause()
                await farm.drain()
                published = dict(farm.published)
                await eventually(
                    lambda: all(len(got.seqs(m)) == published[m] for m in MACHINES), "all good"
                )
            stats = driver.stats()
            health = {h.device: h for h in driver.health()}
        await store.flush()
        letters = await store.dead_letters(limit=100)
        readings = await store.latest()
    finally:
        await store.close()

    expected = Counter(
        {
            "not_json": 5,  # not_json x3, nan, empty
            "not_utf8": 1,
            "wrong_type": 1,
            "too_large": 1,
            "too_deep": 1,
            "bad_timestamp": 1,
            "unknown_equipment": 1,
        }
    )
    assert Counter(d.reason.split(":")[0] for d in letters) == expected
    assert {k.removeprefix("errors."): v for k, v in stats.items() if "errors." in k} == expected
    assert stats["dead_lettered"] == sum(expected.values())
    assert all(d.source == "coop" for d in letters)
    huge = next(d for d in letters if d.reason.startswith("too_large"))
    assert huge.payload_size == 4096 and "kept the first 4096" in huge.reason
    ghost = next(d for d in letters if d.reason.startswith("unknown_equipment"))
    assert ghost.topic == "coop/ghost-99/telemetry" and json.loads(ghost.payload)["seq"] >= 0

    # Good messages kept flowing, none lost or doubled around the garbage.
    for machine in MACHINES:
        assert got.seqs(machine) == list(range(published[machine])), machine
    tractor = health["tractor-01"]
    assert tractor.state is DeviceState.ONLINE and tractor.polls_failed == 8
    assert tractor.extra["errors.not_json"] == 3 and tractor.extra["dead_lettered"] == 8
    assert tractor.last_error is None  # the good messages since cleared it
    assert health["harvester-01"].extra["errors.not_json"] == 1
    assert "ghost-99" not in health
    assert {r.point for r in readings} >= {f"tractor-01.{p.name}" for p in FARM.points[:5]}


async def test_fields_of_the_wrong_type_are_bad_readings_with_the_reason(
    mosquitto: Mosquitto,
) -> None:
    got = Collector()
    driver = driver_for(mosquitto, got, equipment=["tractor-01"])
    async with running(driver):
        await connected(driver)
        pub = publisher(mosquitto)
        try:
            doc = {"ts": 1_718_000_000_000, "engine": {"rpm": "fast", "temp": 91.5}}
            pub.publish("coop/tractor-01/telemetry", json.dumps(doc), qos=1)
            await eventually(lambda: len(got.readings()) == 2, "the message")
        finally:
            close_publisher(pub)
        h = driver.health()[0]
    rpm = got.readings("tractor-01.engine_rpm")[0]
    assert rpm.quality is Quality.BAD and rpm.value is None
    assert rpm.reason == "field engine_rpm: expected an integer, got text 'fast'"
    assert got.readings("tractor-01.engine_temp")[0].value == 91.5
    assert h.extra["bad_values"] == 1 and h.polls_ok == 1 and h.polls_failed == 0


# -- sessions, restarts ------------------------------------------------------------------------


async def test_broker_restart_is_survived_without_loss_and_with_few_duplicates(
    mosquitto: Mosquitto,
) -> None:
    got = Collector()
    driver = driver_for(mosquitto, got, stale_after=30)
    async with running(driver):
        await connected(driver)
        async with MqttFarm(
            mosquitto.host, mosquitto.port, machines=MACHINES, interval=0.02
        ) as farm:
            await eventually(lambda: len(got.seqs("drone-01")) >= 20, "messages before")
            mosquitto.stop()  # SIGTERM: Mosquitto saves sessions and queues, then exits
            await eventually(lambda: not driver.connected, "the driver to notice")
            down = {h.device: h for h in driver.health()}
            assert all(h.state is DeviceState.DOWN for h in down.values())
            assert "broker connection lost" in (down["tractor-01"].last_error or "")
            bad = got.readings("tractor-01.lat")[-1]
            assert bad.quality is Quality.BAD and "broker connection lost" in (bad.reason or "")
            before = sum(farm.published.values())
            await asyncio.sleep(1.0)  # the farm keeps publishing into its client's queue
            assert sum(farm.published.values()) > before + 50
            mosquitto.start()  # same port, same persistence file; no manual step after this
            await eventually(lambda: driver.connected, "the driver to reconnect", 15)
            await eventually(
                lambda: all(h.state is DeviceState.ONLINE for h in driver.health()),
                "every machine online again",
            )
            farm.pause()
            await farm.drain(timeout=15)
            published = dict(farm.published)
            await eventually(
                lambda: all(set(got.seqs(m)) >= set(range(published[m])) for m in MACHINES),
                "every message, including those sent while the broker was down",
                15,
            )
            await asyncio.sleep(0.3)  # let stray redeliveries show up, if any
        health = {h.device: h for h in driver.health()}
    for machine in MACHINES:
        seqs = got.seqs(machine)
        assert sorted(set(seqs)) == list(range(published[machine])), machine
        dupes = len(seqs) - len(set(seqs))
        # QoS 1 redelivers what was in flight when the broker stopped: a handful at most.
        assert dupes <= 5, (machine, dupes, published[machine])
        assert health[machine].reconnects == 1
    assert driver.stats()["connects"] == 2


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_persistent_session_queues_while_the_gateway_is_away(
    mosquitto: Mosquitto, version: str
) -> None:
    got = Collector()
    first = driver_for(mosquitto, got, mqtt_version=version)
    async with running(first):
        await connected(first)
    # The gateway is stopped (clean DISCONNECT); its session stays on the broker.
    async with MqttFarm(
        mosquitto.host, mosquitto.port, machines=MACHINES, interval=0, mqtt_version=version
    ) as farm:
        for _ in range(30):
            farm.publish_round()
        await farm.drain()
    assert not got.readings()
    again = Collector()
    second = driver_for(mosquitto, again, mqtt_version=version)  # same client id
    async with running(second):
        await eventually(
            lambda: all(len(again.seqs(m)) >= 30 for m in MACHINES), "the queued messages"
        )
        await asyncio.sleep(0.2)
    for machine in MACHINES:
        assert again.seqs(machine) == list(range(30)), machine


# -- acknowledged after commit ---------------------------------------------------------------


class Barrier:
    """A `committed` callable the test controls: each call waits until `release()` (or
    raises while `failing`); `calls` counts them."""

    def __init__(self, *, released: bool = False, failing: int = 0) -> None:
        self.gate = asyncio.Event()
        if released:
            self.gate.set()
        self.failing = failing
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.failing:
            self.failing -= 1
            raise RuntimeError("disk I/O error")
        await self.gate.wait()

    def release(self) -> None:
        self.gate.set()


class Redelivered(Collector):
    """A Collector that also keeps the dead letters."""

    def __init__(self) -> None:
        super().__init__()
        self.letters: list[tuple[str, str, bytes, str]] = []


async def _received_again(broker: Mosquitto, version: str, quiet: float = 0.5) -> Redelivered:
    """What a new session under the same client id gets: the broker's unacknowledged
    messages, redelivered. Its own commits pass at once, so it acknowledges them."""
    got = Redelivered()
    barrier = Barrier(released=True)
    again = driver_for(
        broker,
        got,
        mqtt_version=version,
        dead_letter=lambda *a: got.letters.append(a),
        committed=barrier,
    )
    async with running(again):
        await connected(again)
        await asyncio.sleep(quiet)  # a redelivery comes right after CONNACK
        messages = again.stats().get("messages", 0)
        await eventually(lambda: again.stats().get("acks_sent", 0) == messages, "its acks")
    return got


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_a_message_is_acknowledged_only_after_its_commit(
    mosquitto: Mosquitto, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt_driver, "_CLOSE_COMMIT_TIMEOUT", 0.3)
    farm = MqttFarm(
        mosquitto.host, mosquitto.port, machines=MACHINES, interval=0, mqtt_version=version
    )
    # 1. The commit never comes: emitted, never acknowledged; a stop does not wait for it
    # past _CLOSE_COMMIT_TIMEOUT, and the broker delivers everything again next session.
    got = Collector()
    letters: list[tuple[str, str, bytes, str]] = []
    stuck = Barrier()
    driver = driver_for(
        mosquitto,
        got,
        mqtt_version=version,
        dead_letter=lambda *a: letters.append(a),
        committed=stuck,
    )
    async with running(driver), farm:
        await connected(driver)
        farm.publish_round()
        farm.inject("not_json", "tractor-01")  # a dead letter waits for the commit too
        farm.publish_round()
        await farm.drain()  # the broker has them all
        await eventually(
            lambda: all(len(got.seqs(m)) == 2 for m in MACHINES) and len(letters) == 1,
            "every message emitted",
        )
        await eventually(lambda: stuck.calls >= 1, "a commit asked for")
        await asyncio.sleep(0.1)
        assert driver.stats()["acks_sent"] == 0
        assert driver.health()[0].extra["connection.unacked"] == 7
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 2.0, "the stop waited on the commit"
    assert driver.stats()["acks_sent"] == 0
    redelivered = await _received_again(mosquitto, version)
    for machine in MACHINES:
        assert redelivered.seqs(machine) == [0, 1], machine
    assert [a[3].split(":")[0] for a in redelivered.letters] == ["not_json"]
    # That session acknowledged them after its commits: none comes a third time.
    assert not (await _received_again(mosquitto, version)).readings()

    # 2. The commit is released: then, and only then, the PUBACKs go out.
    got = Collector()
    gate = Barrier()
    driver = driver_for(mosquitto, got, mqtt_version=version, committed=gate)
    async with running(driver), farm:
        await connected(driver)
        for _ in range(3):
            farm.publish_round()
        await farm.drain()
        await eventually(lambda: all(got.seqs(m) == [2, 3, 4] for m in MACHINES), "emitted")
        await asyncio.sleep(0.1)
        assert driver.stats()["acks_sent"] == 0
        gate.release()
        await eventually(lambda: driver.stats()["acks_sent"] == 9, "PUBACKs after the commit")
        assert driver.stats()["acked"] == 9
        assert driver.health()[0].extra["connection.unacked"] == 0
        assert 1 <= gate.calls <= len(got.batches), "one commit per drain at most"
    assert not (await _received_again(mosquitto, version)).readings()


async def test_a_failing_commit_withholds_acks_until_the_store_recovers(
    mosquitto: Mosquitto,
) -> None:
    got = Collector()
    store = Barrier(released=True, failing=3)
    driver = driver_for(mosquitto, got, committed=store)
    async with running(driver):
        await connected(driver)
        async with MqttFarm(mosquitto.host, mosquitto.port, machines=MACHINES, interval=0) as farm:
            farm.publish_round()
            await farm.drain()
            await eventually(lambda: len(got.readings()) > 0, "emitted")
            await eventually(lambda: driver.stats()["acks_sent"] == 3, "acks after recovery", 15)
        stats = driver.stats()
    assert stats["commit_failed"] == 3 and store.calls >= 4
    assert not (await _received_again(mosquitto, "5")).readings()


# -- security ----------------------------------------------------------------------------------


async def test_username_and_password(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory(users={"coop-gw": "s3cret-cane", "farm": "tractors"})
    got = Collector()
    wrong = driver_for(broker, Collector(), username="coop-gw", password="guess")
    async with running(wrong):
        await eventually(lambda: wrong.stats().get("connect_failures", 0) >= 2, "retries")
        h = wrong.health()[0]
        assert h.state is DeviceState.DOWN and not wrong.connected
        assert "refused" in (h.last_error or "") and "authoriz" in (h.last_error or "").lower()
    right = driver_for(broker, got, username="coop-gw", password="s3cret-cane")
    async with running(right):
        await connected(right)
        async with MqttFarm(
            broker.host, broker.port, machines=MACHINES, interval=0.05,
            username="farm", password="tractors",
        ) as farm:  # fmt: skip
            await eventually(lambda: len(got.seqs("tractor-01")) >= 3, "values")
            assert farm.connected


async def test_tls_with_a_ca_and_with_a_client_certificate(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    broker = mosquitto_factory(tls=True, require_certificate=True)
    tls = broker.tls
    assert tls is not None and broker.tls_port is not None
    got = Collector()
    driver = driver_for(
        broker,
        got,
        port=broker.tls_port,
        tls={"ca": str(tls.ca), "cert": str(tls.client_cert), "key": str(tls.client_key)},
    )
    other = make_tls(tmp_path / "other-ca")
    strangers = driver_for(
        broker, Collector(), id="strangers", port=broker.tls_port, tls={"ca": str(other.ca)}
    )
    no_cert = driver_for(
        broker, Collector(), id="no-cert", port=broker.tls_port, tls={"ca": str(tls.ca)}
    )
    async with running(driver), running(strangers), running(no_cert):
        await connected(driver)
        async with MqttFarm(broker.host, broker.port, machines=MACHINES, interval=0.05):
            await eventually(lambda: len(got.seqs("drone-01")) >= 3, "values over TLS")
        await eventually(lambda: strangers.stats().get("connect_failures", 0) >= 1, "refusal")
        assert "certificate verify failed" in (strangers.health()[0].last_error or "")
        assert not strangers.connected
        await eventually(lambda: no_cert.stats().get("connect_failures", 0) >= 1, "refusal")
        # TLS 1.3: the broker checks the client certificate after the handshake and hangs
        # up (OpenSSL says "EOF ..." or "CERTIFICATE_REQUIRED"); paho's own words are kept.
        why = (no_cert.health()[0].last_error or "").lower()
        assert "ssl" in why or "certificate" in why, why
        assert not no_cert.connected and no_cert.stats().get("connects", 0) == 0


async def test_tls_setup_errors_are_reported_not_hidden(mosquitto: Mosquitto) -> None:
    driver = driver_for(mosquitto, Collector(), tls={"ca": "/nonexistent/ca.pem"})
    with pytest.raises(TransportError, match="TLS setup failed"):
        await driver.run()
    assert "TLS setup failed" in (driver.health()[0].last_error or "")
    await driver.close()


# -- health ------------------------------------------------------------------------------------


async def test_stale_equipment_goes_down_once_and_comes_back(mosquitto: Mosquitto) -> None:
    got = Collector()
    driver = driver_for(mosquitto, got, equipment=["tractor-01", "harvester-01"], stale_after=0.4)
    async with running(driver):
        await connected(driver)
        async with MqttFarm(
            mosquitto.host, mosquitto.port, machines=["tractor-01"], interval=0.05
        ) as farm:
            await eventually(lambda: len(got.seqs("tractor-01")) >= 2, "tractor values")
            health = lambda: {h.device: h for h in driver.health()}  # noqa: E731
            await eventually(
                lambda: health()["harvester-01"].state is DeviceState.DOWN, "silent harvester"
            )
            assert health()["harvester-01"].last_error == "stale: no message yet for 0.4 s"
            assert health()["tractor-01"].state is DeviceState.ONLINE
            farm.pause()
            await eventually(lambda: health()["tractor-01"].state is DeviceState.DOWN, "stale")
            assert health()["tractor-01"].last_error == "stale: no message for 0.4 s"
            await asyncio.sleep(0.5)  # DOWN is reported once, not on every check
            farm.resume()
            await eventually(lambda: health()["tractor-01"].state is DeviceState.ONLINE, "back")
    harvester_bad = got.readings("harvester-01.engine_rpm")
    assert len(harvester_bad) == 1 and harvester_bad[0].quality is Quality.BAD
    tractor_bad = [r for r in got.readings("tractor-01.fuel_level") if r.quality is Quality.BAD]
    assert len(tractor_bad) == 1 and tractor_bad[0].reason == "stale: no message for 0.4 s"
    assert got.readings("tractor-01.fuel_level")[-1].quality is Quality.GOOD


async def test_unknown_equipment_is_adopted_when_allowed(mosquitto: Mosquitto) -> None:
    got = Collector()
    driver = driver_for(mosquitto, got, equipment=["tractor-01"], accept_unknown_equipment=True)
    async with running(driver):
        await connected(driver)
        async with MqttFarm(
            mosquitto.host, mosquitto.port, machines=["tractor-01", "drone-07"], interval=0.05
        ):
            await eventually(lambda: len(got.seqs("drone-07")) >= 2, "the new drone")
        health = {h.device: h for h in driver.health()}
    assert health["drone-07"].state is DeviceState.ONLINE
    assert {p.device for p in driver.points()} == {"tractor-01"}  # only configured ones declared


async def test_broker_down_at_start_then_up_needs_no_manual_step(
    mosquitto_factory: MosquittoFactory,
) -> None:
    broker = mosquitto_factory()
    broker.stop()
    got = Collector()
    driver = driver_for(broker, got)
    async with running(driver):
        await eventually(lambda: driver.stats().get("connect_failures", 0) >= 2, "retries")
        h = driver.health()[0]
        assert h.state is DeviceState.DOWN
        assert h.last_error == "cannot connect to broker: connection refused"
        broker.start()
        await connected(driver)
        async with MqttFarm(broker.host, broker.port, machines=MACHINES, interval=0.05):
            await eventually(lambda: len(got.seqs("harvester-01")) >= 2, "values")
        published_after = len(got.readings())
    await asyncio.sleep(0.2)
    assert len(got.readings()) == published_after  # nothing after run() ended


async def test_a_failing_dead_letter_sink_does_not_stop_intake(mosquitto: Mosquitto) -> None:
    def broken_sink(*_: object) -> None:
        raise RuntimeError("store closed")

    got = Collector()
    driver = driver_for(mosquitto, got, equipment=["tractor-01"], dead_letter=broken_sink)
    async with running(driver):
        await connected(driver)
        async with MqttFarm(
            mosquitto.host, mosquitto.port, machines=["tractor-01"], interval=0
        ) as farm:
            farm.publish_round()
            farm.inject("not_json")
            farm.publish_round()
            await farm.drain()
            await eventually(lambda: len(got.seqs("tractor-01")) == 2, "both good messages")
    stats = driver.stats()
    assert stats["errors.not_json"] == 1 and stats["dead_letter_failed"] == 1
    assert got.seqs("tractor-01") == [0, 1]
