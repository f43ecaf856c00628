"""The inference engine: models bound to points and items, run off the event loop.

Flow. The engine is a queue subscriber of the bus (`BatchQueue "inference"`): readings of
the points a model reads update that model's `RowState`; after each batch the model's
trigger (`run.on` in the manifest) decides whether a run is due:

* `change`   the inputs changed (debounced by `debounce_ms`): one row of the newest values;
* `readings` a window model: a row is taken when `row_key` changes (one row per cycle), or
             when every feature has a new reading since the last row; every `every_n_readings`
             rows on a full window, the window runs;
* `item`     an item (a fruit record or image) arrived from a driver's item topic.

A due run becomes a *job* on the model's own deque; one runner task per model takes all the
jobs waiting (up to `max_batch`), stacks them into one batch and makes ONE call in the worker
pool, so a burst of items costs one call, not one each, and onnxruntime never runs on the
event loop. Results go back on the loop: values become readings (`<id>.rul_cycles`, ...),
alarm transitions become alarm readings (`<id>.alarm_<name>`, true/false) and events
(`<id>.event`, a compact JSON record), all published on the bus like any other readings, so
they are stored, shown and forwarded with the telemetry. Every reading the engine makes
carries its origin in `reason`: `model:pdm-rul@1.0.0` or `fallback:pdm-rul@1.0.0`.

Failure. A model whose manifest, file or graph is unusable, or whose call raises, never
stops anything: the model's state says why, an event is emitted, and the manifest's fallback
rules produce the alarms (and, for graders, `grade: unknown`) from the same inputs until the
model works again. Every call is timed; `budget_raise_after` calls in a row over the latency
budget raise the `latency_over_budget` alarm, `budget_clear_after` in a row within it clear it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from drivers.base import Item
from gateway.errors import ConfigError, ModelError
from gateway.inference.config import (
    InferenceConfig,
    ModelBinding,
    check_binding,
    find_model,
    model_folders,
)
from gateway.inference.features import (
    InputError,
    RowState,
    WindowBuffer,
    decode_image,
    encode,
    item_id_from_record,
    record_row,
)
from gateway.inference.manifest import LoadedManifest, load_manifest
from gateway.inference.outputs import AlarmState, Decision, decide, decide_fallback
from gateway.inference.rules import Window
from gateway.inference.session import ModelSession, SessionSettings, load_session
from gateway.readings import Batch, Quality, Reading, Value
from gateway.stats import LatencyWindow

if TYPE_CHECKING:
    from gateway.bus import BatchQueue, Bus
    from gateway.configload import LoadedConfig

log = logging.getLogger("millrace.inference")

BUDGET_ALARM = "latency_over_budget"


class ModelState:
    LOADING = "loading"
    READY = "ready"  # the model runs
    FALLBACK = "fallback"  # the model is unusable; its manifest's rules run instead
    FAILED = "failed"  # nothing usable (no manifest): the binding does nothing
    DISABLED = "disabled"


@dataclass(slots=True)
class Job:
    """One run's input: a row/window (points models) or an item (payload models)."""

    x: np.ndarray | None
    ts_source: float | None
    values: dict[str, float] | None = None
    rows: np.ndarray | None = None
    item: Item | None = None
    item_id: str | None = None


@dataclass(slots=True)
class _Outcome:
    job: Job
    decision: Decision
    fallback_reason: str | None = None


@dataclass
class ModelInstance:
    """One binding of one model to one machine's points (or one item channel)."""

    binding: ModelBinding
    lm: LoadedManifest | None
    state: str = ModelState.LOADING
    error: str | None = None
    session: ModelSession | None = None
    budget_ms: float = 0.0
    latency: LatencyWindow = field(default_factory=lambda: LatencyWindow(10_000))
    calls: int = 0
    rows_run: int = 0
    failures: int = 0
    fallback_runs: int = 0
    over_budget: int = 0
    over_budget_streak: int = 0
    within_budget_streak: int = 0
    rows_incomplete: int = 0
    items_in: int = 0
    items_refused: int = 0
    items_bad: int = 0
    alarms: dict[str, AlarmState] = field(default_factory=dict)
    last_values: dict[str, Value] = field(default_factory=dict)
    last_run: float | None = None
    jobs: deque[Job] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # points-fed state
    names: list[str] = field(default_factory=list)
    encodings: list[dict[str, float] | None] = field(default_factory=list)
    row: RowState | None = None
    window: WindowBuffer | None = None
    rows_since_run: int = 0
    key_value: Value = None
    key_changed: bool = False
    reset_value: Value = None
    trigger_hit: bool = False
    timer: asyncio.TimerHandle | None = None

    @property
    def id(self) -> str:
        return self.binding.id

    @property
    def stamp(self) -> str:
        return self.lm.stamp if self.lm else f"{self.binding.model}@?"


