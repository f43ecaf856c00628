"""Box configuration from the environment: MILLRACE_* variables (balena fleet and device
variables) as overrides, the inline config, and the systemd notify protocol."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
import yaml

from gateway import envconfig, sdnotify
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_env_overrides_maps_only_known_non_empty_variables() -> None:
    env = {
        "MILLRACE_GATEWAY_ID": "gw-07",
        "MILLRACE_API_HOST": "0.0.0.0",
        "MILLRACE_API_PORT": "9090",
        "MILLRACE_INFERENCE_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider",
        "MILLRACE_SITE": "  ",  # cleared in the dashboard: falls back to the file
        "MILLRACE_UNKNOWN": "x",
        "BROKER_PASSWORD": "s3cret",  # secrets stay ${env:...} references, never overrides
    }
    assert envconfig.env_overrides(env) == {
        "gateway": {"id": "gw-07"},
        "api": {"host": "0.0.0.0", "port": "9090"},
        "inference": {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
    }
    assert envconfig.env_overrides({}) == {}


def test_merge_is_deep_and_leaves_its_inputs_alone() -> None:
    data = {"gateway": {"id": "a", "site": "s"}, "api": {"port": 1}}
    out = envconfig.merge(data, {"gateway": {"id": "b"}, "store": {"path": "/data/x.db"}})
    assert out == {
        "gateway": {"id": "b", "site": "s"},
        "api": {"port": 1},
        "store": {"path": "/data/x.db"},
    }
    assert data["gateway"]["id"] == "a"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_variables_win_over_the_file_and_are_validated_like_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, {"gateway": {"id": "from-file", "site": "s"}, "api": {"port": 8080}})
    env = {"MILLRACE_GATEWAY_ID": "gw-07", "MILLRACE_STORE_PATH": str(tmp_path / "d.db")}
    loaded = envconfig.load_deployed(path, env)
    assert loaded.config.gateway.id == "gw-07"
    assert loaded.config.gateway.site == "s"
    assert loaded.store_path() == tmp_path / "d.db"
    assert loaded.source == path

    with pytest.raises(ConfigError) as err:
        envconfig.load_deployed(path, {"MILLRACE_API_PORT": "70000"})
    assert any(p.startswith("api.port:") and "70000" in p for p in err.value.problems)


def test_inline_config_from_a_fleet_variable_when_no_file(tmp_path: Path) -> None:
    inline = "gateway: {id: inline-gw, site: farm}\napi: {port: 0}\n"
    env = {"MILLRACE_CONFIG_YAML": inline, "MILLRACE_SITE": "orchard"}
    loaded = envconfig.load_deployed(tmp_path / "missing.yaml", env)
    assert (loaded.config.gateway.id, loaded.config.gateway.site) == ("inline-gw", "orchard")
    with pytest.raises(ConfigError, match="MILLRACE_CONFIG_YAML"):
        envconfig.load_deployed(tmp_path / "missing.yaml", {})
    with pytest.raises(ConfigError, match="not valid YAML"):
        envconfig.load_deployed(tmp_path / "missing.yaml", {"MILLRACE_CONFIG_YAML": "a: [1"})


def test_the_balena_readme_documents_every_variable() -> None:
    """Docs that run: the fleet README's table is the one generated from VARIABLES."""
    text = (ROOT / "firmware-configs" / "balena" / "README.md").read_text()
    assert envconfig.variables_table() in text


def test_compose_sets_only_documented_variables() -> None:
    compose = yaml.safe_load(
        (ROOT / "firmware-configs" / "balena" / "docker-compose.yml").read_text()
    )
    env = compose["services"]["gateway"]["environment"]
    known = {v.name for v in envconfig.VARIABLES} | {"MILLRACE_PLATFORM", "MILLRACE_CONFIG_YAML"}
    assert {k for k in env if k.startswith("MILLRACE_")} <= known
    assert compose["services"]["gateway"]["labels"]["io.balena.features.balena-api"] == "1"


def test_sd_notify_sends_ready_and_watchdog_pings_on_a_real_socket(tmp_path: Path) -> None:
    addr = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(addr)
        server.settimeout(2)
        env = {"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
        assert sdnotify.notify("READY=1", env)
        assert server.recv(64) == b"READY=1"
        assert sdnotify.watchdog_interval(env) == 1.0

        async def ping_twice() -> None:
            healthy = iter([True, False, True])
            task = asyncio.create_task(sdnotify.watchdog(lambda: next(healthy, True), 0.05, env))
            await asyncio.sleep(0.13)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(ping_twice())
        pings = [server.recv(64), server.recv(64)]
        assert pings == [b"WATCHDOG=1", b"WATCHDOG=1"]  # the unhealthy turn sent nothing
    # Outside systemd, or for another process's watchdog, nothing is sent.
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
