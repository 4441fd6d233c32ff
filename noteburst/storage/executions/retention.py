"""Retention: deleting finished executions once they are old, a batch at a time.

Every execution keeps its rows (the submitted and executed notebooks, its
events, its HTML renderings, its webhook and delivery attempts) until it is
purged here; without a purge the database grows with every submission.
The purge service (:mod:`noteburst.services.retention`) runs one batch per
transaction: :meth:`RetentionStore.candidates` picks the oldest purgeable
executions after the previous batch's last, and :meth:`RetentionStore.purge`
deletes them (or :meth:`RetentionStore.count` only counts, for a dry run).

What is purgeable, and why:

* **Finished, and before the cutoff**: a terminal status (queued and
  running executions are never touched, however old) and ``finished_at``
  before it.  Only finished executions have a finish time, so the range
  read from ``ix_executions_finished_at_id`` holds nothing else; the
  status condition is a guard, written as ``NOT IN`` the unfinished
  statuses so that SQLite's planner, which has no statistics, does not
  prefer ``ix_executions_status`` (an ``IN`` reads to it as an equality)
  and sort every finished execution for each batch.
* **No webhook still owed**: a pending webhook of a finished execution is a
  delivery the outbox still owes (see :mod:`noteburst.storage.webhook`);
  its execution stays until the delivery succeeds or is given up (at most
  ``NOTEBURST_WEBHOOK_HORIZON_SECONDS`` after the end), so a short retention
  never drops one.
* **A cached result goes with its execution**: the cache reuses a stored
  success only while it exists, so a result is reused for at most the
  retention period, whatever age a submission accepts; a miss runs the
  notebook again, never serves a wrong or older result.  A cache hit being
  recorded while its source is purged finds nothing to copy and runs
  instead (``ResultCacheStore.add_cache_hit`` returns None).
* **A shared run's followers go with it**: a follower that ended with its
  run has the run's finish time and reads the run's events, so when a
  batch takes a run it also takes those of its followers that are
  purgeable (a batch may thus exceed its size); a follower is never left
  pointing at events that are gone.

The children go by ``ON DELETE CASCADE`` (SQLite enforces it: the engine
turns ``PRAGMA foreign_keys`` on for every connection); events and
renderings are deleted explicitly first, which costs the same statements
as counting them and gives the counts.  On PostgreSQL the candidates are
locked ``FOR UPDATE SKIP LOCKED``, so two workers purging at once take
different batches instead of waiting for each other, and the locks last
one short transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Delete,
    Table,
    delete,
    exists,
    func,
    or_,
    select,
)

from noteburst.dbschema import ExecutionRenderingRow, WebhookRow
from noteburst.domain.webhook import WebhookState

from ._base import EVENTS, EXECUTIONS, UNFINISHED, ExecutionTableStore, utc

__all__ = ["PurgeCandidate", "PurgedCounts", "RetentionStore"]

_RENDERINGS = cast(Table, ExecutionRenderingRow.__table__)
_WEBHOOKS = cast(Table, WebhookRow.__table__)


@dataclass(frozen=True, slots=True)
class PurgeCandidate:
    """A purgeable execution, and where the next batch continues after it."""

    execution_id: str
    finished_at: datetime


@dataclass(frozen=True, slots=True)
class PurgedCounts:
    """Rows one purge removed (or, in a dry run, would remove)."""

    executions: int = 0
    events: int = 0
    renderings: int = 0

    def __add__(self, other: PurgedCounts) -> PurgedCounts:
        """Add two batches' counts."""
        return PurgedCounts(
            executions=self.executions + other.executions,
            events=self.events + other.events,
            renderings=self.renderings + other.renderings,
        )


def _purgeable(finished_before: datetime) -> list[ColumnElement[bool]]:
    """Conditions of an execution the purge may delete (module docstring)."""
    columns = EXECUTIONS.c
    webhooks = _WEBHOOKS.c
    return [
        columns.finished_at < finished_before,
        columns.status.not_in(UNFINISHED),
        ~exists().where(
            webhooks.execution_id == columns.id,
            webhooks.state == WebhookState.PENDING.value,
        ),
    ]


