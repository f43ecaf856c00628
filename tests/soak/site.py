"""The demo site as separate real processes, for measuring a gateway from outside over time.

Used by `make soak` (tests/soak/run.py) and the capacity bench (tests/bench/capacity.py):

- an intake Mosquitto (the farm and the grading line publish into it), a central Mosquitto
  (the MQTT uplink `central`) and a VictoriaMetrics (the InfluxDB uplink `history`), each on a
  free loopback port (tests/integration/mosquitto.py, victoria.py);
- the reference central pool (`python -m simulators.central_pool`) on a free port;
- the demo's devices in one process (tests/soak/sims.py), optionally with `bench-30` Modbus
  units on top to scale the load;
- `millrace run` on the demo's sample config (gateway/samples/demo.yaml, as `millrace demo`
  rewrites it: same devices, equipment, ONNX models, pool) plus both uplinks;
- a platform-side reader on the central broker that checks every delivered reading off by id
  (lost and duplicated readings show up) and measures each one's delivery latency.

Everything is a separate process so the gateway's RSS, CPU, threads and file descriptors are
its own. `Site` is a context manager: leaving it stops everything it started.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Self

import psutil
import yaml

from tests.bench.run import free_port, scrape, start_gateway, terminate
from tests.tools.central_reader import connect_central_reader

#: The two outbox uplinks the soak accounts for (the pool uplink only carries sharing
#: updates and is checked by its pending count alone).
UPLINKS = {"central": "mqtt", "history": "influx"}
#: Units per Modbus endpoint of the farm simulators (as in the bench's modbus workload: one
#: pymodbus client per endpoint serializes its units' requests, so the load is spread).
FARM_PER_PORT = 50


def _pct(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile; None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class CentralReader:
    """The platform's side of the central broker: a persistent QoS 1 session on `millrace/#`.

    Each delivered reading is checked off by id in a bitmap (a bytearray indexed by id: one
    byte per reading, 1 MB per million, where a set would cost ~60 MB), so the end of a run
    can say how many distinct readings arrived and how many came twice. Per reading it records
    the latency from the gateway's timestamp (`ts`, taken when the reading reached the gateway)
    to arrival here: device -> gateway -> store -> outbox -> broker -> subscriber, on one
    machine and one clock."""

    def __init__(self, port: int) -> None:
        self._lock = threading.Lock()
        self._seen = bytearray(1 << 16)
        self.unique = 0
        self.duplicates = 0
        self.messages = 0
        self.max_id = 0
        self._lat_ms: list[float] = []
        self.client = connect_central_reader(port, "soak-platform-reader", self._on_message)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if not msg.topic.endswith(("/telemetry", "/events")):
            return
        now_ms = time.time() * 1000
        try:
            readings = json.loads(msg.payload)["readings"]
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self.messages += 1
            for r in readings:
                rid = int(r["id"])
                if rid >= len(self._seen):
                    self._seen.extend(bytes(max(len(self._seen), rid + 1 - len(self._seen))))
                if self._seen[rid]:
                    self.duplicates += 1
                else:
                    self._seen[rid] = 1
                    self.unique += 1
                    self.max_id = max(self.max_id, rid)
                    if r.get("ts") is not None:
                        self._lat_ms.append(now_ms - float(r["ts"]))

    def take_latencies(self) -> list[float]:
        """The delivery latencies (ms) recorded since the last call."""
        with self._lock:
            out, self._lat_ms = self._lat_ms, []
        return out

    def counts(self) -> tuple[int, int]:
        """(distinct readings delivered, duplicates)."""
        with self._lock:
            return self.unique, self.duplicates

    def distinct_upto(self, last_id: int) -> int:
        """Distinct reading ids delivered among 1..last_id (readings the gateway committed
        after the end-of-run snapshot do not count)."""
        with self._lock:
            return self._seen[: last_id + 1].count(1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def latency_summary(lat_ms: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of a list of latencies in ms (None when empty)."""
    return {
        "p50": _pct(lat_ms, 0.50),
        "p95": _pct(lat_ms, 0.95),
        "p99": _pct(lat_ms, 0.99),
        "max": max(lat_ms) if lat_ms else None,
    }


