"""`make bench`: throughput and resource figures for the gateway, measured from outside.

Each workload starts its simulators and a real `millrace run` in separate processes, waits
for every device to be online, warms up, then measures for BENCH_SECONDS (default 30):

- points/s stored: committed readings per second (from /metrics);
- CPU %: the gateway process's user+system time over wall time, in % of one core;
- peak RSS: the process's high-water mark (VmHWM), in MB;
- p50/p99 poll-to-store: from a reading's arrival to the commit of its transaction
  (the gateway's own window, sampled every second; p50 is the median of the samples,
  p99 the worst sample).

The `capacity` workload (tests/bench/capacity.py) runs the whole demo site with both uplinks
at several sizes (points/s, CPU, RSS, end-to-end and inference latency): the README's
capacity table.

The `uplinks` workload (tests/bench/uplinks.py) measures store-and-forward instead: sustained
readings/s to an MQTT and an InfluxDB uplink, and the drain rate after both far sides were
down for BENCH_OUTAGE_S (30) seconds; it prints its own table.

Figures depend on the machine: the table header names it. With BENCH_JSON=path the results
are also written as a JSON list (one object per workload, per model, per uplink).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml

from gateway.sysinfo import cpu_model

HERE = Path(__file__).parent
WARMUP = float(os.environ.get("BENCH_WARMUP", "10"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "30"))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def vm_hwm_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def start_sims(commands: list[list[str]], ready: str) -> list[subprocess.Popen[bytes]]:
    """Start simulator processes and wait for each to print its ready line."""
    procs = []
    for cmd in commands:
        sim = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        procs.append(sim)
        assert sim.stdout is not None
        line = sim.stdout.readline().decode()
        if ready not in line:
            raise RuntimeError(f"simulator did not start: {line!r}")
    return procs


def start_gateway(
    name: str,
    work: Path,
    cfg: dict[str, Any],
    procs: list[subprocess.Popen[bytes]],
    *,
    devices: int,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `millrace run` on `cfg` (API on a free port, appended to `procs` so the caller's
    cleanup stops it) and wait (90 s at most) until `devices` are online; (process, API URL)."""
    api_port = free_port()
    cfg = {
        **cfg,
        "api": {"host": "127.0.0.1", "port": api_port},
        "logging": {"level": "warning", "format": "text"},
    }
    cfg_path = work / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    # Every endpoint but /health needs a token: scrapes (here and in uplinks.py) send one.
    from gateway.auth import Role
    from tests.integration.gwutil import make_token

    opener = urllib.request.build_opener()
    opener.addheaders = [("Authorization", f"Bearer {make_token(cfg_path, Role.VIEWER)}")]
    urllib.request.install_opener(opener)
    with (work / "gateway.log").open("w") as gw_log:
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg_path)],
            stdout=subprocess.DEVNULL,
            stderr=gw_log,
        )
    procs.append(gw)
    url = f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + 90
    while True:
        if gw.poll() is not None:
            raise RuntimeError(f"gateway exited {gw.returncode} at start:\n{gateway_log(work)}")
        try:
            health = json.loads(urllib.request.urlopen(url + "/health", timeout=2).read())
            if health["devices_online"] >= devices:
                break
            progress = f"{health['devices_online']}/{devices} online"
        except OSError:
            progress = "starting"
        if time.monotonic() > deadline:
            raise RuntimeError(f"devices not online in 90 s ({progress})")
        time.sleep(1)
    return gw, url


