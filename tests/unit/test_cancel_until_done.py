"""`gateway.aio.cancel_until_done`: a helper task whose loop wraps `asyncio.wait_for` can
swallow one cancel on Python 3.11 (the cancel meets the awaited result), which once left the
MQTT driver's acknowledgement task waiting for ever after its driver stopped. The race is
made here on purpose, not left to timing."""

from __future__ import annotations

import asyncio

from gateway.aio import cancel_until_done


async def _looping_helper(results: asyncio.Queue[asyncio.Future[int]], rounds: list[int]) -> None:
    """Like the ack task: wait for work, then wait_for its result, forever."""
    while True:
        fut = await results.get()
        rounds.append(await asyncio.wait_for(_result(fut), 10))


async def _result(fut: asyncio.Future[int]) -> int:
    return await fut


async def _swallowed_cancel() -> tuple[asyncio.Task[None], list[int]]:
    """A helper that has just swallowed a cancel: cancelled as its awaited result came."""
    work: asyncio.Queue[asyncio.Future[int]] = asyncio.Queue()
    rounds: list[int] = []
    task = asyncio.create_task(_looping_helper(work, rounds))
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    work.put_nowait(fut)
    await asyncio.sleep(0.01)
    fut.set_result(1)
    await asyncio.sleep(0)  # the inner awaitable completes; wait_for wakes on the next turn
    task.cancel()
    await asyncio.sleep(0.05)
    return task, rounds


async def test_one_cancel_can_be_swallowed_and_repeating_it_ends_the_task() -> None:
    task, rounds = await _swallowed_cancel()
    swallowed = not task.done()
    if swallowed:  # what Python 3.11 does; a later Python may end it at the first cancel
        assert rounds == [1]  # it went on to wait for its next round
    assert await cancel_until_done(task, timeout=2.0) is True
    assert task.done() and task.cancelled()


async def test_a_task_that_will_not_end_is_reported_after_the_timeout() -> None:
    stubborn_now = True

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                if not stubborn_now:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_until_done(task, timeout=0.3) is False
    assert not task.done()
    stubborn_now = False
    assert await cancel_until_done(task, timeout=1.0) is True


async def test_the_callers_cancel_is_raised_unless_outlasted() -> None:
    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # winding down
            raise

    for outlast in (False, True):
        helper = asyncio.create_task(slow_to_stop())
        await asyncio.sleep(0)
        caller = asyncio.create_task(cancel_until_done(helper, 5.0, outlast=outlast))
        await asyncio.sleep(0.05)
        caller.cancel()
        done = await asyncio.gather(caller, return_exceptions=True)
        if outlast:
            assert done == [True] and helper.cancelled()
        else:
            assert isinstance(done[0], asyncio.CancelledError)
            await asyncio.gather(helper, return_exceptions=True)