class RetentionStore(ExecutionTableStore):
    """Find, count and delete old finished executions, within one transaction."""

    async def candidates(
        self,
        *,
        finished_before: datetime,
        limit: int,
        after: PurgeCandidate | None = None,
    ) -> builtins.list[PurgeCandidate]:
        """Return the oldest purgeable executions, at most ``limit``.

        Parameters
        ----------
        finished_before
            The cutoff: only executions that finished before it.
        limit
            Most candidates returned (the batch size), at least 1.
        after
            The last candidate of the previous batch: this one continues
            after it in ``(finished_at, id)`` order, so a dry run (which
            deletes nothing) moves on, and no purge reads a row twice.

        Returns
        -------
        list of PurgeCandidate
            Oldest first; empty when none is left.  On PostgreSQL they are
            locked until the transaction ends (rows another purge holds are
            skipped).
        """
        if limit < 1:
            msg = f"limit must be at least 1, not {limit}"
            raise ValueError(msg)
        columns = EXECUTIONS.c
        query = select(columns.id, columns.finished_at).where(
            *_purgeable(utc(finished_before))
        )
        if after is not None:
            # The range on finished_at alone, with the tie broken by a
            # filter: both databases then read the index in order from
            # there (an OR of the two keyset cases has SQLite read two
            # ranges and sort them).
            last = utc(after.finished_at)
            query = query.where(
                columns.finished_at >= last,
                or_(columns.finished_at > last, columns.id > after.execution_id),
            )
        query = query.order_by(columns.finished_at, columns.id).limit(limit)
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        rows = (await self._session.execute(query)).all()
        return [PurgeCandidate(row.id, row.finished_at) for row in rows]

    async def count(self, execution_ids: Collection[str]) -> PurgedCounts:
        """Count what :meth:`purge` would delete of these executions (dry run).

        Followers that :meth:`purge` would take along with their run are
        not added: each is counted as a candidate of its own.
        """
        ids = builtins.list(execution_ids)
        if not ids:
            return PurgedCounts()
        events = await self._session.scalar(
            select(func.count())
            .select_from(EVENTS)
            .where(EVENTS.c.execution_id.in_(ids))
        )
        renderings = await self._session.scalar(
            select(func.count())
            .select_from(_RENDERINGS)
            .where(_RENDERINGS.c.execution_id.in_(ids))
        )
        return PurgedCounts(
            executions=len(ids), events=events or 0, renderings=renderings or 0
        )

    async def purge(
        self, execution_ids: Collection[str], *, finished_before: datetime
    ) -> PurgedCounts:
        """Delete these executions, their purgeable followers, and every child.

        Parameters
        ----------
        execution_ids
            Candidates from :meth:`candidates` in this transaction.
        finished_before
            The same cutoff: followers are taken along only if purgeable.

        Returns
        -------
        PurgedCounts
            What was deleted.
        """
        ids = builtins.list(execution_ids)
        if not ids:
            return PurgedCounts()
        columns = EXECUTIONS.c
        followers = (
            select(columns.id)
            .where(
                columns.shares_run_of.in_(ids),
                columns.id.not_in(ids),
                *_purgeable(utc(finished_before)),
            )
            .order_by(columns.id)
        )
        if self._postgres:
            followers = followers.with_for_update(skip_locked=True)
        ids.extend((await self._session.scalars(followers)).all())
        events = await self._deleted(
            delete(EVENTS).where(EVENTS.c.execution_id.in_(ids))
        )
        renderings = await self._deleted(
            delete(_RENDERINGS).where(_RENDERINGS.c.execution_id.in_(ids))
        )
        # Webhooks and their deliveries go by ON DELETE CASCADE.  The status
        # is checked again, as a guard: no unfinished execution ever goes.
        executions = await self._deleted(
            delete(EXECUTIONS).where(
                columns.id.in_(ids), columns.status.not_in(UNFINISHED)
            )
        )
        return PurgedCounts(executions=executions, events=events, renderings=renderings)

    async def _deleted(self, statement: Delete) -> int:
        """Run a ``DELETE``; return how many rows it deleted."""
        result = await self._session.execute(statement)
        return cast(CursorResult[Any], result).rowcount
