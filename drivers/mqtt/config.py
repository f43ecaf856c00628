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


class MqttDevice(_Strict):
    """One broker connection: where the broker is, who we are, what we subscribe to.

    `id` names the connection (and, by default, the persistent session's client id); the
    equipment behind it are named by the topics.
    """

    id: Name
    protocol: Literal["mqtt"]
    profile: Name
    enabled: bool = True
    description: str = ""
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
    qos: Literal[0, 1, 2] = 1
    topics: list[str] = Field(min_length=1, max_length=32)
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

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        if self.max_payload_bytes > DEFAULT_MAX_BYTES * 64:
            raise ValueError(f"max_payload_bytes above {DEFAULT_MAX_BYTES * 64} (16 MiB)")
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
    "MqttDevice",
    "MqttPoint",
    "MqttProfile",
    "MqttTimestamp",
    "MqttTls",
    "check_profile",
]
