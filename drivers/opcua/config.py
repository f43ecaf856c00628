"""OPC UA configuration: profile points (where a machine model keeps its values in the address
space) and devices (one server endpoint and how to talk to it). Pydantic models only; no asyncua
here, so validating a config never imports I/O.

A point names its node either by node id (`node: "nsu=urn:...;s=Mill1.SpindleSpeed"`) or by
browse path from the Root folder (`browse_path: "0:Objects/ml:MachineLine/ml:Mill1/ml:Speed"`),
exactly one of the two (syntax in `drivers.opcua.nodeid`). Namespace URIs and the profile's
`namespaces` aliases are resolved against the server's NamespaceArray at every connect, so a
server that renumbers its namespaces after a restart is still read correctly. Prefer URIs (or
aliases) over `ns=<index>` for anything but namespace 0.

Durations are seconds or text (`500ms`, `1s`); the driver converts them to the milliseconds
OPC UA wants.
"""

from __future__ import annotations

import enum
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from drivers.opcua.nodeid import (
    BrowsePath,
    NodeRef,
    is_uri,
    parse_browse_path,
    parse_node_id,
)
from gateway.types import DataClass, Duration, Name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PointMode(enum.StrEnum):
    """How a point's value is fetched."""

    SUBSCRIBE = "subscribe"  # a monitored item: the server reports changes
    POLL = "poll"  # read every poll_interval, all poll points of a device in one request


class DeadbandType(enum.StrEnum):
    """OPC UA DataChangeFilter deadband (Part 4 §7.22.2)."""

    NONE = "none"
    ABSOLUTE = "absolute"  # report when |new - last reported| > deadband_value
    PERCENT = "percent"  # ... > deadband_value % of the node's EURange (server must support it)


class SecurityPolicy(enum.StrEnum):
    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"


class SecurityMode(enum.StrEnum):
    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class OpcuaPoint(_Strict):
    """One variable of a machine model's address space."""

    name: Name
    node: str | None = Field(default=None, description="node id, e.g. nsu=urn:x;s=Speed")
    browse_path: str | None = Field(default=None, description="path from Root, e.g. 0:Objects/..")
    mode: PointMode = PointMode.SUBSCRIBE
    #: How often the server samples the value; None asks for the publishing interval.
    sampling_interval: Duration | None = None
    #: Values the server may queue between publishes (1: only the latest).
    queue_size: int = Field(default=1, ge=1, le=10_000)
    deadband_type: DeadbandType = DeadbandType.NONE
    deadband_value: float = Field(default=0.0, ge=0)
    unit: str = ""
    writable: bool = False
    min: float | None = None
    max: float | None = None
    data_class: DataClass = DataClass.PUBLIC
    description: str = ""

    @field_validator("node")
    @classmethod
    def _node_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            parse_node_id(value)  # raises ValueError with the reason
        return value

    @field_validator("browse_path")
    @classmethod
    def _path_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            parse_browse_path(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.node is None) == (self.browse_path is None):
            raise ValueError("give exactly one of node or browse_path")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.deadband_type is DeadbandType.NONE and self.deadband_value > 0:
            raise ValueError("deadband_value needs deadband_type absolute or percent")
        if self.deadband_type is not DeadbandType.NONE and self.deadband_value <= 0:
            raise ValueError(f"deadband_type {self.deadband_type} needs deadband_value > 0")
        if self.deadband_type is DeadbandType.PERCENT and self.deadband_value > 100:
            raise ValueError(f"a percent deadband is 0..100 (got {self.deadband_value})")
        if (
            self.mode is PointMode.POLL
            and self.deadband_type is DeadbandType.PERCENT
            and (self.min is None or self.max is None)
        ):
            raise ValueError(
                "a polled point filters a percent deadband on the gateway, against min..max: "
                "give min and max (or use an absolute deadband)"
            )
        return self

    def node_ref(self) -> NodeRef | None:
        return parse_node_id(self.node) if self.node is not None else None

    def path(self) -> BrowsePath | None:
        return parse_browse_path(self.browse_path) if self.browse_path is not None else None

    def namespaces(self) -> set[int | str]:
        """Namespaces this point refers to (indexes, URIs, aliases)."""
        ref = self.node_ref()
        if ref is not None:
            return {ref.namespace}
        path = self.path()
        return path.namespaces if path is not None else set()


