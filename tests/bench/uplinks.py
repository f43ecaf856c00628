"""`make bench` workload `uplinks`: store-and-forward throughput of the MQTT and InfluxDB
uplinks together, in one gateway, measured from outside.

Set-up (all real processes): an intake Mosquitto fed by the farm simulator at a fixed rate
(`simulators.mqtt_farm --rate`, ~3,000 readings/s), one `millrace run` subscribed to it and
forwarding to a central Mosquitto (plain TCP, uplink `central`) and to VictoriaMetrics through
the InfluxDB v2 write API (uplink `history`). A platform-side subscriber on the central
broker (persistent QoS 1 session) and a count query on VictoriaMetrics check at the end that
what the gateway counts as sent did arrive.

Phases, every one bounded:

1. sustained: after BENCH_WARMUP, for BENCH_SECONDS, readings committed per second (ingest)
   and readings confirmed per second per uplink (`millrace_uplink_sent_total` deltas);
2. outage: both far sides stopped (SIGTERM) for BENCH_OUTAGE_S (30 s) while intake goes on;
3. drain: both started again at once, on the same ports. Per uplink: `reconnect_s`, from the
   restart to the first scrape showing a confirmed batch; `drain_s`, from the scrape before
   that to the first scrape where pending is back at its sustained-phase median (the level it
   runs at when caught up), an outer bound to +-2 scrape intervals (0.2 s each); the drain
   rate, readings confirmed per second between two scrapes that both lie inside the drain
   (gross: the backlog plus what kept arriving meanwhile), and that rate over the sustained
   ingest rate (the issue's goal: at least 10x). Bounded by BENCH_DRAIN_TIMEOUT (default
   max(120 s, 10 x the outage)).
4. quiet tail: intake stopped, both uplinks left to reach pending 0, then the far sides'
   counts are compared with the gateway's sent counters (re-sends count twice there).

Plus bytes of disk per stored reading (`/uplinks` bytes_per_reading: SQLite pages in use over
rows; in the JSON also the main file's size over rows and the WAL's size), gateway CPU % of
one core per phase, and peak RSS (VmHWM) over the whole run. Uplink backoff is capped at 2 s
(outbox.backoff_max) so that the reconnect after the restart is not a 30-60 s backoff sleep.
Figures are noisy on a small shared machine; the rows name the ingest rate they were taken at.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from tests.bench.run import (
    SECONDS,
    WARMUP,
    _stop,
    log,
    scrape,
    start_gateway,
    start_sims,
    stop_gateway,
    vm_hwm_mb,
)
from tests.tools.central_reader import connect_central_reader

OUTAGE_S = float(os.environ.get("BENCH_OUTAGE_S", "30"))
DRAIN_TIMEOUT = float(os.environ.get("BENCH_DRAIN_TIMEOUT", str(max(120.0, 10 * OUTAGE_S))))
#: Seconds between /metrics scrapes while draining: the drain lasts only seconds, and each
#: scrape costs the gateway's event loop ~5-8 ms (py-spy), so not faster than this.
DRAIN_POLL = 0.2
UPLINKS = {"central": "mqtt", "history": "influx"}


class _Sample:
    """One /metrics scrape: time, readings committed, per uplink (sent, pending, connected),
    and the gateway's CPU seconds so far when `proc` is given."""

    def __init__(self, url: str, proc: psutil.Process | None = None) -> None:
        m = scrape(url)
        self.t = time.monotonic()
        self.cpu = _cpu(proc) if proc is not None else 0.0
        self.committed = m["millrace_store_committed_total"]
        self.rows = m.get("millrace_store_rows", 0.0)
        self.sent = {u: m[f'millrace_uplink_sent_total{{uplink="{u}"}}'] for u in UPLINKS}
        self.pending = {u: m[f'millrace_uplink_pending_readings{{uplink="{u}"}}'] for u in UPLINKS}
        self.connected = {u: m[f'millrace_uplink_connected{{uplink="{u}"}}'] for u in UPLINKS}


