"""A fruit grading line publishing one MQTT message per fruit item, replaying public data so the
gateway's grading models (`grading-tabular`, `grading-vision`) make real predictions in the demo.

Two stations on one line, each item with its own id `<line>-<seq>` (one counter for both
stations, starting at 1, strictly increasing):

* **sensor station** (`fruit_rate` items/s, default 2): the Apple Quality rows
  (`../shared/datasets/apple-quality/apple_quality-train.csv`) as JSON on
  `grading/{line}/fruit/{item_id}`::

      {"item_id": "line-1-17", "ts": 1718000000123, "size": -3.970048523,
       "weight": -2.512336381, "sweetness": 5.346329613, "crunchiness": -1.012008712,
       "juiciness": 1.844900361, "ripeness": 0.329839797, "acidity": -0.491590483,
       "truth": "good"}

  `ts` is epoch milliseconds; the seven attributes are the dataset's scaled scores (what the
  model expects, not physical units); `truth` is the dataset's label ("good" or "bad"), there
  for the demo to compare with the model's grade.

* **camera station** (`image_rate` items/s, default 1): the apple photos of
  `../shared/datasets/fruit-images` (listed in its `manifest.csv`) on
  `grading/{line}/image/{item_id}`; the payload is the image file's bytes, unchanged (JPEG or
  PNG, up to ~100 KB here), nothing else. The true class of each image item is kept in
  `line.truth[item_id]` (the last 10,000 items), not published.

* **line controller** (every `status_interval` s, default 1): the line's own telemetry as JSON
  on `grading/{line}/status`: `{"ts": <epoch ms>, "state": "running", "belt_speed": 0.52,
  "fruit_seen": 120, "images_seen": 60}` (belt speed in m/s; the counters restart with the
  simulator), read by the built-in `grading-line` profile.

Rows and images are replayed in a seeded shuffled order (the files are sorted by id and by
class; a real line mixes them), the same order on every pass. The same seed gives the same
items in the same order.

Messages go out at QoS 1 from one paho client, MQTT 3.1.1 by default (the demo's MiniBroker
speaks only 3.1.1; `mqtt_version="5"` for a real broker), with optional user name and password.

Without the datasets (a box in the field has none) the line publishes seeded synthetic items
instead: attribute scores with the dataset's means and spreads and a label from a noisy linear
rule, and small generated PNG photos (an apple on a plain background, with bruise, rot or scab
marks for the defective classes). It says so in a log line and in its one-line description.

Run it alone::

    python -m simulators.mqtt_broker --port 1883 &
    python -m simulators.grading_line --host 127.0.0.1 --port 1883 --line line-1
    python -m simulators.grading_line --port 1883 --fruit-rate 10 --image-rate 0   # sensors only

It prints one line saying where it publishes, runs until SIGINT or SIGTERM, and exits 0.

In-process::

    async with GradingLine("127.0.0.1", port, line="line-1", fruit_rate=0, image_rate=0) as gl:
        topic, payload = gl.publish_fruit()      # one sensor item now
        topic, image = gl.publish_image()        # one camera item now
        await gl.drain()                         # until the broker acknowledged everything
        gl.published["fruit"], gl.published["image"]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import logging
import random
import re
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image, ImageDraw, ImageFilter

from simulators._acks import QosLink
from simulators._cli import run_cli, stop_event
from simulators._service import Service

__all__ = [
    "FRUIT_DATASET",
    "FRUIT_FIELDS",
    "FRUIT_TOPIC",
    "IMAGE_CLASSES",
    "IMAGE_DATASET",
    "IMAGE_TOPIC",
    "FruitRow",
    "GradingLine",
    "ImageItem",
    "ShuffledCycle",
    "fruit_payload",
    "load_apple_quality",
    "load_image_manifest",
    "main",
    "parse_apple_quality",
    "parse_image_manifest",
    "synthetic_fruit",
    "synthetic_images",
]

_log = logging.getLogger("millrace.sim.grading_line")

_DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
#: The Apple Quality developer copy, next to the repository (absent on a field box).
FRUIT_DATASET = _DATASETS / "apple-quality" / "apple_quality-train.csv"
#: The apple defect photos (a folder with `manifest.csv`), next to the repository.
IMAGE_DATASET = _DATASETS / "fruit-images"

FRUIT_TOPIC = "grading/{line}/fruit/{item_id}"
IMAGE_TOPIC = "grading/{line}/image/{item_id}"
STATUS_TOPIC = "grading/{line}/status"
#: Payload field names, in the `grading-tabular` manifest's feature order.
FRUIT_FIELDS = ("size", "weight", "sweetness", "crunchiness", "juiciness", "ripeness", "acidity")
#: The image classes of the fruit-images dataset and whether each is healthy.
IMAGE_CLASSES = {
    "fresh": "healthy",
    "bruise_defect": "defective",
    "rot_defect": "defective",
    "scab_defect": "defective",
}
_LINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_TRUTH_KEPT = 10_000
#: Apple Quality training means and spreads (the grading-tabular manifest), for synthetic rows.
_FRUIT_MEAN = (-0.497765, -0.99403, -0.490681, 0.993205, 0.494145, 0.49917, 0.050705)
_FRUIT_STD = (1.935685, 1.609271, 1.958047, 1.405553, 1.916708, 1.8905, 2.103305)

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Items (pure: no sockets)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FruitRow:
    """One fruit's attribute scores (dataset column order) and its true quality."""

    source_id: int  # the dataset's A_id (synthetic rows: their index)
    values: tuple[float, ...]  # the seven scores, FRUIT_FIELDS order
    quality: str  # "good" | "bad"


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One camera photo: a file of the dataset, or generated bytes (synthetic)."""

    name: str  # path inside the dataset folder, e.g. "fresh/IMG_0001.jpg"
    cls: str  # fresh | bruise_defect | rot_defect | scab_defect
    label: str  # healthy | defective
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def read(self) -> bytes:
        """The payload: the file's bytes exactly as stored (or the generated image)."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


