"""Config validation: every problem at once, as `path.to.field: reason (got VALUE)`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.configload import load_config, load_config_data
from gateway.demo import sample_text
from gateway.errors import ConfigError

BASE = {
    "gateway": {"id": "gw-1", "site": "mill"},
    "devices": [
        {
            "id": "pump-1",
            "protocol": "modbus-tcp",
            "host": "127.0.0.1",
            "port": 5020,
            "unit_id": 1,
            "profile": "pump-station",
        }
    ],
}


def problems_of(data: dict, base_dir: Path = Path(".")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_data(data, base_dir=base_dir)
    return info.value.problems


def write(tmp_path: Path, data: dict | str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def test_shipped_demo_config_is_valid(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, sample_text()))
    cfg = loaded.config
    assert [d.id for d in cfg.devices] == [
        "pump-1",
        "press-1",
        "line-1",
        "cogen-1",
        "coop-broker",
        "grading-broker",
    ]
    assert {d.protocol for d in cfg.devices} == {"modbus-tcp", "opcua", "mqtt"}
    assert set(loaded.profiles) == {
        "pump-station",
        "sugarcane-press",
        "cnc-machine-line",
        "cogen-turbine",
        "farm-machinery",
        "grading-line",
    }
    assert [m.model for m in cfg.models] == [
        "pdm-failure",
        "pdm-rul",
        "grading-tabular",
        "grading-vision",
    ]
    assert cfg.api.host == "127.0.0.1"  # loopback by default
    assert cfg.store.max_bytes == 256 * 1024**2
    assert cfg.store.history_retention == 2 * 86400


def test_every_problem_reported_at_once() -> None:
    data = {
        "gateway": {"id": "gw 1", "site": "mill"},
        "devices": [
            {
                "id": "a",
                "protocol": "modbus-tcp",
                "host": "h",
                "port": 70000,
                "profile": "pump-station",
            },
            {"id": "a", "protocol": "modbus-tcp", "host": "h", "profile": "no-such-profile"},
            {"id": "c", "protocol": "bacnet", "host": "h", "profile": "pump-station"},
            {
                "id": "d",
                "protocol": "modbus-tcp",
                "host": "h",
                "profile": "pump-station",
                "poll_interval": "soon",
                "unit_id": 1,
            },
        ],
        "equipment": [{"id": "e1", "type": "pump", "device": "ghost"}],
        "store": {"max_bytes": "lots", "drop_policy": "pray"},
        "api": {"port": -1},
    }
    lines = problems_of(data)
    expected_prefixes = [
        "gateway.id: ",
        "devices.0.port: ",
        "devices.2.protocol: unknown protocol; expected one of",
        "devices.3.poll_interval: ",
        "store.max_bytes: ",
        "store.drop_policy: ",
        "api.port: ",
        "devices.1.id: duplicate id, already used by devices.0 (got a)",
        "devices.1.profile: no profile file no-such-profile.yaml",
        "devices.3.unit_id: unit 1 on tcp://h:502 is already used by devices.1 (got 1)",
        "equipment.0.device: no device with this id (got ghost)",
    ]
    for prefix in expected_prefixes:
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)
    for line in lines:
        assert ": " in line and line.endswith(")") and "(got " in line, line
    assert "devices.0.port: Input should be less than or equal to 65535 (got 70000)" in lines
    assert any("(got soon)" in line for line in lines)


def test_profile_errors_name_the_profile_and_point(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "bad-plc.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "bad-plc",
                "protocol": "modbus",
                "points": [
                    {"name": "ok", "table": "holding_register", "address": 0},
                    {"name": "t", "table": "coil", "address": 1, "data_type": "float32"},
                    {"name": "w", "table": "input_register", "address": 2, "writable": True},
                    {"name": "s", "table": "holding_register", "address": 3, "data_type": "string"},
                    {"name": "ok", "table": "holding_register", "address": 9},
                ],
            }
        )
    )
    data = {**BASE, "devices": [{**BASE["devices"][0], "profile": "bad-plc"}]}
    lines = problems_of(data, base_dir=tmp_path)
    joined = "\n".join(lines)
    assert "profiles.bad-plc.points.1: coil holds single bits: data_type must be bool" in joined
    assert "profiles.bad-plc.points.2: input_register is read-only" in joined
    assert "profiles.bad-plc.points.3: string needs length" in joined
    assert not any("no profile file" in line for line in lines)  # reported once, precisely


def test_profile_duplicate_points(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "dup.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "dup",
                "points": [
                    {"name": "x", "table": "holding_register", "address": 0},
                    {"name": "x", "table": "holding_register", "address": 1},
                ],
            }
        )
    )
    data = {**BASE, "devices": [{**BASE["devices"][0], "profile": "dup"}]}
    assert any("duplicate point names: x" in line for line in problems_of(data, tmp_path))


def test_profile_name_cannot_escape_the_profile_folders(tmp_path: Path) -> None:
    (tmp_path / "secret.yaml").write_text("name: secret\npoints: []\n")
    data = {**BASE, "devices": [{**BASE["devices"][0], "profile": "../secret"}]}
    lines = problems_of(data, base_dir=tmp_path / "profiles")
    assert any(line.startswith("devices.0.profile: String should match pattern") for line in lines)


def test_secrets_from_env_and_file_are_resolved_and_masked(tmp_path: Path) -> None:
    (tmp_path / "token.txt").write_text("file-secret-value\n")
    os.environ["MILLRACE_TEST_SECRET"] = "env-secret-value"
    try:
        data = {
            **BASE,
            "secrets": {"a": "${env:MILLRACE_TEST_SECRET}", "b": "${file:token.txt}"},
        }
        loaded = load_config_data(data, base_dir=tmp_path)
        assert loaded.config.secrets["a"].get_secret_value() == "env-secret-value"
        assert loaded.config.secrets["b"].get_secret_value() == "file-secret-value"
        assert "env-secret-value" not in repr(loaded.config)
        assert set(loaded.secret_values) == {"env-secret-value", "file-secret-value"}
        # A secret that lands in a bad field is never echoed back.
        bad = {**BASE, "api": {"port": "${env:MILLRACE_TEST_SECRET}"}}
        lines = problems_of(bad, tmp_path)
        assert any(line.startswith("api.port:") and "(got ***)" in line for line in lines)
        assert not any("env-secret-value" in line for line in lines)
    finally:
        del os.environ["MILLRACE_TEST_SECRET"]


def test_missing_secret_sources_are_problems(tmp_path: Path) -> None:
    os.environ.pop("MILLRACE_NOT_SET", None)
    data = {**BASE, "secrets": {"a": "${env:MILLRACE_NOT_SET}", "b": "${file:nope.txt}"}}
    lines = problems_of(data, tmp_path)
    assert any(
        line.startswith("secrets.a: environment variable MILLRACE_NOT_SET is not set")
        for line in lines
    )
    assert any(line.startswith("secrets.b: cannot read secret file") for line in lines)


def test_rtu_units_on_one_line_must_agree() -> None:
    rtu = {"protocol": "modbus-rtu", "port": "/dev/ttyUSB0", "profile": "pump-station"}
    data = {
        **BASE,
        "devices": [
            {**rtu, "id": "a", "unit_id": 1, "baudrate": 9600},
            {**rtu, "id": "b", "unit_id": 2, "baudrate": 19200},
        ],
    }
    assert any(
        line.startswith("devices.1.baudrate: units on /dev/ttyUSB0 must share line settings")
        for line in problems_of(data)
    )


def test_equipment_points_must_exist() -> None:
    data = {
        **BASE,
        "equipment": [
            {"id": "p", "type": "pump", "device": "pump-1", "points": ["flow_rate", "nonsense"]}
        ],
    }
    assert problems_of(data) == [
        "equipment.0.points.1: profile pump-station of device pump-1 has no such point "
        "(got nonsense)"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("10s", 10), ("5m", 300), ("2h", 7200), ("7d", 604800), (3, 3)],
)
def test_durations(text: object, seconds: float) -> None:
    loaded = load_config_data({**BASE, "store": {"flush_interval": text}}, base_dir=Path("."))
    assert loaded.config.store.flush_interval == pytest.approx(seconds)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway:\n  id: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid YAML at line" in info.value.problems[0]


def test_cli_validate_exit_codes_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, sample_text(), "good.yaml")
    assert main(["validate", "-c", str(good)]) == 0
    out = capsys.readouterr().out
    assert "config OK" in out and "pump-1" in out and "demo-gw-01" in out
    assert len(out.splitlines()) <= 25  # one screen

    bad = write(tmp_path, {**BASE, "api": {"port": "x"}, "store": {"drop_policy": 3}}, "bad.yaml")
    assert main(["validate", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err
    assert "api.port: Input should be a valid integer" in err
    assert "store.drop_policy: " in err

    assert main(["validate", "-c", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_point_wider_than_one_read_is_reported() -> None:
    data = {**BASE, "devices": [{**BASE["devices"][0], "max_registers_per_read": 4}]}
    assert problems_of(data) == [
        "devices.0.max_registers_per_read: point drive_serial of profile pump-station "
        "needs 6 registers in one read (got 4)"
    ]
