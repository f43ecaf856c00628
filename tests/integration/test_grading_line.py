"""The fruit grading line simulator over real MQTT: the demo's MiniBroker and a real Mosquitto,
a paho subscriber on 127.0.0.1, no mocks.

The grading models read what arrives here: a JSON item with the seven attribute fields (and the
dataset's truth), and an image payload that is exactly the photo file, which Pillow must decode.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import pytest_asyncio
from PIL import Image

from simulators.grading_line import FRUIT_DATASET, FRUIT_FIELDS, IMAGE_DATASET, GradingLine
from simulators.mqtt_broker import MiniBroker
from tests.integration import mosquitto as _broker
from tests.integration.mosquitto import MosquittoFactory

mosquitto = _broker.mosquitto  # fixtures: a started broker, and a factory for special ones
mosquitto_factory = _broker.mosquitto_factory

ROOT = Path(__file__).resolve().parents[2]


class Subscriber:
    """A paho client collecting every message under `grading/<line>/#` (QoS 1)."""

    def __init__(self, host: str, port: int, line: str = "line-1") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self._client.on_connect = lambda c, *_: c.subscribe(f"grading/{line}/#", qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self.host, self.port = host, port

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    async def __aenter__(self) -> Subscriber:
        self._client.connect(self.host, self.port)
        self._client.loop_start()
        assert await asyncio.to_thread(self._subscribed.wait, 5), "no SUBACK"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    def got(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        await until(lambda: len(self.got()) >= count, timeout)
        return self.got()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture(params=["minibroker", "mosquitto"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, int]]:
    """The demo's MiniBroker (MQTT 3.1.1 only) and a real Mosquitto."""
    if request.param == "minibroker":
        async with MiniBroker(port=0) as mini:
            yield "127.0.0.1", mini.port
    else:
        real = request.getfixturevalue("mosquitto")
        yield real.host, real.port


def item_number(item_id: str) -> int:
    line, _, seq = item_id.rpartition("-")
    assert line == "line-1"
    return int(seq)


async def test_items_and_images_arrive_whole(broker: tuple[str, int]) -> None:
    """JSON items with every field and the dataset's values; image payloads byte-identical
    to the source file that Pillow decodes; item ids unique and increasing across both."""
    host, port = broker
    async with (
        Subscriber(host, port) as sub,
        GradingLine(
            host, port, line="line-1", fruit_rate=0, image_rate=0, status_interval=0, seed=7
        ) as line,
    ):
        sent: dict[str, Any] = {}
        for _ in range(6):
            topic, msg = line.publish_fruit()
            sent[topic] = msg
            topic, image = line.publish_image()
            sent[topic] = image
        await line.drain(timeout=10)
        got = await sub.wait_for(len(sent))
    assert line.published == {"fruit": 6, "image": 6}
    assert [t for t, _ in got] == list(sent), "in publish order, nothing lost or added"
    numbers = [item_number(t.rsplit("/", 1)[1]) for t, _ in got]
    assert numbers == sorted(numbers) == list(range(1, 13))
    for topic, payload in got:
        kind, item_id = topic.split("/")[2:]
        assert topic == f"grading/line-1/{kind}/{item_id}"
        if kind == "fruit":
            msg = json.loads(payload)
            assert list(msg) == ["item_id", "ts", *FRUIT_FIELDS, "truth"]
            assert msg == sent[topic] and msg["item_id"] == item_id
            assert isinstance(msg["ts"], int) and abs(msg["ts"] / 1000 - time.time()) < 60
            assert all(isinstance(msg[f], float) for f in FRUIT_FIELDS)
            assert msg["truth"] in ("good", "bad") and line.truth[item_id] == msg["truth"]
        else:
            image = sent[topic]
            assert payload == image.read()
            if image.path is not None:
                assert payload == image.path.read_bytes()
                assert str(image.path).startswith(str(IMAGE_DATASET))
            with Image.open(io.BytesIO(payload)) as decoded:
                assert decoded.convert("RGB").size[0] > 0
            assert line.truth[item_id] == image.cls
    if FRUIT_DATASET.is_file():  # the dataset's own rows, values as written in the CSV
        text = FRUIT_DATASET.read_text()
        fruit = next(p for t, p in got if "/fruit/" in t)
        msg = json.loads(fruit)
        assert ",".join(repr(msg[f]) for f in FRUIT_FIELDS) + f",{msg['truth']}" in text


