"""The running gateway: config in, supervised components, ordered shutdown out.

Start-up: open the store (recovering after a crash), seed the latest-value cache from it,
subscribe the store and the cache to the bus, start one driver per connection and the
local API, all under the supervisor.

Shutdown, in this order, each step with its own timeout; a failing step is recorded and the
next one still runs (documented in docs/architecture.md):

  1. stop intake        cancel the drivers' poll loops (nothing is emitted after this)
  2. drain the bus      wait for queue subscribers to finish what they were given
  3. finish inference   model jobs already queued run; results are published; the pool stops
  4. flush the store    everything accepted (model results included) is committed to disk
  5. close uplinks      stop the runners (what is unconfirmed stays in the outbox), close
  6. close drivers      close device connections
  7. stop the API
  8. close the store
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.base import DeviceHealth, Driver, Item, Prober, ProbeResult, Writer
from drivers.registry import build_drivers
from gateway import __version__
from gateway.audit import AuditLog, audit_path, record_config
from gateway.auth import AccessControl, TokenStore
from gateway.auth.tokens import tokens_path
from gateway.bus import Bus
from gateway.check import heard
from gateway.configload import LoadedConfig
from gateway.errors import MillraceError, WriteRejected
from gateway.httpserve import bind, embedded_server
from gateway.inference.engine import InferenceEngine
from gateway.latest import LatestCache
from gateway.readings import Reading, Value
from gateway.sharing import SHARING_POINTS, UPDATE_POINT, SharingService
from gateway.store import Store, StoredReading
from gateway.supervisor import Supervisor
from gateway.types import DataClass
from sync.base import PointMeta, UplinkContext
from sync.pool import PoolSync
from sync.runner import RunnerSettings, UplinkRunner, build_runner

log = logging.getLogger("millrace.gateway")


class GatewayState(enum.StrEnum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class PointInfo:
    """What the API says about a point besides its value."""

    id: str
    device: str
    name: str
    unit: str
    data_type: str
    data_class: DataClass
    writable: bool
    equipment: tuple[str, ...]
    description: str
    #: Declared range of a writable point (the API refuses writes outside it).
    min: float | None = None
    max: float | None = None


class Gateway:
    def __init__(self, loaded: LoadedConfig, *, api: bool | None = None) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.bus = Bus()
        self.latest = LatestCache()
        self.store = Store(loaded.store_path(), self.config.store)
        self.supervisor = Supervisor()
        #: API tokens, the access policy and the audit log (gateway.auth, gateway.audit).
        self.tokens = TokenStore(tokens_path(loaded))
        self.access = AccessControl(
            self.tokens, org=self.config.gateway.org, site=self.config.gateway.site
        )
        self.audit = AuditLog(audit_path(loaded))
        self.state = GatewayState.CREATED
        self.started_at: float | None = None
        self._started_mono: float | None = None
        self._api_enabled = self.config.api.enabled if api is None else api
        self._api_server: Any = None
        self._api_socket: socket.socket | None = None
        self.api_port: int | None = None
        self.drivers: list[Driver] = build_drivers(
            loaded,
            self.bus.publish,
            dead_letter=self.store.dead_letter,
            item_sink=self._item_sink,
            committed=self.store.flush,
        )
        self.points = _point_index(loaded, self.drivers)
        self.engine = InferenceEngine(
            loaded, self.bus.publish, self.points.keys(), _item_channels(loaded)
        )
        self.points.update(_model_points(self.engine))
        self.uplinks: list[UplinkRunner] = [
            build_runner(u, self.store, self._uplink_context(u.name), self.config.outbox)
            for u in self.config.uplinks
        ]
        self._driver_of: dict[str, Driver] = {
            spec.device: drv for drv in self.drivers for spec in drv.points()
        }
        #: Shared machinery: registry, live status and availability, bookings, metering.
        pool_cfg = self.config.pool
        self.sharing = SharingService(
            self,
            loaded.store_path().parent,
            status_interval=pool_cfg.status_interval if pool_cfg else 1.0,
            horizon_days=pool_cfg.horizon_days if pool_cfg else 7,
        )
        self.add_sharing_points(m.id for m in self.config.equipment)
        self.pool: PoolSync | None = None
        if pool_cfg is not None:
            self.pool = self._build_pool(pool_cfg)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.state is not GatewayState.CREATED:
            raise RuntimeError(f"gateway cannot start from state {self.state}")
        self.state = GatewayState.STARTING
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        if self._api_enabled:
            self._api_socket = _bind(self.config.api.host, self.config.api.port)
            self.api_port = self._api_socket.getsockname()[1]
        await self.store.open()
        await record_config(self.audit, self.loaded)
        await self.sharing.open()
        self.latest.seed(
            Reading(r.point, r.value, r.quality, r.ts_gateway, r.ts_source, r.reason)
            for r in await self.store.latest()
        )
        for runner in self.uplinks:
            # Registered before any driver runs, so a new uplink starts with the first
            # reading of this start, not wherever its task happens to begin.
            runner.register()
            self.supervisor.add(f"uplink:{runner.name}", runner.run, group="uplinks")
        self.bus.subscribe("store", self.store.submit)
        self.bus.subscribe("latest", self.latest.update)
        self.engine.attach(self.bus)
        self.engine.seed(list(self.latest.all().values()))
        await self.engine.start()
        self.supervisor.add("inference", self.engine.consume, group="inference")
        self.supervisor.add("sharing", self.sharing.run, group="sharing")
        if self.pool is not None:
            self.supervisor.add("pool", self.pool.run, group="pool")
        for drv in self.drivers:
            self.supervisor.add(f"driver:{drv.key}", drv.run, group="drivers")
        if self._api_socket is not None:
            self._start_api(self._api_socket)
        self.state = GatewayState.RUNNING
        log.info(
            "gateway started",
            extra={
                "gateway": self.config.gateway.id,
                "site": self.config.gateway.site,
                "version": __version__,
                "devices": len(self.config.devices),
                "connections": len(self.drivers),
                "api": self.api_url,
            },
        )

    async def stop(self, *, step_timeout: float = 10.0) -> list[str]:
        """Shut down in the documented order; return the problems met (empty when clean)."""
        if self.state in (GatewayState.STOPPING, GatewayState.STOPPED):
            return []
        self.state = GatewayState.STOPPING
        problems: list[str] = []
        t0 = time.monotonic()

        problems += await self.supervisor.stop(self.supervisor.names("drivers"), step_timeout)
        problems += await self.supervisor.stop(self.supervisor.names("sharing"), step_timeout)
        if not await self.bus.drain(step_timeout):
            problems.append(f"bus: queues not drained within {step_timeout}s")
        problems += await self.engine.stop(step_timeout)
        problems += await self.supervisor.stop(self.supervisor.names("inference"), step_timeout)
        try:
            await self.store.flush(step_timeout)
        except Exception as exc:
            problems.append(f"store flush: {exc}")
        problems += await self.supervisor.stop(self.supervisor.names("uplinks"), step_timeout)
        problems += await self.supervisor.stop(self.supervisor.names("pool"), step_timeout)
        if self.pool is not None:
            await self.pool.close()
        for runner in self.uplinks:
            try:
                await asyncio.wait_for(runner.close(), step_timeout)
            except Exception as exc:
                problems.append(f"uplink {runner.name} close: {exc}")
        for drv in self.drivers:
            try:
                await asyncio.wait_for(drv.close(), step_timeout)
            except Exception as exc:
                problems.append(f"driver {drv.key} close: {exc}")
        if self._api_server is not None:
            self._api_server.should_exit = True
        problems += await self.supervisor.stop_all(step_timeout)
        if self._api_socket is not None:
            with contextlib.suppress(OSError):
                self._api_socket.close()
        try:
            await self.store.close(step_timeout)
        except Exception as exc:
            problems.append(f"store close: {exc}")
        await self.sharing.close()
        self.tokens.close()
        self.audit.close()
        self.state = GatewayState.STOPPED
        log.info(
            "gateway stopped",
            extra={"seconds": round(time.monotonic() - t0, 3), "problems": len(problems)},
        )
        for p in problems:
            log.error("shutdown problem", extra={"problem": p})
        return problems

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def uptime_s(self) -> float:
        """Seconds since start on the monotonic clock: a wall clock set forward or back
        (NTP after a cold boot) must not make the box look freshly started or hours old."""
        return 0.0 if self._started_mono is None else time.monotonic() - self._started_mono

    @property
    def api_url(self) -> str | None:
        if self.api_port is None:
            return None
        scheme = "https" if self.config.api.tls else "http"
        host = self.config.api.host
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{self.api_port}"

    def _uplink_context(self, name: str) -> UplinkContext:
        cache: dict[str, PointMeta | None] = {}

        def meta(point: str) -> PointMeta | None:
            """Built once per point: senders and runners ask for every reading they send."""
            if point in cache:
                return cache[point]
            info = self.points.get(point)
            found = None
            if info is not None:
                eq = info.equipment[0] if info.equipment else None
                found = PointMeta(info.device, info.name, info.unit, eq, info.data_class)
            if len(cache) < 200_000:
                cache[point] = found
            return found

        def quarantine(uplink: str, reason: str, r: StoredReading) -> None:
            record = {"id": r.id, "point": r.point, "value": r.value, "ts": r.ts_gateway}
            payload = json.dumps(record, default=str).encode()
            self.store.dead_letter(f"uplink:{uplink}", r.point, payload, reason)

        ident = self.config.gateway
        return UplinkContext(ident.id, ident.site, meta, quarantine, str(self.loaded.base_dir))

    def _build_pool(self, cfg: Any) -> PoolSync:
        """The pool sync loop and its outbox runner (an uplink named `pool`)."""
        sync = PoolSync(
            cfg,
            self.sharing,
            gateway_id=self.config.gateway.id,
            site=self.config.gateway.site,
            owner_ref_key=self.sharing.owner_key(),
            base_dir=str(self.loaded.base_dir),
        )

        async def audit(action: str, target: str, detail: dict[str, Any]) -> None:
            await self.audit.append(action, "pool-sync", target, detail)

        sync.audit_hook = audit
        ctx = self._uplink_context("pool")
        sync.sender.ctx = ctx
        outbox = self.config.outbox
        runner = UplinkRunner(
            sync.sender,
            self.store,
            ctx,
            RunnerSettings(
                batch_max=500,
                backoff_initial=outbox.backoff_initial,
                backoff_max=min(outbox.backoff_max, cfg.sync_interval),
                point_suffix=f".{UPDATE_POINT}",
            ),
        )
        self.uplinks.append(runner)
        self.sharing.on_update(runner.poke)
        return sync

    def add_sharing_points(self, machine_ids: Any) -> None:
        """Describe the readings the sharing service publishes for these machines."""
        for mid in machine_ids:
            for name in SHARING_POINTS:
                pid = f"{mid}.{name}"
                if pid in self.points and self.points[pid].data_type != "sharing":
                    raise MillraceError(
                        f"equipment {mid}: point {pid} already exists; the sharing service "
                        f"publishes it (rename the profile point)"
                    )
                what = f"equipment sharing: {name.removeprefix('sharing_')}"
                self.points[pid] = published_point(pid, "sharing", mid, what)

    def _item_sink(self, item: Item) -> bool:
        """Drivers are built before the engine (it needs their points), hence this hop."""
        return self.engine.submit_item(item)

    # -- queries and commands ------------------------------------------------------------

    def device_health(self) -> list[DeviceHealth]:
        return [h for drv in self.drivers for h in drv.health()]

    def online_share(self) -> tuple[int, int]:
        health = [h for h in self.device_health() if h.state != "disabled"]
        return sum(1 for h in health if h.state == "online"), len(health)

    async def write_point(self, point_id: str, value: Value) -> None:
        info = self.points.get(point_id)
        if info is None:
            raise WriteRejected(f"point {point_id}: no such point")
        driver = self._driver_of.get(info.device)
        if not isinstance(driver, Writer):
            raise WriteRejected(f"point {point_id}: its driver cannot write")
        await driver.write(info.device, info.name, value)

    async def probe(
        self, progress: Callable[[int, int, str], None] | None = None
    ) -> list[ProbeResult]:
        """Read every point once (the commissioning check). Connections are probed
        concurrently (each is independent); `progress(done, total, key)` after each. Once
        running, devices that send on their own (MQTT) are judged by what they sent."""
        probers = [d for d in self.drivers if isinstance(d, Prober)]
        done = 0

        async def one(drv: Prober) -> list[ProbeResult]:
            nonlocal done
            results = await drv.probe()
            done += 1
            if progress is not None:
                progress(done, len(probers), getattr(drv, "key", "?"))
            return results

        per_driver = await asyncio.gather(*(one(d) for d in probers))
        results = [r for results in per_driver for r in results]
        if self.state is GatewayState.RUNNING:  # what the listening drivers have heard
            listeners = [d for d in self.drivers if not isinstance(d, Prober)]
            declared = {e.id: e.points for e in self.config.equipment if e.points}
            now = time.time()
            for drv in listeners:
                results += heard(drv.points(), drv.health(), self.latest.get, now, declared)
        return results

    # -- API -----------------------------------------------------------------------------

    def _start_api(self, sock: socket.socket) -> None:
        from gateway.api import create_app

        tls = self.config.api.tls
        server = embedded_server(
            create_app(self),
            ssl_certfile=tls.cert if tls else None,
            ssl_keyfile=tls.key if tls else None,
        )
        self._api_server = server

        async def serve() -> None:
            await server.serve(sockets=[sock])

        self.supervisor.add("api", serve, group="api")


def _bind(host: str, port: int) -> socket.socket:
    try:
        return bind(host, port)
    except OSError as exc:
        raise MillraceError(f"api: {exc.strerror}") from exc


def _point_index(loaded: LoadedConfig, drivers: list[Driver]) -> dict[str, PointInfo]:
    """Every point the drivers declare, with the equipment it describes: an equipment entry
    covers the points of its device (all, or those it lists), or, for transports where
    the topic names the machine (MQTT), the points whose device is the equipment itself."""
    index: dict[str, PointInfo] = {}
    equipment = loaded.config.equipment
    for drv in drivers:
        for spec in drv.points():
            owners = tuple(
                eq.id
                for eq in equipment
                if eq.device == spec.source
                and spec.device in (spec.source, eq.id)
                and (not eq.points or spec.name in eq.points)
            )
            index[spec.id] = PointInfo(
                id=spec.id,
                device=spec.device,
                name=spec.name,
                unit=spec.unit,
                data_type=spec.data_type,
                data_class=spec.data_class,
                writable=spec.writable,
                equipment=owners,
                description=spec.description,
                min=spec.min,
                max=spec.max,
            )
    return index


def _item_channels(loaded: LoadedConfig) -> list[tuple[str, str]]:
    """(device, channel) of every item topic configured on a device."""
    return [
        (dev.id, it.name)
        for dev in loaded.config.devices
        for it in getattr(dev, "items", None) or []
    ]


def _model_points(engine: InferenceEngine) -> dict[str, PointInfo]:
    """The points the models publish, described like driver points (read-only)."""
    out: dict[str, PointInfo] = {}
    for pid, stamp, description, equipment in engine.result_points():
        out[pid] = published_point(pid, "model", equipment, f"{description} ({stamp})")
    return out


def published_point(pid: str, kind: str, equipment: str | None, description: str) -> PointInfo:
    """A point the gateway itself publishes (model results, sharing state), described like
    a driver point: public, read-only, no unit."""
    device, _, name = pid.partition(".")
    return PointInfo(
        id=pid,
        device=device,
        name=name,
        unit="",
        data_type=kind,
        data_class=DataClass.PUBLIC,
        writable=False,
        equipment=(equipment,) if equipment else (),
        description=description,
    )
