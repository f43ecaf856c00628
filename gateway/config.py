"""The gateway's configuration models: one YAML file, validated once at start-up.

Protocol-specific device and profile models live with their driver (`drivers/<proto>/config.py`)
and are joined here into discriminated unions on `protocol`. Loading, secret references and
cross-checks (unknown profile, duplicate ids) are in `gateway.configload`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from drivers.modbus.config import ModbusProfile, ModbusRtuDevice, ModbusTcpDevice
from drivers.mqtt.config import MqttDevice, MqttProfile
from drivers.opcua.config import OpcuaDevice, OpcuaProfile
from gateway.equipment.model import DEFAULT_DATA_CLASSES, Machine
from gateway.inference.config import InferenceConfig, ModelBinding
from gateway.types import ByteSize, DataClass, Duration, Name
from sync.config import OutboxConfig, PoolSyncConfig, UplinkConfig
from sync.fleet import FleetConfig

DeviceConfig = Annotated[
    ModbusTcpDevice | ModbusRtuDevice | OpcuaDevice | MqttDevice, Field(discriminator="protocol")
]
ProfileConfig = Annotated[
    ModbusProfile | OpcuaProfile | MqttProfile, Field(discriminator="protocol")
]

#: Which profile protocol each device protocol reads.
PROFILE_PROTOCOL = {
    "modbus-tcp": "modbus",
    "modbus-rtu": "modbus",
    "opcua": "opcua",
    "mqtt": "mqtt",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayIdentity(_Strict):
    id: Name
    site: Name
    #: The organisation that runs this box: restricted and private data are shown only to
    #: tokens of this organisation (and site; docs/security.md).
    org: Name = "default"
    name: str = ""
    description: str = ""


class Equipment(Machine):
    """A machine in the config, in the registry's shape (gateway/equipment/README.md): what it
    is, who owns it, how it is shared, which device points describe it and how its status is
    derived. Two older spellings are still read: `owner: <organisation>` and `data_class:
    restricted|private` (every public field moves to that class)."""

    @model_validator(mode="before")
    @classmethod
    def _older_shape(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        if isinstance(out.get("owner"), str):
            out["owner"] = {"org": out["owner"]}
        if "data_class" in out:
            try:
                klass = DataClass(out.pop("data_class"))
            except ValueError:
                raise ValueError(
                    f"data_class must be public, restricted or private "
                    f"(got {data.get('data_class')})"
                ) from None
            if klass is not DataClass.PUBLIC:
                moved = {
                    k: klass
                    for k, v in DEFAULT_DATA_CLASSES.items()
                    if v is DataClass.PUBLIC or klass is DataClass.PRIVATE
                }
                out["data_classes"] = {**moved, **(out.get("data_classes") or {})}
        return out


class DropPolicy(enum.StrEnum):
    """What the store does when full. Either way every reading not kept is counted."""

    DROP_OLDEST = "drop_oldest"  # make room by deleting the oldest readings
    REJECT_NEW = "reject_new"  # keep what is stored; refuse (and count) new readings


class StoreConfig(_Strict):
    path: str = "millrace.db"
    max_bytes: ByteSize = 1024**3
    drop_policy: DropPolicy = DropPolicy.DROP_OLDEST
    #: Readings older than this leave history once every uplink has them.
    history_retention: Duration = 7 * 86400.0
    #: The writer commits flush_interval after the first waiting reading (or as soon as
    #: batch_max wait). At 15k readings/s, 50 ms gives a poll-to-store p50 near 45 ms
    #: (make bench); a longer linger means fewer, larger commits and less writer CPU once the
    #: file is large. Raise it on a slow SD card or a busy Pi.
    batch_max: int = Field(default=5000, ge=1, le=100_000)
    flush_interval: Duration = 0.05
    #: full survives power loss; normal survives a process crash (kill -9) and is faster.
    synchronous: Literal["full", "normal"] = "full"
    #: Readings waiting for the writer before intake is refused (and counted) as backpressure.
    queue_max: int = Field(default=200_000, ge=1000)
    #: At the cap, unsent raw readings are first folded into min / mean / max per point and
    #: window (events and alarms never are); only when nothing is left to fold does the drop
    #: policy apply. Off: the drop policy applies at once.
    compact: bool = True
    compact_window: Duration = 60.0
    #: Unsent readings older than this are dropped (counted `too_old`) even with room left:
    #: for data worthless after a while. None keeps them until the cap says otherwise.
    max_unsent_age: Duration | None = None


class TlsFiles(_Strict):
    cert: str
    key: str


class ApiConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    tls: TlsFiles | None = None
    history_limit: int = Field(default=10_000, ge=1, le=1_000_000)


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class GatewayConfig(_Strict):
    gateway: GatewayIdentity
    #: Folders (relative to this file) searched for `<profile>.yaml` before the built-in ones.
    profile_paths: list[str] = Field(default_factory=lambda: ["profiles"])
    devices: list[DeviceConfig] = Field(default_factory=list)
    equipment: list[Equipment] = Field(default_factory=list)
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    logging: LoggingConfig = LoggingConfig()
    inference: InferenceConfig = InferenceConfig()
    #: ONNX models bound to this gateway's points or item channels (gateway.inference.config).
    models: list[ModelBinding] = Field(default_factory=list)
    #: Transports to the central platform, each with its own outbox cursor (sync.config).
    uplinks: list[UplinkConfig] = Field(default_factory=list)
    outbox: OutboxConfig = OutboxConfig()
    #: The central matching pool this gateway shares its machines with (sync.pool); None: none.
    pool: PoolSyncConfig | None = None
    #: balena fleet: read this device's variables and tags, report health as tags (sync.fleet).
    fleet: FleetConfig = FleetConfig()
    #: Free-form secrets for later components, referenced as ${env:..} or ${file:..}.
    secrets: dict[Name, SecretStr] = Field(default_factory=dict)
