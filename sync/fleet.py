"""balena fleet integration: read this device's variables and tags, report health as tags.

On a balena fleet each box is a device in balena's API. The gateway reads its own device
(name, fleet and device variables, tags) at start-up and then, every `fleet.interval`,
writes what an operator wants to see across hundreds of boxes without opening each one:

    millrace.version        gateway version                      0.1.0
    millrace.status         /health's status                     ok | degraded | starting
    millrace.devices        devices online / devices configured  3/4
    millrace.online_share   online devices as a fraction         0.75
    millrace.platform       the platform profile in use          pi4
    millrace.store_queued   readings waiting for the store       0

balena's dashboard filters and sorts devices by tag, so "every box with a device down" is
one filter. A tag is written only when its value changed (the API is rate-limited per key).

balena-sdk is blocking (requests), so every call runs in a worker thread; the event loop
only takes the health snapshot. The reporter is on when `fleet.enabled` is true, or, by
default, when the balena supervisor gave the container `BALENA_API_KEY` and
`BALENA_DEVICE_UUID` (compose label `io.balena.features.balena-api: '1'`). A failed call is
logged once per failure streak and retried with a capped backoff; it never stops the gateway.

Fleet variables arrive in the container's environment anyway (see gateway.envconfig); reading
them through the API lets the gateway log which `MILLRACE_*` variable changed in the dashboard
since the process started (balena restarts the container to apply it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from gateway.errors import TransportError
from gateway.types import Duration

log = logging.getLogger("millrace.fleet")

TAG_PREFIX = "millrace."


class FleetConfig(BaseModel):
    """`fleet:` in the gateway YAML. Everything defaults to what balenaOS provides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: None: on when BALENA_API_KEY and BALENA_DEVICE_UUID are set (inside balenaOS).
    enabled: bool | None = None
    #: The API base; default BALENA_API_URL, else balena-cloud. openBalena: your API's URL.
    api_url: str | None = None
    #: Default BALENA_API_KEY (the device's own key, given to the container by balenaOS).
    api_key: SecretStr | None = None
    #: Default BALENA_DEVICE_UUID.
    device_uuid: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,62}$")
    #: How often health is reported as tags.
    interval: Duration = 300.0
    #: Seconds one round of API calls may take before it counts as failed. balena-sdk's
    #: requests have no timeout of their own: a hung call is abandoned in its thread.
    timeout: Duration = 60.0


@dataclass(frozen=True)
class FleetSettings:
    """A resolved FleetConfig: every value present."""

    api_url: str
    api_key: str
    device_uuid: str
    interval: float
    timeout: float


def resolve_settings(
    cfg: FleetConfig, env: Mapping[str, str] | None = None
) -> FleetSettings | None:
    """The settings to run with, or None when the reporter is off. Pure given `env`."""
    env = os.environ if env is None else env
    if cfg.enabled is False:
        return None
    key = cfg.api_key.get_secret_value() if cfg.api_key else env.get("BALENA_API_KEY", "")
    uuid = cfg.device_uuid or env.get("BALENA_DEVICE_UUID", "")
    if not key or not uuid:
        if cfg.enabled:
            raise ValueError(
                "fleet.enabled is true but no API key and device uuid (fleet.api_key / "
                "fleet.device_uuid or BALENA_API_KEY / BALENA_DEVICE_UUID)"
            )
        return None
    url = cfg.api_url or env.get("BALENA_API_URL") or "https://api.balena-cloud.com"
    return FleetSettings(
        api_url=url.rstrip("/") + "/",
        api_key=key,
        device_uuid=uuid,
        interval=cfg.interval,
        timeout=cfg.timeout,
    )


@dataclass(frozen=True)
class DeviceInfo:
    """This device as balena sees it."""

    id: int
    name: str
    #: Fleet variables overlaid with device variables (the device's win, as on the box).
    variables: dict[str, str]
    tags: dict[str, str]


