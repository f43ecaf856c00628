"""Embedded defaults for `millrace demo`: the shipped sample config, pointed at the
in-process simulator and a local data folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gateway.configload import LoadedConfig, load_config_data

SAMPLE = "demo.yaml"


def sample_text() -> str:
    return (resources.files("gateway") / "samples" / SAMPLE).read_text(encoding="utf-8")


def demo_config(
    *,
    modbus_port: int,
    api_host: str,
    api_port: int,
    data_dir: Path,
    opcua_endpoint: str | None = None,
    mqtt_port: int | None = None,
) -> LoadedConfig:
    """The sample config pointed at the running simulators; a protocol whose simulator is
    not given is left out (with its equipment)."""
    data: dict[str, Any] = yaml.safe_load(sample_text())
    keep = []
    for device in data["devices"]:
        proto = device["protocol"]
        if proto == "modbus-tcp":
            device["port"] = modbus_port
        elif proto == "opcua":
            if opcua_endpoint is None:
                continue
            device["endpoint"] = opcua_endpoint
        elif proto == "mqtt":
            if mqtt_port is None:
                continue
            device["port"] = mqtt_port
        keep.append(device)
    ids = {d["id"] for d in keep}
    data["devices"] = keep
    data["equipment"] = [e for e in data.get("equipment", []) if e["device"] in ids]
    data["api"] = {**data.get("api", {}), "host": api_host, "port": api_port}
    data["store"] = {**data.get("store", {}), "path": str(data_dir.resolve() / "millrace-demo.db")}
    return load_config_data(data, base_dir=data_dir.resolve())
