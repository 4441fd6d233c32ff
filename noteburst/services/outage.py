"""Riding out a database outage: retry with backoff, for a bounded time.

A PostgreSQL restart, a failover or a dropped connection makes every
transaction fail for a few seconds with
:class:`~noteburst.exceptions.ServiceUnavailableError`.  None of that is the
execution's fault, so a worker must not turn it into a failed execution,
and must not throw away a notebook it has already run: it keeps what it
has and writes it once the database answers again.  Every write a worker
retries is conditional on the row's state (claim a queued row, finish
*this* attempt), so repeating one whose commit did land before the
connection dropped changes nothing.

:func:`until_available` is that loop, shared by the runner (claim, store
the result, requeue), the progress writer and the cancellation watcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from ..exceptions import ServiceUnavailableError

__all__ = ["Backoff", "until_available"]

_T = TypeVar("_T")

_logger = structlog.get_logger("noteburst.outage")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between retries: ``first``, doubling, at most ``cap`` seconds.

    The cap is short because a worker holding a finished notebook should
    store it soon after the database is back: before another worker's
    recovery sweep could decide its lease lapsed.
    """

    first: float = 0.1
    cap: float = 2.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first)."""
        return min(self.first * 2.0**retry, self.cap)


async def until_available(
    operation: Callable[[], Awaitable[_T]],
    *,
    what: str,
    give_up_after: float | None,
    backoff: Backoff | None = None,
    **log_context: object,
) -> _T:
    """Run ``operation`` until the database lets it through.

    Parameters
    ----------
    operation
        Runs one transaction (called again for each retry).
    what
        What is being written, for the logs ("the result", "a claim").
    give_up_after
        Seconds of unavailability after which the last error is raised;
        `None` to retry until cancelled.
    backoff
        Delays between retries (default: :class:`Backoff`'s).
    **log_context
        Added to the log lines (e.g. ``execution_id``).

    Returns
    -------
    The operation's result.

    Raises
    ------
    ServiceUnavailableError
        Still unavailable after ``give_up_after`` seconds.
    """
    backoff = backoff or Backoff()
    loop = asyncio.get_running_loop()
    started = loop.time()
    retry = 0
    while True:
        try:
            result = await operation()
        except ServiceUnavailableError as exc:
            waited = loop.time() - started
            if give_up_after is not None and waited >= give_up_after:
                _logger.error(
                    "Database still unavailable; giving up",
                    what=what,
                    waited_seconds=round(waited, 1),
                    error=exc.detail,
                    **log_context,
                )
                raise
            delay = backoff.delay(retry)
            if retry == 0:
                _logger.warning(
                    "Database unavailable; retrying",
                    what=what,
                    error=exc.detail,
                    **log_context,
                )
            retry += 1
            await asyncio.sleep(delay)
            continue
        if retry:
            _logger.info(
                "Database available again",
                what=what,
                retries=retry,
                waited_seconds=round(loop.time() - started, 1),
                **log_context,
            )
        return result