def parse_apple_quality(lines: Iterable[str], source: str = "<text>") -> list[FruitRow]:
    """Apple Quality CSV rows (`A_id,Size,...,Acidity,Quality`) in file order."""
    reader = csv.DictReader(lines)
    columns = ["A_id", *(f.capitalize() for f in FRUIT_FIELDS), "Quality"]
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{source}: missing columns {', '.join(missing)}")
    rows: list[FruitRow] = []
    for number, rec in enumerate(reader, start=2):
        quality = rec["Quality"].strip()
        if quality not in ("good", "bad"):
            raise ValueError(f"{source}:{number}: Quality {quality!r}, expected good or bad")
        try:
            values = tuple(float(rec[f.capitalize()]) for f in FRUIT_FIELDS)
            rows.append(FruitRow(int(rec["A_id"]), values, quality))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}:{number}: {exc}") from None
    if not rows:
        raise ValueError(f"{source} has no data rows")
    return rows


def load_apple_quality(path: str | Path = FRUIT_DATASET) -> list[FruitRow]:
    with open(path, newline="", encoding="utf-8") as f:
        return parse_apple_quality(f, str(path))


def parse_image_manifest(lines: Iterable[str], folder: Path) -> list[ImageItem]:
    """The fruit-images `manifest.csv` (`path,class,label,group,sha256`) as items in file
    order, each pointing at its file under `folder`."""
    items: list[ImageItem] = []
    for number, rec in enumerate(csv.DictReader(lines), start=2):
        cls, rel = rec.get("class") or "", rec.get("path") or ""
        if cls not in IMAGE_CLASSES or not rel:
            raise ValueError(f"{folder}/manifest.csv:{number}: class {cls!r}, path {rel!r}")
        items.append(ImageItem(rel, cls, IMAGE_CLASSES[cls], path=folder / rel))
    if not items:
        raise ValueError(f"{folder}/manifest.csv lists no images")
    return items


def load_image_manifest(folder: str | Path = IMAGE_DATASET) -> list[ImageItem]:
    """The images listed in `<folder>/manifest.csv`; every listed file must exist."""
    base = Path(folder)
    with open(base / "manifest.csv", newline="", encoding="utf-8") as f:
        items = parse_image_manifest(f, base)
    missing = [i.name for i in items if i.path is None or not i.path.is_file()]
    if missing:
        raise ValueError(f"{base}: {len(missing)} listed images are missing, e.g. {missing[0]}")
    return items


def synthetic_fruit(count: int = 1000, seed: int = 0) -> list[FruitRow]:
    """Seeded rows with the Apple Quality means and spreads; the label comes from a noisy
    linear rule (sweeter, bigger, juicier and less over-ripe is better), about half good."""
    rng = random.Random(f"apple-synthetic:{seed}")
    rows: list[FruitRow] = []
    for i in range(count):
        z = [rng.gauss(0.0, 1.0) for _ in FRUIT_FIELDS]
        values = tuple(
            round(m + s * v, 9) for m, s, v in zip(_FRUIT_MEAN, _FRUIT_STD, z, strict=True)
        )
        score = 0.9 * z[0] + 0.8 * z[2] + 0.6 * z[4] - 0.7 * z[5] + 0.3 * z[3] + rng.gauss(0, 0.6)
        rows.append(FruitRow(i, values, "good" if score > 0 else "bad"))
    return rows