@dataclass(frozen=True)
class HealthSnapshot:
    version: str
    status: str
    devices_online: int
    devices_total: int
    platform: str
    store_queued: int


def health_tags(h: HealthSnapshot) -> dict[str, str]:
    """The tags for one snapshot. Pure."""
    share = h.devices_online / h.devices_total if h.devices_total else 1.0
    return {
        f"{TAG_PREFIX}version": h.version,
        f"{TAG_PREFIX}status": h.status,
        f"{TAG_PREFIX}devices": f"{h.devices_online}/{h.devices_total}",
        f"{TAG_PREFIX}online_share": f"{share:.2f}",
        f"{TAG_PREFIX}platform": h.platform,
        f"{TAG_PREFIX}store_queued": str(h.store_queued),
    }


def changed_variables(remote: Mapping[str, str], local: Mapping[str, str]) -> list[str]:
    """`MILLRACE_*` variables whose dashboard value differs from this process's. Pure."""
    names = {n for n in (*remote, *local) if n.startswith("MILLRACE_")}
    return sorted(n for n in names if remote.get(n, "") != local.get(n, ""))


class BalenaFleet:
    """Blocking balena-sdk calls for one device. Only this class imports balena-sdk."""

    def __init__(self, s: FleetSettings) -> None:
        import balena
        from balena.auth import Auth
        from balena.models import Models
        from balena.pine import PineClient

        self.settings = s
        sdk = balena.Balena({"data_directory": False})
        # The SDK derives its endpoint from `balena_host` as https://api.<host>/; openBalena
        # and BALENA_API_URL give a full URL instead, so the endpoint is set before the pine
        # client (which reads it once) is built.
        sdk.settings.set("api_endpoint", s.api_url)
        sdk.settings.set("pine_endpoint", f"{s.api_url}{sdk.settings.get('api_version')}/")
        sdk.pine = PineClient(sdk.settings, balena.__version__)
        sdk.auth = Auth(sdk.pine, sdk.settings)
        sdk.models = Models(sdk.pine, sdk.settings)
        sdk.auth.login_with_token(s.api_key)
        self._sdk = sdk
        self._device_id: int | None = None
        #: Tag values known to be on the server (written by us or read).
        self._tags: dict[str, str] = {}

    def device(self) -> DeviceInfo:
        """Read the device, its fleet's and its own variables, and its tags."""
        with _wrapped("read the device"):
            return self._device()

    def _device(self) -> DeviceInfo:
        m = self._sdk.models
        dev = m.device.get(
            self.settings.device_uuid, {"$select": ["id", "device_name", "belongs_to__application"]}
        )
        dev_id = int(dev["id"])
        self._device_id = dev_id
        app = dev.get("belongs_to__application") or {}
        app_id = app.get("__id") if isinstance(app, dict) else app
        variables: dict[str, str] = {}
        if app_id is not None:
            for v in m.application.env_var.get_all_by_application(int(app_id)):
                variables[v["name"]] = v["value"]
        for v in m.device.env_var.get_all_by_device(dev_id):
            variables[v["name"]] = v["value"]
        tags = {t["tag_key"]: t["value"] for t in m.device.tags.get_all_by_device(dev_id)}
        self._tags = dict(tags)
        return DeviceInfo(dev_id, str(dev.get("device_name", "")), variables, tags)

    def set_tags(self, tags: Mapping[str, str]) -> list[str]:
        """Write the tags whose value differs from what the server has; the keys written."""
        if self._device_id is None:
            self.device()
        written = []
        with _wrapped("write device tags"):
            for key, value in tags.items():
                if self._tags.get(key) == value:
                    continue
                self._sdk.models.device.tags.set(self._device_id, key, value)
                self._tags[key] = value
                written.append(key)
        return written


