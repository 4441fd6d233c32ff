"""Readiness: whether this process can do its work right now.

Kubernetes asks two questions.  *Liveness* (``/healthz``) is answered by
the process being able to answer at all: restarting it cures nothing
else, so it checks nothing.  *Readiness* (``/readyz``) asks whether the
process can serve: the database and the queue both answer, each within a
short bound.  A pod that is not ready is taken out of its Service's
endpoints (no new requests) without being restarted, which is what a
database failover calls for.  The checks run concurrently and report each
dependency, so the answer says which one is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Final

import structlog

from ..exceptions import ServiceUnavailableError
from ..metrics import QUEUE_DEPTH
from ..storage.database import Database
from ..storage.taskqueue import TaskQueue

__all__ = ["CHECK_TIMEOUT_SECONDS", "HealthService", "Readiness"]

_logger = structlog.get_logger("noteburst.health")

CHECK_TIMEOUT_SECONDS: Final = 2.0
"""Bound on each dependency's answer; probes themselves time out at a few s."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """The answer of every dependency: ``"ok"`` or ``"unavailable"``."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        """Whether every dependency answered."""
        return all(answer == "ok" for answer in self.checks.values())


class HealthService:
    """Checks the dependencies of one process.

    Parameters
    ----------
    database
        The process's database.
    task_queue
        The process's queue (Redis, or the in-process one, which always
        answers).
    """

    def __init__(self, *, database: Database, task_queue: TaskQueue) -> None:
        self._db = database
        self._task_queue = task_queue

    async def readiness(self) -> Readiness:
        """Ask the database and the queue, concurrently, each bounded."""
        names = ("database", "queue")
        answers = await asyncio.gather(
            _answer("database", self._db.ping(CHECK_TIMEOUT_SECONDS)),
            _answer("queue", self._task_queue.ping(CHECK_TIMEOUT_SECONDS)),
        )
        return Readiness(dict(zip(names, answers, strict=True)))

    async def update_queue_depths(self) -> None:
        """Read how many executions wait per queue into the gauge.

        Done when metrics are scraped (a count over the claim index), so
        the gauge is as fresh as the scrape and costs nothing in between.

        Raises
        ------
        ServiceUnavailableError
            If the database cannot answer; the gauge keeps its last values.
        """
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                async with self._db.transaction() as tx:
                    depths = await tx.claims.queue_depths()
        except TimeoutError as exc:
            msg = f"no answer within {CHECK_TIMEOUT_SECONDS:g} s"
            raise ServiceUnavailableError("database", msg) from exc
        for queue, depth in depths.items():
            QUEUE_DEPTH.labels(queue.value).set(depth)


async def _answer(name: str, check: Awaitable[None]) -> str:
    """``"ok"``, or ``"unavailable"`` with the reason in the log.

    The reason (a driver's message) may name hosts and ports, and the
    probe's answer needs no credentials: it stays in the log.
    """
    try:
        await check
    except ServiceUnavailableError as exc:
        _logger.warning("Not ready", dependency=name, error=exc.detail)
        return "unavailable"
    return "ok"
