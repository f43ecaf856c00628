"""`millrace models bench`: how fast each model runs here, and what the engine adds.

For every model found (the built-in `models/` and any configured model paths), with real
sessions created exactly as the gateway creates them:

* `bare`   onnxruntime `session.run` on a prepared input, batch 1, at 1 thread and at the
           configured thread count: the floor no engine can beat;
* `engine` the engine's own path for one run, batch 1, at 1 thread: assemble the input as the
           trigger does (set every feature of the row / take the window / parse the JSON
           record), the wrapped call with its timing and budget check, the output decision
           (thresholds, alarms, events) and the readings it publishes (to a no-op). The
           difference of the medians is the engine's overhead;
* `decode` (image models) Pillow decode + resize of one camera image, reported apart: the
           bare model takes pixels, so this is preprocessing, not engine overhead;
* throughput in rows per second for batches of 1, 8 and 32 rows (one call each).

Inputs are synthetic but shaped and scaled like the real ones (window rows at the training
means, a 256 px image), so timings need no dataset. Figures depend on the machine: the
result carries the CPU, core count and onnxruntime version.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from drivers.base import Item
from gateway.errors import ModelError
from gateway.inference.config import BUILTIN_MODELS
from gateway.inference.engine import InferenceEngine, Job
from gateway.inference.manifest import LoadedManifest, load_manifest
from gateway.sysinfo import cpu_model

Progress = Callable[[str], None]


def discover(
    folders: list[Path], names: list[str] | None = None
) -> tuple[list[LoadedManifest], list[str]]:
    """Manifests in `folders` (first folder wins per name), and the problems of broken ones."""
    seen: dict[str, LoadedManifest] = {}
    problems: list[str] = []
    for d in folders:
        for m in sorted(d.glob("*/manifest.yaml")):
            if names and m.parent.name not in names:
                continue
            try:
                lm = load_manifest(m.parent)
            except ModelError as exc:
                problems.append(str(exc))
                continue
            seen.setdefault(lm.m.name, lm)
    return list(seen.values()), problems


def run_bench(
    names: list[str] | None = None,
    *,
    threads: int = 1,
    calls: int = 2000,
    folders: list[Path] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure every (or the named) model; return the machine and one entry per model file."""
    from gateway.configload import load_config_data

    say = progress or (lambda _msg: None)
    manifests, problems = discover(folders or [BUILTIN_MODELS], names)
    for p in problems:
        say(f"skipped: {p}")
    results: list[dict[str, Any]] = []
    for lm in manifests:
        for file_key in lm.m.files:
            say(f"{lm.m.name} ({file_key}): loading")
            binding, points, channels = _binding(lm, file_key)
            data = {
                "gateway": {"id": "bench", "site": "bench"},
                "inference": {"model_paths": [str(lm.folder.parent)], "threads": 1},
                "models": [binding],
            }
            loaded = load_config_data(data, base_dir=lm.folder.parent)
            engine = InferenceEngine(loaded, lambda _b: None, points, channels)
            inst = engine.instances[0]
            inst.session = engine._load(inst)
            inst.state = "ready"
            n = calls if lm.m.input.kind != "image" else max(200, calls // 4)
            entry = _measure(engine, inst, lm, file_key, n, threads, say)
            results.append(entry)
    return {"machine": machine(), "calls": calls, "results": results, "problems": problems}


def _measure(
    engine: InferenceEngine,
    inst: Any,
    lm: LoadedManifest,
    file_key: str,
    n: int,
    threads: int,
    say: Progress,
) -> dict[str, Any]:
    from gateway.inference.session import ModelSession, SessionSettings

    kind = lm.m.input.kind
    make_job, x1, decode = _inputs(engine, inst, lm)
    bare1 = inst.session.bare()
    feed = {lm.m.input.name: x1}
    say(f"{lm.m.name} ({file_key}): bare call at 1 thread")
    bare = _time(lambda: bare1.run(None, feed), n)
    say(f"{lm.m.name} ({file_key}): engine path")

    def engine_run() -> None:
        outcomes = engine._call(inst, [make_job()])
        engine._publish_outcomes(inst, outcomes)

    eng = _time(engine_run, n)
    multi: dict[str, float] | None = None
    if threads > 1:
        say(f"{lm.m.name} ({file_key}): bare call at {threads} threads")
        sess_n = ModelSession(lm, file_key, SessionSettings(threads=threads))
        multi = _time(lambda: sess_n.bare().run(None, feed), n)
    throughput = {}
    for b in (1, 8, 32):
        xb = np.repeat(x1, b, axis=0)
        fb = {lm.m.input.name: xb}
        t = _time(lambda fb=fb: bare1.run(None, fb), max(50, n // (4 * b)))
        throughput[str(b)] = round(b / (t["p50_ms"] / 1000), 1)
    dec = _time(decode, max(100, n // 4)) if decode is not None else None
    # The bare model takes pixels; decoding the camera image is preprocessing the engine
    # must do, reported on its own and not counted as the engine's overhead.
    dec_p50 = dec["p50_ms"] if dec else 0.0
    dec_p99 = dec["p99_ms"] if dec else 0.0
    entry: dict[str, Any] = {
        "model": lm.m.name,
        "version": lm.m.version,
        "file": file_key,
        "input": kind,
        "budget_ms": lm.m.latency_budget_ms,
        "bare_1t": bare,
        "engine_1t": eng,
        "engine_overhead_ms": round(eng["p50_ms"] - bare["p50_ms"] - dec_p50, 4),
        "engine_overhead_p99_ms": round(eng["p99_ms"] - bare["p99_ms"] - dec_p99, 4),
        "rows_per_s_by_batch": throughput,
    }
    if multi is not None:
        entry[f"bare_{threads}t"] = multi
    if dec is not None:
        entry["decode"] = dec
    return entry


def _inputs(
    engine: InferenceEngine, inst: Any, lm: LoadedManifest
) -> tuple[Callable[[], Job], np.ndarray, Callable[[], Any] | None]:
    """A job factory doing the trigger's assembly work, the bare model's input, a decoder."""
    from gateway.inference.features import decode_image
    from gateway.readings import Quality

    spec = lm.m.input
    kind = spec.kind
    if kind == "image":
        payload = _sample_image()
        item = Item("cam", "line", "image", "1", payload, "t", time.time())
        x = decode_image(payload, spec)[np.newaxis]
        return (
            (lambda: Job(None, item.ts_gateway, item=item, item_id="1")),
            x,
            (lambda: decode_image(payload, spec)),
        )
    values = _feature_values(lm)
    if kind == "record":
        record = json.dumps({f.field: v for f, v in zip(spec.features, values, strict=True)})
        item = Item("line", "line", "fruit", "1", record.encode(), "t", time.time())
        x = np.asarray([values], dtype=np.float32)
        return (lambda: Job(None, item.ts_gateway, item=item, item_id="1")), x, None
    row = inst.row
    now = time.time()
    if kind == "window":
        assert spec.window is not None and inst.window is not None
        for _ in range(spec.window.length):
            inst.window.append(np.asarray(values, dtype=np.float32))
        x = inst.window.window()

        def window_job() -> Job:
            for i, v in enumerate(values):
                row.set(i, v, Quality.GOOD, now)
            vals = row.as_dict()
            inst.window.append(row.take())
            rows = inst.window.rows()
            return Job(rows[np.newaxis], now, values=vals, rows=rows)

        return window_job, x, None
    x = np.asarray([values], dtype=np.float32)

    def row_job() -> Job:
        for i, v in enumerate(values):
            row.set(i, v, Quality.GOOD, now)
        return Job(row.take()[np.newaxis, :], now, values=row.as_dict())

    return row_job, x, None


def _feature_values(lm: LoadedManifest) -> list[float]:
    spec = lm.m.input
    scaling = getattr(spec, "scaling", None) or {}
    means = scaling.get("mean") if isinstance(scaling, dict) else None
    out = []
    for f in sorted(spec.features, key=lambda f: f.index):
        enc = spec.encoding_for(f)
        if enc:
            out.append(float(next(iter(enc.values()))))
        elif means and f.index < len(means):
            out.append(float(means[f.index]))
        else:
            out.append(1.0)
    return out


def _binding(
    lm: LoadedManifest, file_key: str
) -> tuple[dict[str, Any], list[str], list[tuple[str, str]]]:
    if lm.m.input.source == "payload":
        return (
            {
                "id": "bench",
                "model": lm.m.name,
                "file": file_key,
                "items": {"device": "d", "channel": "c"},
            },
            [],
            [("d", "c")],
        )
    points = [f"dev.{f.key}" for f in lm.m.input.features]
    binding: dict[str, Any] = {
        "id": "bench",
        "model": lm.m.name,
        "file": file_key,
        "input_prefix": "dev.",
    }
    return binding, points, []


def _sample_image() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(7)
    img = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _time(fn: Callable[[], Any], n: int) -> dict[str, float]:
    for _ in range(min(200, n)):
        fn()
    samples = []
    pc = time.perf_counter
    for _ in range(n):
        t0 = pc()
        fn()
        samples.append(pc() - t0)
    samples.sort()
    ms = [s * 1000 for s in samples]
    return {
        "p50_ms": round(ms[len(ms) // 2], 4),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 4),
        "mean_ms": round(statistics.fmean(ms), 4),
        "calls": n,
    }


def machine() -> dict[str, Any]:
    import onnxruntime as ort

    cpu = cpu_model()
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
    }


def table(report: dict[str, Any]) -> str:
    """The human-readable table `millrace models bench` prints."""
    m = report["machine"]
    lines = [
        f"machine: {m['cpu']} ({m['logical_cpus']} logical CPUs), onnxruntime {m['onnxruntime']}",
        "",
        f"{'model':<16} {'file':<11} {'bare p50/p99 ms':>16} {'engine p50/p99 ms':>18} "
        f"{'overhead ms':>11} {'budget':>7} {'rows/s b1/b8/b32':>24} {'decode p50 ms':>13}",
    ]
    for r in report["results"]:
        b, e, t = r["bare_1t"], r["engine_1t"], r["rows_per_s_by_batch"]
        dec = r.get("decode")
        lines.append(
            f"{r['model']:<16} {r['file']:<11} "
            f"{b['p50_ms']:>7.3f}/{b['p99_ms']:<8.3f} {e['p50_ms']:>8.3f}/{e['p99_ms']:<9.3f} "
            f"{r['engine_overhead_ms']:>11.3f} {r['budget_ms']:>7g} "
            f"{t['1']:>8.0f}/{t['8']:>7.0f}/{t['32']:<7.0f} "
            f"{_fmt(dec):>13}"
        )
    extra = [k for r in report["results"] for k in r if k.startswith("bare_") and k != "bare_1t"]
    if extra:
        lines.append("")
        for r in report["results"]:
            for k in [k for k in r if k.startswith("bare_") and k != "bare_1t"]:
                lines.append(
                    f"{r['model']:<16} {r['file']:<11} {k}: "
                    f"p50 {r[k]['p50_ms']:.3f} ms, p99 {r[k]['p99_ms']:.3f} ms"
                )
    for p in report.get("problems", []):
        lines.append(f"NOT MEASURED: {p}")
    lines.append("")
    lines.append(
        "1 thread, batch 1, after warm-up; engine = input assembly (image decode included)"
        " + call + decisions + readings; overhead = engine - bare - decode."
    )
    return "\n".join(lines)


def _fmt(timing: dict[str, float] | None) -> str:
    return "-" if timing is None else f"{timing['p50_ms']:.3f}"
