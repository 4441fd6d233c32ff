"""Claims, leases and queue order: which execution a worker takes, and its end.

**The database is the queue.**  A worker's message only wakes it; whichever
execution the message named, :meth:`ClaimStore.claim_next` takes the first
queued execution in claim order: interactive before batch, then oldest
first (``queue_rank``, ``created_at``, ``id``).  So a free worker always
serves the most urgent work, and every message (one is sent per queued
execution, and the recovery sweep resends lost ones) starts one execution
or finds the queue empty.  :meth:`ClaimStore.queue_position` counts the
same order.

**A claim reads the head of the queue, not the queue.**  The partial index
``ix_executions_claim_order`` holds the claimable rows (queued, not a
follower) in claim order, so the claim walks it from its start and stops at
the first row it may take: with 100,000 executions queued it costs what it
does with 10 (issue 16; figures in ``bench/README.md``, from
``bench/claim.py``), where sorting the whole queue for every claim cost
more the longer the queue.  That is why the rank is a stored column
(``queue_rank``, written with ``queue``) rather than a ``CASE`` on
``queue``, and why the claim spells the index's predicate out with
constants (:func:`_claimable`): a bound parameter there would hide from
SQLite, and from a generic plan on PostgreSQL, that the index covers the
query.  Rows the walk passes over are only the exceptions (retries in
backoff, executions out of attempts); ``tests/storage/executions/
claims_test.py`` checks the plans on both databases.

A claim sets the execution ``RUNNING`` with a lease and counts the attempt.
The worker renews the lease while it runs (:meth:`ClaimStore.renew_lease`);
an execution whose lease lapsed is lost, and the recovery sweep finds it
(:meth:`ClaimStore.find_orphans`) and queues it again
(:meth:`ClaimStore.requeue`).  The attempt count is the fencing token: a
worker whose lease lapsed and whose execution was claimed again can no
longer renew or finish it.  :meth:`ClaimStore.finish` ends a run once, and
ends the followers that shared it in the same transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    Update,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    update,
)

from noteburst.dbschema import UTCDateTime
from noteburst.domain.execution import (
    EventKind,
    Execution,
    ExecutionEvent,
    ExecutionFailure,
    ExecutionQueue,
    ExecutionStatus,
)

from ._base import (
    EXECUTIONS,
    INSERT_EVENT,
    SUMMARY_COLUMNS,
    UNFINISHED,
    ExecutionTableStore,
    NewEvent,
    event_parameters,
    execution_from_row,
    finish_values,
    owned_by,
    parse_json,
    stored_event,
    utc,
)

__all__ = ["ClaimStore", "ClaimedExecution"]


def _claimable(columns: Any) -> list[ColumnElement[bool]]:
    """Return the predicate of ``ix_executions_claim_order``, with constants.

    Rendered into the SQL as ``status = 'queued' AND shares_run_of IS
    NULL``, as the index is defined (``noteburst.dbschema.execution``), so
    both databases see at planning time that the index holds every row the
    query may take.
    """
    return [
        columns.status == literal(ExecutionStatus.QUEUED.value, literal_execute=True),
        columns.shares_run_of.is_(None),
    ]


def _build_claim_next(*, with_woken_for: bool) -> Update:
    """Build the statement of :meth:`ClaimStore.claim_next`, once."""
    now = bindparam("claim_now", type_=UTCDateTime())
    # An alias, so the subquery is not correlated with the updated table.
    queued = EXECUTIONS.alias("queued").c
    ready = [queued.not_before.is_(None), queued.not_before <= now]
    if with_woken_for:
        # A filter, not an order: the one woken for is taken only if it is
        # the first the others let pass, so the index walk still serves it.
        ready.append(queued.id == bindparam("claim_woken_for", type_=String()))
    candidate = (
        select(queued.id)
        .where(
            *_claimable(queued),
            queued.attempts < bindparam("claim_max_attempts", type_=Integer()),
            or_(*ready),
        )
        .order_by(queued.queue_rank, queued.created_at, queued.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        update(EXECUTIONS)
        .where(
            EXECUTIONS.c.id == candidate,
            EXECUTIONS.c.status == ExecutionStatus.QUEUED.value,
        )
        .values(
            status=ExecutionStatus.RUNNING.value,
            attempts=EXECUTIONS.c.attempts + 1,
            started_at=now,
            lease_expires_at=bindparam("claim_lease_until", type_=UTCDateTime()),
            not_before=None,
            cells_done=0,
            # The RUNNING event's sequence, allocated here rather than by a
            # second UPDATE (see ClaimStore.claim_next).
            last_sequence=EXECUTIONS.c.last_sequence + 1,
        )
        .returning(*SUMMARY_COLUMNS, EXECUTIONS.c.source_notebook)
    )


_CLAIM_NEXT = {
    with_woken_for: _build_claim_next(with_woken_for=with_woken_for)
    for with_woken_for in (False, True)
}
"""The claim statements, without and with a ``claim_woken_for`` parameter."""


def _build_finish(*, with_attempt: bool) -> Update:
    statement = update(EXECUTIONS).where(
        EXECUTIONS.c.id == bindparam("finish_id", type_=String()),
        EXECUTIONS.c.status.in_(UNFINISHED),
    )
    if with_attempt:
        statement = statement.where(
            EXECUTIONS.c.attempts == bindparam("finish_attempt", type_=Integer())
        )
    return statement.values(
        **finish_values("finish"),
        # The progress events written with the end, if any, come first.
        last_sequence=EXECUTIONS.c.last_sequence
        + 1
        + bindparam("finish_progress_count", type_=Integer()),
        cells_done=func.coalesce(
            bindparam("finish_cells_done", type_=Integer()), EXECUTIONS.c.cells_done
        ),
    ).returning(
        EXECUTIONS.c.last_sequence, EXECUTIONS.c.cells_done, EXECUTIONS.c.cache_key
    )


_FINISH = {
    with_attempt: _build_finish(with_attempt=with_attempt)
    for with_attempt in (False, True)
}
"""``ClaimStore.finish``'s statements, without and with an attempt check."""


