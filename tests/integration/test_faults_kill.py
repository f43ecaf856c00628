"""Issue 10, scenario "kill -9 at random moments twenty times in a row": a real `millrace run`
process polls a Modbus plant (the simulator in its own process) and forwards through the MQTT
uplink to a real Mosquitto, where the platform's persistent QoS 1 session collects what
arrives. The gateway is SIGKILLed 20 times (`MILLRACE_KILLS`) and restarted at once each time.

The moments come from a seeded random generator; the seed is printed (and is in every
failure message) and `MILLRACE_KILL_SEED=<seed>` replays the same choices (the moments
themselves follow the machine's speed). One kill in three lands during start-up, at 70-115 %
of the last measured spawn-to-"store opened" time: the late imports, opening and recovering
the store after the previous kill, starting the drivers and the uplink. The others land
0.3-1.2 s after the gateway logged that it started, while it polls, commits and publishes
(the uplink's batches are small, 200 readings, so one is often in flight). The summary says
where each kill landed.

After each kill, before the restart, the store file is read (read-only, so the WAL is left for
the gateway to recover): integrity_check ok, ids contiguous from 1, and every id a reader saw
committed just before the kill still there. A last clean run stops the plant, lets the uplink
drain and exits 0 on SIGTERM. Then, end to end:

    committed = ids 1..N in the store = the uplink's cursor = distinct ids at the platform

each delivered at least once, a duplicate only as a re-send of a batch (same `seq`) that was in
flight at a kill, per-point order of first arrivals kept, the batch chain without a hole.
What a kill may cost is only what was not committed yet (readings still in memory, at most
one 50 ms linger): those never got an id, so they are not a gap.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.integration import mosquitto as _broker
from tests.integration.faultutil import platform_accounting
from tests.integration.gwutil import auth_headers, plant_process
from tests.integration.mosquitto import Mosquitto, MosquittoFactory
from tests.integration.platform import PlatformSubscriber

mosquitto_factory = _broker.mosquitto_factory

KILLS = int(os.environ.get("MILLRACE_KILLS", "20"))
SEED = int(os.environ.get("MILLRACE_KILL_SEED", str(random.SystemRandom().randrange(2**32))))
BATCH_MAX = 200
MILLRACE = [sys.executable, "-m", "gateway.cli", "run", "-c"]
CONSUMER = "uplink:central"


@pytest.fixture
def plant() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The plant simulator in its own process (a PLC does not die with the gateway)."""
    with plant_process() as running:
        yield running


def _config(tmp_path: Path, plant_port: int, central: Mosquitto, api_port: int) -> Path:
    common = {
        "protocol": "modbus-tcp",
        "host": "127.0.0.1",
        "port": plant_port,
        "timeout": 0.5,
        "retries": 0,
        "poll_interval": 0.1,
        "backoff_initial": 0.2,
        "backoff_max": 0.5,
    }
    cfg = {
        "gateway": {"id": "kill-gw", "site": "test"},
        "devices": [
            {"id": "pump-1", "unit_id": 1, "profile": "pump-station", **common},
            {"id": "press-1", "unit_id": 2, "profile": "sugarcane-press", **common},
        ],
        "uplinks": [
            {
                "type": "mqtt",
                "name": "central",
                "host": "127.0.0.1",
                "port": central.port,
                "client_id": "millrace-kill-uplink",
                "connect_timeout": 2,
                "ack_timeout": 3,
            }
        ],
        "outbox": {"batch_max": BATCH_MAX, "backoff_initial": 0.1, "backoff_max": 0.5},
        "store": {"path": str(tmp_path / "gw.db"), "flush_interval": 0.05},
        "api": {"host": "127.0.0.1", "port": api_port},
        "logging": {"level": "info", "format": "json"},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _read(db: Path) -> tuple[str, int, int, int, int]:
    """(integrity, rows, min id, max id, uplink cursor), read-only: the WAL stays for the
    gateway to recover, as after a real crash."""
    if not db.exists():
        return "ok", 0, 0, 0, 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        rows, lo, hi = con.execute("SELECT count(*), min(id), max(id) FROM readings").fetchone()
        cur = con.execute("SELECT cursor FROM consumers WHERE name = ?", (CONSUMER,)).fetchone()
    except sqlite3.OperationalError as exc:  # killed before the schema was created
        if "no such table" not in str(exc):
            raise
        return "ok", 0, 0, 0, 0
    finally:
        con.close()
    return integrity, rows, lo or 0, hi or 0, cur[0] if cur else 0


def _max_id(db: Path) -> int:
    """The highest id a reader sees committed right now (read-only, no integrity check)."""
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(con.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])
    except sqlite3.OperationalError as exc:  # killed before the schema was created
        if "no such table" not in str(exc):
            raise
        return 0
    finally:
        con.close()


