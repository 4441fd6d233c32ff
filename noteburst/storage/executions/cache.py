"""The result cache and shared runs: identical submissions, one kernel run.

A submission that asks for the cache has a key (code, parameters, kernel,
environment tag; see :mod:`noteburst.domain.cache`).  Under a lock on that
key (:meth:`ResultCacheStore.lock_key`), the submission service looks for

* a stored success of the key (:meth:`ResultCacheStore.find_cached`): the
  new execution is recorded ``SUCCEEDED`` at once with a copy of that
  result (:meth:`ResultCacheStore.add_cache_hit`);
* else a run of the key still queued or running
  (:meth:`ResultCacheStore.find_shared_run`): the new execution becomes a
  *follower* of that run, its *leader* (:meth:`ResultCacheStore.add_follower`).

A follower is never claimed.  Until it ends, reads show the leader's status
and progress under the follower's id, and its subscribers read the leader's
events.  **When a shared run ends**, its followers end with it, in the same
transaction and with the same status, result and error: the leader's
finish (``ClaimStore.finish``) or the cancellation of a queued leader
(``CancellationStore.request``) runs
:meth:`~._base.ExecutionTableStore.end_followers`, which every part
inherits.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, literal, select, update

from noteburst.constants import LOCAL_USER
from noteburst.domain.execution import (
    EventKind,
    ExecutionEvent,
    ExecutionQueue,
    ExecutionStatus,
)

from ._base import (
    EXECUTIONS,
    UNFINISHED,
    ExecutionTableStore,
    queue_values,
    queued_row,
    utc,
)

__all__ = ["ResultCacheStore"]

_CACHE_LOCK_CLASS = 0x6E62_6361  # "nbca"
"""First key of the PostgreSQL advisory locks that serialise one cache key."""


class ResultCacheStore(ExecutionTableStore):
    """Find and reuse results, share runs, within one transaction."""

    async def lock_key(self, cache_key: str) -> None:
        """Serialise submissions of one cache key until this transaction ends.

        Looking for a cached result or a run to share, then adding an
        execution, must be atomic per key, or two identical submissions
        arriving together would both start a run.  PostgreSQL takes a
        transaction-scoped advisory lock on the key (two-key form, in its
        own key space); on SQLite the transaction already holds the write
        lock.  Take it after ``UserQuotaStore.lock_owner``, always in that
        order.
        """
        if self._postgres:
            objid = int.from_bytes(bytes.fromhex(cache_key[:8]), "big", signed=True)
            await self._session.execute(
                select(func.pg_advisory_xact_lock(_CACHE_LOCK_CLASS, objid))
            )

    async def find_cached(
        self, cache_key: str, *, finished_after: datetime | None
    ) -> str | None:
        """Return the id of the newest successful run of a cache key, if any.

        Parameters
        ----------
        cache_key
            The key.
        finished_after
            Only a run that finished at or after this counts; None: any.
        """
        columns = EXECUTIONS.c
        query = select(columns.id).where(
            columns.cache_key == cache_key,
            columns.status == ExecutionStatus.SUCCEEDED.value,
        )
        if finished_after is not None:
            query = query.where(columns.finished_at >= utc(finished_after))
        query = query.order_by(columns.finished_at.desc(), columns.id).limit(1)
        found: str | None = await self._session.scalar(query)
        return found

    async def find_shared_run(
        self, cache_key: str, *, include_running: bool
    ) -> str | None:
        """Return the id of the oldest unfinished run of a cache key, if any.

        Parameters
        ----------
        cache_key
            The key.
        include_running
            Also a run that has started; otherwise only a queued one.
        """
        statuses = UNFINISHED if include_running else (ExecutionStatus.QUEUED.value,)
        columns = EXECUTIONS.c
        found: str | None = await self._session.scalar(
            select(columns.id)
            .where(columns.cache_key == cache_key, columns.status.in_(statuses))
            .order_by(columns.created_at, columns.id)
            .limit(1)
        )
        return found

    async def add_follower(
        self,
        *,
        execution_id: str,
        leader_id: str,
        kernel_name: str,
        timeout_seconds: float,
        source_text: str,
        cells_total: int,
        queue: ExecutionQueue,
        now: datetime,
        owner: str = LOCAL_USER,
    ) -> None:
        """Record an execution that shares the run of ``leader_id``.

        The follower is never claimed and has no event of its own until
        its leader ends (see the module docstring).  An interactive
        follower moves a queued leader to the interactive queue, as someone
        is now waiting for it.
        """
        now = utc(now)
        await self._session.execute(
            insert(EXECUTIONS).values(
                **queued_row(
                    execution_id,
                    kernel_name,
                    timeout_seconds,
                    source_text,
                    now,
                    owner=owner,
                    queue=queue,
                ),
                cells_total=cells_total,
                last_sequence=0,
                shares_run_of=leader_id,
            )
        )
        if queue is ExecutionQueue.INTERACTIVE:
            await self._session.execute(
                update(EXECUTIONS)
                .where(
                    EXECUTIONS.c.id == leader_id,
                    EXECUTIONS.c.status == ExecutionStatus.QUEUED.value,
                    EXECUTIONS.c.queue != queue.value,
                )
                .values(**queue_values(queue))
            )

    async def add_cache_hit(
        self,
        *,
        execution_id: str,
        cached_from: str,
        timeout_seconds: float,
        source_text: str,
        queue: ExecutionQueue,
        now: datetime,
        owner: str = LOCAL_USER,
    ) -> ExecutionEvent | None:
        """Record a new execution that succeeded by reusing a stored result.

        The executed notebook is copied inside the database (no round trip
        of a possibly large text); the new execution is ``SUCCEEDED`` at
        once, with one event: ``FINISHED``, sequence 1.

        Returns
        -------
        ExecutionEvent or None
            The ``FINISHED`` event, or None if ``cached_from`` is gone.
        """
        now = utc(now)
        columns = EXECUTIONS.c
        timestamp = columns.created_at.type
        source = select(
            literal(execution_id),
            literal(ExecutionStatus.SUCCEEDED.value),
            columns.kernel_name,
            literal(timeout_seconds),
            literal(source_text),
            columns.result_notebook,
            columns.cells_total,
            columns.cells_done,
            literal(0),
            literal(1),
            literal(now, timestamp),
            literal(now, timestamp),
            literal(queue.value),
            literal(queue.rank),
            columns.id,
            literal(owner),
        ).where(
            columns.id == cached_from,
            columns.status == ExecutionStatus.SUCCEEDED.value,
        )
        await self._session.execute(
            insert(EXECUTIONS).from_select(
                [
                    columns.id,
                    columns.status,
                    columns.kernel_name,
                    columns.timeout_seconds,
                    columns.source_notebook,
                    columns.result_notebook,
                    columns.cells_total,
                    columns.cells_done,
                    columns.attempts,
                    columns.last_sequence,
                    columns.created_at,
                    columns.finished_at,
                    columns.queue,
                    columns.queue_rank,
                    columns.cached_from,
                    columns.owner,
                ],
                source,
            )
        )
        # None if nothing was copied (the cached execution is gone).
        cells_done = await self._session.scalar(
            select(columns.cells_done).where(columns.id == execution_id)
        )
        if cells_done is None:
            return None
        return await self._insert_event(
            execution_id,
            sequence=1,
            kind=EventKind.FINISHED,
            status=ExecutionStatus.SUCCEEDED,
            cell_index=None,
            cells_done=cells_done,
            message=f"result reused from execution {cached_from}",
            now=now,
        )
