"""Uplink configuration: a list of transports, each with its own cursor in the outbox.

Pydantic models only, no transport library: validating a config never imports paho or
influxdb-client (and `gateway.config` can import this module without a cycle).

uplinks:
  - type: mqtt                    # sync.mqtt.MqttUplinkConfig
    name: central
    host: mqtt.platform.example
    tls: {ca: certs/ca.pem, cert: certs/gw.pem, key: certs/gw.key}
    username: gw-01
    password: ${env:UPLINK_PASSWORD}
  - type: influx                  # sync.influx.InfluxUplinkConfig
    name: history
    url: https://influx.platform.example:8086
    org: coop
    bucket: telemetry
    token: ${file:/run/secrets/influx_token}
outbox: {batch_max: 2000, backoff_initial: 1s, backoff_max: 60s}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from drivers.mqtt.config import MqttConnection
from gateway.types import ByteSize, Duration, Name

DEFAULT_BATCH_MAX_BYTES = 256 * 1024
MIN_BATCH_MAX_BYTES = 1024
MAX_BATCH_MAX_BYTES = 16 * 1024 * 1024
#: The line-protocol measurement when the config names none.
DEFAULT_MEASUREMENT = "millrace"


class PublishingConnection(MqttConnection):
    """A broker this gateway publishes to (the MQTT uplink, the pool's MQTT transport): the
    port follows TLS, topics sit under a checked prefix, connects and PUBACKs are timed."""

    #: First topic level(s). No wildcards, no leading `$`.
    topic_prefix: str = "millrace"
    #: TCP connect, and TLS handshake, and CONNACK: each may take this long.
    connect_timeout: Duration = 10.0
    #: Time for all PUBACKs of one batch; beyond it the send is retried.
    ack_timeout: Duration = 30.0

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("port") is None:
            data = {**data, "port": 8883 if data.get("tls") is not None else 1883}
        return data

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        problem = _prefix_problem(value)
        if problem:
            raise ValueError(f"topic_prefix {value!r}: {problem}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        if not 5 <= self.keepalive <= 65535:
            raise ValueError(f"keepalive must be between 5 s and 65535 s (got {self.keepalive:g})")
        return self


class MqttUplinkConfig(PublishingConnection):
    """One MQTT uplink: the central broker, who we are there, and how batches are sent.

    `port` defaults to 8883 when `tls` is given, else 1883. `client_id` defaults to
    `millrace-<gateway id>-<name>` (stable, so the broker keeps our session; it must be unique
    on the broker). `tls` is the MQTT driver's `MqttTls`: `ca` (system CAs when omitted),
    `cert` + `key` for mutual TLS, `insecure` to skip only the host-name check; TLS 1.2 is the
    minimum. Relative certificate paths are relative to the config file.
    """

    type: Literal["mqtt"]
    name: Name
    #: (`port`: 1883, or 8883 when `tls` is set; filled in by validation when left out.)
    #: Messages published and awaiting their PUBACK at once.
    max_inflight: int = Field(default=100, ge=1, le=65535)
    #: Largest JSON payload of one message; a batch is split to stay within it.
    batch_max_bytes: ByteSize = DEFAULT_BATCH_MAX_BYTES
    #: Publish the retained `.../{equipment}/state` topics.
    retain_state: bool = True

    @field_validator("batch_max_bytes")
    @classmethod
    def _batch_bytes(cls, value: int) -> int:
        if not MIN_BATCH_MAX_BYTES <= value <= MAX_BATCH_MAX_BYTES:
            raise ValueError(
                f"batch_max_bytes must be between {MIN_BATCH_MAX_BYTES} (1 KiB) and "
                f"{MAX_BATCH_MAX_BYTES} (16 MiB) (got {value})"
            )
        return value


def http_url(url: str) -> str:
    """A base URL a token is sent to: http(s), a host, no credentials, query or fragment."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError("the url must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("the url has no host")
    if "@" in parts.netloc:
        raise ValueError("the url may not carry user:password@; use `token`")
    if parts.query or parts.fragment:
        raise ValueError("the url may not carry a query or fragment")
    return url.strip().rstrip("/")


def _prefix_problem(prefix: str) -> str | None:
    if not prefix or len(prefix) > 200:
        return "must be 1 to 200 characters"
    if any(c in prefix for c in "+#\0"):
        return "must not contain +, # or NUL"
    if prefix.startswith("$"):
        return "must not start with $ (reserved for the broker)"
    if "" in prefix.split("/"):
        return "must not start or end with / nor contain //"
    return None


class InfluxUplinkConfig(BaseModel):
    """One InfluxDB v2 write-API destination.

    ```yaml
    uplinks:
      - type: influx
        name: central-influx
        url: https://influx.example.com:8086
        org: acme
        bucket: plant-telemetry
        token: ${env:INFLUX_TOKEN}
    ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["influx"]
    name: Name
    #: Base URL, http or https, optionally with a path prefix (behind a reverse proxy); the
    #: client appends /api/v2/write. No user:password@ (the token is the credential).
    url: str
    #: InfluxDB OSS needs it; InfluxDB Cloud and VictoriaMetrics ignore it.
    org: str = Field(min_length=1)
    bucket: str = Field(min_length=1)
    #: Sent as `Authorization: Token <token>`; None sends no Authorization header.
    token: SecretStr | None = None
    #: CA bundle (PEM) for an https url; relative to the config file's folder.
    tls_ca: str | None = None
    verify_tls: bool = True
    gzip: bool = True
    measurement: str = DEFAULT_MEASUREMENT
    #: Whole-request timeout (connect + send + answer).
    timeout: Duration = 10.0
    max_lines_per_request: int = Field(default=5000, ge=1, le=100_000)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return http_url(url)

    @field_validator("measurement")
    @classmethod
    def _measurement(cls, name: str) -> str:
        if not name:
            raise ValueError("may not be empty")
        if name.startswith("#"):
            raise ValueError("may not start with '#' (a line protocol comment)")
        if name.startswith("_"):
            raise ValueError("may not start with '_' (reserved by InfluxDB)")
        if any(ord(c) < 0x20 or c == "\x7f" for c in name):
            raise ValueError("may not contain control characters")
        return name

    @model_validator(mode="after")
    def _tls(self) -> InfluxUplinkConfig:
        if self.tls_ca is not None and not self.url.startswith("https://"):
            raise ValueError("tls_ca is set but the url is not https://")
        return self


UplinkConfig = Annotated[MqttUplinkConfig | InfluxUplinkConfig, Field(discriminator="type")]


class OutboxConfig(BaseModel):
    """How the runner reads the outbox for every uplink."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Readings per batch handed to a transport (one MQTT batch may be several messages).
    batch_max: int = Field(default=2000, ge=1, le=100_000)
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 60.0


#: Hosts a bearer token may be sent to over plain http (the reference pool in tests and demo).
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class PoolMqttConfig(PublishingConnection):
    """The retained-MQTT alternative to HTTPS for the pool (`transport: mqtt`): availability
    and machine profiles are retained messages under `topic_prefix`, bookings are read from
    retained messages the pool publishes there (sync/pool_mqtt.py, sync/pool_api.yaml)."""

    topic_prefix: str = "millrace-pool/v1"


class PoolSyncConfig(BaseModel):
    """The central matching pool (sync/pool_api.yaml) this gateway shares its machines with.

    ```yaml
    pool:
      url: https://pool.example.org
      token: ${env:POOL_TOKEN}          # role gateway, org = the machines' owner
      token_org: Demo Cane Cooperative  # what the pool operator put on the token
    ```

    Availability goes through the store's outbox (readings `<machine>.availability`), so
    nothing is lost offline; a full snapshot every `snapshot_interval` (and at once after a
    reconnect) makes the pool converge after any loss; bookings are polled every
    `sync_interval`, which also keeps the gateway live at the pool (its liveness timeout is
    900 s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Base URL of the pool; https, or http to a loopback host (or with `allow_http`).
    url: str
    token: SecretStr
    #: The `org` and `site` the pool operator put on this token: restricted profile fields
    #: (exact location, serial number, notes) go only for machines whose owner is `token_org`.
    token_org: str | None = Field(default=None, min_length=1, max_length=128)
    token_site: str | None = Field(default=None, min_length=1, max_length=128)
    transport: Literal["https", "mqtt"] = "https"
    #: Needed for `transport: mqtt`.
    mqtt: PoolMqttConfig | None = None
    #: How often bookings are read back and failed registrations retried.
    sync_interval: Duration = 30.0
    #: How often the full availability of every machine is sent.
    snapshot_interval: Duration = 300.0
    #: How often each machine's status and availability are derived from its points.
    status_interval: Duration = 1.0
    #: Days ahead the availability windows cover.
    horizon_days: int = Field(default=7, ge=1, le=60)
    #: Whole-request timeout.
    timeout: Duration = 10.0
    #: CA bundle (PEM) for an https url; relative to the config file's folder.
    tls_ca: str | None = None
    #: Plain http to a host that is not loopback sends the token in clear: say so here.
    allow_http: bool = False
    #: Key of the public `owner_ref` hash; None: a random key kept beside the store.
    owner_ref_key: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return http_url(url)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        parts = urlsplit(self.url)
        if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS and not self.allow_http:
            raise ValueError(
                f"the pool token would travel in clear to {parts.hostname}: use https, or set "
                f"allow_http: true (got {self.url})"
            )
        if self.tls_ca is not None and parts.scheme != "https":
            raise ValueError("tls_ca is set but the url is not https://")
        if self.transport == "mqtt" and self.mqtt is None:
            raise ValueError("transport: mqtt needs an `mqtt:` broker section")
        if self.snapshot_interval < self.sync_interval:
            raise ValueError(
                f"snapshot_interval must be at least sync_interval "
                f"(got {self.snapshot_interval:g} s < {self.sync_interval:g} s)"
            )
        return self