class OpcuaProfile(_Strict):
    """A machine model's node map: data, shared by every machine of that model."""

    name: Name
    protocol: Literal["opcua"] = "opcua"
    description: str = ""
    manufacturer: str = ""
    model: str = ""
    #: Short names for namespace URIs, usable as `nsu=<alias>;...` and `<alias>:Name`.
    namespaces: dict[Name, str] = Field(default_factory=dict)
    points: list[OpcuaPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[str] = set()
        dupes = sorted({p.name for p in self.points if p.name in seen or seen.add(p.name)})
        if dupes:
            raise ValueError(f"duplicate point names: {', '.join(dupes)}")
        for alias, uri in self.namespaces.items():
            if not is_uri(uri):
                raise ValueError(f"namespaces.{alias}: {uri!r} is not a namespace URI")
        for p in self.points:
            for ns in p.namespaces():
                if isinstance(ns, str) and not is_uri(ns) and ns not in self.namespaces:
                    raise ValueError(
                        f"point {p.name}: namespace alias {ns!r} is not defined in namespaces"
                    )
        return self


#: Security policies that need certificates, and the modes each allows.
_SECURED_MODES = {SecurityMode.SIGN, SecurityMode.SIGN_AND_ENCRYPT}


class OpcuaDevice(_Strict):
    """One OPC UA server endpoint (a machine, a PLC, an edge server). One session per device."""

    id: Name
    protocol: Literal["opcua"]
    endpoint: str = Field(description="opc.tcp://host:port[/path]")
    profile: Name
    enabled: bool = True
    description: str = ""
    security_policy: SecurityPolicy = SecurityPolicy.NONE
    security_mode: SecurityMode = SecurityMode.NONE
    #: Client application instance certificate and its private key (PEM or DER; see
    #: `drivers.opcua.certs.create_client_certificate`). Required when secured.
    certificate: str | None = None
    private_key: str | None = None
    #: Pin the server's certificate (PEM or DER). Without it the certificate the server
    #: presents in its endpoints is accepted (trust on every connect).
    server_certificate: str | None = None
    #: Must equal the URI in the client certificate's subjectAltName; default urn:millrace:<id>.
    application_uri: str = ""
    username: str | None = None
    password: SecretStr | None = None
    publishing_interval: Duration = 1.0
    poll_interval: Duration = 1.0
    #: Per request (connect, read, write, keep-alive).
    timeout: Duration = 5.0
    session_timeout: Duration = 60.0
    #: How often the connection is checked (a read of Server.ServerStatus.CurrentTime).
    watchdog_interval: Duration = 5.0
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 60.0

    @model_validator(mode="before")
    @classmethod
    def _default_application_uri(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("application_uri") and "id" in data:
            return {**data, "application_uri": f"urn:millrace:{data['id']}"}
        return data

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        parsed = urlsplit(value)
        if parsed.scheme != "opc.tcp" or not parsed.hostname:
            raise ValueError(f"endpoint must look like opc.tcp://host:4840 (got {value!r})")
        try:
            parsed.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"endpoint {value!r} has an invalid port") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        secured = self.security_policy is not SecurityPolicy.NONE
        if secured and self.security_mode not in _SECURED_MODES:
            raise ValueError(
                f"security_policy {self.security_policy} needs security_mode Sign or SignAndEncrypt"
            )
        if not secured and self.security_mode is not SecurityMode.NONE:
            raise ValueError(
                f"security_mode {self.security_mode} needs a security_policy (Basic256Sha256)"
            )
        if secured and (not self.certificate or not self.private_key):
            raise ValueError("a secured connection needs certificate and private_key files")
        if self.password is not None and not self.username:
            raise ValueError("password given without username")
        if self.backoff_initial > self.backoff_max:
            raise ValueError(
                f"backoff_initial {self.backoff_initial} is greater than backoff_max "
                f"{self.backoff_max}"
            )
        if self.session_timeout < self.watchdog_interval:
            raise ValueError("session_timeout must be at least watchdog_interval")
        if not is_uri(self.application_uri):
            raise ValueError(f"application_uri {self.application_uri!r} is not a URI")
        return self

    @property
    def connection_key(self) -> str:
        """One driver (one session) per device, even when devices share an endpoint."""
        return f"{self.endpoint}#{self.id}"

    @property
    def secured(self) -> bool:
        return self.security_policy is not SecurityPolicy.NONE