def gateway_log(work: Path, lines: int = 15) -> str:
    try:
        return "\n".join((work / "gateway.log").read_text().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_gateway(name: str, work: Path, gw: subprocess.Popen[bytes]) -> dict[str, Any]:
    """SIGTERM the gateway; how long it took and whether it exited 0."""
    gw.send_signal(signal.SIGTERM)
    t_stop = time.monotonic()
    rc = gw.wait(timeout=60)
    out = {"shutdown_s": round(time.monotonic() - t_stop, 2), "clean_shutdown": rc == 0}
    if rc != 0:
        log(f"{name}: gateway exited {rc} on SIGTERM; last log lines:\n{gateway_log(work)}")
    return out


def measure_gateway(
    name: str,
    work: Path,
    cfg: dict[str, Any],
    procs: list[subprocess.Popen[bytes]],
    *,
    devices: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Run `millrace run` on `cfg`, wait for `devices` online, warm up, measure, stop."""
    gw, url = start_gateway(name, work, cfg, procs, devices=devices)
    log(f"{name}: all {devices} devices online; warming up {WARMUP:.0f} s")
    time.sleep(WARMUP)
    proc = psutil.Process(gw.pid)
    m0, c0, t0 = scrape(url), proc.cpu_times(), time.monotonic()
    p50s: list[float] = []
    p99s: list[float] = []
    rss_peak_sampled = 0.0
    while (elapsed := time.monotonic() - t0) < SECONDS:
        time.sleep(1)
        m = scrape(url)
        p50 = m.get('millrace_store_commit_latency_seconds{quantile="0.5"}')
        p99 = m.get('millrace_store_commit_latency_seconds{quantile="0.99"}')
        if p50 is not None and p50 == p50:
            p50s.append(p50)
        if p99 is not None and p99 == p99:
            p99s.append(p99)
        rss_peak_sampled = max(rss_peak_sampled, proc.memory_info().rss / 1024**2)
        if int(elapsed) % 10 == 0:
            log(f"{name}: measuring {elapsed:.0f}/{SECONDS:.0f} s")
    m1, c1, t1 = scrape(url), proc.cpu_times(), time.monotonic()
    wall = t1 - t0
    committed = m1["millrace_store_committed_total"] - m0["millrace_store_committed_total"]
    cpu = (c1.user + c1.system - c0.user - c0.system) / wall * 100
    dropped = sum(v for k, v in m1.items() if k.startswith("millrace_store_dropped_total"))
    polls_failed = sum(
        v
        for k, v in m1.items()
        if k.startswith("millrace_device_polls_total") and 'result="failed"' in k
    )
    result: dict[str, Any] = {
        "name": name,
        **extra,
        "points_per_s": round(committed / wall, 1),
        "cpu_pct": round(cpu, 1),
        "rss_mb": round(max(vm_hwm_mb(gw.pid), rss_peak_sampled), 1),
        "p50_ms": round(statistics.median(p50s) * 1000, 1) if p50s else None,
        "p99_ms": round(max(p99s) * 1000, 1) if p99s else None,
        "dropped": int(dropped),
        "polls_failed": int(polls_failed),
        "seconds": round(wall, 1),
    }
    result.update(stop_gateway(name, work, gw))
    return result


def terminate(p: subprocess.Popen[bytes], timeout: float = 20) -> int | None:
    """SIGTERM `p` if it still runs and wait; its exit code, None if it had to be killed."""
    if p.poll() is not None:
        return p.returncode
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        terminate(p)


def modbus_workload(
    name: str, *, devices: int = 500, endpoints: int = 10, sim_procs: int = 2
) -> dict[str, Any]:
    """500 Modbus TCP units x 30 points polled every second (15,000 points/s)."""
    per_endpoint = devices // endpoints
    work = Path(tempfile.mkdtemp(prefix="millrace-bench-"))
    ports = [free_port() for _ in range(endpoints)]
    cfg = {
        "gateway": {"id": "bench-gw", "site": "bench"},
        "profile_paths": [str(HERE / "profiles")],
        "devices": [
            {
                "id": f"dev-{e:02d}-{u:03d}",
                "protocol": "modbus-tcp",
                "host": "127.0.0.1",
                "port": port,
                "unit_id": u,
                "profile": "bench-30",
                "poll_interval": "1s",
                "timeout": "2s",
            }
            for e, port in enumerate(ports)
            for u in range(1, per_endpoint + 1)
        ],
        "store": {"path": str(work / "bench.db"), "max_bytes": "4GiB"},
    }
    chunk = (endpoints + sim_procs - 1) // sim_procs
    commands = [
        [
            sys.executable,
            "-m",
            "tests.bench.sim_farm",
            "--ports",
            ",".join(map(str, ports[i * chunk : (i + 1) * chunk])),
            "--units",
            f"bench-30:1-{per_endpoint}",
        ]
        for i in range(sim_procs)
        if ports[i * chunk : (i + 1) * chunk]
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs += start_sims(commands, "ready")
        log(f"{name}: {len(procs)} simulator processes, {endpoints} endpoints, {devices} units")
        extra = {"devices": devices, "target_points_per_s": devices * 30}
        return measure_gateway(name, work, cfg, procs, devices=devices, extra=extra)
    finally:
        _stop(procs)
        shutil.rmtree(work, ignore_errors=True)


def opcua_workload(name: str, *, nodes: int = 1000, tick: float = 0.2) -> dict[str, Any]:
    """1,000 OPC UA nodes changing every `tick` seconds, read through one subscription."""
    work = Path(tempfile.mkdtemp(prefix="millrace-bench-"))
    port = free_port()
    profile = {
        "name": "bench-opcua",
        "protocol": "opcua",
        "namespaces": {"ml": "urn:millrace:sim:machine-line"},
        "points": [
            {
                "name": f"n{i:04d}",
                "node": f"nsu=ml;s=Bench.Node{i:04d}",
                "sampling_interval": tick / 2,
            }
            for i in range(nodes)
        ],
    }
    (work / "profiles").mkdir()
    (work / "profiles" / "bench-opcua.yaml").write_text(yaml.safe_dump(profile))
    cfg = {
        "gateway": {"id": "bench-gw", "site": "bench"},
        "profile_paths": [str(work / "profiles")],
        "devices": [
            {
                "id": "line",
                "protocol": "opcua",
                "endpoint": f"opc.tcp://127.0.0.1:{port}",
                "profile": "bench-opcua",
                "publishing_interval": tick / 2,
            }
        ],
        "store": {"path": str(work / "bench.db"), "max_bytes": "4GiB"},
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs += start_sims(
            [
                [
                    sys.executable,
                    "-m",
                    "simulators.opcua_machine",
                    "--port",
                    str(port),
                    "--bench-nodes",
                    str(nodes),
                    "--bench-tick",
                    str(tick),
                ]
            ],
            "opc.tcp://",
        )
        log(f"{name}: OPC UA simulator with {nodes} nodes changing every {tick} s")
        extra = {"devices": 1, "target_points_per_s": round(nodes / tick)}
        return measure_gateway(name, work, cfg, procs, devices=1, extra=extra)
    finally:
        _stop(procs)
        shutil.rmtree(work, ignore_errors=True)


def mqtt_workload(name: str, *, rate: float = 2000, machines: int = 30) -> dict[str, Any]:
    """Farm telemetry at `rate` JSON messages/s through a real Mosquitto (23 points each)."""
    work = Path(tempfile.mkdtemp(prefix="millrace-bench-"))
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    ids = [
        f"{k}-{i // 3 + 1:02d}"
        for i, k in zip(range(machines), ["tractor", "harvester", "drone"] * machines, strict=False)
    ]
    cfg = {
        "gateway": {"id": "bench-gw", "site": "bench"},
        "devices": [
            {
                "id": "coop",
                "protocol": "mqtt",
                "host": "127.0.0.1",
                "port": port,
                "profile": "farm-machinery",
                "topics": ["coop/{equipment}/telemetry"],
            }
        ],
        "equipment": [{"id": i, "type": "tractor", "device": "coop"} for i in ids],
        "store": {"path": str(work / "bench.db"), "max_bytes": "4GiB"},
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        broker = subprocess.Popen(
            [mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        procs.append(broker)
        time.sleep(0.5)
        procs += start_sims(
            [
                [
                    sys.executable,
                    "-m",
                    "simulators.mqtt_farm",
                    "--port",
                    str(port),
                    "--machines",
                    str(machines),
                    "--rate",
                    str(rate),
                ]
            ],
            "MQTT farm simulator",
        )
        log(f"{name}: Mosquitto + farm simulator publishing {rate:.0f} messages/s")
        extra = {"devices": machines, "target_messages_per_s": rate}
        result = measure_gateway(name, work, cfg, procs, devices=machines, extra=extra)
        result["messages_per_s"] = round(result["points_per_s"] / 23, 1)
        return result
    finally:
        _stop(procs)
        shutil.rmtree(work, ignore_errors=True)


def models_workload() -> list[dict[str, Any]]:
    """Every shipped model through `millrace models bench`'s measurement, in this process:
    bare onnxruntime call and the engine's whole path at 1 thread (the stand-in for one Pi 4
    core), the bare call at all cores, and the engine's overhead."""
    from gateway.inference.bench import run_bench

    calls = int(os.environ.get("BENCH_MODEL_CALLS", "3000"))
    report = run_bench(threads=os.cpu_count() or 1, calls=calls, progress=log)
    out: list[dict[str, Any]] = []
    for r in report["results"]:
        multi = next((v for k, v in r.items() if k.startswith("bare_") and k != "bare_1t"), None)
        entry = {
            "name": f"model {r['model']} ({r['file']})",
            "kind": "model",
            "budget_ms": r["budget_ms"],
            "bare_p50_ms": r["bare_1t"]["p50_ms"],
            "bare_p99_ms": r["bare_1t"]["p99_ms"],
            "engine_p50_ms": r["engine_1t"]["p50_ms"],
            "engine_p99_ms": r["engine_1t"]["p99_ms"],
            "engine_overhead_ms": r["engine_overhead_ms"],
            "bare_all_cores_p99_ms": multi["p99_ms"] if multi else None,
            "rows_per_s_batch32": r["rows_per_s_by_batch"]["32"],
        }
        if "decode" in r:
            entry["image_decode_p50_ms"] = r["decode"]["p50_ms"]
        out.append(entry)
    for p in report["problems"]:
        out.append({"name": "model (broken manifest)", "kind": "model", "error": p})
    return out


def uplinks_workload() -> list[dict[str, Any]]:
    """MQTT + InfluxDB uplinks: sustained rate, drain after an outage (tests/bench/uplinks.py)."""
    from tests.bench.uplinks import uplinks_workload as run

    return run("uplinks", rate=180, machines=30)


WORKLOADS: dict[str, Any] = {
    "modbus": lambda: modbus_workload("modbus-500x30", devices=500, endpoints=10, sim_procs=2),
    "opcua": lambda: opcua_workload("opcua-1000-nodes", nodes=1000, tick=0.2),
    "mqtt": lambda: mqtt_workload("mqtt-farm-2000msg", rate=2000, machines=30),
    "uplinks": uplinks_workload,
    "models": models_workload,
    "pool": lambda: __import__("tests.bench.pool", fromlist=["x"]).pool_workload(),
    "capacity": lambda: __import__("tests.bench.capacity", fromlist=["x"]).capacity_workload(),
}


def models_table(results: list[dict[str, Any]]) -> str:
    cols = [
        ("name", "model"),
        ("bare_p50_ms", "bare p50 ms"),
        ("bare_p99_ms", "bare p99 ms"),
        ("engine_p50_ms", "engine p50 ms"),
        ("engine_p99_ms", "engine p99 ms"),
        ("engine_overhead_ms", "overhead ms"),
        ("budget_ms", "budget ms"),
        ("bare_all_cores_p99_ms", "bare p99 all cores"),
        ("rows_per_s_batch32", "rows/s batch 32"),
        ("image_decode_p50_ms", "decode p50 ms"),
    ]
    rows = [
        [str(r.get(c, r.get("error", "")) if c != "name" else r["name"]) for c, _ in cols]
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (_, h) in enumerate(cols)]
    out = [" | ".join(h.ljust(w) for (_, h), w in zip(cols, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def machine() -> str:
    cpu = cpu_model()
    mem = psutil.virtual_memory().total / 1024**3
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def table(results: list[dict[str, Any]]) -> str:
    cols = [
        "name",
        "points_per_s",
        "target_points_per_s",
        "cpu_pct",
        "rss_mb",
        "p50_ms",
        "p99_ms",
        "dropped",
        "polls_failed",
        "messages_per_s",
        "shutdown_s",
    ]
    heads = [
        "workload",
        "points/s",
        "target",
        "CPU % (1 core)",
        "peak RSS MB",
        "p50 ms",
        "p99 ms",
        "dropped",
        "failed polls",
        "MQTT msg/s",
        "SIGTERM stop s",
    ]
    rows = [[str(r.get(c, "")) for c in cols] for r in results]
    # target column: points/s for polled and subscribed workloads, messages/s for MQTT
    for r, row in zip(results, rows, strict=True):
        if "target_messages_per_s" in r:
            row[2] = f"{r['target_messages_per_s']:g} msg/s"
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    line = " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))
    out = [line, "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def main() -> int:
    chosen = os.environ.get("BENCH_ONLY", ",".join(WORKLOADS)).split(",")
    results = []
    for key in chosen:
        try:
            got = WORKLOADS[key.strip()]()
            results.extend(got if isinstance(got, list) else [got])
        except Exception as exc:  # one broken workload must not hide the others' figures
            log(f"{key}: failed: {exc}")
            results.append({"name": key, "error": str(exc)})
    gateway = [r for r in results if r.get("kind") not in ("model", "uplink", "pool", "capacity")]
    capacity = [r for r in results if r.get("kind") == "capacity"]
    uplinks = [r for r in results if r.get("kind") == "uplink"]
    models = [r for r in results if r.get("kind") == "model"]
    pools = [r for r in results if r.get("kind") == "pool"]
    print(f"\nMillrace bench on {machine()}")
    if gateway:
        print(f"warm-up {WARMUP:.0f} s, measured {SECONDS:.0f} s per workload\n")
        print(table(gateway))
    if uplinks:
        from tests.bench.uplinks import OUTAGE_S, uplinks_table

        print(
            f"\nuplinks: warm-up {WARMUP:.0f} s, sustained {SECONDS:.0f} s, both far sides down "
            f"{OUTAGE_S:.0f} s, then drained. drain/ingest: drain sent/s over sustained ingest/s "
            "(goal >= 10).\nCPU % drain: from the first batch after the restart until both "
            "drained. CPU and RSS are the one gateway's (same in each row)."
        )
        print(uplinks_table(uplinks))
    if models:
        print("\nmodels: batch 1, 1 thread unless noted, after warm-up")
        print(models_table(models))
    if pools:
        from tests.bench.pool import CHANGES_PER_HOUR, pool_table

        print(
            "\npool sync: a status change on a device (Modbus poll 0.2 s) to the pool's record; "
            "gateway, simulators and pool on one event loop.\nB/machine/hour: bookings read "
            f"every 30 s + snapshot every 5 min + {CHANGES_PER_HOUR} changes/machine/hour "
            "(bodies, without HTTP headers)."
        )
        print(pool_table(pools))
    if capacity:
        from tests.bench.capacity import capacity_table, summary_note

        print(
            "\ncapacity: the demo site (Modbus, OPC UA, MQTT via Mosquitto, 4 ONNX models, pool "
            "sync) + bench-30 Modbus units, both uplinks (MQTT, InfluxDB) on;\n"
            f"warm-up {WARMUP:.0f} s, measured {SECONDS:.0f} s per size. e2e: gateway timestamp "
            "-> subscriber on the central broker. vision: grader1-camera (int8);\n"
            "tabular: worst p99 of pdm-failure, pdm-rul, grading-tabular. load avg: the "
            "machine's 1-min load at the end (2 cores: above 2 means contention)."
        )
        print(capacity_table(capacity))
        print(summary_note(capacity))
    if path := os.environ.get("BENCH_JSON"):
        Path(path).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
