"""The bus fans batches out and isolates failures; the supervisor restarts and stops."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from gateway.bus import Bus
from gateway.readings import Reading
from gateway.supervisor import ComponentState, Supervisor


def batch(n: int = 3) -> list[Reading]:
    return [Reading(f"d.p{i}", i) for i in range(n)]


def test_every_sink_gets_the_same_batch_and_a_failing_sink_is_isolated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Bus()
    got: list[list[Reading]] = []

    def broken(_: list[Reading]) -> None:
        raise RuntimeError("boom")

    bus.subscribe("broken", broken)
    bus.subscribe("ok", got.append)
    b = batch()
    with caplog.at_level(logging.ERROR):
        bus.publish(b)
        bus.publish(batch(2))
    assert got[0] is b and len(got) == 2
    assert bus.sink_errors() == {"broken": 2, "ok": 0}
    assert bus.batches == 2 and bus.readings == 5
    assert sum("bus subscriber failed" in r.message for r in caplog.records) == 1  # rate limited


async def test_a_full_queue_refuses_and_counts() -> None:
    bus = Bus()
    q = bus.queue("slow", maxsize=2)
    for _ in range(5):
        bus.publish(batch(4))
    assert q.qsize() == 2
    assert (q.dropped_batches, q.dropped_readings) == (3, 12)
    for _ in range(2):
        await q.get()
        q.task_done()
    assert await bus.drain(1.0)


async def test_supervisor_restarts_a_failing_component_with_backoff() -> None:
    sup = Supervisor(backoff_initial=0.01, backoff_max=0.04, rng=random.Random(1))
    runs = 0
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 4:
            raise ConnectionError(f"failure {runs}")
        done.set()
        await asyncio.Event().wait()

    sup.add("flaky", flaky)
    await asyncio.wait_for(done.wait(), 5)
    (status,) = sup.status()
    assert status.restarts == 3
    assert status.last_error == "ConnectionError: failure 3"
    assert status.state is ComponentState.RUNNING
    assert await sup.stop_all(1.0) == []
    assert status.state is ComponentState.STOPPED


async def test_a_component_that_returns_is_not_restarted() -> None:
    sup = Supervisor(backoff_initial=0.01)
    calls = 0

    async def once() -> None:
        nonlocal calls
        calls += 1

    sup.add("once", once)
    await asyncio.sleep(0.1)
    assert calls == 1
    assert sup.status()[0].state is ComponentState.FINISHED
    await sup.stop_all(1.0)


async def test_stop_reports_a_component_that_will_not_stop() -> None:
    sup = Supervisor()
    release = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await release.wait()  # ignores the first cancel until released
                return

    sup.add("stubborn", stubborn, group="x")
    await asyncio.sleep(0.01)
    problems = await sup.stop(sup.names("x"), timeout=0.1)
    assert problems == ["stubborn: did not stop within 0.1s"]
    release.set()
    await asyncio.sleep(0.01)


async def test_stop_repeats_a_cancel_that_was_swallowed() -> None:
    """Python 3.11's wait_for can drop a cancel when its result arrives at the same time;
    the supervisor delivers the cancel again instead of waiting out the whole timeout."""
    sup = Supervisor()
    swallowed = 0

    async def poller() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed == 0:  # behave like the race: lose the first cancel
                    swallowed += 1
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue
                raise

    sup.add("poller", poller, group="drivers")
    await asyncio.sleep(0.01)
    t0 = asyncio.get_running_loop().time()
    assert await sup.stop(["poller"], timeout=5.0) == []
    assert swallowed == 1
    assert asyncio.get_running_loop().time() - t0 < 2.0