class InferenceEngine:
    def __init__(
        self,
        loaded: LoadedConfig,
        publish: Callable[[Batch], None],
        points: Collection[str],
        item_channels: Collection[tuple[str, str]] = (),
    ) -> None:
        self.cfg: InferenceConfig = loaded.config.inference
        self._publish = publish
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._queue: BatchQueue | None = None
        self._runners: list[asyncio.Task[None]] = []
        self._stopping = False
        self.instances: list[ModelInstance] = []
        #: point id -> (instance, role, feature index); role: feature | row_key | reset
        self._routes: dict[str, list[tuple[ModelInstance, str, int]]] = {}
        self._items: dict[tuple[str, str], list[ModelInstance]] = {}
        folders = model_folders(self.cfg.model_paths, loaded.base_dir)
        problems: list[str] = []
        for i, b in enumerate(loaded.config.models):
            inst = self._instance(i, b, folders, points, item_channels, problems)
            self.instances.append(inst)
        if problems:
            raise ConfigError(problems)
        for inst in self.instances:
            self._route(inst)

    # -- construction ----------------------------------------------------------------------

    def _instance(
        self,
        i: int,
        b: ModelBinding,
        folders: list[Any],
        points: Collection[str],
        item_channels: Collection[tuple[str, str]],
        problems: list[str],
    ) -> ModelInstance:
        if not b.enabled:
            return ModelInstance(b, None, state=ModelState.DISABLED)
        folder = find_model(b.model, folders)
        if folder is None:
            problems.append(
                f"models.{i}.model: no {b.model}/manifest.yaml in "
                f"{', '.join(str(f) for f in folders)} (got {b.model})"
            )
            return ModelInstance(b, None, state=ModelState.FAILED)
        try:
            lm = load_manifest(folder)
        except ModelError as exc:
            # The manifest itself is broken: nothing to bind, no rules to fall back on. The
            # gateway still runs; /models and the event say why.
            return ModelInstance(b, None, state=ModelState.FAILED, error=str(exc))
        spec = lm.m.input
        problems += check_binding(
            i, b, [f.key for f in spec.features], spec.source, lm.m.files, points, item_channels
        )
        inst = ModelInstance(b, lm)
        inst.budget_ms = b.latency_budget_ms or lm.m.latency_budget_ms
        if spec.source == "points":
            ordered = sorted(spec.features, key=lambda f: f.index)
            inst.names = [f.key for f in ordered]
            inst.encodings = [spec.encoding_for(f) for f in ordered]
            inst.row = RowState(inst.names)
            if spec.window is not None:
                inst.window = WindowBuffer(spec.window.length, len(inst.names))
        return inst

    def _route(self, inst: ModelInstance) -> None:
        if inst.lm is None:
            return
        b = inst.binding
        if b.items is not None:
            self._items.setdefault((b.items.device, b.items.channel), []).append(inst)
            return
        for idx, name in enumerate(inst.names):
            pid = b.point_for(name)
            assert pid is not None  # check_binding refused unbound features
            self._routes.setdefault(pid, []).append((inst, "feature", idx))
        if b.row_key:
            self._routes.setdefault(b.row_key, []).append((inst, "row_key", -1))
        if b.reset_on:
            self._routes.setdefault(b.reset_on, []).append((inst, "reset", -1))

    def result_points(self) -> list[tuple[str, str, str, str | None]]:
        """(point id, model stamp, description, equipment) of every point it publishes."""
        out: list[tuple[str, str, str, str | None]] = []
        for inst in self.instances:
            if inst.lm is None:
                continue
            alarms = {t.alarm for t in inst.lm.m.thresholds if t.alarm}
            alarms |= {r.alarm for r in inst.lm.m.fallback_rules if r.alarm}
            alarms.add(BUDGET_ALARM)
            eq = inst.binding.equipment
            for p in inst.lm.result_points:
                out.append((f"{inst.id}.{p}", inst.stamp, f"{inst.lm.m.name} output {p}", eq))
            for a in sorted(alarms):
                out.append(
                    (f"{inst.id}.alarm_{a}", inst.stamp, f"alarm {a} (true while active)", eq)
                )
            out.append((f"{inst.id}.event", inst.stamp, "model events (JSON)", eq))
        return out

    # -- lifecycle ---------------------------------------------------------------------------

    def attach(self, bus: Bus) -> None:
        if self._routes:
            self._queue = bus.queue("inference", self.cfg.queue_max)

    async def start(self) -> None:
        """Load every session in the worker pool (graph optimisation takes a while) and
        start one runner per model. A model that does not load falls back; nothing raises."""
        self._loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(self.cfg.workers, thread_name_prefix="millrace-infer")
        loads = [inst for inst in self.instances if inst.lm is not None]
        results = await asyncio.gather(
            *(self._loop.run_in_executor(self._pool, self._load, inst) for inst in loads),
            return_exceptions=True,
        )
        for inst, res in zip(loads, results, strict=True):
            if isinstance(res, BaseException):
                inst.state = ModelState.FALLBACK
                inst.error = str(res)
                log.error(
                    "model not loaded: its fallback rules run instead",
                    extra={"model": inst.id, "stamp": inst.stamp, "error": str(res)},
                )
                self._emit_event(inst, {"type": "model", "name": "model_failed", "error": str(res)})
            else:
                inst.session = res
                inst.state = ModelState.READY
                self._emit_event(
                    inst,
                    {"type": "model", "name": "model_loaded", "providers": res.providers},
                )
        for inst in self.instances:
            if inst.state is ModelState.FAILED and inst.error:
                log.error("model unusable", extra={"model": inst.id, "error": inst.error})
            if inst.lm is not None:
                self._runners.append(
                    asyncio.create_task(self._runner(inst), name=f"model:{inst.id}")
                )

    def seed(self, latest: Collection[Reading]) -> None:
        """Start rows from the last known values, so a change model runs on the first change
        after a restart instead of waiting for every input to change once."""
        for r in latest:
            for inst, role, idx in self._routes.get(r.point, ()):
                if role == "feature" and inst.row is not None and inst.window is None:
                    enc = self._encoding(inst, idx)
                    inst.row.set(idx, encode(r.value, enc), r.quality, r.ts_source or r.ts_gateway)

    async def consume(self) -> None:
        """The bus queue consumer (a supervised component)."""
        if self._queue is None:
            return
        q = self._queue
        while True:
            batch = await q.get()
            try:
                self.on_batch(batch)
            finally:
                q.task_done()

    async def stop(self, timeout: float) -> list[str]:
        """Finish the jobs already waiting (bounded by `timeout`), then stop the runners and
        the worker pool. Returns problems met."""
        self._stopping = True
        problems: list[str] = []
        for inst in self.instances:
            if inst.timer is not None:
                inst.timer.cancel()
                inst.timer = None
                self._due(inst)
            inst.wake.set()
        if self._runners:
            done, pending = await asyncio.wait(self._runners, timeout=timeout)
            for t in pending:
                t.cancel()
                problems.append(f"inference: {t.get_name()} did not finish within {timeout}s")
            await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    problems.append(f"inference: {t.get_name()} failed: {t.exception()}")
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return problems

    # -- intake ------------------------------------------------------------------------------

    def on_batch(self, batch: Batch) -> None:
        routes = self._routes
        touched: dict[int, ModelInstance] = {}
        for r in batch:
            targets = routes.get(r.point)
            if targets is None:
                continue
            for inst, role, idx in targets:
                if role == "feature":
                    assert inst.row is not None
                    enc = self._encoding(inst, idx)
                    inst.row.set(idx, encode(r.value, enc), r.quality, r.ts_source or r.ts_gateway)
                    if self._triggers(inst, idx):
                        inst.trigger_hit = True
                elif role == "row_key":
                    if r.quality is not Quality.BAD and r.value != inst.key_value:
                        inst.key_changed = True
                        inst.key_value = r.value
                elif r.quality is not Quality.BAD and r.value != inst.reset_value:  # reset
                    if inst.reset_value is not None and inst.window is not None:
                        inst.window.clear()
                        inst.rows_since_run = 0
                    inst.reset_value = r.value
                touched[id(inst)] = inst
        for inst in touched.values():
            self._after_batch(inst)

    def submit_item(self, item: Item) -> bool:
        """The drivers' item sink (called on the loop). False: refused, the queue is full."""
        targets = self._items.get((item.source, item.channel))
        if not targets:
            return False
        accepted = True
        for inst in targets:
            inst.items_in += 1
            if self._stopping or len(inst.jobs) >= self.cfg.item_queue_max:
                inst.items_refused += 1
                accepted = False
                continue
            item_id = item.item_id
            if item_id is None and inst.lm is not None and inst.lm.m.input.kind == "record":
                item_id = item_id_from_record(item.payload)
            inst.jobs.append(Job(None, item.ts_gateway, item=item, item_id=item_id))
            inst.wake.set()
        return accepted

    def _encoding(self, inst: ModelInstance, idx: int) -> dict[str, float] | None:
        return inst.encodings[idx]

    def _triggers(self, inst: ModelInstance, idx: int) -> bool:
        assert inst.lm is not None
        run = inst.lm.m.run
        return run.on == "change" and (not run.points or inst.names[idx] in run.points)

    def _after_batch(self, inst: ModelInstance) -> None:
        assert inst.lm is not None and inst.row is not None
        run = inst.lm.m.run
        if run.on == "change":
            if not inst.trigger_hit:
                return
            inst.trigger_hit = False
            if run.debounce_ms <= 0 or self._loop is None:
                self._due(inst)
            elif inst.timer is None:
                inst.timer = self._loop.call_later(run.debounce_ms / 1000, self._debounced, inst)
            return
        # a window model: is a row complete?
        if inst.binding.row_key is not None:
            if not inst.key_changed:
                return
            inst.key_changed = False
        elif not inst.row.all_fresh():
            return
        self._take_row(inst)

    def _debounced(self, inst: ModelInstance) -> None:
        inst.timer = None
        self._due(inst)

    def _due(self, inst: ModelInstance) -> None:
        """A change model's run is due: one row of the newest values."""
        assert inst.row is not None
        if not inst.row.complete():
            inst.rows_incomplete += 1
            return
        ts = float(inst.row.ts.max())
        values = inst.row.as_dict()
        self._push(inst, Job(inst.row.take()[np.newaxis, :], ts, values=values))

    def _take_row(self, inst: ModelInstance) -> None:
        assert inst.row is not None and inst.window is not None and inst.lm is not None
        if not inst.row.complete():
            # "do not impute": an incomplete row is not added, and the run is skipped
            inst.rows_incomplete += 1
            inst.row.take()
            return
        values = inst.row.as_dict()
        inst.window.append(inst.row.take())
        inst.rows_since_run += 1
        run = inst.lm.m.run
        need = max(run.min_rows or inst.window.length, inst.window.length)
        if inst.window.count < min(need, inst.window.length):
            return
        if inst.rows_since_run < run.every_n_readings:
            return
        inst.rows_since_run = 0
        rows = inst.window.rows()
        self._push(
            inst,
            Job(rows[np.newaxis, :, :], float(inst.row.ts.max()), values=values, rows=rows),
        )

    def _push(self, inst: ModelInstance, job: Job) -> None:
        if len(inst.jobs) >= self.cfg.item_queue_max:
            inst.jobs.popleft()  # newest inputs matter most for a points model
            inst.rows_incomplete += 1
        inst.jobs.append(job)
        inst.wake.set()

    # -- running -----------------------------------------------------------------------------

    async def _runner(self, inst: ModelInstance) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not inst.jobs:
                if self._stopping:
                    return
                inst.wake.clear()
                await inst.wake.wait()
                continue
            n = min(len(inst.jobs), self.cfg.max_batch)
            jobs = [inst.jobs.popleft() for _ in range(n)]
            if inst.state == ModelState.READY and self._pool is not None:
                outcomes = await loop.run_in_executor(self._pool, self._call, inst, jobs)
            else:
                outcomes = [self._fallback(inst, j, inst.error or "model not loaded") for j in jobs]
            try:
                self._publish_outcomes(inst, outcomes)
            except Exception:  # a bug here must not kill the runner and stall the model
                log.exception("publishing model results failed", extra={"model": inst.id})

    def _load(self, inst: ModelInstance) -> ModelSession:
        assert inst.lm is not None
        settings = SessionSettings(
            threads=inst.binding.threads or self.cfg.threads, providers=tuple(self.cfg.providers)
        )
        return load_session(inst.lm, inst.binding.file, settings)

    def _call(self, inst: ModelInstance, jobs: list[Job]) -> list[_Outcome]:
        """In a worker thread: build the batch (decoding items), one session call, decide."""
        assert inst.lm is not None and inst.session is not None
        lm = inst.lm
        kind = lm.m.input.kind
        good: list[Job] = []
        rows: list[np.ndarray] = []
        outcomes: list[_Outcome] = []
        for j in jobs:
            if j.item is not None:
                try:
                    x = (
                        decode_image(j.item.payload, lm.m.input)
                        if kind == "image"
                        else record_row(j.item.payload, lm.m.input)
                    )
                except InputError as exc:
                    inst.items_bad += 1
                    outcomes.append(self._fallback(inst, j, f"bad item: {exc}"))
                    continue
                rows.append(x)
            else:
                assert j.x is not None
                rows.append(j.x[0])
            good.append(j)
        if not good:
            return outcomes
        batch = np.ascontiguousarray(np.stack(rows).astype(np.float32, copy=False))
        t0 = time.perf_counter()
        try:
            outs = inst.session.run(batch)
        except ModelError as exc:
            dt = time.perf_counter() - t0
            inst.failures += 1
            self._note_failure(inst, str(exc))
            return outcomes + [self._fallback(inst, j, str(exc)) for j in good]
        dt = time.perf_counter() - t0
        inst.calls += 1
        inst.rows_run += len(good)
        inst.latency.add(dt)
        self._check_budget(inst, dt)
        if inst.error is not None and inst.state == ModelState.READY:
            self._recovered(inst)
        for k, j in enumerate(good):
            outcomes.append(_Outcome(j, decide(lm, outs, k)))
        return outcomes

    def _fallback(self, inst: ModelInstance, job: Job, reason: str) -> _Outcome:
        assert inst.lm is not None
        inst.fallback_runs += 1
        window = None
        if job.rows is not None:
            window = Window(inst.names, job.rows)
        return _Outcome(job, decide_fallback(inst.lm, job.values, window), reason)

    def _check_budget(self, inst: ModelInstance, dt: float) -> None:
        """Runs in the worker thread; alarm changes are handed to the loop."""
        active = inst.alarms.get(BUDGET_ALARM)
        if dt * 1000 > inst.budget_ms:
            inst.over_budget += 1
            inst.over_budget_streak += 1
            inst.within_budget_streak = 0
            if (active is None or not active.active) and (
                inst.over_budget_streak == self.cfg.budget_raise_after
            ):
                self._to_loop(self._set_budget_alarm, inst, True, dt)
        else:
            inst.over_budget_streak = 0
            inst.within_budget_streak += 1
            if (
                active is not None
                and active.active
                and inst.within_budget_streak == self.cfg.budget_clear_after
            ):
                self._to_loop(self._set_budget_alarm, inst, False, dt)

    def _set_budget_alarm(self, inst: ModelInstance, on: bool, dt: float) -> None:
        state = AlarmState(on, "warning", round(dt * 1000, 3))
        self._alarm_transitions(
            inst,
            {BUDGET_ALARM: state},
            "model",
            time.time(),
            None,
            extra={"budget_ms": inst.budget_ms},
        )

    def _note_failure(self, inst: ModelInstance, error: str) -> None:
        first = inst.error is None
        inst.error = error
        if first:
            log.error(
                "model call failed: fallback rules run", extra={"model": inst.id, "error": error}
            )
            self._to_loop(
                self._emit_event, inst, {"type": "model", "name": "model_failed", "error": error}
            )

    def _recovered(self, inst: ModelInstance) -> None:
        inst.error = None
        log.info("model calls succeed again", extra={"model": inst.id})
        self._to_loop(self._emit_event, inst, {"type": "model", "name": "model_recovered"})

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(fn, *args)

    # -- results -----------------------------------------------------------------------------

    def _publish_outcomes(self, inst: ModelInstance, outcomes: list[_Outcome]) -> None:
        now = time.time()
        batch: Batch = []
        for o in outcomes:
            fb = o.fallback_reason is not None
            origin = f"{'fallback' if fb else 'model'}:{inst.stamp}"
            quality = Quality.UNCERTAIN if fb else Quality.GOOD
            ts_src = o.job.ts_source
            for name, value in o.decision.values.items():
                batch.append(Reading(f"{inst.id}.{name}", value, quality, now, ts_src, origin))
                inst.last_values[name] = value
            alarms = o.decision.alarms
            if not fb and inst.lm is not None:
                for name in inst.lm.fallback_only_alarms:
                    alarms.setdefault(name, AlarmState(False))
            batch += self._alarm_transitions(
                inst, alarms, "fallback" if fb else "model", now, ts_src, publish=False
            )
            for ev in o.decision.events:
                batch.append(self._event_reading(inst, ev, now, ts_src, origin, o.job.item_id))
            if o.job.item is not None:
                ev = {"type": "grade", "grade": o.decision.grade}
                for key in ("confidence", "class"):
                    v = o.decision.values.get(f"grade_{key}")
                    if v is not None:
                        ev[key] = v
                if fb:
                    ev["fallback_reason"] = o.fallback_reason
                batch.append(self._event_reading(inst, ev, now, ts_src, origin, o.job.item_id))
            inst.last_run = now
        if batch:
            self._publish(batch)

    def _alarm_transitions(
        self,
        inst: ModelInstance,
        alarms: dict[str, AlarmState],
        source: str,
        now: float,
        ts_src: float | None,
        *,
        publish: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> Batch:
        out: Batch = []
        origin = f"{source}:{inst.stamp}"
        for name, new in alarms.items():
            old = inst.alarms.get(name)
            if old is not None and old.active == new.active:
                old.value, old.labels = new.value, new.labels
                continue
            inst.alarms[name] = new
            out.append(
                Reading(f"{inst.id}.alarm_{name}", new.active, Quality.GOOD, now, ts_src, origin)
            )
            if old is None and not new.active:
                continue  # the first evaluation of a quiet alarm is a state, not an event
            ev: dict[str, Any] = {
                "type": "alarm",
                "name": name,
                "state": "raised" if new.active else "cleared",
                "severity": new.severity,
                "source": source,
            }
            if new.value is not None and math.isfinite(new.value):
                ev["value"] = new.value
            if new.labels:
                ev["labels"] = new.labels
            if new.rules:
                ev["rules"] = new.rules
            if extra:
                ev.update(extra)
            out.append(self._event_reading(inst, ev, now, ts_src, origin, None))
            log.log(
                logging.WARNING if new.active else logging.INFO,
                f"alarm {ev['state']}",
                extra={"model": inst.id, "alarm": name, "severity": new.severity},
            )
        if publish and out:
            self._publish(out)
        return out

    def _emit_event(self, inst: ModelInstance, ev: dict[str, Any]) -> None:
        origin = f"model:{inst.stamp}"
        self._publish([self._event_reading(inst, ev, time.time(), None, origin, None)])

    def _event_reading(
        self,
        inst: ModelInstance,
        ev: dict[str, Any],
        now: float,
        ts_src: float | None,
        origin: str,
        item_id: str | None,
    ) -> Reading:
        record = {**ev, "model": inst.lm.m.name if inst.lm else inst.binding.model}
        if inst.lm is not None:
            record["version"] = inst.lm.m.version
        if inst.binding.equipment:
            record["equipment"] = inst.binding.equipment
        if item_id is not None:
            record["item_id"] = item_id
        text = json.dumps(record, separators=(",", ":"), default=str)
        return Reading(f"{inst.id}.event", text, Quality.GOOD, now, ts_src, origin)

    # -- views -------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        out = []
        for inst in self.instances:
            p50, p99 = inst.latency.quantiles(0.5, 0.99)
            lm = inst.lm
            available = None
            if lm is not None and lm.health is not None:
                try:
                    available = lm.health.holds(
                        {
                            k: float(v)
                            for k, v in inst.last_values.items()
                            if isinstance(v, int | float)
                        }
                    )
                except ValueError:
                    available = None
            out.append(
                {
                    "id": inst.id,
                    "model": inst.binding.model,
                    "version": lm.m.version if lm else None,
                    "file": inst.binding.file,
                    "equipment": inst.binding.equipment,
                    "state": inst.state,
                    "error": inst.error,
                    "providers": inst.session.providers if inst.session else [],
                    "trigger": lm.m.run.on if lm else None,
                    "latency_budget_ms": inst.budget_ms or None,
                    "latency_p50_ms": None if p50 is None else round(p50 * 1000, 4),
                    "latency_p99_ms": None if p99 is None else round(p99 * 1000, 4),
                    "calls": inst.calls,
                    "rows_run": inst.rows_run,
                    "failures": inst.failures,
                    "fallback_runs": inst.fallback_runs,
                    "over_budget": inst.over_budget,
                    "rows_incomplete": inst.rows_incomplete,
                    "items_in": inst.items_in,
                    "items_refused": inst.items_refused,
                    "items_bad": inst.items_bad,
                    "queued": len(inst.jobs),
                    "active_alarms": sorted(n for n, a in inst.alarms.items() if a.active),
                    "last_run": inst.last_run,
                    "last_values": dict(inst.last_values),
                    "pool_available": available,
                }
            )
        return out

    def queue_dropped(self) -> int:
        return self._queue.dropped_readings if self._queue is not None else 0
