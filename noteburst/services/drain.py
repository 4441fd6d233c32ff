"""A worker's graceful stop: finish what runs, then hand the rest back.

A rolling upgrade sends every old worker SIGTERM.  A worker then stops
taking work (Dramatiq stops its worker threads from taking messages, and
puts prefetched ones back in Redis), and its running executions get a
grace period to finish.  Whatever still runs when it ends is *handed
back*: the runner interrupts the kernel, puts the execution back in the
queue with its attempt given back, and sends a new wake-up, so another
worker runs it from the start.  It is not failed and not a lost worker's
(``WORKER_LOST`` is for crashes, which only the lease sweep can see).

:class:`WorkerDrain` is the one object the stopping worker and its runners
share, on the worker's event loop: runners count themselves in while they
run, and watch :attr:`WorkerDrain.hand_back`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Final

import structlog

__all__ = ["HAND_BACK_SECONDS", "WorkerDrain"]

_logger = structlog.get_logger("noteburst.worker")

HAND_BACK_SECONDS: Final = 15.0
"""Bound on the hand-back itself, after the grace period: interrupting the
kernels and writing the executions back (a database outage may hold the
write up; the lease sweep then requeues what was not written)."""


class WorkerDrain:
    """Running executions of one worker process, and the order to give them up.

    Create it on the worker's event loop.
    """

    def __init__(self) -> None:
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stopping = False
        """Set when the worker begins to stop: take no new execution."""
        self.hand_back = asyncio.Event()
        """Set when the grace period is over: give running executions back."""

    @property
    def running(self) -> int:
        """How many executions this worker is running now."""
        return self._running

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        """Count one execution as running for the block's duration."""
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def drain(self, grace_seconds: float) -> int:
        """Let running executions finish for ``grace_seconds``, then hand back.

        Returns
        -------
        int
            How many executions were still running when the grace period
            ended (and were told to hand themselves back).
        """
        self.stopping = True
        if self._running:
            _logger.info(
                "Worker stopping; letting running executions finish",
                running=self._running,
                grace_seconds=grace_seconds,
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_seconds):
                await self._idle.wait()
        left = self._running
        if left == 0:
            return 0
        _logger.warning(
            "Grace period over; handing running executions back to the queue",
            running=left,
        )
        self.hand_back.set()
        try:
            async with asyncio.timeout(HAND_BACK_SECONDS):
                await self._idle.wait()
        except TimeoutError:
            _logger.error(
                "Executions not handed back in time; the lease sweep will requeue them",
                running=self._running,
            )
        return left