def synthetic_images(count: int = 40, seed: int = 0, size: int = 128) -> list[ImageItem]:
    """Seeded small PNG photos, equally many of each class: an apple on a plain background;
    bruises are soft brown blotches, rot a large dark patch, scab many small dark spots."""
    rng = random.Random(f"apple-image-synthetic:{seed}")
    classes = list(IMAGE_CLASSES)
    items: list[ImageItem] = []
    for i in range(count):
        cls = classes[i % len(classes)]
        data = _apple_png(rng, cls, size)
        items.append(ImageItem(f"synthetic/{cls}-{i:04d}.png", cls, IMAGE_CLASSES[cls], data=data))
    return items


def _apple_png(rng: random.Random, cls: str, size: int) -> bytes:
    background = rng.choice([(245, 245, 245), (40, 90, 40), (200, 190, 170)])
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.30, 0.40)
    cx, cy = size / 2 + rng.uniform(-5, 5), size / 2 + rng.uniform(-5, 5)
    skin = rng.choice([(185, 30, 35), (200, 60, 40), (150, 190, 60), (210, 170, 50)])
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=skin)
    draw.ellipse((cx - r * 0.5, cy - r * 0.6, cx - r * 0.1, cy - r * 0.2), fill=(255, 235, 225))
    marks = ImageDraw.Draw(img)
    if cls == "bruise_defect":
        for _ in range(rng.randint(1, 3)):
            x, y, s = cx + rng.uniform(-r / 2, r / 2), cy + rng.uniform(-r / 2, r / 2), r * 0.25
            marks.ellipse((x - s, y - s, x + s, y + s), fill=(120, 70, 40))
        img = img.filter(ImageFilter.GaussianBlur(1.2))
    elif cls == "rot_defect":
        x, y, s = cx + rng.uniform(-r / 3, r / 3), cy + rng.uniform(-r / 3, r / 3), r * 0.55
        marks.ellipse((x - s, y - s, x + s, y + s), fill=(70, 45, 25))
    elif cls == "scab_defect":
        for _ in range(rng.randint(12, 25)):
            x, y, s = cx + rng.uniform(-r, r) * 0.7, cy + rng.uniform(-r, r) * 0.7, r * 0.05
            marks.ellipse((x - s, y - s, x + s, y + s), fill=(45, 40, 30))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


class ShuffledCycle(Generic[T]):
    """Items in a seeded shuffled order, repeated pass after pass (the same order each pass).
    A pass yields every item exactly once."""

    def __init__(self, items: Sequence[T], seed: int, salt: str) -> None:
        if not items:
            raise ValueError("nothing to replay")
        self.items = list(items)
        self.order = list(range(len(self.items)))
        random.Random(f"{seed}:{salt}").shuffle(self.order)
        self._i = 0

    def next(self) -> T:
        item = self.items[self.order[self._i]]
        self._i = (self._i + 1) % len(self.order)
        return item


def fruit_payload(item_id: str, ts_ms: int, row: FruitRow) -> dict[str, Any]:
    """The sensor station's JSON message for one item (see the module docstring)."""
    msg: dict[str, Any] = {"item_id": item_id, "ts": ts_ms}
    msg.update(zip(FRUIT_FIELDS, row.values, strict=True))
    msg["truth"] = row.quality
    return msg


# --------------------------------------------------------------------------------------------
# The line and its MQTT client
# --------------------------------------------------------------------------------------------


