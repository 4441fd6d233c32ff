"""cancel_when: a block ended from outside raises its own error, nothing else does."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from noteburst.services.interruptions import cancel_when

WAIT = 10.0


class _EndedError(Exception):
    pass


@pytest.mark.asyncio
async def test_the_condition_ends_the_block_with_its_error() -> None:
    order = asyncio.Event()

    async def ordered() -> None:
        await order.wait()

    async def block() -> None:
        async with cancel_when(ordered, raises=_EndedError, name="test"):
            order.set()
            await asyncio.Event().wait()  # runs until ended from outside

    async with asyncio.timeout(WAIT):
        with pytest.raises(_EndedError):
            await block()


@pytest.mark.asyncio
async def test_a_condition_that_already_holds_ends_the_block_at_once() -> None:
    async def already() -> None:
        return

    async with asyncio.timeout(WAIT):
        with pytest.raises(_EndedError):
            async with cancel_when(already, raises=_EndedError, name="test"):
                await asyncio.Event().wait()


@pytest.mark.asyncio
async def test_another_cancellation_passes_through_unchanged() -> None:
    async def never() -> None:
        await asyncio.Event().wait()

    started = asyncio.Event()

    async def block() -> None:
        async with cancel_when(never, raises=_EndedError, name="test"):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(block())
    async with asyncio.timeout(WAIT):
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.asyncio
async def test_a_failing_condition_is_logged_and_the_block_runs_on() -> None:
    async def broken() -> None:
        raise RuntimeError("bus gone")

    with capture_logs() as logs:
        async with asyncio.timeout(WAIT):
            async with cancel_when(
                broken,
                raises=_EndedError,
                name="test",
                on_watcher_failure="watcher failed",
            ):
                for _ in range(3):
                    await asyncio.sleep(0)  # let the watcher fail meanwhile
            result = "finished"
    assert result == "finished"
    assert [entry["event"] for entry in logs] == ["watcher failed"]
