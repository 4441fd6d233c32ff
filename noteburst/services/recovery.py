"""Recovery: queue again what a lost worker or a lost queue message left behind.

A worker holds a lease on the execution it runs and keeps renewing it; a
worker that dies (kill -9, a lost node) stops renewing, and its execution's
lease lapses.  A queue message can be lost too (Redis restarted empty, a
send that failed after the commit).  Every worker process runs
:meth:`RecoverySweep.sweep` at start and then periodically (see
:mod:`noteburst.worker.runtime`):

* a running execution whose lease lapsed is queued again and a message
  sent, up to ``max_attempts`` starts; past that it fails with
  ``WORKER_LOST``, and one whose cancellation was requested ends
  ``CANCELLED`` (nobody wants it run again);
* a queued execution older than a lease gets its message sent again (a
  duplicate message finds the queue empty: the database is the queue).

Subscribers are woken only after the sweep's transaction commits, so none
looks for an event that is not committed yet.

A lapsed lease means a lost worker only if the worker could have renewed
it.  During a database outage nobody can, so right after one (the
database server started less than a lease ago, or this sweeper's previous
round found the database unavailable) lapsed leases are left alone for
that round: their workers, retrying with a short backoff, renew them or
store their results first, and a notebook that ran to its end is not run
again.  A worker that really died is then found a round later.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from ..config import WorkerSettings
from ..domain.execution import (
    ErrorCode,
    EventKind,
    ExecutionEvent,
    ExecutionFailure,
    ExecutionStatus,
)
from ..storage.database import Database
from ..storage.events import EventBus
from ..storage.taskqueue import TaskQueue
from ..storage.unit_of_work import UnitOfWork
from .webhook import WebhookService

__all__ = ["RecoverySweep"]

_logger = structlog.get_logger("noteburst.recovery")

_FOREVER = timedelta(days=36500)
"""A lease cutoff past any lease: every running execution counts as lost."""


class RecoverySweep:
    """Find lost executions and hand them to workers again.

    Parameters
    ----------
    database
        Where executions live.
    bus
        Told about each committed event, after the commit.
    task_queue
        Where messages for workers are sent again.
    workers
        ``config.workers``: how long a claim lasts without renewal
        (``lease_seconds``; queued executions older than this may have lost
        their message) and how many times an execution may be started
        (``max_attempts``).
    webhooks
        Woken for executions the sweep ends; `None`: no webhooks.
    """

    def __init__(
        self,
        *,
        database: Database,
        bus: EventBus,
        task_queue: TaskQueue,
        workers: WorkerSettings,
        webhooks: WebhookService | None = None,
    ) -> None:
        self._db = database
        self._bus = bus
        self._task_queue = task_queue
        self._lease = timedelta(seconds=workers.lease_seconds)
        self._max_attempts = workers.max_attempts
        self._webhooks = webhooks

    async def sweep(
        self, *, everything_running: bool = False, after_outage: bool = False
    ) -> int:
        """Queue again what a lost worker or a lost message left behind.

        Parameters
        ----------
        everything_running
            Treat every running execution as lost, whatever its lease: true
            at the start of the embedded default, where this process is the
            only worker.
        after_outage
            This sweeper's previous round found the database unavailable:
            leases that lapsed meanwhile are left to their workers this
            round (see the module documentation).

        Returns
        -------
        int
            How many executions were handed to workers again.
        """
        now = datetime.now(UTC)
        # Leases expiring before this are lost; at the start of the only
        # worker, every lease is (nobody else can renew one), however long
        # it was granted for.
        cutoff = now + _FOREVER if everything_running else now
        announcements: list[tuple[str, int]] = []
        resend: list[str] = []
        ended: list[str] = []
        async with self._db.transaction() as tx:
            queued, running = await tx.claims.find_orphans(
                now=cutoff,
                queued_before=now if everything_running else now - self._lease,
            )
            resend.extend(queued)
            if (
                running
                and not everything_running
                and (after_outage or await self._database_just_started(tx, now))
            ):
                _logger.info(
                    "Leases lapsed during a database outage; left to "
                    "their workers for one more round",
                    count=len(running),
                )
                running = []
            for execution_id in running:
                event = await self._settle_lost(
                    tx, execution_id, now=now, cutoff=cutoff
                )
                if event is None:
                    continue
                announcements.append((execution_id, event.sequence))
                if event.kind is EventKind.FINISHED:
                    ended.append(execution_id)
                else:
                    resend.append(execution_id)
        # Committed: now subscribers may look.
        for execution_id, sequence in announcements:
            self._bus.announce(execution_id, sequence)
        for execution_id in resend:
            await self._task_queue.enqueue_execution(execution_id)
        if resend:
            _logger.warning("Re-queued lost executions", count=len(resend))
        if self._webhooks is not None:
            for execution_id in ended:
                await self._webhooks.wake(execution_id)
        return len(resend)

    async def _database_just_started(self, tx: UnitOfWork, now: datetime) -> bool:
        started = await tx.claims.database_started_at()
        return started is not None and now - started < self._lease

    async def _settle_lost(
        self, tx: UnitOfWork, execution_id: str, *, now: datetime, cutoff: datetime
    ) -> ExecutionEvent | None:
        """Requeue one lost execution, or end it; return its new event.

        None if it is no longer lost (its worker renewed the lease, or it
        ended meanwhile).
        """
        execution = await tx.executions.get(execution_id)
        if execution is None:
            return None
        if execution.cancel_requested_at is not None:
            # Its worker was lost before it could end it.
            return await tx.claims.finish(
                execution_id,
                status=ExecutionStatus.CANCELLED,
                result_text=None,
                error=ExecutionFailure(
                    code=ErrorCode.CANCELLED,
                    message="cancelled; its worker was lost meanwhile",
                ),
                now=now,
            )
        if execution.attempts >= self._max_attempts:
            return await tx.claims.finish(
                execution_id,
                status=ExecutionStatus.FAILED,
                result_text=None,
                error=ExecutionFailure(
                    code=ErrorCode.WORKER_LOST,
                    message=(
                        f"the worker running this execution was lost "
                        f"{execution.attempts} times"
                    ),
                ),
                now=now,
            )
        return await tx.claims.requeue(
            execution_id, now=now, lease_expired_before=cutoff
        )
