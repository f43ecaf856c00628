"""The gateway as a user runs it: real processes, real signals, real files.

- `millrace check` prints the commissioning table and the share of devices online;
- `millrace demo` serves live values and stops cleanly on Ctrl-C;
- `kill -9` of a running gateway loses no reading the store had committed: restart and count.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.auth import Role
from tests.conftest import free_port
from tests.integration.gwutil import make_token, plant_process

MILLRACE = [sys.executable, "-m", "gateway.cli"]


@pytest.fixture
def sim_port() -> Iterator[int]:
    """The plant simulator in its own process, as a technician would run it."""
    with plant_process() as (port, proc):
        yield port
    assert proc.returncode == 0


def write_config(tmp_path: Path, port: int, api_port: int, extra: list[dict] | None = None) -> Path:
    common = {
        "protocol": "modbus-tcp",
        "host": "127.0.0.1",
        "port": port,
        "timeout": 0.5,
        "retries": 0,
        "poll_interval": 0.2,
    }
    cfg = {
        "gateway": {"id": "proc-gw", "site": "test"},
        "devices": [
            {"id": "pump-1", "unit_id": 1, "profile": "pump-station", **common},
            {"id": "press-1", "unit_id": 2, "profile": "sugarcane-press", **common},
            *(extra or []),
        ],
        "store": {"path": str(tmp_path / "gw.db"), "flush_interval": 0.05},
        "api": {"host": "127.0.0.1", "port": api_port},
        "logging": {"level": "info", "format": "json"},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def get(url: str, token: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5).read()


def wait_for(check, timeout: float = 20.0, what: str = "") -> object:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def committed(api: str, token: str) -> int:
    for line in get(api + "/metrics", token).decode().splitlines():
        if line.startswith("millrace_store_committed_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no committed metric")


def test_check_reports_ok_and_fail_with_online_share(sim_port: int, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, sim_port, free_port())
    ok = subprocess.run(
        [*MILLRACE, "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "points OK: 37/37" in ok.stdout
    assert "devices online: 2/2 (100%)" in ok.stdout
    assert any(
        line.startswith("pump-1") and "flow_rate" in line and " OK " in line
        for line in ok.stdout.splitlines()
    )

    dead = {
        "id": "ghost",
        "protocol": "modbus-tcp",
        "host": "127.0.0.1",
        "port": free_port(),
        "unit_id": 1,
        "profile": "pump-station",
        "timeout": 0.3,
        "retries": 0,
    }
    cfg = write_config(tmp_path, sim_port, free_port(), extra=[dead])
    bad = subprocess.run(
        [*MILLRACE, "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1
    assert "devices online: 2/3 (67%)" in bad.stdout
    ghost_lines = [line for line in bad.stdout.splitlines() if line.startswith("ghost ")]
    assert len(ghost_lines) == 21 and all(" FAIL " in line for line in ghost_lines)
    assert "cannot connect" in ghost_lines[0]


def test_demo_serves_live_values_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*MILLRACE, "demo", "--port", str(port), "--data-dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(2)]
        assert any(f"http://127.0.0.1:{port}" in line for line in banner), banner
        api = f"http://127.0.0.1:{port}"
        # the demo creates an admin and a viewer token and keeps them in its folder
        tokens = wait_for(
            lambda: json.loads((tmp_path / "demo" / "demo-tokens.json").read_text()),
            what="the demo's tokens",
        )
        viewer = tokens["viewer"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(api + "/points")
        assert refused.value.code == 401

        def good_points() -> list[dict]:
            pts = json.loads(get(api + "/points", viewer))
            return [p for p in pts if p["quality"] == "good"]

        first = wait_for(
            lambda: {"pump-1", "press-1"} <= {p["device"] for p in good_points()} and good_points(),
            what="live Modbus values",
        )

        def protocols_online() -> set[str]:
            devices = json.loads(get(api + "/devices", viewer))
            return {d["protocol"] for d in devices if d["state"] == "online"}

        wait_for(
            lambda: protocols_online() == {"modbus-tcp", "opcua", "mqtt"},
            what="all three protocols online",
        )
        mill = json.loads(get(api + "/points?equipment=mill-1", viewer))
        assert any(p["name"] == "mill1_spindle_speed" and p["quality"] == "good" for p in mill)
        # "mqtt online" may be the grading line; the farm's first message can come later
        wait_for(
            lambda: any(
                p["name"] == "engine_rpm" and isinstance(p["value"], int)
                for p in json.loads(get(api + "/points?equipment=tractor-01", viewer))
            ),
            what="a tractor's engine_rpm",
        )

        def models_answering() -> list[dict]:
            models = json.loads(get(api + "/models", viewer))
            ok = all(m["state"] == "ready" and m["calls"] > 0 for m in models)
            return models if ok and len(models) == 4 else []

        models = {m["id"]: m for m in wait_for(models_answering, 60, "four models answering")}
        assert models["grader1-sensors"]["last_values"]["grade"] in ("good", "bad")
        assert models["grader1-camera"]["last_values"]["grade"] in ("good", "reject")
        assert models["mill1-pdm"]["latency_p99_ms"] > 0
        # the turbine replays C-MAPSS from 60 % of its life: real RUL falls to the alarm
        (rul,) = wait_for(
            lambda: [
                m
                for m in json.loads(get(api + "/models", viewer))
                if m["id"] == "turbine1-rul" and "maintenance_due" in m["active_alarms"]
            ],
            120,
            "the turbine's maintenance_due alarm",
        )
        assert rul["last_values"]["rul_cycles"] <= 30
        alarm = json.loads(get(api + "/points/turbine1-rul.alarm_maintenance_due", viewer))
        assert alarm["value"] is True and alarm["reason"] == "model:pdm-rul@1.0.0"
        before = {p["id"]: p["value"] for p in first}
        time.sleep(2.5)
        after = {p["id"]: p["value"] for p in good_points()}
        changed = [k for k in before if k in after and before[k] != after[k]]
        assert len(changed) >= 5, "values should change on screen"
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    assert rc == 0, proc.stderr.read() if proc.stderr else ""
    assert (tmp_path / "demo" / "millrace-demo.db").exists()
    # a cooperative posted a demand to the reference pool and got a ranked match from the
    # machines this gateway registered
    rest = proc.stdout.read() if proc.stdout else ""
    assert "ranked matches:" in rest, rest
    first = next(line for line in rest.splitlines() if "  1. " in line)
    assert "harvester-01" in first and "recommended" in first, rest


def test_kill_9_loses_no_committed_reading(sim_port: int, tmp_path: Path) -> None:
    api_port = free_port()
    cfg = write_config(tmp_path, sim_port, api_port)
    api = f"http://127.0.0.1:{api_port}"
    token = make_token(cfg, Role.VIEWER)
    db = tmp_path / "gw.db"
    seen_max = 0
    for round_ in range(3):
        gw = subprocess.Popen(
            [*MILLRACE, "run", "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(lambda: committed(api, token) > 300, what="readings committed")
            time.sleep(0.3 * round_)  # kill at a different moment each round
            accepted = committed(api, token)  # the store has committed at least this many now
        finally:
            gw.kill()  # SIGKILL: no flush, no shutdown
            gw.wait(timeout=10)
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            count, lo, hi = con.execute(
                "SELECT count(*), min(id), max(id) FROM readings"
            ).fetchone()
        assert lo == 1 and count == hi, "ids must be contiguous: nothing lost in the middle"
        assert hi >= seen_max, "readings from before an earlier kill must still be there"
        # This run's committed counter started from zero; every one of them is on disk.
        assert hi - seen_max >= accepted
        seen_max = hi

    # A clean run after the crashes carries on with higher ids and exits 0 on SIGTERM.
    gw = subprocess.Popen(
        [*MILLRACE, "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: committed(api, token) > 100, what="restart stores again")
    finally:
        gw.send_signal(signal.SIGTERM)
        rc = gw.wait(timeout=30)
    assert rc == 0, gw.stderr.read() if gw.stderr else ""
    with sqlite3.connect(db) as con:
        count, lo, hi = con.execute("SELECT count(*), min(id), max(id) FROM readings").fetchone()
    assert lo == 1 and count == hi and hi > seen_max


def test_discover_modbus_finds_units_ranges_and_byte_order(sim_port: int, tmp_path: Path) -> None:
    out = tmp_path / "profiles"
    run = subprocess.run(
        [*MILLRACE, "discover", "modbus", f"tcp://127.0.0.1:{sim_port}", "--units", "1-3",
         "--max-address", "260", "--guess", "input_register:0:0:500",
         "--guess", "holding_register:102:0:2000", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "2 of 3 unit ids answered" in text
    assert "input_register    0-17, 20-25" in text  # the pump's map, gaps and all
    assert "holding_register  100-121, 200-205" in text  # the press's
    assert "guess input_register 0" in text and "float32 CDAB" in text  # flow_rate
    assert "float32 ABCD" in text  # roller_load
    assert "[1/3] unit 1" in run.stderr  # progress
    profile = yaml.safe_load((out / "discovered-unit-1.yaml").read_text())
    ir0 = next(p for p in profile["points"] if p["name"] == "ir0")
    assert ir0["data_type"] == "float32" and ir0["order"] == "CDAB"
    assert not any(p["name"] == "ir1" for p in profile["points"])  # covered by the float
    # The written profile is a valid profile a config can use as it is.
    from drivers.modbus.config import ModbusProfile

    assert len(ModbusProfile.model_validate(profile).points) > 20


def test_certs_and_discover_opcua_from_the_command_line(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.der", tmp_path / "client.pem"
    made = subprocess.run(
        [*MILLRACE, "certs", "--cert", str(cert), "--key", str(key),
         "--application-uri", "urn:millrace:test-gw"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert cert.stat().st_size > 300 and (key.stat().st_mode & 0o077) == 0  # key not shared
    again = subprocess.run(
        [*MILLRACE, "certs", "--cert", str(cert), "--key", str(key),
         "--application-uri", "urn:millrace:test-gw"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 1 and "--force" in again.stderr

    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.opcua_machine", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert sim.stdout is not None and "opc.tcp://" in sim.stdout.readline()
        out = tmp_path / "found.yaml"
        run = subprocess.run(
            [*MILLRACE, "discover", "opcua", f"opc.tcp://127.0.0.1:{port}", "--depth", "3",
             "--include", "*Mill2*", "--name", "found", "--out", str(out)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        from drivers.opcua.config import OpcuaProfile

        profile = OpcuaProfile.model_validate(yaml.safe_load(out.read_text()))
        assert len(profile.points) >= 10
        assert all("Mill2" in (p.node or "") for p in profile.points)
        assert all((p.node or "").startswith("nsu=") for p in profile.points)  # URI, not index
    finally:
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=20) == 0