class _Log:
    """The gateway's combined output, appended across runs; counts lifecycle lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def count(self, message: str) -> int:
        try:
            return self.path.read_text(errors="replace").count(f'"{message}"')
        except OSError:
            return 0

    def started(self) -> int:
        return self.count("gateway started")

    def tail(self) -> str:
        try:
            return self.path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"


async def test_kill_9_twenty_times_loses_nothing_committed(
    mosquitto_factory: MosquittoFactory,
    plant: tuple[int, subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    ctx = f"seed {SEED} (MILLRACE_KILL_SEED={SEED} replays it)"
    print(f"\nkill -9 x{KILLS}: {ctx}")
    plant_port, plant_proc = plant
    central = mosquitto_factory()
    api_port = free_port()
    cfg = _config(tmp_path, plant_port, central, api_port)
    db = tmp_path / "gw.db"
    log = _Log(tmp_path / "gateway.log")
    sub = PlatformSubscriber(central, client_id="platform-kill-test")
    kills: list[str] = []
    phases: Counter[str] = Counter()  # where each kill landed
    proc: subprocess.Popen[bytes] | None = None

    def spawn() -> subprocess.Popen[bytes]:
        with log.path.open("ab") as out:
            return subprocess.Popen([*MILLRACE, str(cfg)], stdout=out, stderr=subprocess.STDOUT)

    async def wait_started(runs: int, timeout: float = 30.0) -> float | None:
        """Wait for this run's "gateway started"; return how long after the spawn its
        "store opened" showed (None if it was not seen)."""
        deadline = time.monotonic() + timeout
        opened = log.count("store opened")
        opened_at = None
        while log.started() < runs:
            assert proc is not None and proc.poll() is None, f"gateway exited; {ctx}\n{log.tail()}"
            assert time.monotonic() < deadline, f"no start in {timeout}s; {ctx}\n{log.tail()}"
            if opened_at is None and log.count("store opened") > opened:
                opened_at = time.monotonic()
            await asyncio.sleep(0.01)
        return opened_at

    try:
        high = 0
        open_s = 1.2  # spawn to "store opened", as last measured (mostly imports)
        for n in range(KILLS):
            started_before = log.started()
            opened_before = log.count("store opened")
            proc = spawn()
            spawned = time.monotonic()
            if rng.random() < 1 / 3:
                # start-up: around the store's opening (recovery after the previous kill):
                # the late imports before it, the start of the drivers and uplink after it;
                # a kill early in the imports would test little
                factor = rng.uniform(0.7, 1.15)
                await asyncio.sleep(factor * open_s)
                mode = f"start-up {factor:.2f}x"
            else:
                delay = rng.uniform(0.3, 1.2)
                opened_at = await wait_started(started_before + 1)
                if opened_at is not None:
                    open_s = opened_at - spawned
                await asyncio.sleep(delay)
                mode = f"running +{delay:.2f}s"
            seen = _max_id(db)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            if log.started() > started_before:
                reached = "running"
            elif log.count("store opened") > opened_before:
                reached = "store open, not yet started"
            else:
                reached = "before the store was open"
            phases[reached] += 1
            integrity, rows, lo, hi, cursor = _read(db)
            kills.append(
                f"{mode} at {time.monotonic() - spawned:.1f}s ({reached}): id {hi} cursor {cursor}"
            )
            assert integrity == "ok", f"kill {n + 1}: {integrity}; {ctx}"
            assert hi >= seen >= high, f"kill {n + 1}: saw {seen}, on disk {hi}; {ctx}"
            assert rows == hi and lo in (0, 1), f"kill {n + 1}: ids not 1..{hi}; {ctx}"
            assert cursor <= hi
            high = hi

        # A clean run: the plant stops, the devices go down, the uplink drains, SIGTERM.
        runs = log.started() + 1
        proc = spawn()
        await wait_started(runs)
        headers = auth_headers(cfg)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api_port}", headers=headers
        ) as api:

            async def online() -> bool:
                devices = (await api.get("/devices")).json()
                return all(d["state"] == "online" for d in devices)

            async def uplink() -> dict[str, object]:
                (u,) = (await api.get("/uplinks")).json()
                return u

            deadline = time.monotonic() + 20
            while not await online():
                assert time.monotonic() < deadline, f"devices not online; {ctx}"
                await asyncio.sleep(0.05)
            plant_proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(plant_proc.wait, 10)
            deadline = time.monotonic() + 30
            while True:
                devices = (await api.get("/devices")).json()
                u = await uplink()
                if all(d["state"] == "down" for d in devices) and u["pending"] == 0:
                    await asyncio.sleep(0.3)
                    again = await uplink()
                    if again["pending"] == 0 and again["cursor"] == u["cursor"]:
                        break
                assert time.monotonic() < deadline, f"not drained: {u}; {ctx}"
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 30)
        assert rc == 0, f"clean stop exited {rc}; {ctx}\n{log.tail()}"
        integrity, rows, lo, hi, cursor = _read(db)
        delivery = await platform_accounting(sub.batches, set(range(1, hi + 1)))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sub.close()
    took = time.monotonic() - began
    print(
        f"kill -9 x{KILLS} (landed: {dict(phases)}), {ctx}: committed {hi} (ids 1..{hi}, "
        f"integrity {integrity}), cursor {cursor}; "
        f"{delivery.line()}; {took:.1f}s\n  kills: {'; '.join(kills)}"
    )
    assert integrity == "ok" and rows == hi and lo == 1, ctx
    assert hi > KILLS * 50, f"only {hi} readings in {KILLS} runs; {ctx}"
    # committed = the uplink's cursor = distinct ids at the platform: none lost
    assert cursor == hi, ctx
    assert delivery.delivered == delivery.stored == hi and delivery.extra == 0, ctx
    # at-least-once: duplicates only re-sends of a batch in flight at a kill
    assert delivery.resent_seqs <= KILLS, ctx
    assert delivery.duplicates <= delivery.resent_seqs * BATCH_MAX, ctx
