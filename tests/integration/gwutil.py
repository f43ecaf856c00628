"""Helpers for gateway integration tests: configs pointed at simulators on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from gateway.auth import Role, TokenStore
from gateway.auth.tokens import tokens_path
from gateway.configload import LoadedConfig, load_config, load_config_data

#: The pdm-failure model's features -> the first mill's points on the OPC UA machine line.
MILL1 = {
    "product_type": "line-1.mill1_product_type",
    "temperature_air": "line-1.mill1_air_temperature",
    "temperature_process": "line-1.mill1_process_temperature",
    "speed": "line-1.mill1_spindle_speed",
    "torque": "line-1.mill1_spindle_torque",
    "tool_wear": "line-1.mill1_tool_wear",
}


def plant_config(
    tmp_path: Path,
    port: int,
    *,
    api_port: int = 0,
    devices: list[dict[str, Any]] | None = None,
    **sections: Any,
) -> LoadedConfig:
    """The demo's two devices (pump unit 1, press unit 2) on `port`, fast timeouts."""
    fast = {
        "timeout": 0.3,
        "retries": 0,
        "down_after": 2,
        "backoff_initial": 0.2,
        "backoff_max": 0.5,
        "poll_interval": 0.2,
    }
    data: dict[str, Any] = {
        "gateway": {"id": "test-gw", "site": "test-site"},
        "devices": devices
        if devices is not None
        else [
            {
                "id": "pump-1",
                "protocol": "modbus-tcp",
                "host": "127.0.0.1",
                "port": port,
                "unit_id": 1,
                "profile": "pump-station",
                "poll_groups": {"slow": 0.5},
                **fast,
            },
            {
                "id": "press-1",
                "protocol": "modbus-tcp",
                "host": "127.0.0.1",
                "port": port,
                "unit_id": 2,
                "profile": "sugarcane-press",
                "poll_groups": {"slow": 0.5},
                **fast,
            },
        ],
        "store": {"path": str(tmp_path / "gw.db"), "flush_interval": 0.05},
        "api": {"host": "127.0.0.1", "port": api_port},
        "logging": {"level": "warning", "format": "text"},
    }
    data.update(sections)
    return load_config_data(data, base_dir=tmp_path)


async def eventually(
    check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `check` (sync or async) until it returns a truthy value; fail with `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check} (last {last!r})")


def make_token(
    config: LoadedConfig | Path | str,
    role: Role = Role.ADMIN,
    *,
    subject: str = "test",
    org: str | None = None,
    site: str | None = "",
) -> str:
    """A token in the token store the gateway of `config` uses (a LoadedConfig or a config
    file), of the gateway's org and site unless told otherwise (`site=None`: all sites)."""
    loaded = config if isinstance(config, LoadedConfig) else load_config(config)
    ident = loaded.config.gateway
    store = TokenStore(tokens_path(loaded))
    try:
        token, _ = store.create(
            role,
            subject=subject,
            org=ident.org if org is None else org,
            site=ident.site if site == "" else site,
        )
    finally:
        store.close()
    return token


def auth_headers(config: LoadedConfig | Path | str, role: Role = Role.ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(config, role)}"}


def api_client(gw: Any, role: Role = Role.ADMIN, **kwargs: Any) -> httpx.AsyncClient:
    """An HTTP client for a running Gateway's API with a fresh token of `role`."""
    headers = {**auth_headers(gw.loaded, role), **kwargs.pop("headers", {})}
    return httpx.AsyncClient(base_url=gw.api_url, headers=headers, **kwargs)


@contextlib.contextmanager
def plant_process(cwd: Path | None = None) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The Modbus plant simulator in a process of its own, as a technician runs it (and a
    PLC that does not die with the gateway): its port and process, stopped with SIGTERM."""
    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus_plant", "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "listening on" in line, line
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def farm_broker(port: int, client_id: str) -> dict[str, Any]:
    """The MQTT device the farm's machines publish through (`coop/<machine>/telemetry`)."""
    return {
        "id": "coop-broker",
        "protocol": "mqtt",
        "host": "127.0.0.1",
        "port": port,
        "profile": "farm-machinery",
        "topics": ["coop/{equipment}/telemetry"],
        "client_id": client_id,
    }
