"""Item topics against a real Mosquitto: a fruit grading line publishes one message per fruit
(a JSON score record, the camera image bytes); the driver hands each one, raw, to the item
sink on the event loop thread and never turns it into readings. No mocks; every broker runs on
a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from drivers.base import DeviceState, Item
from drivers.mqtt.config import MqttDevice, MqttProfile
from drivers.mqtt.driver import MqttDriver
from drivers.registry import build_drivers
from gateway.aio import cancel_until_done
from gateway.config import StoreConfig
from gateway.configload import load_config_data
from gateway.readings import Batch, Quality, Reading
from gateway.store import Store
from tests.integration import mosquitto as _broker
from tests.integration.mosquitto import Mosquitto

mosquitto = _broker.mosquitto  # fixtures: a started broker, and a factory for special ones
mosquitto_factory = _broker.mosquitto_factory

PROFILES = Path(__file__).resolve().parents[2] / "drivers" / "profiles"
FARM = MqttProfile.model_validate(
    yaml.safe_load((PROFILES / "farm-machinery.yaml").read_text(encoding="utf-8"))
)
LINE = "grader-1"
ITEMS = [
    {"name": "fruit", "topic": "grading/{equipment}/fruit/{item}"},
    {"name": "image", "topic": "grading/{equipment}/image/{item}"},
]
#: Parses as farm telemetry: if it ever became readings, rpm 999 would show up.
SCORE = json.dumps({"ts": 1_718_000_000_000, "engine": {"rpm": 999, "temp": 1.5}}).encode()
STATUS = json.dumps({"ts": 1_718_000_000_000, "engine": {"rpm": 1500, "temp": 71.5}}).encode()


class Readings:
    """A list-collecting `emit`."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def __call__(self, batch: Batch) -> None:
        self.batches.append(batch)

    def all(self, point: str | None = None) -> list[Reading]:
        return [r for b in self.batches for r in b if point is None or r.point == point]


