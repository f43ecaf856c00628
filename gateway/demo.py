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


def demo_config(*, modbus_port: int, api_host: str, api_port: int, data_dir: Path) -> LoadedConfig:
    data: dict[str, Any] = yaml.safe_load(sample_text())
    for device in data["devices"]:
        if device["protocol"] == "modbus-tcp":
            device["port"] = modbus_port
    data["api"] = {**data.get("api", {}), "host": api_host, "port": api_port}
    data["store"] = {**data.get("store", {}), "path": str(data_dir.resolve() / "millrace-demo.db")}
    return load_config_data(data, base_dir=data_dir.resolve())
