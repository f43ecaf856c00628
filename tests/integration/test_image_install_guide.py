"""The README's "Installing on a Raspberry Pi / Jetson", followed as far as a test machine can:
the `millrace` commands of the guide, in its order, against the shipped example config and
the Modbus plant simulator; the systemd unit checked by systemd itself; the Dockerfile's
promises (non-root, /data volume, HEALTHCHECK, base image as a build argument).

What cannot run here: apt-get, useradd and systemctl on this machine (they would change it),
and the optional `millrace discover` step (covered by the discover tests). `make image`
builds and runs the image for real; it takes minutes and root, so it is not part of this
suite.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.gwutil import plant_process

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Installing on a Raspberry Pi / Jetson"


def guide_commands() -> list[str]:
    """The `millrace ...` lines of the guide's shell block, comments stripped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the install guide has no sh block"
    lines = [line.split("#")[0].strip() for line in block[1].splitlines()]
    return [line for line in lines if line.startswith("millrace ")]


@pytest.fixture
def sim_port() -> Iterator[int]:
    with plant_process(cwd=ROOT) as (port, _proc):
        yield port


def run(cmd: str, etc: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """One guide line, with /etc/millrace and /var/lib/millrace moved under tmp_path."""
    cmd = cmd.replace("/etc/millrace", str(etc))
    args = cmd.split()[1:]
    if ">" in args:  # `millrace platform --systemd-dropin > file`
        args = args[: args.index(">")]
    env = {"PATH": "/usr/bin:/bin", "MILLRACE_STORE_PATH": str(state / "millrace.db")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_readme_install_guide_commands_run_against_the_simulator(
    tmp_path: Path, sim_port: int
) -> None:
    cmds = guide_commands()
    # The guide's steps, in order: board, (discover), validate, check, systemd drop-in.
    kinds = [c.split()[1] + (" --systemd-dropin" if "--systemd-dropin" in c else "") for c in cmds]
    assert kinds == ["platform", "discover", "validate", "check", "platform --systemd-dropin"]

    etc, state = tmp_path / "etc-millrace", tmp_path / "var-lib-millrace"
    etc.mkdir()
    state.mkdir()
    # Step 3's `install ... gateway.example.yaml /etc/millrace/gateway.yaml`, then the edit a
    # technician makes: point the device at the plant (here, the simulator).
    cfg = yaml.safe_load((ROOT / "firmware-configs/systemd/gateway.example.yaml").read_text())
    cfg["devices"][0].update(host="127.0.0.1", port=sim_port)
    (etc / "gateway.yaml").write_text(yaml.safe_dump(cfg))

    outputs = {}
    for cmd in cmds:
        if cmd.startswith("millrace discover"):
            continue  # optional step; needs the plant's real address
        res = run(cmd, etc, state)
        assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"
        outputs[cmd.split()[1] + ("-dropin" if "dropin" in cmd else "")] = res.stdout

    assert outputs["platform"].startswith("platform ")
    assert "config OK" in outputs["validate"]
    assert f"store    {state / 'millrace.db'}" in outputs["validate"]
    assert re.search(
        r"^gateway  gw-01 at site cane-mill, platform \S+ \(", outputs["validate"], re.M
    )
    assert "threads)" in outputs["validate"]  # the providers and threads the models get
    assert "pump-1" in outputs["check"] and "OK" in outputs["check"]
    assert "[Service]\nWatchdogSec=" in outputs["platform-dropin"]


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    unit = (ROOT / "firmware-configs/systemd/millrace.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "ProtectSystem=strict" in unit
    # verify checks that ExecStart's binary exists: point it at this checkout's millrace.
    millrace = shutil.which("millrace") or str(Path(sys.executable).with_name("millrace"))
    (tmp_path / "millrace.service").write_text(unit.replace("/opt/millrace/bin/millrace", millrace))
    res = subprocess.run(
        [analyze, "verify", str(tmp_path / "millrace.service")], capture_output=True, text=True
    )
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


def test_dockerfile_keeps_its_promises() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=", text, re.M)
    assert text.count("FROM ${BASE_IMAGE}") == 2  # build and runtime stages, one base argument
    assert "ARG ONNXRUNTIME_PACKAGE=onnxruntime" in text
    runtime = text[text.rindex("FROM ${BASE_IMAGE}") :]
    user = re.search(r"^USER (\S+)", runtime, re.M)
    assert user is not None and not user[1].startswith(("0", "root"))
    assert 'VOLUME ["/data"]' in runtime
    assert "MILLRACE_STORE_PATH=/data/millrace.db" in runtime
    assert re.search(r"^HEALTHCHECK .*\n.*urllib.request.*?/health", runtime, re.M)
    # The API is not opened to the network by the image itself: only config or a variable.
    assert "MILLRACE_API_HOST" not in runtime
