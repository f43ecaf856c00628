"""MQTT configuration: profiles (what a machine's messages carry and where) and devices (one
broker connection and the topics it subscribes to). Pydantic models only; no paho here, so
config validation never imports I/O.

A profile says how to read a payload: its `format` (json | number | csv), one entry per point
(a JSON field path, a CSV column, or nothing for `number`, where the point comes from the topic
or is the profile's only point), the point's `data_type` (coercion rules in
`drivers.mqtt.parse`), and optionally where the payload carries its own timestamp.

A device is one broker connection. Its `topics` are templates such as
`coop/{equipment}/telemetry`: the driver subscribes to `coop/+/telemetry` and reads the
equipment id back out of each topic. The equipment ids themselves are configured in the
gateway's `equipment:` section (each names this device); they are what `/devices` shows.
`check_profile(device, profile)` holds the checks that need both (the driver runs them, and so
should the config loader's cross-check pass).

Item topics. Some equipment publishes one message per discrete thing rather than telemetry: a
fruit grading line sends, per fruit, a JSON record of sensor scores and the camera image
(JPEG/PNG bytes, up to a few hundred KB). A device's `items` route such topics past the
payload parser: each message becomes a `drivers.base.Item` (equipment and `{item}` id read
from the topic, the payload untouched) for the gateway's item sink (the inference engine).
They never become readings and never go through the profile. An item template needs
`{equipment}` once, may name `{item}` once, may use `+`; it has no `{point}` and no `#`. Each
item topic has its own size bound (default 1 MiB, at most 16 MiB), since an image is far
larger than any telemetry message. A device may have only items (`topics` empty or left
out), only telemetry, or both; it still names a profile.

```yaml
devices:
  - id: packhouse
    protocol: mqtt
    host: 10.0.0.20
    profile: grading-line          # its telemetry: throughput, rejects, belt speed
    topics: ["grading/{equipment}/status"]
    items:
      - name: fruit                # JSON score record, one per fruit
        topic: "grading/{equipment}/fruit/{item}"
        max_payload_bytes: 64KiB
      - name: image                # raw camera image bytes, one per fruit
        topic: "grading/{equipment}/image/{item}"
        max_payload_bytes: 2MiB
equipment:
  - {id: grader-1, type: grading_line, device: packhouse}
```

A message on `grading/grader-1/image/000042` reaches the sink as `Item(source="packhouse",
equipment="grader-1", channel="image", item_id="000042", payload=<the bytes>, ...)`. Unknown
equipment is handled as for telemetry; a payload over the item topic's bound is dead-lettered
as `too_large`. An item template may not subscribe to the same filter as a telemetry topic
(a message could not be told apart); where two templates merely overlap, item templates are
tried first.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from drivers.mqtt.parse import (
    DEFAULT_MAX_BYTES,
    DataType,
    PayloadFormat,
    TimestampForm,
    TopicTemplate,
    check_topic_template,
    compile_path,
)
from gateway.types import ByteSize, DataClass, Duration, Name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttPoint(_Strict):
    """One value a message carries. `path` (json) or `column` (csv) says where; `number`
    payloads need neither. Values outside `min`/`max` are kept but UNCERTAIN."""

    name: Name
    #: JSON field path: `engine.rpm`, `position.lat`, `readings[0].value`.
    path: str | None = None
    #: Zero-based CSV column.
    column: int | None = Field(default=None, ge=0, le=1023)
    data_type: DataType = DataType.FLOAT
    unit: str = ""
    data_class: DataClass = DataClass.PUBLIC
    description: str = ""
    min: float | None = None
    max: float | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            compile_path(value)  # raises ValueError with the position of the problem
        return value

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if (self.min is not None or self.max is not None) and self.data_type not in (
            DataType.FLOAT,
            DataType.INT,
        ):
            raise ValueError(f"min/max apply to numbers, not {self.data_type}")
        return self


class MqttTimestamp(_Strict):
    """Where a payload carries the time it was measured: a JSON `path` or a CSV `column`, read
    as epoch seconds, epoch milliseconds or ISO 8601 (no zone means UTC)."""

    path: str | None = None
    column: int | None = Field(default=None, ge=0, le=1023)
    form: TimestampForm = TimestampForm.EPOCH_S

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            compile_path(value)
        return value

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.path is None) == (self.column is None):
            raise ValueError("give exactly one of path (json) or column (csv)")
        return self


class MqttProfile(_Strict):
    """How one kind of machine's messages read: data, shared by every unit of that kind."""

    name: Name
    protocol: Literal["mqtt"] = "mqtt"
    description: str = ""
    manufacturer: str = ""
    model: str = ""
    format: PayloadFormat = PayloadFormat.JSON
    points: list[MqttPoint] = Field(min_length=1, max_length=1000)
    timestamp: MqttTimestamp | None = None
    #: csv only: the field separator (one character) and whether a header line comes first.
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)
    csv_header: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        counts = Counter(p.name for p in self.points)
        dupes = sorted(name for name, n in counts.items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate point names: {', '.join(dupes)}")
        if self.csv_delimiter in '\r\n"':
            raise ValueError(f"csv_delimiter cannot be {self.csv_delimiter!r}")
        fmt = self.format
        for p in self.points:
            if fmt is PayloadFormat.JSON and (p.path is None or p.column is not None):
                raise ValueError(f"point {p.name}: a json profile locates points by path")
            if fmt is PayloadFormat.CSV and (p.column is None or p.path is not None):
                raise ValueError(f"point {p.name}: a csv profile locates points by column")
            if fmt is PayloadFormat.NUMBER and (p.path is not None or p.column is not None):
                raise ValueError(
                    f"point {p.name}: a number payload is the value itself; "
                    "the point comes from {point} in the topic (no path or column)"
                )
        ts = self.timestamp
        if ts is not None:
            if fmt is PayloadFormat.NUMBER:
                raise ValueError("a number payload carries no timestamp")
            if fmt is PayloadFormat.JSON and ts.path is None:
                raise ValueError("timestamp: a json profile gives the timestamp's path")
            if fmt is PayloadFormat.CSV and ts.column is None:
                raise ValueError("timestamp: a csv profile gives the timestamp's column")
        return self


class MqttTls(_Strict):
    """TLS to the broker. `ca` verifies the broker (system CAs when omitted); `cert` + `key`
    are the client certificate for brokers that require one. `insecure` skips only the
    host-name check (the chain is still verified): for brokers reached by IP whose certificate
    names a host. Relative paths are relative to the config file."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        return self


#: Default bound for one item payload: a camera image is far larger than telemetry.
ITEM_DEFAULT_MAX_BYTES = 1024 * 1024
#: Upper bound for any payload bound (telemetry or item): a whole message sits in memory.
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024


class MqttItemTopic(_Strict):
    """One item channel of a device: messages on `topic` are handed over raw as items named
    `name` (the channel: `fruit`, `image`), never parsed as telemetry."""

    name: Name
    #: `{equipment}` once, `{item}` at most once, `+` for a level to ignore; no `{point}`, no `#`.
    topic: str
    #: Larger payloads are not handed over; they are dead-lettered as `too_large`.
    max_payload_bytes: ByteSize = ITEM_DEFAULT_MAX_BYTES

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        problem = check_topic_template(value, kind="item")
        if problem:
            raise ValueError(f"topic {value!r}: {problem}")
        return value

    @field_validator("max_payload_bytes")
    @classmethod
    def _size(cls, value: int) -> int:
        if value > MAX_PAYLOAD_BYTES:
            raise ValueError(f"max_payload_bytes above {MAX_PAYLOAD_BYTES} (16 MiB)")
        return value

    @property
    def template(self) -> TopicTemplate:
        """The compiled template (a new one per call: config-time use)."""
        return TopicTemplate(self.topic, kind="item")


class MqttConnection(_Strict):
    """Where a broker is and who we are there: shared by the devices the gateway subscribes
    through and the MQTT uplink it publishes through (`sync.config.MqttUplinkConfig`)."""

    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    mqtt_version: Literal["3.1.1", "5"] = "5"
    #: Stable across restarts so the broker keeps our session (and queues for us while away).
    #: Must be unique on the broker: two clients with one id throw each other off.
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    tls: MqttTls | None = None
    keepalive: Duration = 30.0
    #: MQTT 5: how long the broker keeps our session (subscriptions, queued messages) while
    #: we are disconnected. MQTT 3.1.1 sessions last until the broker's own expiry.
    session_expiry: Duration = 86400.0


class MqttDevice(MqttConnection):
    """One broker connection: where the broker is, who we are, what we subscribe to.

    `id` names the connection (and, by default, the persistent session's client id); the
    equipment behind it are named by the topics.
    """

    id: Name
    protocol: Literal["mqtt"]
    profile: Name
    enabled: bool = True
    description: str = ""
    qos: Literal[0, 1, 2] = 1
    #: Telemetry topic templates. May be empty (or left out) when `items` has one or more.
    topics: list[str] = Field(default_factory=list, max_length=32)
    #: Item topics: messages handed over raw to the item sink, never parsed (see the module
    #: docstring). Names are unique per device.
    items: list[MqttItemTopic] = Field(default_factory=list, max_length=16)
    #: An equipment with no message for this long is shown DOWN (stale).
    stale_after: Duration = 120.0
    #: Larger payloads are not parsed; they are dead-lettered as `too_large`.
    max_payload_bytes: ByteSize = DEFAULT_MAX_BYTES
    #: Messages for equipment not configured are dead-lettered unless this is true; then
    #: they are read like the configured ones (up to 1000 such equipment per connection).
    accept_unknown_equipment: bool = False
    connect_timeout: Duration = 5.0
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 60.0

    @field_validator("topics")
    @classmethod
    def _topics(cls, topics: list[str]) -> list[str]:
        for t in topics:
            problem = check_topic_template(t)
            if problem:
                raise ValueError(f"topic {t!r}: {problem}")
        filters = [TopicTemplate(t).filter for t in topics]
        dupes = sorted({f for f in filters if filters.count(f) > 1})
        if dupes:
            raise ValueError(f"topics subscribe to the same filter twice: {', '.join(dupes)}")
        return topics

    @field_validator("items")
    @classmethod
    def _items(cls, items: list[MqttItemTopic]) -> list[MqttItemTopic]:
        counts = Counter(i.name for i in items)
        dupes = sorted(name for name, n in counts.items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate item names (got {', '.join(dupes)})")
        first: dict[str, int] = {}
        for j, it in enumerate(items):
            f = it.template.filter
            if f in first:
                k = first[f]
                raise ValueError(
                    f"items.{k} ({items[k].topic}) and items.{j} ({it.topic}) subscribe to "
                    f"the same filter (got {f})"
                )
            first[f] = j
        return items

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.topics and not self.items:
            raise ValueError(
                "topics is empty and there are no items: give at least one telemetry topic "
                "(topics) or item topic (items)"
            )
        telemetry = {TopicTemplate(t).filter: i for i, t in enumerate(self.topics)}
        for j, it in enumerate(self.items):
            i = telemetry.get(it.template.filter)
            if i is not None:
                raise ValueError(
                    f"items.{j} ({it.topic}) and topics.{i} ({self.topics[i]}) subscribe to "
                    f"the same filter {it.template.filter}: a message could not be told apart "
                    "as an item or as telemetry"
                )
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        if self.max_payload_bytes > MAX_PAYLOAD_BYTES:
            raise ValueError(f"max_payload_bytes above {MAX_PAYLOAD_BYTES} (16 MiB)")
        if self.backoff_initial > self.backoff_max:
            raise ValueError("backoff_initial is greater than backoff_max")
        if self.keepalive < 5 or self.keepalive > 65535:
            raise ValueError("keepalive must be between 5 s and 65535 s")
        return self

    @property
    def connection_key(self) -> str:
        return f"mqtt://{self.host}:{self.port}#{self.id}"

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"millrace-{self.id}"


def check_profile(device: MqttDevice, profile: MqttProfile) -> list[str]:
    """Problems that need both the device and its profile, as `field: reason` lines."""
    problems: list[str] = []
    if profile.protocol != "mqtt":
        problems.append(f"profile: {profile.name} is a {profile.protocol} profile, not mqtt")
        return problems
    for i, t in enumerate(device.topics):
        has_point = TopicTemplate(t).has_point
        if profile.format is PayloadFormat.NUMBER:
            if not has_point and len(profile.points) != 1:
                problems.append(
                    f"topics.{i}: profile {profile.name} sends one number per message and has "
                    f"{len(profile.points)} points, so the topic must name the point with "
                    "{point}"
                )
        elif has_point:
            problems.append(
                f"topics.{i}: {{point}} is only for number payloads; profile {profile.name} "
                f"is {profile.format}"
            )
    return problems


__all__ = [
    "ITEM_DEFAULT_MAX_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MqttDevice",
    "MqttItemTopic",
    "MqttPoint",
    "MqttProfile",
    "MqttTimestamp",
    "MqttTls",
    "check_profile",
]
