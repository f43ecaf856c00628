"""Shared pieces of the issue-10 fault scenarios (`tests/integration/test_faults_*.py`).

Every scenario ends with the same three questions, answered the same way here:

* **Accounted for?** `quiesce()` stops intake the way `Gateway.stop()` begins (the drivers'
  poll loops are cancelled, nothing is emitted after that), commits what they produced and
  waits until every uplink has sent everything. From then on the store's content is final,
  so "readings published = committed + counted drops" and "stored = delivered + counted
  drops" can be checked with exact numbers instead of "roughly everything".
* **Delivered once, in order?** `platform_accounting()` reads what the platform's subscriber
  received: per-point order of first arrivals, duplicates only inside a re-sent batch (same
  `seq`), the batch chain without a hole (the same checks as the kill -9 test of
  test_uplinks_crash.py, imported from there so both say the same thing). The chain is
  checked on each message's first arrival: a broker stopped mid-flow delivers again, after
  its restart, what the platform had not acknowledged yet, possibly after newer messages.
* **Anything left running?** `task_snapshot()` / `leaked_tasks()`: every asyncio task the
  gateway (or a fault) started must be gone once it stopped.

`LoopLag` measures how late the event loop wakes a short sleeper: a fault that blocked the
loop (a synchronous network call, disk I/O on the loop) shows as lag, and every other part
of the gateway (polls, commits, the API) would stall with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from gateway.aio import cancel_until_done
from gateway.runtime import Gateway
from tests.integration.gwutil import eventually
from tests.integration.mosquitto import Mosquitto
from tests.integration.test_uplinks_crash import _check_chain, _first_arrivals

#: Uplink runner timing for the scenarios: short backoff so recoveries fit a test run.
FAST_OUTBOX: dict[str, Any] = {"batch_max": 500, "backoff_initial": 0.2, "backoff_max": 1}


def mqtt_uplink(broker: Mosquitto, **over: Any) -> dict[str, Any]:
    """The MQTT uplink `central` to a real Mosquitto, with timeouts short enough that a dead
    broker is noticed within a test (keepalive 5 s, connect 2 s, PUBACKs 3 s)."""
    return {
        "type": "mqtt",
        "name": "central",
        "host": "127.0.0.1",
        "port": broker.port,
        "keepalive": 5,
        "connect_timeout": 2,
        "ack_timeout": 3,
        **over,
    }


def task_snapshot() -> set[asyncio.Task[Any]]:
    return set(asyncio.all_tasks())


async def leaked_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    """Tasks started since `before` that are still running (after one loop turn, so a task
    that is finishing right now is not reported)."""
    await asyncio.sleep(0)
    return [
        f"{t.get_name()}:{t.get_coro()!r}"
        for t in task_snapshot() - before
        if not t.done() and t is not asyncio.current_task()
    ]


async def quiesce(gw: Gateway, *, timeout: float = 30.0) -> None:
    """Stop intake, commit it, and wait until every uplink is connected with nothing pending
    (checked twice, 0.2 s apart, so a batch being acked right now is not mistaken for done)."""
    problems = await gw.supervisor.stop(gw.supervisor.names("drivers"), 10.0)
    assert not problems, problems
    await gw.store.flush(10.0)

    def drained() -> bool:
        return all(u.status()["pending"] == 0 and u.connected for u in gw.uplinks)

    async def stays_drained() -> bool:
        if not drained():
            return False
        await asyncio.sleep(0.2)
        return drained()

    await eventually(stays_drained, timeout=timeout, what="every uplink drained")


@dataclass(frozen=True)
class Delivery:
    """What the platform received, against the ids the store committed."""

    stored: int  # distinct ids expected at the platform
    delivered: int  # of those, ids that arrived at least once
    duplicates: int  # arrivals beyond the first (at-least-once re-sends)
    resent_seqs: int  # batches (seq) the platform saw more than once
    extra: int  # ids that arrived but are not among the expected ones

    def line(self) -> str:
        return (
            f"stored {self.stored}, delivered {self.delivered}, duplicates "
            f"{self.duplicates} (re-sent batches {self.resent_seqs})"
        )


async def platform_accounting(
    batches: Any, expected: set[int], *, timeout: float = 20.0
) -> Delivery:
    """Wait until every expected id reached the platform (they were PUBACKed by the broker,
    so they are on their way), then check order, duplicates and the batch chain.

    `batches` is a callable returning the subscriber's decoded telemetry/events payloads
    (`PlatformSubscriber.batches`)."""

    def arrived() -> bool:
        got = {r["id"] for b in batches() for r in b["readings"]}
        return expected <= got

    with contextlib.suppress(AssertionError):
        await eventually(arrived, timeout=timeout, what="every stored reading at the platform")
    got = [b for b in batches() if not b.get("replay")]
    first, dups = _first_arrivals(got)  # asserts per-point order; dups only in a re-sent seq
    # A message can arrive twice: re-sent by the gateway (same batch again), or delivered
    # again by a broker that was stopped before the platform's PUBACK reached it, which can
    # come after newer messages. The chain is checked on first arrivals of each message.
    seen: set[tuple[Any, ...]] = set()
    once: list[dict[str, Any]] = []
    repeated: set[int] = set()
    for b in got:
        key = (b["seq"], b["part"], b["prev_id"], b["last_id"], b["readings"][0]["id"])
        if key in seen:
            repeated.add(b["seq"])
            continue
        seen.add(key)
        once.append(b)
    rebuilt = _check_chain(once) if once else set()  # seq 1, 2, ... with no hole
    ids = set(first)
    return Delivery(
        stored=len(expected),
        delivered=len(ids & expected),
        duplicates=dups.total(),
        resent_seqs=len(repeated | rebuilt),
        extra=len(ids - expected),
    )


class LoopLag:
    """How late the event loop wakes a 20 ms sleeper, worst case since the last `reset()`.

    Use as `async with LoopLag() as lag: ...`; the sampling task is cancelled and awaited on
    exit, so it is not a leak itself."""

    PERIOD = 0.02

    def __init__(self) -> None:
        self.worst = 0.0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.PERIOD)
            self.worst = max(self.worst, time.monotonic() - t - self.PERIOD)
            self.samples += 1

    def reset(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="loop-lag")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            await cancel_until_done(self._task)


def counts_by_reason(rows: Any) -> Counter[str]:
    """BAD readings per reason prefix (the part before the first ':')."""
    return Counter(
        (r.reason or "").split(":")[0] for r in rows if getattr(r.quality, "name", "") == "BAD"
    )