class _CentralSubscriber:
    """The platform's side of the central broker: a persistent QoS 1 session on `millrace/#`,
    counting readings in telemetry/events messages (ids counted in the raw JSON, no parse)."""

    def __init__(self, port: int) -> None:
        self.readings = 0
        self.messages = 0
        self._lock = threading.Lock()
        self.client = connect_central_reader(port, "bench-platform-reader", self._on_message)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if msg.topic.endswith(("/telemetry", "/events")):
            n = msg.payload.count(b'"id":')
            with self._lock:
                self.readings += n
                self.messages += 1

    def count(self) -> int:
        with self._lock:
            return self.readings

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _vm_readings(vm_url: str, expect: int, timeout: float = 20.0) -> int | None:
    """Samples of `millrace_id` VictoriaMetrics holds: one per reading received (re-sends
    included, VictoriaMetrics keeps duplicates). Rows just written take a moment to become
    searchable even after a force_flush, so ask again (up to `timeout`) until at least
    `expect` show up."""
    q = urllib.parse.urlencode({"query": "sum(count_over_time(millrace_id[1d]))"})
    deadline = time.monotonic() + timeout
    got: int | None = None
    while True:
        try:
            urllib.request.urlopen(vm_url + "/internal/force_flush", timeout=10).read()
            raw = urllib.request.urlopen(f"{vm_url}/api/v1/query?{q}", timeout=30).read()
            result = json.loads(raw)["data"]["result"]
            got = int(float(result[0]["value"][1])) if result else 0
        except (OSError, KeyError, ValueError, IndexError) as exc:
            log(f"uplinks: VictoriaMetrics count failed: {exc}")
        if (got is not None and got >= expect) or time.monotonic() > deadline:
            return got
        time.sleep(1)


