"""`make bench` workload `capacity`: the whole gateway at several workload sizes, for the
README's capacity table (what a user can plan with).

Each size is the demo site (tests/soak/site.py: Modbus pump and press, OPC UA line and
turbine, farm fleet and grading line over Mosquitto, the four ONNX models, pool sync, ~230
points/s) plus N bench-30 Modbus units (30 points/s each) behind their own endpoints, every
part a real process, with both outbox uplinks (MQTT to a second Mosquitto, InfluxDB write API
to VictoriaMetrics) on: the full path a reading takes on a real box. Per size, after
BENCH_WARMUP, for BENCH_SECONDS:

- points/s sustained: readings committed per second, against the target (demo + 30 x N);
- delivered/s: readings the MQTT uplink had confirmed per second (an uplink that falls behind
  shows here and in `pending`, the backlog at the end of the window, both uplinks);
- gateway CPU (% of one core) and peak RSS (VmHWM) of the `millrace run` process;
- end-to-end latency p50/p95: from the reading's gateway timestamp (taken when the poll
  answer or message arrived) to its arrival at a subscriber on the central broker: device ->
  gateway -> store commit -> outbox -> MQTT uplink -> broker -> platform, one clock;
- inference latency p50/p99 of the vision model (grader1-camera, the heaviest) and the worst
  p99 of the three tabular ones, from /models, under that load.

Sizes: CAPACITY_UNITS (default 0,25,160,330,660: ~230, 1,000, 5,000, 10,000 and 20,000
points/s; the last is past what a 2-core machine sustains, to show where it saturates).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.run import SECONDS, WARMUP, log, vm_hwm_mb
from tests.soak.site import Site, cpu_seconds, latency_summary, rss_mb

#: Points/s the demo site produces without bench units (measured: 225-235 on the bench box).
DEMO_POINTS_PER_S = 230
UNITS = [int(x) for x in os.environ.get("CAPACITY_UNITS", "0,25,160,330,660").split(",")]


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def measure_size(units: int) -> dict[str, Any]:
    """One size: start the site, warm up, measure, stop."""
    target = DEMO_POINTS_PER_S + 30 * units
    name = f"capacity ~{target:,} pts/s"
    with tempfile.TemporaryDirectory(prefix="millrace-capacity-") as tmp:
        t0 = time.monotonic()
        with Site(Path(tmp), farm_units=units, log=log) as site:
            log(
                f"{name}: {site.devices_total} devices up in {time.monotonic() - t0:.0f} s; "
                f"warming up {WARMUP:.0f} s"
            )
            time.sleep(WARMUP)
            proc = site.process()
            assert site.reader is not None
            site.reader.take_latencies()
            m0, c0, t_0 = site.metrics(), cpu_seconds(proc), time.monotonic()
            lat: list[float] = []
            rss_peak = 0.0
            while (elapsed := time.monotonic() - t_0) < SECONDS:
                time.sleep(min(5.0, SECONDS - elapsed))
                lat += site.reader.take_latencies()
                rss_peak = max(rss_peak, rss_mb(proc))
                log(f"{name}: measuring {time.monotonic() - t_0:.0f}/{SECONDS:.0f} s")
            m1, c1, t_1 = site.metrics(), cpu_seconds(proc), time.monotonic()
            lat += site.reader.take_latencies()
            ups = site.uplinks()
            models = {m["id"]: m for m in site.models()}
            hwm = vm_hwm_mb(proc.pid)
            site.stop_gateway()
        wall = t_1 - t_0
        committed = m1["millrace_store_committed_total"] - m0["millrace_store_committed_total"]
        key = 'millrace_uplink_sent_total{uplink="central"}'
        delivered = m1[key] - m0[key]
        e2e = latency_summary(lat)
        cam = models.get("grader1-camera", {})
        tab = [
            m["latency_p99_ms"]
            for k, m in models.items()
            if k != "grader1-camera" and m.get("latency_p99_ms") is not None
        ]
        dropped = sum(v for k, v in m1.items() if k.startswith("millrace_store_dropped_total"))
        return {
            "kind": "capacity",
            "name": name,
            "bench_units": units,
            "devices": site.devices_total,
            "target_points_per_s": target,
            "points_per_s": round(committed / wall),
            "delivered_per_s": round(delivered / wall),
            "cpu_pct": round((c1 - c0) / wall * 100, 1),
            "rss_mb": round(max(hwm, rss_peak), 1),
            "e2e_p50_ms": _r(e2e["p50"]),
            "e2e_p95_ms": _r(e2e["p95"]),
            "e2e_samples": len(lat),
            "infer_vision_p50_ms": _r(cam.get("latency_p50_ms"), 2),
            "infer_vision_p99_ms": _r(cam.get("latency_p99_ms"), 2),
            "infer_tabular_p99_ms": _r(max(tab), 2) if tab else None,
            "pending_end": {u: int(ups[u]["pending"]) for u in ("central", "history")},
            "dropped": int(dropped),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "seconds": round(wall, 1),
        }


def capacity_workload() -> list[dict[str, Any]]:
    """Every size in CAPACITY_UNITS, smallest first; a size that fails is a row with its
    error, and the larger ones still run."""
    out = []
    for units in UNITS:
        try:
            out.append(measure_size(units))
        except Exception as exc:  # one broken size must not hide the others' figures
            log(f"capacity {units} units: failed: {exc}")
            out.append({"kind": "capacity", "name": f"{units} bench units", "error": str(exc)})
        log(f"capacity: {out[-1]}")
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def capacity_table(results: list[dict[str, Any]]) -> str:
    heads = [
        "target pts/s",
        "stored pts/s",
        "delivered/s (MQTT)",
        "CPU % (1 core)",
        "peak RSS MB",
        "e2e p50 / p95 ms",
        "vision p50 / p99 ms",
        "tabular p99 ms",
        "backlog at end (MQTT/Influx)",
        "load avg",
    ]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["name"], f"error: {r['error']}"] + [""] * (len(heads) - 2))
            continue
        pend = r["pending_end"]
        rows.append(
            [
                _fmt(r["target_points_per_s"]),
                _fmt(r["points_per_s"]),
                _fmt(r["delivered_per_s"]),
                _fmt(r["cpu_pct"]),
                _fmt(r["rss_mb"]),
                f"{_fmt(r['e2e_p50_ms'])} / {_fmt(r['e2e_p95_ms'])}",
                f"{_fmt(r['infer_vision_p50_ms'])} / {_fmt(r['infer_vision_p99_ms'])}",
                _fmt(r["infer_tabular_p99_ms"]),
                f"{pend['central']:,} / {pend['history']:,}",
                _fmt(r["load_avg_1m"]),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    out = [" | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def summary_note(results: list[dict[str, Any]]) -> str:
    """One line: the largest size that kept up (stored and delivered >= 95% of target), and
    the marginal CPU per 1,000 points/s between the smallest and that size (the demo site's
    own fixed cost, models and pool sync, left out)."""
    ok = [
        r
        for r in results
        if "error" not in r
        and r["points_per_s"] >= 0.95 * r["target_points_per_s"]
        and r["delivered_per_s"] >= 0.95 * r["target_points_per_s"]
    ]
    if not ok:
        return "no size kept up with its target"
    best = max(ok, key=lambda r: r["target_points_per_s"])
    low = min(ok, key=lambda r: r["target_points_per_s"])
    line = f"kept up to ~{best['target_points_per_s']:,} points/s"
    if best["points_per_s"] > low["points_per_s"]:
        per_k = (best["cpu_pct"] - low["cpu_pct"]) / (best["points_per_s"] - low["points_per_s"])
        line += (
            f"; each further 1,000 points/s cost ~{per_k * 1000:.1f} % of one core "
            f"(between {low['points_per_s']:,} and {best['points_per_s']:,} points/s)"
        )
    return line