async def test_large_binary_payload_goes_through_unchanged(
    broker: tuple[str, int], tmp_path: Path
) -> None:
    """A ~300 KB photo (incompressible noise PNG) arrives byte for byte through both brokers."""
    folder = tmp_path / "images"
    (folder / "rot_defect").mkdir(parents=True)
    rng = random.Random(1)
    img = Image.frombytes("RGB", (320, 320), rng.randbytes(320 * 320 * 3))
    path = folder / "rot_defect" / "big.png"
    img.save(path, format="PNG")
    data = path.read_bytes()
    assert 290_000 < len(data) < 1024 * 1024
    (folder / "manifest.csv").write_text(
        "path,class,label,group,sha256\nrot_defect/big.png,rot_defect,defective,g1,x\n"
    )
    host, port = broker
    async with (
        Subscriber(host, port) as sub,
        GradingLine(
            host, port, fruit_rate=0, image_rate=0, status_interval=0, image_dataset=folder
        ) as line,
    ):
        for _ in range(3):
            line.publish_image()
        await line.drain(timeout=10)
        got = await sub.wait_for(3)
    assert [len(p) for _, p in got] == [len(data)] * 3
    assert all(p == data for _, p in got)
    with Image.open(io.BytesIO(got[0][1])) as decoded:
        assert decoded.size == (320, 320)


async def test_stations_publish_at_their_rates() -> None:
    """Both stations on their own clocks; every message the broker acknowledged arrived."""
    async with MiniBroker(port=0) as mini:
        async with (
            Subscriber("127.0.0.1", mini.port) as sub,
            GradingLine(
                "127.0.0.1", mini.port, fruit_rate=40, image_rate=20, status_interval=0
            ) as line,
        ):
            await asyncio.sleep(0.5)
            await line.drain(timeout=10)
            total = line.published["fruit"] + line.published["image"]
            got = await sub.wait_for(total)
        # ~20 fruit and ~10 images in 0.5 s; slack for a busy CI machine
        assert 10 <= line.published["fruit"] <= 25
        assert 5 <= line.published["image"] <= 13
        kinds = [t.split("/")[2] for t, _ in got]
        assert kinds.count("fruit") == line.published["fruit"]
        assert kinds.count("image") == line.published["image"]


async def test_user_and_password_over_mqtt5(mosquitto_factory: MosquittoFactory) -> None:
    """A broker with users: the right password publishes (MQTT 5 here), a wrong one is refused."""
    secured = mosquitto_factory(users={"grader": "s3cret"})
    good = GradingLine(
        secured.host,
        secured.port,
        fruit_rate=0,
        image_rate=0,
        mqtt_version="5",
        username="grader",
        password="s3cret",
    )
    async with good:
        good.publish_fruit()
        await good.drain(timeout=5)
    bad = GradingLine(
        secured.host, secured.port, fruit_rate=0, image_rate=0, username="grader", password="x"
    )
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="not usable"):
        await bad.start(wait=5)
    assert time.monotonic() - started < 2, "a refusal fails at once, not at the timeout"


async def test_runs_alone_and_stops_cleanly_on_sigterm() -> None:
    """`python -m simulators.grading_line` prints one line, publishes, exits 0 on SIGTERM."""
    async with MiniBroker(port=0) as mini, Subscriber("127.0.0.1", mini.port) as sub:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulators.grading_line", "--port", str(mini.port),
            "--line", "line-1", "--fruit-rate", "20", "--image-rate", "10",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                out = (await proc.stdout.readline()).decode()
            assert "grading line line-1 -> mqtt://127.0.0.1:" in out, out
            got = await sub.wait_for(6)
            assert {t.split("/")[2] for t, _ in got} == {"fruit", "image", "status"}
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                code = await proc.wait()
            rest = await proc.stdout.read() if proc.stdout else b""
        assert code == 0
        assert rest == b"", "the CLI prints one line only"