class Sink:
    """An item sink that records what it was given and on which thread; `accept` says what
    it answers, `fail` makes it raise (a broken consumer)."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.threads: set[int] = set()
        self.accept = True
        self.fail = False
        self.calls = 0

    def __call__(self, item: Item) -> bool:
        self.calls += 1
        self.threads.add(threading.get_ident())
        if self.fail:
            raise RuntimeError("inference engine crashed")
        if self.accept:
            self.items.append(item)
        return self.accept


Letters = list[tuple[str, str, bytes, str]]


async def eventually(cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(driver: MqttDriver) -> AsyncIterator[MqttDriver]:
    """run() in a task, connected; cancelled, awaited and closed on the way out."""
    task = asyncio.create_task(driver.run())
    try:
        await eventually(lambda: driver.connected, "the driver to connect")
        yield driver
    finally:
        await cancel_until_done(task)
        await driver.close()


@contextlib.contextmanager
def publisher(broker: Mosquitto) -> Any:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(5)


def grading_driver(
    broker: Mosquitto,
    emit: Callable[[Batch], None],
    *,
    sink: Callable[[Item], bool] | None,
    letters: Letters | None = None,
    dead_letter: Callable[[str, str, bytes, str], None] | None = None,
    equipment: list[str] | None = None,
    **over: Any,
) -> MqttDriver:
    if letters is not None:
        dead_letter = lambda *a: letters.append(a)  # noqa: E731
    data: dict[str, Any] = {
        "id": "packhouse",
        "protocol": "mqtt",
        "profile": FARM.name,
        "host": broker.host,
        "port": broker.port,
        "topics": ["grading/{equipment}/status"],
        "items": ITEMS,
        "backoff_initial": 0.1,
        "backoff_max": 0.5,
        "connect_timeout": 2.0,
        **over,
    }
    return MqttDriver(
        [(MqttDevice.model_validate(data), FARM)],
        emit,
        equipment=[LINE] if equipment is None else equipment,
        dead_letter=dead_letter,
        item_sink=sink,
    )


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_an_image_arrives_byte_identical_and_a_score_never_becomes_readings(
    mosquitto: Mosquitto, version: str
) -> None:
    image = random.Random(42).randbytes(300 * 1024)  # not UTF-8, not JSON: raw bytes
    got, sink, letters = Readings(), Sink(), Letters()
    driver = grading_driver(mosquitto, got, sink=sink, letters=letters, mqtt_version=version)
    loop_thread = threading.get_ident()
    async with running(driver):
        with publisher(mosquitto) as pub:
            before = time.time()
            publish(pub, f"grading/{LINE}/image/000042", image)
            publish(pub, f"grading/{LINE}/fruit/000042", SCORE)
            publish(pub, f"grading/{LINE}/status", STATUS)
            await eventually(lambda: len(sink.items) == 2 and got.all(), "2 items, 1 status")
            await asyncio.sleep(0.2)  # anything else that was coming has come
        stats = driver.stats()
        (health,) = driver.health()

    img, score = sorted(sink.items, key=lambda i: i.channel, reverse=True)
    assert img.payload == image and len(img.payload) == 300 * 1024
    assert (img.source, img.equipment, img.channel, img.item_id) == (
        "packhouse",
        LINE,
        "image",
        "000042",
    )
    assert img.topic == f"grading/{LINE}/image/000042"
    assert before - 1 <= img.ts_gateway <= time.time()
    assert (score.channel, score.item_id, score.payload) == ("fruit", "000042", SCORE)
    assert sink.threads == {loop_thread}  # never from paho's network thread

    # Telemetry on the same connection is read; the score record is not.
    rpm = got.all(f"{LINE}.engine_rpm")
    assert [r.value for r in rpm] == [1500] and rpm[0].quality is Quality.GOOD
    assert not [r for r in got.all() if r.value == 999]
    assert letters == []
    assert (stats["messages"], stats["items"], stats["values"]) == (3, 2, 2)
    assert "items_refused" not in stats and "dead_lettered" not in stats
    assert health.state is DeviceState.ONLINE and health.polls_ok == 3
    assert health.extra["items"] == 2 and health.extra["connection.items"] == 2
    assert health.endpoint == f"grading/{LINE}/status"  # items do not move the endpoint


async def test_an_oversize_item_is_dead_lettered_and_intake_goes_on(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    store = Store(tmp_path / "gw.db", StoreConfig(flush_interval=0.01))
    await store.open()
    got, sink = Readings(), Sink()
    small = {**ITEMS[1], "max_payload_bytes": "64KiB"}
    driver = grading_driver(mosquitto, got, sink=sink, dead_letter=store.dead_letter, items=[small])
    try:
        async with running(driver):
            with publisher(mosquitto) as pub:
                publish(pub, f"grading/{LINE}/image/1", b"\x89PNG" + b"\0" * (100 * 1024))
                publish(pub, f"grading/{LINE}/image/2", b"\x89PNG" + b"\0" * (64 * 1024 - 4))
                publish(pub, f"grading/{LINE}/status", STATUS)
                await eventually(lambda: len(sink.items) == 1 and got.all(), "the rest")
            stats = driver.stats()
            (health,) = driver.health()
        await store.flush()
        letters = await store.dead_letters()
    finally:
        await store.close()
    assert [i.item_id for i in sink.items] == ["2"] and len(sink.items[0].payload) == 64 * 1024
    (letter,) = letters
    assert letter.source == "packhouse" and letter.topic == f"grading/{LINE}/image/1"
    assert letter.reason.startswith("too_large: 102404 bytes, more than 65536 (image item)")
    assert "kept the first 4096" in letter.reason and letter.payload_size == 4096
    assert stats["errors.too_large"] == 1 and stats["items"] == 2
    assert health.extra["errors.too_large"] == 1 and health.polls_failed == 1
    assert health.state is DeviceState.ONLINE
    assert [r.value for r in got.all(f"{LINE}.engine_rpm")] == [1500]


async def test_a_full_or_broken_consumer_is_counted_not_dead_lettered(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    got, sink, letters = Readings(), Sink(), Letters()
    driver = grading_driver(mosquitto, got, sink=sink, letters=letters)
    async with running(driver):
        with publisher(mosquitto) as pub:
            sink.accept = False  # its queue is full
            for i in range(50):
                publish(pub, f"grading/{LINE}/image/{i}", b"\xff\xd8 jpeg %d" % i)
            await eventually(lambda: sink.calls == 50, "50 refusals")
            sink.fail = True  # a bug in the consumer
            publish(pub, f"grading/{LINE}/fruit/50", SCORE)
            await eventually(lambda: sink.calls == 51, "the failing call")
            sink.accept, sink.fail = True, False
            publish(pub, f"grading/{LINE}/fruit/51", SCORE)
            publish(pub, f"grading/{LINE}/status", STATUS)
            await eventually(lambda: len(sink.items) == 1 and got.all(), "recovery")
        stats = driver.stats()
        (health,) = driver.health()
    assert stats["items_refused"] == 50 and stats["item_sink_failed"] == 1
    assert stats["items"] == 52 and "dead_lettered" not in stats
    assert letters == []  # a full consumer is not the message's fault
    assert health.extra["items_refused"] == 50 and health.extra["item_sink_failed"] == 1
    assert health.state is DeviceState.ONLINE and health.last_error is None
    assert sink.items[0].item_id == "51"
    assert got.all(f"{LINE}.engine_rpm")[0].value == 1500
    # Logged rate-limited: one line for the 50 refusals, one (with the traceback) for the bug.
    refused = [r for r in caplog.records if "refused by its consumer" in r.getMessage()]
    failed = [r for r in caplog.records if r.getMessage() == "mqtt item sink failed"]
    assert len(refused) == 1 and len(failed) == 1 and failed[0].exc_info is not None


async def test_unknown_equipment_and_no_consumer_are_dead_letters(mosquitto: Mosquitto) -> None:
    got, letters = Readings(), Letters()
    no_sink = grading_driver(mosquitto, got, sink=None, letters=letters)
    async with running(no_sink):
        with publisher(mosquitto) as pub:
            publish(pub, "grading/grader-9/image/1", b"\xff\xd8" * 3000)
            publish(pub, f"grading/{LINE}/image/2", b"\xff\xd8" * 3000)
            await eventually(lambda: len(letters) == 2, "two dead letters")
        stats = no_sink.stats()
    assert [(t, r.split(":")[0], len(p)) for _, t, p, r in letters] == [
        ("grading/grader-9/image/1", "unknown_equipment", 4096),
        (f"grading/{LINE}/image/2", "no_item_consumer", 4096),
    ]
    assert "'image'" in letters[1][3]
    assert stats["errors.unknown_equipment"] == 1 and stats["errors.no_item_consumer"] == 1
    assert not got.all()

    # With accept_unknown_equipment the new line is adopted, exactly as for telemetry.
    sink = Sink()
    adopting = grading_driver(
        mosquitto, Readings(), sink=sink, id="packhouse-2", accept_unknown_equipment=True
    )
    async with running(adopting):
        with publisher(mosquitto) as pub:
            publish(pub, "grading/grader-9/fruit/7", SCORE)
            await eventually(lambda: len(sink.items) == 1, "the adopted line's item")
        health = {h.device: h for h in adopting.health()}
    assert sink.items[0].equipment == "grader-9" and sink.items[0].item_id == "7"
    assert health["grader-9"].state is DeviceState.ONLINE


async def test_a_line_that_only_sends_items_is_online_and_goes_stale(mosquitto: Mosquitto) -> None:
    """No telemetry topic at all: items alone keep the equipment ONLINE."""
    got, sink = Readings(), Sink()
    driver = grading_driver(mosquitto, got, sink=sink, topics=[], stale_after=0.4)
    state = lambda: driver.health()[0].state  # noqa: E731
    async with running(driver):
        assert driver.health()[0].endpoint == f"grading/{LINE}/fruit/+"
        with publisher(mosquitto) as pub:
            for i in range(8):  # 0.8 s of items, twice the stale time
                publish(pub, f"grading/{LINE}/fruit/{i}", SCORE)
                await asyncio.sleep(0.1)
                assert state() is DeviceState.ONLINE, i
            await eventually(lambda: state() is DeviceState.DOWN, "stale")
            assert driver.health()[0].last_error == "stale: no message for 0.4 s"
            publish(pub, f"grading/{LINE}/image/8", b"\x89PNG")
            await eventually(lambda: state() is DeviceState.ONLINE, "back online")
        assert len(sink.items) == 9
    # The only readings are the BAD marks of going stale, never an item's content.
    assert got.all() and all(r.quality is Quality.BAD for r in got.all())


async def test_a_backlog_of_images_is_bounded_in_bytes_not_only_in_messages(
    mosquitto: Mosquitto,
) -> None:
    """80 images of 1 MiB while the event loop is busy: the network thread holds back at the
    inbox's byte bound (the broker keeps the rest), and nothing is lost."""
    sink = Sink()
    driver = grading_driver(mosquitto, Readings(), sink=sink)
    blob = random.Random(1).randbytes(1024 * 1024)
    async with running(driver):
        with publisher(mosquitto) as pub:
            sent = [pub.publish(f"grading/{LINE}/image/{i}", blob, qos=1) for i in range(80)]
            time.sleep(2.0)  # noqa: ASYNC251 - on purpose: the loop is busy, nothing drains
            held = driver.health()[0].extra["connection.inbox_bytes"]
            for info in sent:
                info.wait_for_publish(10)
            await eventually(lambda: len(sink.items) == 80, "every image", 30)
    assert 32 * 1024 * 1024 <= held <= 65 * 1024 * 1024, held
    assert sorted(int(i.item_id or -1) for i in sink.items) == list(range(80))
    assert all(i.payload == blob for i in sink.items)