class GradingLine(Service):
    """The two stations and their one MQTT client; an async context manager (see module
    docstring). Rates of 0 turn a station's own loop off; `publish_*` still work."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        line: str = "line-1",
        fruit_rate: float = 2.0,
        image_rate: float = 1.0,
        status_interval: float = 1.0,
        fruit_dataset: str | Path | None = FRUIT_DATASET,
        image_dataset: str | Path | None = IMAGE_DATASET,
        seed: int = 0,
        qos: int = 1,
        mqtt_version: str = "3.1.1",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _LINE_NAME.fullmatch(line):
            raise ValueError(f"line must match {_LINE_NAME.pattern} (safe in topics; got {line})")
        if fruit_rate < 0 or image_rate < 0:
            raise ValueError("rates are items per second, >= 0")
        if status_interval < 0:
            raise ValueError("status_interval is seconds, >= 0 (0: no status messages)")
        self.status_interval = status_interval
        self._belt = random.Random(seed)
        if mqtt_version not in ("3.1.1", "5"):
            raise ValueError(f"mqtt_version is 3.1.1 or 5 (got {mqtt_version})")
        self.host, self.port, self.line = host, port, line
        self.fruit_rate, self.image_rate = fruit_rate, image_rate
        self.qos = qos
        self.clock = clock
        rows, self.fruit_dataset = _fruit_rows(fruit_dataset, seed)
        images, self.image_dataset = _image_items(image_dataset, seed)
        self.fruit = ShuffledCycle(rows, seed, "fruit")
        self.images = ShuffledCycle(images, seed, "image")
        self.published: Counter[str] = Counter()
        self.truth: OrderedDict[str, str] = OrderedDict()
        self.last_fruit: dict[str, Any] | None = None
        self.last_image: tuple[str, ImageItem] | None = None
        self._seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        v5 = mqtt_version == "5"
        self._v5 = v5
        self.mqtt_version = mqtt_version
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"millrace-grading-{line}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self._client.max_inflight_messages_set(0)  # images are rate-bound, not window-bound
        self._client.reconnect_delay_set(1, 2)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._link = QosLink(self._client, qos, name=f"grading line {line}")
        self._started = False

    # -- what ---------------------------------------------------------------------------------

    @property
    def synthetic(self) -> bool:
        """True when either station publishes synthetic items instead of a dataset."""
        return self.fruit_dataset is None or self.image_dataset is None

    def describe(self) -> str:
        """One line: where it publishes and what (the CLI prints this)."""
        fruit = (
            f"{len(self.fruit.items)} apple-quality rows"
            if self.fruit_dataset
            else "SYNTHETIC fruit rows"
        )
        images = (
            f"{len(self.images.items)} fruit-images photos"
            if self.image_dataset
            else "SYNTHETIC images"
        )
        return (
            f"grading line {self.line} -> mqtt://{self.host}:{self.port} "
            f"{FRUIT_TOPIC.format(line=self.line, item_id='<id>')} at {self.fruit_rate:g}/s "
            f"({fruit}), {IMAGE_TOPIC.format(line=self.line, item_id='<id>')} at "
            f"{self.image_rate:g}/s ({images}), QoS {self.qos}, MQTT {self.mqtt_version}"
        )

    def fruit_topic(self, item_id: str) -> str:
        return FRUIT_TOPIC.format(line=self.line, item_id=item_id)

    def image_topic(self, item_id: str) -> str:
        return IMAGE_TOPIC.format(line=self.line, item_id=item_id)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, *, wait: float | None = 10.0) -> None:
        """Connect (paho's network thread) and start both stations. With `wait`, return once
        connected, or raise ConnectionError when the broker refuses (bad user or password) or
        nothing answers within that many seconds; None keeps trying."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if wait is not None and not await self._link.wait_connected(wait):
            error = self._link.error or "no answer"
            await self.stop()
            raise ConnectionError(
                f"grading line: broker at {self.host}:{self.port} not usable ({error})"
            )
        status_rate = 1.0 / self.status_interval if self.status_interval else 0.0
        for name, rate, publish in (
            ("fruit", self.fruit_rate, self.publish_fruit),
            ("image", self.image_rate, self.publish_image),
            ("status", status_rate, self.publish_status),
        ):
            if rate > 0:
                task = asyncio.create_task(self._station(rate, publish), name=f"grading-{name}")
                self._tasks.append(task)

    async def stop(self, *, drain: float = 2.0) -> None:
        """Stop both stations, give the broker `drain` seconds to ack what is in flight,
        disconnect and join paho's thread."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self._started:
            return
        self._started = False
        await self._link.close(drain)
        _log.info(
            "grading line %s stopped: %d fruit, %d images, %d not acknowledged",
            self.line,
            self.published["fruit"],
            self.published["image"],
            self.unacknowledged,
            extra={"line": self.line, "published": dict(self.published)},
        )

    @property
    def connected(self) -> bool:
        return self._link.connected.is_set()

    # -- publishing ---------------------------------------------------------------------------

    def publish_fruit(self) -> tuple[str, dict[str, Any]]:
        """One sensor-station item now; returns its topic and payload."""
        row = self.fruit.next()
        item_id = self._next_id()
        msg = fruit_payload(item_id, round(self.clock() * 1000), row)
        topic = self.fruit_topic(item_id)
        self._send(topic, json.dumps(msg, separators=(",", ":")).encode())
        self._remember(item_id, row.quality)
        self.last_fruit = msg
        self.published["fruit"] += 1
        return topic, msg

    def publish_image(self) -> tuple[str, ImageItem]:
        """One camera-station item now (the file's bytes); returns its topic and image."""
        image = self.images.next()
        item_id = self._next_id()
        topic = self.image_topic(item_id)
        self._send(topic, image.read())
        self._remember(item_id, image.cls)
        self.last_image = (item_id, image)
        self.published["image"] += 1
        return topic, image

    def publish_status(self) -> tuple[str, dict[str, Any]]:
        """The line controller's telemetry now; returns its topic and payload."""
        msg = {
            "ts": round(self.clock() * 1000),
            "state": "running",
            "belt_speed": round(0.5 + self._belt.gauss(0, 0.02), 3),
            "fruit_seen": self.published["fruit"],
            "images_seen": self.published["image"],
        }
        topic = STATUS_TOPIC.format(line=self.line)
        self._send(topic, json.dumps(msg, separators=(",", ":")).encode())
        self.published["status"] += 1
        return topic, msg

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until the broker acknowledged every QoS 1 message sent so far."""
        await self._link.pubacks.drain(timeout)

    @property
    def unacknowledged(self) -> int:
        return self._link.pubacks.unacknowledged

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self.line}-{self._seq}"

    def _remember(self, item_id: str, truth: str) -> None:
        self.truth[item_id] = truth
        while len(self.truth) > _TRUTH_KEPT:
            self.truth.popitem(last=False)

    def _send(self, topic: str, payload: bytes) -> None:
        self._link.send(topic, payload)

    async def _station(self, rate: float, publish: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            publish()
            next_at += 1.0 / rate
            delay = next_at - loop.time()
            if delay < 0:  # fell behind: skip items rather than burst
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(delay)


def _fruit_rows(dataset: str | Path | None, seed: int) -> tuple[list[FruitRow], Path | None]:
    if dataset is not None and Path(dataset).is_file():
        return load_apple_quality(dataset), Path(dataset)
    why = "not requested" if dataset is None else f"{dataset} not found"
    _log.warning("apple-quality dataset %s: publishing SYNTHETIC fruit rows", why)
    return synthetic_fruit(seed=seed), None


def _image_items(dataset: str | Path | None, seed: int) -> tuple[list[ImageItem], Path | None]:
    if dataset is not None and (Path(dataset) / "manifest.csv").is_file():
        return load_image_manifest(dataset), Path(dataset)
    why = "not requested" if dataset is None else f"{dataset}/manifest.csv not found"
    _log.warning("fruit-images dataset %s: publishing SYNTHETIC images", why)
    return synthetic_images(seed=seed), None


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulators.grading_line",
        description="A fruit grading line: sensor items (JSON) and camera photos over MQTT.",
    )
    p.add_argument("--host", default="127.0.0.1", help="broker host (default %(default)s)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default %(default)s)")
    p.add_argument("--line", default="line-1", help="line name in topics and item ids")
    p.add_argument("--fruit-rate", type=float, default=2.0, help="sensor items/s (0: off)")
    p.add_argument("--image-rate", type=float, default=1.0, help="camera items/s (0: off)")
    p.add_argument("--qos", type=int, choices=[0, 1], default=1)
    p.add_argument("--mqtt-version", choices=["3.1.1", "5"], default="3.1.1")
    p.add_argument("--client-id", help="default millrace-grading-<line>")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--fruit-dataset", default=str(FRUIT_DATASET), help="Apple Quality CSV")
    p.add_argument("--image-dataset", default=str(IMAGE_DATASET), help="fruit-images folder")
    p.add_argument("--no-dataset", action="store_true", help="synthetic items even if present")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


async def _serve(args: argparse.Namespace) -> None:
    grading = GradingLine(
        args.host,
        args.port,
        line=args.line,
        fruit_rate=args.fruit_rate,
        image_rate=args.image_rate,
        fruit_dataset=None if args.no_dataset else args.fruit_dataset,
        image_dataset=None if args.no_dataset else args.image_dataset,
        seed=args.seed,
        qos=args.qos,
        mqtt_version=args.mqtt_version,
        client_id=args.client_id,
        username=args.username,
        password=args.password,
    )
    stop = stop_event()
    await grading.start(wait=None)  # keep trying until a broker answers
    print(grading.describe(), flush=True)
    try:
        await stop.wait()
    finally:
        await grading.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    return run_cli("grading_line", lambda: _serve(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
