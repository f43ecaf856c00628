"""balena fleet integration (sync.fleet) against a local stand-in of balena's API.

balena's cloud is not reachable from CI, so every test here talks, through the real
balena-sdk over real HTTP, to `tests/integration/balena_standin.py` on loopback; the names
say so. What the stand-in cannot show: balena's permission model for device API keys.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.aio import cancel_until_done
from gateway.configload import LoadedConfig
from gateway.deploy import box_services
from gateway.errors import TransportError
from gateway.runtime import Gateway
from simulators.modbus_plant import ModbusPlant
from simulators.signals import ManualClock
from sync.fleet import BalenaFleet, FleetConfig, FleetReporter, resolve_settings, snapshot_of
from tests.conftest import free_port
from tests.integration.balena_standin import BalenaStandin, StandinDevice
from tests.integration.gwutil import eventually, plant_config

KEY = "device-api-key-123"
UUID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def standin() -> Iterator[BalenaStandin]:
    device = StandinDevice(
        id=42,
        uuid=UUID,
        name="cane-mill-gw",
        fleet_id=7,
        variables={"MILLRACE_SITE": "cane-mill-east", "BROKER_PASSWORD": "pw"},
        tags={"location": "shed 3", "millrace.version": "0.0.9"},
    )
    fleet = {7: {"MILLRACE_SITE": "cane-mill", "MILLRACE_LOG_LEVEL": "info"}}
    with BalenaStandin(api_key=KEY, devices=[device], fleet_variables=fleet) as s:
        yield s


def balena_env(s: BalenaStandin) -> dict[str, str]:
    return {"BALENA_API_KEY": KEY, "BALENA_DEVICE_UUID": UUID, "BALENA_API_URL": s.url}


def test_fleet_settings_are_off_outside_balena_and_on_inside() -> None:
    assert resolve_settings(FleetConfig(), env={}) is None
    assert resolve_settings(FleetConfig(enabled=False), env={"BALENA_API_KEY": "k"}) is None
    s = resolve_settings(FleetConfig(), env={"BALENA_API_KEY": "k", "BALENA_DEVICE_UUID": UUID})
    assert s is not None and s.api_url == "https://api.balena-cloud.com/"
    with pytest.raises(ValueError, match="no API key"):
        resolve_settings(FleetConfig(enabled=True), env={})


def test_fleet_reads_device_variables_and_tags_against_local_balena_standin(
    standin: BalenaStandin,
) -> None:
    settings = resolve_settings(FleetConfig(), env=balena_env(standin))
    assert settings is not None
    info = BalenaFleet(settings).device()
    assert info.name == "cane-mill-gw"
    # Device variables win over the fleet's, as balena applies them on the box.
    assert info.variables["MILLRACE_SITE"] == "cane-mill-east"
    assert info.variables["MILLRACE_LOG_LEVEL"] == "info"
    assert info.tags == {"location": "shed 3", "millrace.version": "0.0.9"}


def test_a_wrong_api_key_is_refused_by_the_local_balena_standin(standin: BalenaStandin) -> None:
    env = {**balena_env(standin), "BALENA_API_KEY": "wrong"}
    settings = resolve_settings(FleetConfig(), env=env)
    assert settings is not None
    with pytest.raises(TransportError, match=r"cannot read the device \(HTTP 401: .*Unauthorized"):
        BalenaFleet(settings).device()


async def test_gateway_reports_health_tags_against_local_balena_standin(
    standin: BalenaStandin, tmp_path: Path
) -> None:
    """A running gateway with one device up and one down: tags say degraded, 1/2."""
    async with ModbusPlant.tcp(port=0, clock=ManualClock()) as plant:
        # The press is on a port nobody serves.
        devices = loaded_devices(plant_config(tmp_path, plant.port), free_port())
        loaded = plant_config(tmp_path, plant.port, devices=devices, fleet={"interval": 0.3})
        gw = Gateway(loaded, api=False)
        await gw.start()
        try:
            env = {**balena_env(standin), "MILLRACE_SITE": "cane-mill-east"}
            async with box_services(gw, "pi4", env) as reporter:
                assert reporter is not None
                tags = standin.device(UUID).tags

                def one_of_two_online() -> bool:
                    # The pump connects within a round or two; tags are written one by
                    # one, so wait for the whole round that saw it (every tag it writes).
                    return (
                        tags.get("millrace.devices") == "1/2"
                        and tags.get("millrace.online_share") == "0.50"
                        and tags.get("millrace.status") == "degraded"
                        and tags.get("millrace.platform") == "pi4"
                        and tags.get("millrace.version") == "0.1.0"
                    )

                await eventually(one_of_two_online, timeout=15, what="the 1/2 tags")
                assert tags["millrace.status"] == "degraded"
                assert tags["millrace.platform"] == "pi4"
                assert tags["millrace.version"] == "0.1.0"  # the stale 0.0.9 was replaced
                assert tags["location"] == "shed 3"  # someone else's tag is left alone
                # Only what changed is written again: after more rounds, the version and
                # platform tags were still written once each.
                rounds = reporter.stats.reports
                await eventually(lambda: reporter.stats.reports >= rounds + 2, timeout=5)
                writes = [b["tag_key"] for m, _, b in standin.requests if m == "POST" and b]
                assert writes.count("millrace.platform") == 1
                assert writes.count("millrace.version") == 1  # POST refused (exists), PATCHed
                patches = [p for m, p, _ in standin.requests if m == "PATCH"]
                assert sum(1 for p in patches if "millrace.version" in p) == 1
                # MILLRACE_LOG_LEVEL is set in the dashboard but not in this process.
                assert reporter.stats.changed == ["MILLRACE_LOG_LEVEL"]
        finally:
            await gw.stop()


def loaded_devices(loaded: LoadedConfig, dead_port: int) -> list[dict[str, Any]]:
    """The config's devices as data, the second moved to a port where nothing answers."""
    devices = [d.model_dump(mode="json", exclude_unset=True) for d in loaded.config.devices]
    devices[1]["port"] = dead_port
    return devices