def site_config(
    work: Path,
    *,
    modbus_port: int,
    opcua: str,
    turbine: str,
    intake_port: int,
    central_port: int,
    vm_url: str,
    pool_url: str,
    bench_units: int = 0,
    bench_poll: str = "1s",
    farm_ports: list[int] | None = None,
    farm_units: int = 0,
    store_max: str = "2GiB",
) -> dict[str, Any]:
    """The demo's sample config as `millrace demo` rewrites it (gateway/demo.py demo_config:
    devices pointed at the simulators, the pool at the reference pool), as a dict for a
    config file, plus `bench_units` bench-30 Modbus devices, both uplinks and a store sized so
    the run never reaches its cap (a drop would read as a loss)."""
    from gateway.demo import sample_text

    data: dict[str, Any] = yaml.safe_load(sample_text())
    for device in data["devices"]:
        if device["protocol"] == "modbus-tcp":
            device["port"] = modbus_port
        elif device["id"] == "cogen-1":
            device["endpoint"] = turbine
        elif device["protocol"] == "opcua":
            device["endpoint"] = opcua
        elif device["protocol"] == "mqtt":
            device["port"] = intake_port
    data["devices"] += [
        {
            "id": f"bench-{u:03d}",
            "protocol": "modbus-tcp",
            "host": "127.0.0.1",
            "port": modbus_port,
            "unit_id": u,
            "profile": "bench-30",
            "poll_interval": bench_poll,
            "timeout": "2s",
        }
        for u in range(3, 3 + bench_units)
    ]
    # farm endpoints (tests/bench/sim_farm.py): FARM_PER_PORT units each, the last one fewer
    ports = farm_ports or []
    data["devices"] += [
        {
            "id": f"farm-{e:02d}-{u:03d}",
            "protocol": "modbus-tcp",
            "host": "127.0.0.1",
            "port": port,
            "unit_id": u,
            "profile": "bench-30",
            "poll_interval": bench_poll,
            "timeout": "2s",
        }
        for e, port in enumerate(ports)
        for u in range(1, 1 + min(FARM_PER_PORT, farm_units - e * FARM_PER_PORT))
    ]
    data["profile_paths"] = [str(Path(__file__).resolve().parents[1] / "bench" / "profiles")]
    data["pool"] = {**data["pool"], "url": pool_url}
    data["store"] = {
        **data.get("store", {}),
        "path": str(work / "gateway.db"),
        "max_bytes": store_max,
    }
    data["uplinks"] = [
        {"type": "mqtt", "name": "central", "host": "127.0.0.1", "port": central_port},
        {"type": "influx", "name": "history", "url": vm_url, "org": "coop", "bucket": "site"},
    ]
    data.pop("logging", None)
    return data