def _uplinks_api(url: str) -> dict[str, dict[str, Any]]:
    rows = json.loads(urllib.request.urlopen(url + "/uplinks", timeout=10).read())
    return {r["name"]: r for r in rows}


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def uplinks_workload(
    name: str = "uplinks", *, rate: float = 180.0, machines: int = 30, batch_max: int = 2000
) -> list[dict[str, Any]]:
    """Farm telemetry at `rate` messages/s (~17 readings each: 180/s is ~3,000 readings/s;
    tractors, harvesters and drones fill different fields) into a gateway with two
    uplinks; one result row per uplink."""
    # Imported here: these helpers import pytest, which only this workload needs.
    from simulators.mqtt_farm import machine_ids
    from tests.integration.mosquitto import Mosquitto
    from tests.integration.victoria import VictoriaMetrics

    work = Path(tempfile.mkdtemp(prefix="millrace-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[Any] = []
    sub: _CentralSubscriber | None = None
    try:
        intake = Mosquitto(work / "intake")
        central = Mosquitto(work / "central")
        # latencyOffset=0: an instant query sees what was just written (the final count).
        vm = VictoriaMetrics(work / "victoria", extra_flags=("-search.latencyOffset=0s",))
        for server in (intake, central, vm):
            servers.append(server)
            server.start()
        sub = _CentralSubscriber(central.port)
        ids = machine_ids(machines)
        cfg = {
            "gateway": {"id": "bench-gw", "site": "bench"},
            "devices": [
                {
                    "id": "coop",
                    "protocol": "mqtt",
                    "host": "127.0.0.1",
                    "port": intake.port,
                    "profile": "farm-machinery",
                    "topics": ["coop/{equipment}/telemetry"],
                }
            ],
            "equipment": [{"id": i, "type": "tractor", "device": "coop"} for i in ids],
            "store": {"path": str(work / "bench.db"), "max_bytes": "4GiB"},
            "uplinks": [
                {"type": "mqtt", "name": "central", "host": "127.0.0.1", "port": central.port},
                {
                    "type": "influx",
                    "name": "history",
                    "url": vm.url,
                    "org": "coop",
                    "bucket": "farm",
                },
            ],
            "outbox": {"batch_max": batch_max, "backoff_initial": 0.5, "backoff_max": 2},
        }
        procs += start_sims(
            [
                [
                    sys.executable,
                    "-m",
                    "simulators.mqtt_farm",
                    "--port",
                    str(intake.port),
                    "--machines",
                    str(machines),
                    "--rate",
                    str(rate),
                    "--client-id",
                    "bench-farm",
                ]
            ],
            "MQTT farm simulator",
        )
        log(
            f"{name}: intake Mosquitto + farm simulator at {rate:g} msg/s; uplinks: central "
            f"Mosquitto :{central.port} (MQTT), VictoriaMetrics :{vm.port} (InfluxDB v2 API)"
        )
        gw, url = start_gateway(name, work, cfg, procs, devices=machines)
        proc = psutil.Process(gw.pid)
        log(f"{name}: all {machines} machines online; warming up {WARMUP:.0f} s")
        time.sleep(WARMUP)

        # 1. sustained
        s0, c0 = _Sample(url), _cpu(proc)
        pend: dict[str, list[float]] = {u: [] for u in UPLINKS}
        while (elapsed := time.monotonic() - s0.t) < SECONDS:
            time.sleep(1)
            s = _Sample(url)
            for u in UPLINKS:
                pend[u].append(s.pending[u])
            if int(elapsed) % 10 == 0:
                log(f"{name}: sustained {elapsed:.0f}/{SECONDS:.0f} s, pending {s.pending}")
        s1, c1 = _Sample(url), _cpu(proc)
        wall = s1.t - s0.t
        ingest = (s1.committed - s0.committed) / wall
        sustained = {u: (s1.sent[u] - s0.sent[u]) / wall for u in UPLINKS}
        cpu_sustained = (c1 - c0) / wall * 100
        caught_up = {u: statistics.median(pend[u]) if pend[u] else 0.0 for u in UPLINKS}
        log(
            f"{name}: ingest {ingest:.0f} readings/s, sent/s "
            + ", ".join(f"{u} {v:.0f}" for u, v in sustained.items())
            + f"; median pending {caught_up}"
        )

        # 2. outage
        log(f"{name}: stopping both far sides for {OUTAGE_S:.0f} s (intake continues)")
        central.stop()
        vm.stop()
        t_down = time.monotonic()
        while (down := time.monotonic() - t_down) < OUTAGE_S:
            time.sleep(min(5.0, OUTAGE_S - down))
            s = _Sample(url)
            log(f"{name}: outage {time.monotonic() - t_down:.0f} s, pending {s.pending}")

        # 3. drain: both far sides start at once (in threads: VictoriaMetrics takes ~1 s to be
        # healthy), sampling goes on meanwhile.
        start = _Sample(url, proc)  # before the restart: pending is the backlog
        backlog = dict(start.pending)
        t_up = start.t
        failed: list[BaseException] = []

        def restart(server: Any) -> None:
            try:
                server.start()
            except BaseException as exc:  # reported below, on this thread
                failed.append(exc)

        starters = [threading.Thread(target=restart, args=(x,), daemon=True) for x in (central, vm)]
        for th in starters:
            th.start()
        log(f"{name}: restarting far sides; backlog {backlog}; draining (<= {DRAIN_TIMEOUT:.0f} s)")
        samples = [start]
        busy: dict[str, int] = {}  # uplink -> index of the first sample showing a confirmed batch
        done: dict[str, int] = {}  # uplink -> index of the first sample back at caught-up level
        last_log = t_up
        while len(done) < len(UPLINKS) and time.monotonic() - t_up < DRAIN_TIMEOUT:
            if failed:
                raise RuntimeError(f"a far side did not start again: {failed[0]}")
            time.sleep(DRAIN_POLL)
            s = _Sample(url, proc)
            samples.append(s)
            i = len(samples) - 1
            for u in UPLINKS:
                if u not in busy and s.sent[u] > samples[i - 1].sent[u]:
                    busy[u] = i
                if u in busy and u not in done and s.pending[u] <= caught_up[u]:
                    done[u] = i
                    log(f"{name}: {u} drained in {s.t - samples[busy[u] - 1].t:.1f} s")
            if s.t - last_log >= 10:
                last_log = s.t
                log(f"{name}: draining {s.t - t_up:.0f} s, pending {s.pending}")
        for th in starters:
            th.join(timeout=30)
        end = samples[-1]
        # CPU while draining: from the first scrape showing a batch after the restart (either
        # uplink) to the last uplink back at its caught-up level.
        busy_from = samples[min(busy.values(), default=0)]
        busy_to = samples[max(done.values(), default=len(samples) - 1)]
        cpu_drain = (busy_to.cpu - busy_from.cpu) / max(busy_to.t - busy_from.t, 1e-9) * 100
        ingest_drain = (end.committed - start.committed) / max(end.t - start.t, 1e-9)
        for u in UPLINKS:
            if u not in done:
                log(f"{name}: {u} NOT drained in {DRAIN_TIMEOUT:.0f} s (pending {end.pending[u]})")

        # Quiet tail: stop intake, let both uplinks catch up, count what the far sides got.
        _stop(procs[:-1])  # the farm simulator (the gateway is the last entry)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            s = _Sample(url)
            if all(s.pending[u] == 0 for u in UPLINKS):
                break
            time.sleep(0.5)
        api = _uplinks_api(url)
        final = _Sample(url)
        deadline = time.monotonic() + 30
        while sub.count() < final.sent["central"] and time.monotonic() < deadline:
            time.sleep(0.5)
        far = {"central": sub.count(), "history": _vm_readings(vm.url, int(final.sent["history"]))}
        db_file = work / "bench.db"
        db_bytes = db_file.stat().st_size
        wal = db_file.with_name(db_file.name + "-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        rss = vm_hwm_mb(gw.pid)
        stopped = stop_gateway(name, work, gw)

        results = []
        for u, kind in UPLINKS.items():
            drain_s = drain_rate = reconnect_s = None
            if u in busy:
                i0, i1 = busy[u], done.get(u, len(samples) - 1)
                reconnect_s = samples[i0].t - t_up
                # Outer bound: from the last sample before the first confirmed batch to the
                # first one back at the caught-up level.
                drain_s = samples[i1].t - samples[i0 - 1].t
                # Rate between samples that both lie inside the drain (sent already moving,
                # pending still above the caught-up level): no idle time at either end.
                a, b = (i0, i1 - 1) if i1 - 1 > i0 else (i0 - 1, i1)
                drain_rate = (samples[b].sent[u] - samples[a].sent[u]) / (
                    samples[b].t - samples[a].t
                )
            info = api.get(u, {})
            results.append(
                {
                    "name": f"{name} {kind} ({u})",
                    "kind": "uplink",
                    "uplink": u,
                    "transport": kind,
                    "target_messages_per_s": rate,
                    "ingest_per_s": round(ingest, 1),
                    "sent_per_s": round(sustained[u], 1),
                    "median_pending_sustained": caught_up[u],
                    "outage_s": round(OUTAGE_S, 1),
                    "backlog": int(backlog[u]),
                    "reconnect_s": _r(reconnect_s, 2),
                    "drained": u in done,
                    "drain_s": _r(drain_s, 2),
                    "drain_sent_per_s": _r(drain_rate),
                    "drain_ratio": _r(drain_rate / ingest if drain_rate and ingest else None, 2),
                    "net_drain_per_s": _r(drain_rate - ingest_drain if drain_rate else None),
                    "ingest_per_s_during_drain": round(ingest_drain, 1),
                    "bytes_per_reading": info.get("bytes_per_reading"),
                    "db_file_bytes_per_reading": _r(db_bytes / final.rows if final.rows else None),
                    "wal_file_mb": round(wal_bytes / 1024**2, 1),
                    "rows": int(final.rows),
                    "cpu_pct": round(cpu_sustained, 1),
                    "cpu_pct_drain": round(cpu_drain, 1),
                    "rss_mb": round(rss, 1),
                    "sent_total": int(final.sent[u]),
                    "far_side_readings": far[u],
                    "retries": info.get("retries"),
                    "errors": info.get("errors"),
                    "seconds": round(wall, 1),
                    **stopped,
                }
            )
            log(
                f"{name}: {u}: gateway sent {int(final.sent[u])}, far side counted {far[u]} "
                "(re-sends after the outage count twice there)"
            )
        return results
    finally:
        if sub is not None:
            sub.close()
        _stop(procs)
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def uplinks_table(results: list[dict[str, Any]]) -> str:
    cols = [
        ("name", "uplink"),
        ("ingest_per_s", "ingest/s"),
        ("sent_per_s", "sustained sent/s"),
        ("backlog", "backlog"),
        ("reconnect_s", "reconnect s"),
        ("drain_s", "drain s"),
        ("drain_sent_per_s", "drain sent/s"),
        ("drain_ratio", "drain/ingest"),
        ("bytes_per_reading", "bytes/reading"),
        ("cpu_pct", "CPU % sustained"),
        ("cpu_pct_drain", "CPU % drain"),
        ("rss_mb", "peak RSS MB"),
    ]
    rows = []
    for r in results:
        row = [str(r.get(c, "")) if r.get(c) is not None else "-" for c, _ in cols]
        if r.get("drained") is False:
            row[5] += " (not drained)"
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (_, h) in enumerate(cols)]
    out = [" | ".join(h.ljust(w) for (_, h), w in zip(cols, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)