async def test_fleet_reporting_survives_an_outage_of_the_local_balena_standin(
    standin: BalenaStandin, tmp_path: Path
) -> None:
    loaded = plant_config(tmp_path, free_port(), devices=[])
    gw = Gateway(loaded, api=False)
    await gw.start()
    try:
        settings = resolve_settings(FleetConfig(interval=0.2), env=balena_env(standin))
        assert settings is not None
        standin.fail_with = 503
        reporter = FleetReporter(
            settings, snapshot_of(gw, "generic-x86_64"), env={}, backoff_initial=0.05
        )
        task = asyncio.create_task(reporter.run())
        try:
            await eventually(lambda: reporter.stats.failures >= 2, timeout=5, what="failures")
            assert gw.state.value == "running"  # the gateway does not care
            standin.fail_with = None
            await eventually(
                lambda: standin.device(UUID).tags.get("millrace.devices") == "0/0",
                timeout=5,
                what="the ok tag after recovery",
            )
            assert standin.device(UUID).tags["millrace.status"] == "ok"
        finally:
            # a report finishing as the cancel arrives swallows it (wait_for, 3.11)
            assert await cancel_until_done(task, 10) and task.cancelled()
    finally:
        await gw.stop()


def test_millrace_run_reports_to_local_balena_standin(
    standin: BalenaStandin, tmp_path: Path
) -> None:
    """The whole path a balena container takes: `millrace run` with the supervisor's
    variables in its environment, a MILLRACE_* override, a platform named by variable."""
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "gateway": {"id": "from-file", "site": "s"},
                "store": {"path": str(tmp_path / "gw.db")},
                "api": {"host": "127.0.0.1", "port": free_port()},
                "fleet": {"interval": "500ms"},
                "logging": {"format": "json"},
            }
        )
    )
    env = {
        "PATH": "/usr/bin:/bin",
        **balena_env(standin),
        "MILLRACE_PLATFORM": "pi5",
        "MILLRACE_GATEWAY_ID": "gw-42",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        tags = standin.device(UUID).tags
        while tags.get("millrace.platform") != "pi5" and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        assert tags.get("millrace.platform") == "pi5"
        assert tags["millrace.status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "gateway gw-42 API on" in out  # the variable won over the file's id
    started = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(rec.get("msg") == "fleet reporting on" for rec in started), out