class Site:
    """Brokers, VictoriaMetrics, pool, simulators and the gateway; see the module docstring.

    `bench_units` bench-30 Modbus units on the demo's plant and `farm_units` more behind
    their own endpoints (FARM_PER_PORT each, served by two sim_farm processes: enough for
    thousands of points/s), polled every `bench_poll`, add 30 points each per poll on top of
    the demo's own ~230 points/s."""

    def __init__(
        self,
        work: Path,
        *,
        bench_units: int = 0,
        bench_poll: str = "1s",
        farm_units: int = 0,
        log: Any = print,
    ) -> None:
        self.work = work.resolve()  # the config's store path must not depend on the cwd
        self.bench_units = bench_units
        self.bench_poll = bench_poll
        self.farm_units = farm_units
        self.log = log
        self.procs: list[subprocess.Popen[bytes]] = []
        self.servers: list[Any] = []
        self.reader: CentralReader | None = None
        self.sims: subprocess.Popen[bytes] | None = None
        self.gw: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.vm_url = ""
        self.devices_total = 0

    # -- start / stop ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        from tests.integration.mosquitto import Mosquitto
        from tests.integration.victoria import VictoriaMetrics

        self.work.mkdir(parents=True, exist_ok=True)
        intake = Mosquitto(self.work / "intake")
        central = Mosquitto(self.work / "central")
        # latencyOffset=0: a query sees what was just written (freshness and the final count)
        vm = VictoriaMetrics(self.work / "victoria", extra_flags=("-search.latencyOffset=0s",))
        for server in (intake, central, vm):
            self.servers.append(server)
            server.start()
        self.vm_url = vm.url
        self.reader = CentralReader(central.port)

        pool_port = free_port()
        pool_url = f"http://127.0.0.1:{pool_port}"
        with (self.work / "pool.log").open("w") as pool_log:
            pool = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "simulators.central_pool",
                    "--port",
                    str(pool_port),
                    "--db",
                    str(self.work / "pool.db"),
                ],
                stdout=pool_log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(pool)
        _wait_http(pool_url + "/v1/health", pool, "central pool")

        with (self.work / "sims.log").open("w") as sims_log:
            self.sims = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.soak.sims",
                    "--mqtt-port",
                    str(intake.port),
                    "--bench-units",
                    str(self.bench_units),
                ],
                stdout=subprocess.PIPE,
                stderr=sims_log,
            )
        self.procs.append(self.sims)
        assert self.sims.stdout is not None
        line = self.sims.stdout.readline().decode()
        try:
            ready = json.loads(line)
        except ValueError:
            ready = {}
        if not ready.get("ready"):
            raise RuntimeError(f"simulators did not start: {line!r}; see {self.work}/sims.log")

        farm_ports = [free_port() for _ in range(-(-self.farm_units // FARM_PER_PORT))]
        if farm_ports:
            from tests.bench.run import start_sims

            half = -(-len(farm_ports) // 2)
            groups = [g for g in (farm_ports[:half], farm_ports[half:]) if g]
            self.procs += start_sims(
                [
                    [
                        sys.executable,
                        "-m",
                        "tests.bench.sim_farm",
                        "--ports",
                        ",".join(map(str, g)),
                        "--units",
                        f"bench-30:1-{FARM_PER_PORT}",
                    ]
                    for g in groups
                ],
                "ready",
            )
        cfg = site_config(
            self.work,
            modbus_port=ready["modbus_port"],
            opcua=ready["opcua"],
            turbine=ready["turbine"],
            intake_port=intake.port,
            central_port=central.port,
            vm_url=vm.url,
            pool_url=pool_url,
            bench_units=self.bench_units,
            bench_poll=self.bench_poll,
            farm_ports=farm_ports,
            farm_units=self.farm_units,
        )
        self.gw, self.url = start_gateway("site", self.work, cfg, self.procs, devices=1)
        # every device and MQTT equipment online (OPC UA sessions take a few seconds)
        deadline = time.monotonic() + 120
        while True:
            health = self.health()
            self.devices_total = int(health["devices_total"])
            if health["devices_online"] >= health["devices_total"]:
                break
            if time.monotonic() > deadline:
                self.log(
                    f"only {health['devices_online']}/{health['devices_total']} devices online "
                    "after 120 s; going on"
                )
                break
            time.sleep(1)

    def stop_devices(self) -> None:
        """Stop the simulators (SIGTERM): no new readings, so the uplinks can drain to 0.
        The pool keeps running, so the pool uplink's last status changes are delivered."""
        if self.sims is not None:
            terminate(self.sims, 30)

    def stop_gateway(self) -> int | None:
        """SIGTERM the gateway; its exit code (None if it had to be killed)."""
        return None if self.gw is None else terminate(self.gw, 60)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        for p in reversed(self.procs):
            terminate(p, 30)
        for server in reversed(self.servers):
            server.stop()

    # -- reading the gateway ---------------------------------------------------------------

    def _get(self, path: str) -> Any:
        return json.loads(urllib.request.urlopen(self.url + path, timeout=10).read())

    def health(self) -> dict[str, Any]:
        return self._get("/health")

    def uplinks(self) -> dict[str, dict[str, Any]]:
        return {u["name"]: u for u in self._get("/uplinks")}

    def models(self) -> list[dict[str, Any]]:
        return self._get("/models")

    def metrics(self) -> dict[str, float]:
        return scrape(self.url)

    def process(self) -> psutil.Process:
        assert self.gw is not None
        return psutil.Process(self.gw.pid)

    def store_files_bytes(self) -> int:
        """The store's files on disk: main file, WAL, shared memory."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            f = self.work / f"gateway.db{suffix}"
            if f.exists():
                total += f.stat().st_size
        return total

    # -- VictoriaMetrics ---------------------------------------------------------------------

    def _vm_query(self, query: str) -> float | None:
        q = urllib.parse.urlencode({"query": query})
        urllib.request.urlopen(self.vm_url + "/internal/force_flush", timeout=10).read()
        raw = urllib.request.urlopen(f"{self.vm_url}/api/v1/query?{q}", timeout=30).read()
        result = json.loads(raw)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def vm_freshness_s(self) -> float | None:
        """Seconds from the newest reading VictoriaMetrics holds to now: the InfluxDB uplink's
        delivery lag as the far side sees it (the readings' own timestamps are the gateway's
        or the device's; a quiet point makes it no older, since the newest one counts)."""
        try:
            newest = self._vm_query("max(timestamp(millrace_id))")
        except (OSError, KeyError, ValueError, IndexError):
            return None
        return None if newest is None else round(time.time() - newest, 3)

    def vm_ids(self, last_id: int, want: int, timeout: float = 60.0) -> tuple[int, int] | None:
        """(samples, distinct reading ids) of `millrace_id` in VictoriaMetrics among ids
        1..last_id, through /api/v1/export (every raw sample; duplicates kept). Asks again,
        up to `timeout`, until `want` distinct ids are there (freshly written rows take a
        moment to become searchable)."""
        deadline = time.monotonic() + timeout
        got: tuple[int, int] | None = None
        body = urllib.parse.urlencode({"match[]": '{__name__="millrace_id"}'}).encode()
        while True:
            try:
                urllib.request.urlopen(self.vm_url + "/internal/force_flush", timeout=10).read()
                req = urllib.request.Request(self.vm_url + "/api/v1/export", data=body)
                seen = bytearray(last_id + 1)
                samples = 0
                with urllib.request.urlopen(req, timeout=120) as resp:
                    for raw in resp:
                        if not raw.strip():
                            continue
                        for v in json.loads(raw)["values"]:
                            rid = int(v)
                            if 0 < rid <= last_id:
                                samples += 1
                                seen[rid] = 1
                got = (samples, seen.count(1))
            except (OSError, KeyError, ValueError) as exc:
                self.log(f"VictoriaMetrics export failed: {exc}")
            if (got is not None and got[1] >= want) or time.monotonic() > deadline:
                return got
            time.sleep(1)


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode} at start")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not answering {url} in {timeout} s") from None
            time.sleep(0.2)


def clean(work: Path) -> None:
    """Remove a previous run's work folder (stores, broker data, logs)."""
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)


def rss_mb(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 1024**2


def rss_anon_mb(pid: int) -> float | None:
    """Anonymous resident memory (heap, SQLite page cache, Python objects), without mapped
    files such as shared libraries and model files: where a leak shows."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


__all__ = [
    "UPLINKS",
    "CentralReader",
    "Site",
    "clean",
    "cpu_seconds",
    "latency_summary",
    "rss_anon_mb",
    "rss_mb",
    "site_config",
]
