"""What `millrace run/validate/check` add on a real box: config from file or fleet variables,
the platform profile applied, and the services that only make sense there (balena fleet
tags, systemd readiness and watchdog).

Kept out of `gateway.cli` so the command line stays a thin layer and this is testable alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import platforms, sdnotify
from gateway.aio import cancel_until_done
from gateway.configload import LoadedConfig
from gateway.envconfig import load_deployed

if TYPE_CHECKING:
    from gateway.runtime import Gateway
    from sync.fleet import FleetReporter

log = logging.getLogger("millrace.deploy")

#: How long a box service (fleet reporter, systemd watchdog) may take to stop.
TASK_STOP_S = 5.0


def load_box(
    config: str | Path,
    platform: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    root: Path = Path("/"),
) -> tuple[LoadedConfig, platforms.Detected]:
    """The config as this box runs it: file (or MILLRACE_CONFIG_YAML), then MILLRACE_*
    overrides, then the platform profile's defaults for whatever is still unset."""
    env = os.environ if env is None else env
    loaded = load_deployed(config, env)
    det = platforms.resolve(platform, env=env, root=root)
    applied = platforms.apply_profile(loaded.config, det.profile)
    return dataclasses.replace(loaded, config=applied), det


@contextlib.asynccontextmanager
async def box_services(
    gateway: Gateway, platform: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[FleetReporter | None]:
    """Around a started gateway: tell systemd it is ready, ping its watchdog, report to balena.

    Every task started here is cancelled and awaited on exit (before the gateway stops, so
    the last tag written never claims a gateway that is already gone is healthy). Yields the
    fleet reporter, or None when fleet reporting is off.
    """
    from sync.fleet import FleetReporter, resolve_settings, snapshot_of

    env = os.environ if env is None else env
    tasks: list[asyncio.Task[None]] = []
    reporter: FleetReporter | None = None
    settings = resolve_settings(gateway.config.fleet, env)
    if settings is not None:
        reporter = FleetReporter(settings, snapshot_of(gateway, platform), env=env)
        tasks.append(asyncio.create_task(reporter.run(), name="fleet"))
        log.info("fleet reporting on", extra={"api": settings.api_url})
    interval = sdnotify.watchdog_interval(env)
    if interval is not None:
        tasks.append(
            asyncio.create_task(
                sdnotify.watchdog(lambda: gateway.state.value == "running", interval, env),
                name="systemd-watchdog",
            )
        )
    sdnotify.notify("READY=1", env)
    try:
        yield reporter
    finally:
        sdnotify.notify("STOPPING=1", env)
        for t in tasks:
            # until it ends: a fleet report finishing as the cancel arrives swallows it
            # (asyncio.wait_for on 3.11), and one cancel would leave the stop waiting for ever;
            # a cancel of this stop meanwhile must not leave the services running
            if not await cancel_until_done(t, TASK_STOP_S, outlast=True):
                log.error("box service did not stop", extra={"task": t.get_name()})
