"""The supervisor owns every long-running task of the gateway.

Each component is a coroutine factory. The supervisor runs it in a task; if it raises, the
failure is logged with the component's name and the component is started again after a
capped exponential backoff with jitter (a component that then runs for `stable_after`
seconds gets its backoff reset). A component that returns normally is finished and not
restarted. Whoever starts a task cancels and awaits it: `stop()` does both, group by group,
each with a timeout, and collects errors rather than skipping steps.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("millrace.supervisor")

Factory = Callable[[], Coroutine[Any, Any, None]]


class ComponentState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    BACKING_OFF = "backing_off"
    FINISHED = "finished"
    STOPPED = "stopped"


@dataclass(slots=True)
class ComponentStatus:
    name: str
    group: str
    state: ComponentState = ComponentState.PENDING
    restarts: int = 0
    last_error: str | None = None
    started_at: float | None = None
    next_restart_in: float | None = None


@dataclass(slots=True)
class _Component:
    factory: Factory
    status: ComponentStatus
    task: asyncio.Task[None] | None = None
    backoff: float = 0.0
    failures: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        stable_after: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self._components: dict[str, _Component] = {}
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stable_after = stable_after
        self._rng = rng or random.Random()

    def add(self, name: str, factory: Factory, *, group: str = "main") -> None:
        """Register and immediately start `factory` under supervision (needs a running loop)."""
        if name in self._components:
            raise ValueError(f"component {name} is already supervised")
        comp = _Component(factory, ComponentStatus(name, group))
        self._components[name] = comp
        comp.task = asyncio.get_running_loop().create_task(self._guard(comp), name=name)

    def status(self) -> list[ComponentStatus]:
        return [c.status for c in self._components.values()]

    def names(self, group: str) -> list[str]:
        return [n for n, c in self._components.items() if c.status.group == group]

    async def stop(self, names: Iterable[str], timeout: float) -> list[str]:
        """Cancel the named components and wait for them; return what did not stop cleanly."""
        comps = [self._components[n] for n in names if n in self._components]
        pending = {c.task for c in comps if c.task is not None and not c.task.done()}
        deadline = time.monotonic() + timeout
        # A cancel can be swallowed: on Python 3.11 `asyncio.wait_for` (used inside client
        # libraries such as pymodbus) drops it when the awaited result arrives at the same
        # moment. So the cancel is delivered again until the task ends or time is up.
        while pending and (left := deadline - time.monotonic()) > 0:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=min(left, 0.5))
        problems = [f"{t.get_name()}: did not stop within {timeout}s" for t in pending]
        for c in comps:
            c.status.state = ComponentState.STOPPED
            c.status.next_restart_in = None
        return problems

    async def stop_all(self, timeout: float) -> list[str]:
        return await self.stop(list(self._components), timeout)

    async def _guard(self, comp: _Component) -> None:
        status = comp.status
        while True:
            status.state = ComponentState.RUNNING
            status.started_at = time.monotonic()
            status.next_restart_in = None
            try:
                await comp.factory()
            except asyncio.CancelledError:
                status.state = ComponentState.STOPPED
                raise
            except Exception as exc:
                ran = time.monotonic() - status.started_at
                if ran >= self._stable_after:
                    comp.backoff = 0.0
                comp.backoff = min(max(comp.backoff * 2, self._backoff_initial), self._backoff_max)
                delay = comp.backoff * (0.5 + self._rng.random() * 0.5)
                status.restarts += 1
                status.last_error = f"{type(exc).__name__}: {exc}"
                status.state = ComponentState.BACKING_OFF
                status.next_restart_in = delay
                log.error(
                    "component failed; restarting",
                    exc_info=exc,
                    extra={
                        "component": status.name,
                        "restarts": status.restarts,
                        "retry_in_s": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)
                continue
            status.state = ComponentState.FINISHED
            return
