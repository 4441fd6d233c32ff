"""WorkerDrain: the grace period, then the order to hand back.

The real stop, with processes, is in ``tests/worker/shutdown_test.py``;
these pin the rules: an idle worker stops at once, work that ends within
the grace period is not handed back, work that does not is told to, and
the drain waits (bounded) for it to be handed back.
"""

from __future__ import annotations

import asyncio

import pytest

from noteburst.services.drain import WorkerDrain

WAIT = 10.0


@pytest.mark.asyncio
async def test_an_idle_worker_drains_at_once() -> None:
    drain = WorkerDrain()
    async with asyncio.timeout(WAIT):
        assert await drain.drain(grace_seconds=3600) == 0
    assert drain.stopping
    assert not drain.hand_back.is_set()


@pytest.mark.asyncio
async def test_work_ending_within_the_grace_period_is_not_handed_back() -> None:
    drain = WorkerDrain()
    started, done = asyncio.Event(), asyncio.Event()

    async def execution() -> None:
        with drain.run():
            started.set()
            await done.wait()

    running = asyncio.create_task(execution())
    await started.wait()
    assert drain.running == 1
    draining = asyncio.create_task(drain.drain(grace_seconds=3600))
    # It waits for the execution (a bounded check that it did not return).
    finished, _ = await asyncio.wait({draining}, timeout=0.1)
    assert not finished
    assert drain.stopping
    done.set()
    async with asyncio.timeout(WAIT):
        assert await draining == 0
        await running
    assert not drain.hand_back.is_set()


@pytest.mark.asyncio
async def test_work_still_running_after_the_grace_period_is_handed_back() -> None:
    drain = WorkerDrain()
    started = asyncio.Semaphore(0)

    async def execution() -> None:
        with drain.run():
            started.release()
            await drain.hand_back.wait()  # as the runner does: stop, requeue

    running = [asyncio.create_task(execution()) for _ in range(2)]
    for _ in running:
        await started.acquire()
    async with asyncio.timeout(WAIT):
        assert await drain.drain(grace_seconds=0.05) == 2
        await asyncio.gather(*running)
    assert drain.hand_back.is_set()
    assert drain.running == 0
