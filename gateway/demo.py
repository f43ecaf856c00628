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
    turbine_endpoint: str | None = None,
) -> LoadedConfig:
    """The sample config pointed at the running simulators; a device whose simulator is
    not given is left out (with its equipment and the models bound to it)."""
    data: dict[str, Any] = yaml.safe_load(sample_text())
    keep = []
    for device in data["devices"]:
        proto = device["protocol"]
        if proto == "modbus-tcp":
            device["port"] = modbus_port
        elif device["id"] == "cogen-1":
            if turbine_endpoint is None:
                continue
            device["endpoint"] = turbine_endpoint
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
    data["models"] = [m for m in data.get("models", []) if _model_devices(m) <= ids]
    data["api"] = {**data.get("api", {}), "host": api_host, "port": api_port}
    data["store"] = {**data.get("store", {}), "path": str(data_dir.resolve() / "millrace-demo.db")}
    return load_config_data(data, base_dir=data_dir.resolve())


def _model_devices(binding: dict[str, Any]) -> set[str]:
    """The devices a model binding reads (point ids are `<device>.<point>`)."""
    if "items" in binding:
        return {binding["items"]["device"]}
    refs = [*binding.get("inputs", {}).values(), binding.get("input_prefix") or ""]
    refs += [binding.get("row_key") or "", binding.get("reset_on") or ""]
    return {r.split(".", 1)[0] for r in refs if r}
