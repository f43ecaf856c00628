"""The commissioning report (gateway/check.py) for devices that send on their own: an MQTT
device cannot be asked for a value, so the running gateway judges each of its points by what
arrived (`heard`), and `millrace check`, which waits for no message, says it did not probe it
instead of counting it down."""

from __future__ import annotations

from pathlib import Path

from drivers.base import DeviceHealth, DeviceState, PointSpec, ProbeResult
from gateway.check import devices_online, format_report, heard
from gateway.configload import load_config_data
from gateway.readings import Quality, Reading
from tests.unit.test_config import BASE

NOW = 1_700_000_000.0


def _spec(device: str, name: str) -> PointSpec:
    return PointSpec(
        id=f"{device}.{name}", device=device, name=name, source="coop-broker", unit="rpm"
    )


def _health(device: str, state: DeviceState, error: str | None = None) -> DeviceHealth:
    return DeviceHealth(
        device=device, protocol="mqtt", endpoint="coop/x", state=state, last_error=error
    )


def test_heard_judges_each_point_by_its_newest_reading_and_its_machines_health() -> None:
    machines = ["tractor-01", "drone-01", "harvester-01", "sprayer-01", "baler-01"]
    specs = [_spec(m, p) for m in machines for p in ("engine_rpm", "fuel", "chopper_rpm")]
    health = [
        _health("tractor-01", DeviceState.ONLINE),
        _health("drone-01", DeviceState.DOWN, "stale: no message for 120 s"),
        _health("harvester-01", DeviceState.ONLINE),
        _health("sprayer-01", DeviceState.ONLINE),
        _health("baler-01", DeviceState.STARTING),
    ]
    latest = {
        "tractor-01.engine_rpm": Reading("tractor-01.engine_rpm", 1450, ts_gateway=NOW - 2.04),
        "tractor-01.fuel": Reading("tractor-01.fuel", 71.5, ts_gateway=NOW - 2.04),
        "drone-01.engine_rpm": Reading("drone-01.engine_rpm", 900, ts_gateway=NOW - 300),
        "harvester-01.fuel": Reading(
            "harvester-01.fuel", None, Quality.BAD, reason="not a number: 'n/a'", ts_gateway=NOW
        ),
        "sprayer-01.fuel": Reading("sprayer-01.fuel", 12.0, ts_gateway=NOW - 1),
    }
    # the sprayer declares what it sends; the others share the profile with other kinds
    declared = {"sprayer-01": ["engine_rpm", "fuel"]}
    got = heard(specs, health, latest.get, NOW, declared)
    assert [(r.device, r.point, r.ok, r.reason) for r in got] == [
        ("tractor-01", "engine_rpm", True, "received 2.0 s ago"),
        ("tractor-01", "fuel", True, "received 2.0 s ago"),
        # a tractor sends no chopper speed: not a failure, not a line
        ("drone-01", "engine_rpm", False, "stale: no message for 120 s"),
        ("harvester-01", "fuel", False, "not a number: 'n/a'"),
        ("sprayer-01", "engine_rpm", False, "nothing received since the gateway started"),
        ("sprayer-01", "fuel", True, "received 1.0 s ago"),
        # a machine that sent nothing fails on every point
        ("baler-01", "engine_rpm", False, "nothing received since the gateway started"),
        ("baler-01", "fuel", False, "nothing received since the gateway started"),
        ("baler-01", "chopper_rpm", False, "nothing received since the gateway started"),
    ]
    rpm, drone = got[0], got[2]
    assert (rpm.value, rpm.unit, rpm.source) == (1450, "rpm", "coop-broker")
    assert drone.value == 900  # the last value it sent, shown with why it fails


def _loaded(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The config tests' pump on Modbus, and a broker for the farm's machines."""
    mqtt = {
        "id": "coop-broker",
        "protocol": "mqtt",
        "host": "127.0.0.1",
        "port": 1883,
        "profile": "farm-machinery",
        "topics": ["coop/{equipment}/telemetry"],
    }
    data = {**BASE, "devices": [*BASE["devices"], mqtt]}
    return load_config_data(data, base_dir=tmp_path)


def test_the_cli_report_says_mqtt_was_not_probed_rather_than_down(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    probed = [ProbeResult("pump-1", "flow_rate", True, 12.5, "m3/h")]
    assert devices_online(loaded, probed) == (["pump-1"], 1)
    report = format_report(loaded, probed)
    assert "devices online: 1/1 (100%)" in report
    assert "coop-broker: not probed (mqtt: it sends on its own" in report
    assert "no answer" not in report


def test_an_mqtt_device_is_online_when_a_machine_on_it_sent_something(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    results = [
        ProbeResult("pump-1", "flow_rate", False, None, "m3/h", "timeout"),
        ProbeResult(
            "tractor-01", "engine_rpm", True, 1450, "rpm", "received 1.0 s ago", "coop-broker"
        ),
        ProbeResult("drone-01", "engine_rpm", False, None, "rpm", "stale", "coop-broker"),
    ]
    assert devices_online(loaded, results) == (["coop-broker"], 2)
    report = format_report(loaded, results)
    assert "devices online: 1/2 (50%)" in report and "  pump-1: timeout" in report
    assert "tractor-01" in report and "not probed" not in report
    heard_nothing = [
        results[0],
        ProbeResult("tractor-01", "engine_rpm", False, None, "", "x", "coop-broker"),
    ]
    assert devices_online(loaded, heard_nothing) == ([], 2)
    assert "  coop-broker: x" in format_report(loaded, heard_nothing)