@dataclass(frozen=True, slots=True)
class ClaimedExecution:
    """What :meth:`ClaimStore.claim_next` hands a worker."""

    execution: Execution
    """The execution, now ``running`` (with its new attempt count)."""
    source: dict[str, Any]
    """The submitted notebook (with its parameters injected)."""
    event: ExecutionEvent
    """The ``RUNNING`` event recorded with the claim."""


class ClaimStore(ExecutionTableStore):
    """Claim, renew, requeue and finish runs, within one transaction."""

    async def claim_next(
        self,
        *,
        now: datetime,
        lease_until: datetime,
        max_attempts: int,
        woken_for: str | None = None,
    ) -> ClaimedExecution | None:
        """Take the queued execution that should run next, if there is one.

        Claim order is interactive before batch, then oldest first, read
        from ``ix_executions_claim_order`` (see the module docstring).  On
        PostgreSQL the candidate row is locked with ``FOR UPDATE SKIP
        LOCKED``, so concurrent claimers take different
        executions instead of queueing on one row lock; on SQLite every
        transaction holds the database's write lock (``BEGIN IMMEDIATE``),
        which serialises claimers.

        Skipped: followers of a shared run (they never run themselves),
        executions out of attempts, and retries still in backoff (see
        :meth:`requeue`), except the one ``woken_for`` names: its message
        was delayed by that backoff, so its delivery means the wait is over.

        The claim also records the ``RUNNING`` event (its sequence is
        allocated by the claiming ``UPDATE``, which returns the submitted
        notebook too), so a claim is two statements.

        Returns
        -------
        ClaimedExecution or None
            The claimed execution, its notebook and its ``RUNNING`` event, or
            None if nothing is ready to run.
        """
        now = utc(now)
        statement = _CLAIM_NEXT[woken_for is not None]
        parameters = {
            "claim_now": now,
            "claim_lease_until": utc(lease_until),
            "claim_max_attempts": max_attempts,
            "claim_woken_for": woken_for,
        }
        row = (await self._session.execute(statement, parameters)).one_or_none()
        if row is None:
            return None
        execution = execution_from_row(row)
        source = await parse_json(row.source_notebook)
        assert source is not None  # the column is NOT NULL
        event = await self._insert_event(
            execution.id,
            sequence=row.last_sequence,
            kind=EventKind.RUNNING,
            status=ExecutionStatus.RUNNING,
            cell_index=None,
            cells_done=0,
            now=now,
        )
        return ClaimedExecution(execution=execution, source=source, event=event)

    async def claim(
        self,
        execution_id: str,
        *,
        now: datetime,
        lease_until: datetime,
        max_attempts: int,
    ) -> Execution | None:
        """Take one named execution for running, if nobody else holds it.

        Succeeds for a queued execution, or a running one whose lease
        expired before ``now`` (its worker is presumed dead), as long as it
        has been claimed fewer than ``max_attempts`` times.  Sets it
        running with a lease until ``lease_until``, counts the attempt and
        sets ``started_at`` to ``now``.  Of concurrent claims exactly one
        succeeds.

        Appends no event: append ``RUNNING`` with ``EventLogStore.append``
        in the same transaction.

        Returns
        -------
        Execution or None
            The claimed execution (``attempts`` already incremented; use it
            as the fencing token of :meth:`renew_lease` and :meth:`finish`),
            or None: a duplicate message, a live claim elsewhere, a finished
            or unknown execution, or attempts exhausted.
        """
        now, lease_until = utc(now), utc(lease_until)
        columns = EXECUTIONS.c
        statement = (
            update(EXECUTIONS)
            .where(
                columns.id == execution_id,
                columns.attempts < max_attempts,
                columns.cancel_requested_at.is_(None),
                or_(
                    columns.status == ExecutionStatus.QUEUED.value,
                    and_(
                        columns.status == ExecutionStatus.RUNNING.value,
                        columns.lease_expires_at < now,
                    ),
                ),
            )
            .values(
                status=ExecutionStatus.RUNNING.value,
                attempts=columns.attempts + 1,
                started_at=now,
                lease_expires_at=lease_until,
            )
            .returning(*SUMMARY_COLUMNS)
        )
        row = (await self._session.execute(statement)).one_or_none()
        return None if row is None else execution_from_row(row)

    async def renew_lease(
        self,
        execution_id: str,
        *,
        lease_until: datetime,
        attempt: int | None = None,
    ) -> bool:
        """Extend a running execution's lease.

        Parameters
        ----------
        execution_id
            The execution.
        lease_until
            New expiry.
        attempt
            If given, renew only if this is still the current attempt
            (``Execution.attempts`` as returned by the claim), so a worker
            whose lease lapsed and whose execution was claimed again finds
            out.

        Returns
        -------
        bool
            False if the execution is no longer running (or no longer this
            attempt's): the worker should stop.
        """
        lease_until = utc(lease_until)
        columns = EXECUTIONS.c
        conditions = [
            columns.id == execution_id,
            columns.status == ExecutionStatus.RUNNING.value,
        ]
        if attempt is not None:
            conditions.append(columns.attempts == attempt)
        statement = (
            update(EXECUTIONS)
            .where(*conditions)
            .values(lease_expires_at=lease_until)
            .returning(columns.id)
        )
        return (await self._session.execute(statement)).one_or_none() is not None

    async def requeue(
        self,
        execution_id: str,
        *,
        now: datetime,
        lease_expired_before: datetime | None = None,
        not_before: datetime | None = None,
    ) -> ExecutionEvent | None:
        """Put a lost running execution back in the queue.

        Only a running execution whose lease expired before
        ``lease_expired_before`` (default ``now``) is requeued, so a sweeper
        racing a worker that just renewed its lease does no harm.  Pass a
        later time to requeue every running execution whose lease would
        lapse by then (e.g. at the start of the only worker process, when
        every running execution is known to be lost).  Progress restarts at
        0 cells.  The caller then sends a new queue message.  When
        ``attempts`` has reached the limit, a claim would refuse it; finish
        it instead, with ``ExecutionStatus.FAILED`` and
        ``ErrorCode.WORKER_LOST``.

        ``not_before`` holds a retry back: :meth:`claim_next` leaves it to
        other wake-ups until then (its own, delayed, message may take it).

        Returns
        -------
        ExecutionEvent or None
            The ``QUEUED`` event, or None if it was not a lost execution.
        """
        now = utc(now)
        cutoff = now if lease_expired_before is None else utc(lease_expired_before)
        return await self._change(
            execution_id,
            conditions=[
                EXECUTIONS.c.status == ExecutionStatus.RUNNING.value,
                EXECUTIONS.c.lease_expires_at < cutoff,
            ],
            values={
                "status": ExecutionStatus.QUEUED.value,
                "lease_expires_at": None,
                "cells_done": 0,
                "not_before": None if not_before is None else utc(not_before),
            },
            kind=EventKind.QUEUED,
            status=ExecutionStatus.QUEUED,
            cell_index=None,
            now=now,
        )

    async def hand_back(
        self, execution_id: str, *, attempt: int, now: datetime, message: str
    ) -> ExecutionEvent | None:
        """Put a running execution back in the queue, its attempt not counted.

        For a worker that is stopping (a rolling upgrade) and did not finish
        the execution within its grace period: the execution runs elsewhere
        from its first cell, and the interrupted attempt is given back, so
        upgrades never use up ``max_attempts`` (which count lost workers).
        Only this attempt's run is handed back (``attempts == attempt``):
        one taken over by a recovery sweep meanwhile is left alone.

        Returns
        -------
        ExecutionEvent or None
            The ``QUEUED`` event (with ``message``), or None if the
            execution was not this attempt's run any more.
        """
        columns = EXECUTIONS.c
        return await self._change(
            execution_id,
            conditions=[
                columns.status == ExecutionStatus.RUNNING.value,
                columns.attempts == attempt,
            ],
            values={
                "status": ExecutionStatus.QUEUED.value,
                "lease_expires_at": None,
                "cells_done": 0,
                "not_before": None,
                "attempts": columns.attempts - 1,
            },
            kind=EventKind.QUEUED,
            status=ExecutionStatus.QUEUED,
            cell_index=None,
            now=utc(now),
            message=message,
        )

    async def queue_depths(self) -> dict[ExecutionQueue, int]:
        """Count the executions waiting to be claimed, per queue.

        Followers of a shared run are not counted (they wait for their
        leader, not for a worker); retries still in backoff are.
        """
        columns = EXECUTIONS.c
        rows = await self._session.execute(
            select(columns.queue, func.count())
            .where(*_claimable(columns))
            .group_by(columns.queue)
        )
        depths = dict.fromkeys(ExecutionQueue, 0)
        for queue, count in rows:
            depths[ExecutionQueue(queue)] = int(count)
        return depths

    async def find_orphans(
        self, *, now: datetime, queued_before: datetime
    ) -> tuple[builtins.list[str], builtins.list[str]]:
        """Find executions a sweeper should look at, oldest first.

        Parameters
        ----------
        now
            Current time; running executions with a lease expiring before it
            are lost, and retries whose backoff ends by then are due.
        queued_before
            Queued executions created before this may have lost their queue
            message (followers of a shared run have none, and retries still
            in backoff are left to their delayed message).

        Returns
        -------
        tuple of (list of str, list of str)
            Ids of possibly stranded queued executions, and of running ones
            whose lease expired.
        """
        now, queued_before = utc(now), utc(queued_before)
        columns = EXECUTIONS.c
        queued = await self._session.scalars(
            select(columns.id)
            .where(
                columns.status == ExecutionStatus.QUEUED.value,
                columns.created_at < queued_before,
                # A follower is never claimed: its leader's message is what counts.
                columns.shares_run_of.is_(None),
                # A retry in backoff has its delayed message; resending now
                # would cut the backoff short.
                or_(columns.not_before.is_(None), columns.not_before <= now),
            )
            .order_by(columns.created_at, columns.id)
        )
        lost = await self._session.scalars(
            select(columns.id)
            .where(
                columns.status == ExecutionStatus.RUNNING.value,
                columns.lease_expires_at < now,
            )
            .order_by(columns.created_at, columns.id)
        )
        return builtins.list(queued), builtins.list(lost)

    async def database_started_at(self) -> datetime | None:
        """When the database server last started (`None` on SQLite).

        A restart drops every worker's connection, so no lease can be
        renewed while it lasts; leases that lapsed then say nothing about
        their workers until those have had a lease's time to renew.
        """
        if not self._postgres:
            return None
        started = await self._session.scalar(select(func.pg_postmaster_start_time()))
        return None if started is None else utc(started)

    async def finish(
        self,
        execution_id: str,
        *,
        status: ExecutionStatus,
        result_text: str | None,
        error: ExecutionFailure | None,
        now: datetime,
        attempt: int | None = None,
        outputs_truncated: bool = False,
        progress: Sequence[NewEvent] = (),
    ) -> ExecutionEvent | None:
        """Finish an execution, once, and the followers sharing its run.

        Stores the executed notebook and error, sets ``finished_at``, clears
        the lease and appends the ``FINISHED`` event carrying ``status``,
        after ``progress``: the end of a run writes the cell events not
        written yet with the same two statements (sequences allocated by
        the one ``UPDATE``, events inserted by the one ``INSERT``), rather
        than with an ``append_many`` of their own before it.  A run with a
        cache key may have followers (identical submissions sharing it):
        they end with it, in this transaction.

        Parameters
        ----------
        execution_id
            The execution.
        status
            Terminal status.
        result_text
            Executed notebook as JSON text, if any.
        error
            Why it did not succeed, if it did not.
        now
            Finish time.
        attempt
            If given, finish only if this is still the current attempt (see
            :meth:`renew_lease`).
        outputs_truncated
            Whether the executed notebook's outputs were cut under limits.
        progress
            Events to append before ``FINISHED`` (as ``append_many`` would),
            written only if the finish is; their ``cells_done`` carries over
            to the execution and the ``FINISHED`` event.

        Returns
        -------
        ExecutionEvent or None
            The ``FINISHED`` event, or None if it had already finished (or
            another attempt owns it, or it does not exist); ``progress`` is
            then not written either.

        Raises
        ------
        ValueError
            ``status`` is not terminal.
        """
        now = utc(now)
        if not status.is_terminal:
            msg = f"finish needs a terminal status, not {status.value!r}"
            raise ValueError(msg)
        values: dict[str, Any] = {
            "status": status.value,
            "now": now,
            "result": result_text,
            "error": error.to_json() if error is not None else None,
            "truncated": outputs_truncated,
        }
        parameters = {f"finish_{key}": value for key, value in values.items()}
        parameters["finish_id"] = execution_id
        parameters["finish_progress_count"] = len(progress)
        parameters["finish_cells_done"] = progress[-1].cells_done if progress else None
        if attempt is not None:
            parameters["finish_attempt"] = attempt
        result = await self._session.execute(_FINISH[attempt is not None], parameters)
        row = result.one_or_none()
        if row is None:
            return None
        first_sequence = row.last_sequence - len(progress)
        event = ExecutionEvent(
            execution_id=execution_id,
            sequence=row.last_sequence,
            kind=EventKind.FINISHED,
            status=status,
            created_at=now,
            cell_index=None,
            cells_done=row.cells_done,
        )
        events = [
            *(
                stored_event(execution_id, first_sequence + offset, new)
                for offset, new in enumerate(progress)
            ),
            event,
        ]
        await self._session.execute(
            INSERT_EVENT, [event_parameters(stored) for stored in events]
        )
        if row.cache_key is not None:
            # Only a run with a cache key can have followers (they find it
            # by its key): no statement for the others.
            await self.end_followers(execution_id, values=values, event=event)
        return event

    async def queue_position(
        self, execution_id: str, *, owner: str | None = None
    ) -> int | None:
        """Where an execution stands in the claim order of :meth:`claim_next`.

        Returns
        -------
        int or None
            1 + the number of queued executions a free worker would take
            before it (a follower stands where the run it shares does), or
            None if it is not queued (or unknown).  Retries in backoff are
            counted where their order puts them: they run first once ready.
        """
        columns = EXECUTIONS.c
        selected = (
            columns.id,
            columns.status,
            columns.queue,
            columns.created_at,
            columns.shares_run_of,
        )
        row = (
            await self._session.execute(
                select(*selected).where(columns.id == execution_id, *owned_by(owner))
            )
        ).one_or_none()
        if row is not None and row.shares_run_of is not None:
            if row.status != ExecutionStatus.QUEUED.value:
                return None
            row = (
                await self._session.execute(
                    select(*selected).where(columns.id == row.shares_run_of)
                )
            ).one_or_none()
        if row is None or row.status != ExecutionStatus.QUEUED.value:
            return None
        rank = ExecutionQueue(row.queue).rank
        ahead = await self._session.scalar(
            select(func.count())
            .select_from(EXECUTIONS)
            .where(
                *_claimable(columns),
                or_(
                    columns.queue_rank < rank,
                    and_(
                        columns.queue_rank == rank,
                        or_(
                            columns.created_at < row.created_at,
                            and_(
                                columns.created_at == row.created_at,
                                columns.id < row.id,
                            ),
                        ),
                    ),
                ),
            )
        )
        return int(ahead or 0) + 1
