"""Ending a running block from outside: a cancellation, a worker's stop.

The runner runs a notebook inside one ``async with`` block, and two things
from outside may end it early: the execution's cancellation (requested
through the API, heard on the cancellation bus) and the worker's order to
hand its executions back (a rolling upgrade's SIGTERM, after the grace
period).  Each is a watcher task that waits for its condition and then
cancels the task running the block; the block leaves with an exception of
its own, so the runner tells them apart from each other and from any other
cancellation (which passes through unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

__all__ = ["cancel_when"]

_logger = structlog.get_logger("noteburst.runner")


@contextlib.asynccontextmanager
async def cancel_when(
    condition: Callable[[], Awaitable[None]],
    *,
    raises: type[Exception],
    name: str,
    on_watcher_failure: str | None = None,
) -> AsyncIterator[None]:
    """Cancel the block once ``condition()`` returns; it then raises ``raises``.

    Parameters
    ----------
    condition
        Returns when the block must end (at once if it already holds).
    raises
        What the block raises when ended so (instead of `CancelledError`).
    name
        Name of the watcher task.
    on_watcher_failure
        Logged as an error if ``condition`` fails (the block then runs on,
        no longer endable this way); None: not logged.
    """
    task = asyncio.current_task()
    assert task is not None
    fired = False

    async def watch() -> None:
        nonlocal fired
        await condition()
        fired = True
        task.cancel()

    def log_failure(watcher: asyncio.Task[None]) -> None:
        if on_watcher_failure is None or watcher.cancelled():
            return
        if watcher.exception() is not None:
            _logger.error(on_watcher_failure, exc_info=watcher.exception())

    watcher = asyncio.create_task(watch(), name=name)
    watcher.add_done_callback(log_failure)
    try:
        yield
    except asyncio.CancelledError:
        if fired and task.uncancel() == 0:
            raise raises from None
        raise
    finally:
        watcher.cancel()
        await asyncio.wait({watcher})
