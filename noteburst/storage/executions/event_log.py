"""The event log: what subscribers replay, in a gap-free sequence per execution.

Every change of an execution appends an event whose sequence the same
statement allocates from ``executions.last_sequence`` (see :mod:`._base`),
so a subscriber that read up to sequence *n* reads on from *n* and never
misses or repeats one.  A running notebook's cell events pile up in the
worker between writes; :meth:`EventLogStore.append_many` writes such a
batch with one ``UPDATE`` (allocating every sequence) and one insert.

Readers filter by kind (a page waiting only for the result asks for status
changes), and the sequences keep their gaps then.  A reader that filters
cannot tell from the events it got how far it has read, so it may bound the
read with ``through``: the execution's ``last_sequence`` read first in the
same transaction.  Every event up to it is committed (the sequence is
allocated by the committing transaction's ``UPDATE``, which holds the row
until the commit), so the read then covers exactly ``(after, through]``
whatever the kinds, and the execution it read is exactly as of its last
event (a watcher's resume point; see :mod:`noteburst.services.watch`).
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, Select, String, bindparam, select, update

from noteburst.domain.execution import EventKind, ExecutionEvent, ExecutionStatus

from ._base import (
    EVENT_COLUMNS,
    EVENTS,
    EXECUTIONS,
    INSERT_EVENT,
    UNFINISHED,
    ExecutionTableStore,
    NewEvent,
    event_from_row,
    event_parameters,
    stored_event,
    utc,
)

__all__ = ["EventLogStore"]


def _build_events(*, latest: bool, of_kinds: bool) -> Select[Any]:
    statement = select(*EVENT_COLUMNS).where(
        EVENTS.c.execution_id == bindparam("events_id", type_=String()),
        EVENTS.c.sequence <= bindparam("events_through", type_=Integer()),
    )
    if of_kinds:
        statement = statement.where(
            EVENTS.c.kind.in_(bindparam("events_kinds", expanding=True, type_=String()))
        )
    if latest:
        return statement.order_by(EVENTS.c.sequence.desc()).limit(1)
    return statement.where(
        EVENTS.c.sequence > bindparam("events_after", type_=Integer())
    ).order_by(EVENTS.c.sequence)


_EVENTS_AFTER = {
    of_kinds: _build_events(latest=False, of_kinds=of_kinds)
    for of_kinds in (False, True)
}
_LATEST_EVENT = {
    of_kinds: _build_events(latest=True, of_kinds=of_kinds)
    for of_kinds in (False, True)
}

_NO_BOUND = 2**31 - 1
"""``through`` when the caller gives none (the column is a 32-bit integer)."""

_ALLOCATE_EVENTS = (
    update(EXECUTIONS)
    .where(
        EXECUTIONS.c.id == bindparam("alloc_id", type_=String()),
        EXECUTIONS.c.status.in_(UNFINISHED),
    )
    .values(
        status=bindparam("alloc_status", type_=String()),
        cells_done=bindparam("alloc_cells_done", type_=Integer()),
        last_sequence=EXECUTIONS.c.last_sequence
        + bindparam("alloc_count", type_=Integer()),
    )
    .returning(EXECUTIONS.c.last_sequence)
)
"""Allocate sequences for a batch of progress events (``append_many``)."""


class EventLogStore(ExecutionTableStore):
    """Append to and read executions' event logs, within one transaction."""

    async def append(
        self,
        execution_id: str,
        *,
        kind: EventKind,
        status: ExecutionStatus,
        cell_index: int | None = None,
        cells_done: int | None = None,
        message: str | None = None,
        now: datetime,
    ) -> ExecutionEvent:
        """Record a change of an unfinished execution and its event.

        Sets the execution's status to ``status`` and, if given,
        ``cells_done``; stores ``message`` (human-readable detail) on the
        event; allocates the next sequence; on PostgreSQL sends the
        notification (delivered on commit).  A finish is
        ``ClaimStore.finish``.

        Returns
        -------
        ExecutionEvent
            The new event.

        Raises
        ------
        ExecutionNotFoundError
            No execution has this id.
        ExecutionFinishedError
            The execution already finished (was cancelled, say, or failed
            by a sweeper); it is left unchanged and the worker should stop.
        """
        now = utc(now)
        values: dict[str, Any] = {"status": status.value}
        if cells_done is not None:
            values["cells_done"] = cells_done
        event = await self._change(
            execution_id,
            conditions=[EXECUTIONS.c.status.in_(UNFINISHED)],
            values=values,
            kind=kind,
            status=status,
            cell_index=cell_index,
            message=message,
            now=now,
        )
        if event is None:
            raise await self._not_found_or_finished(execution_id)
        return event

    async def append_many(
        self, execution_id: str, events: Sequence[NewEvent]
    ) -> builtins.list[ExecutionEvent]:
        """Record several progress events of an unfinished execution at once.

        The same as calling :meth:`append` for each, in order, but with one
        ``UPDATE`` (allocating all the sequences), one multi-row ``INSERT``
        and, on PostgreSQL, one notification per transaction: a worker
        batches the cell events that piled up while its previous write was
        in flight.  The execution takes the last event's status and
        ``cells_done``.

        Returns
        -------
        list of ExecutionEvent
            The new events, in order (empty if ``events`` is).

        Raises
        ------
        ExecutionNotFoundError
            No execution has this id.
        ExecutionFinishedError
            The execution already finished; nothing is recorded.
        """
        if not events:
            return []
        last = events[-1]
        parameters = {
            "alloc_id": execution_id,
            "alloc_status": last.status.value,
            "alloc_cells_done": last.cells_done,
            "alloc_count": len(events),
        }
        result = await self._session.execute(_ALLOCATE_EVENTS, parameters)
        row = result.one_or_none()
        if row is None:
            raise await self._not_found_or_finished(execution_id)
        first_sequence = row.last_sequence - len(events) + 1
        stored = [
            stored_event(execution_id, first_sequence + offset, new)
            for offset, new in enumerate(events)
        ]
        # A list of parameter sets (executemany), not ``.values([...])``: a
        # multi-row VALUES clause is compiled anew for every batch size, and
        # that compilation would cost more CPU than the write.  On
        # PostgreSQL asyncpg pipelines the rows' inserts in one round trip.
        await self._session.execute(
            INSERT_EVENT, [event_parameters(event) for event in stored]
        )
        return stored

    async def after(
        self,
        execution_id: str,
        after_sequence: int,
        *,
        kinds: Collection[EventKind] | None = None,
        through: int | None = None,
    ) -> builtins.list[ExecutionEvent]:
        """Events with a sequence above ``after_sequence``, oldest first.

        ``kinds``, if given, keeps only events of those kinds (their
        sequences keep their gaps); ``through``, if given, only sequences
        up to it (see the module docstring).
        """
        parameters: dict[str, Any] = {
            "events_id": execution_id,
            "events_after": after_sequence,
            "events_through": _NO_BOUND if through is None else through,
        }
        if kinds is not None:
            parameters["events_kinds"] = [kind.value for kind in kinds]
        result = await self._session.execute(
            _EVENTS_AFTER[kinds is not None], parameters
        )
        return [event_from_row(row) for row in result]

    async def latest(
        self,
        execution_id: str,
        *,
        kinds: Collection[EventKind] | None = None,
        through: int | None = None,
    ) -> ExecutionEvent | None:
        """Return the newest event (of ``kinds``, up to ``through``), else None.

        None: there is no such execution, or it has no such event.
        """
        parameters: dict[str, Any] = {
            "events_id": execution_id,
            "events_through": _NO_BOUND if through is None else through,
        }
        if kinds is not None:
            parameters["events_kinds"] = [kind.value for kind in kinds]
        result = await self._session.execute(
            _LATEST_EVENT[kinds is not None], parameters
        )
        row = result.one_or_none()
        return None if row is None else event_from_row(row)