@contextlib.contextmanager
def _wrapped(what: str) -> Iterator[None]:
    """balena-sdk's errors (its RequestError has an empty str()) as a TransportError that
    says what failed, the HTTP status and the server's words."""
    try:
        yield
    except TransportError:
        raise
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        body = str(getattr(exc, "body", "") or exc)[:200]
        where = f"HTTP {status}: " if status is not None else f"{type(exc).__name__}: "
        raise TransportError(f"balena API: cannot {what} ({where}{body})") from exc


@dataclass
class FleetStats:
    reports: int = 0
    failures: int = 0
    tags_written: int = 0
    last_error: str | None = None
    device: DeviceInfo | None = None
    changed: list[str] = field(default_factory=list)


class FleetReporter:
    """Reads the device once, then reports health tags every interval until cancelled.

    `snapshot` is called on the event loop (it reads gateway state); everything that talks
    to balena runs in a worker thread. Cancel the task running `run()` to stop; a call in
    flight finishes in its thread and its result is dropped.
    """

    def __init__(
        self,
        settings: FleetSettings,
        snapshot: Callable[[], HealthSnapshot],
        *,
        env: Mapping[str, str] | None = None,
        client_factory: Callable[[FleetSettings], BalenaFleet] = BalenaFleet,
        backoff_initial: float = 10.0,
    ) -> None:
        self.settings = settings
        self._snapshot = snapshot
        self._env = dict(os.environ if env is None else env)
        self._factory = client_factory
        self._client: BalenaFleet | None = None
        self._backoff_initial = backoff_initial
        self.stats = FleetStats()

    def _read_device(self) -> DeviceInfo:
        if self._client is None:
            self._client = self._factory(self.settings)
        return self._client.device()

    def _report(self, tags: dict[str, str]) -> list[str]:
        if self._client is None:
            self._client = self._factory(self.settings)
        return self._client.set_tags(tags)

    async def report_once(self) -> list[str]:
        """One round: read the device if not yet read, then write changed tags."""
        if self.stats.device is None:
            info = await asyncio.wait_for(
                asyncio.to_thread(self._read_device), self.settings.timeout
            )
            self.stats.device = info
            self.stats.changed = changed_variables(info.variables, self._env)
            log.info(
                "fleet device",
                extra={"balena_device": info.name, "tags": len(info.tags)},
            )
            if self.stats.changed:
                log.warning(
                    "fleet variables differ from this process's environment "
                    "(balena restarts the container to apply them)",
                    extra={"variables": self.stats.changed},
                )
        written = await asyncio.wait_for(
            asyncio.to_thread(self._report, health_tags(self._snapshot())), self.settings.timeout
        )
        self.stats.reports += 1
        self.stats.tags_written += len(written)
        return written

    async def run(self) -> None:
        delay = self._backoff_initial
        failing = False
        while True:
            try:
                await self.report_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # balena-sdk raises requests' and its own errors
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                if not failing:
                    log.warning("fleet report failed", extra={"error": self.stats.last_error})
                failing = True
                wait = min(delay, self.settings.interval) * random.uniform(0.8, 1.2)
                delay = min(delay * 2, self.settings.interval)
                await asyncio.sleep(wait)
                continue
            if failing:
                log.info("fleet report recovered", extra={"failures": self.stats.failures})
            failing, delay = False, self._backoff_initial
            await asyncio.sleep(self.settings.interval)


def snapshot_of(gateway: Any, platform: str) -> Callable[[], HealthSnapshot]:
    """A snapshot function over a running `gateway.runtime.Gateway` (same rules as /health)."""
    from gateway import __version__

    def snap() -> HealthSnapshot:
        online, total = gateway.online_share()
        state = gateway.state.value
        status = "ok" if online == total else "degraded"
        if state != "running":
            status = state
        return HealthSnapshot(
            version=__version__,
            status=status,
            devices_online=online,
            devices_total=total,
            platform=platform,
            store_queued=gateway.store.stats().queued,
        )

    return snap