async def test_items_queue_in_the_persistent_session_while_the_gateway_is_away(
    mosquitto: Mosquitto,
) -> None:
    sink = Sink()
    async with running(grading_driver(mosquitto, Readings(), sink=sink)):
        pass  # subscribed, then a clean DISCONNECT: the broker keeps the session
    image = random.Random(7).randbytes(200 * 1024)
    with publisher(mosquitto) as pub:
        for i in range(5):
            publish(pub, f"grading/{LINE}/image/{i}", image)
    assert sink.items == []
    async with running(grading_driver(mosquitto, Readings(), sink=sink)):  # same client id
        await eventually(lambda: len(sink.items) == 5, "the queued images")
    assert [i.item_id for i in sink.items] == ["0", "1", "2", "3", "4"]
    assert all(i.payload == image for i in sink.items)


async def test_build_drivers_hands_the_item_sink_to_the_mqtt_driver(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    loaded = load_config_data(
        {
            "gateway": {"id": "gw", "site": "packhouse"},
            "devices": [
                {
                    "id": "packhouse",
                    "protocol": "mqtt",
                    "host": mosquitto.host,
                    "port": mosquitto.port,
                    "profile": "farm-machinery",
                    "items": [ITEMS[1]],  # items only: no telemetry topic
                }
            ],
            "equipment": [{"id": LINE, "type": "fruit_grading_line", "device": "packhouse"}],
        },
        base_dir=tmp_path,
    )
    sink = Sink()
    (driver,) = build_drivers(loaded, Readings(), item_sink=sink)
    assert isinstance(driver, MqttDriver)
    async with running(driver):
        with publisher(mosquitto) as pub:
            publish(pub, f"grading/{LINE}/image/9", b"\xff\xd8\xff")
            await eventually(lambda: len(sink.items) == 1, "the item")
    assert (sink.items[0].equipment, sink.items[0].channel) == (LINE, "image")
