"""What every part of the execution store shares: tables, rows, the event insert.

The execution store is split by responsibility (records, event log, claims,
cancellation, result cache, per-user quotas; see the package docstring).
The parts never import each other: what more than one of them needs lives
here, once.

* The two tables as SQLAlchemy Core :class:`~sqlalchemy.Table` objects.
  Statements on an execution's path are built once at import from these,
  with bound parameters for their values: building a statement per call
  (coercing every value and column, computing its cache key) and running it
  through the ORM's execution layer cost more CPU than the database took to
  run it.
* Row to domain mapping (:func:`execution_from_row`, :func:`event_from_row`).
* :class:`ExecutionTableStore`, the base class of every part: the session,
  whether the database is PostgreSQL (decided once, by
  :class:`~noteburst.storage.database.Database`), and the two moves every
  state change is made of: a conditional ``UPDATE ... RETURNING`` of the
  execution row that allocates the next event sequence, and the insert of
  the event itself.
* The end of a shared run's followers (:meth:`ExecutionTableStore.end_followers`),
  which both a finish (claims) and a cancellation (cancels) perform.

The row lock the conditional update takes serialises concurrent writers of
one execution, so sequences have no gaps.  On PostgreSQL every insert of
events sends ``pg_notify`` on :data:`~noteburst.constants.EVENTS_CHANNEL`
from a trigger (migration ``5d8f3a1c2b7e``), delivered only when (and if)
the transaction commits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    String,
    Table,
    Update,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from noteburst.constants import EVENTS_CHANNEL
from noteburst.dbschema import ExecutionEventRow, ExecutionRow, UTCDateTime
from noteburst.domain.execution import (
    EventKind,
    Execution,
    ExecutionEvent,
    ExecutionFailure,
    ExecutionQueue,
    ExecutionStatus,
    Progress,
)
from noteburst.exceptions import ExecutionFinishedError, ExecutionNotFoundError

__all__ = [
    "EVENTS",
    "EVENT_COLUMNS",
    "EXECUTIONS",
    "INSERT_EVENT",
    "SUMMARY_COLUMNS",
    "UNFINISHED",
    "AnyRow",
    "ExecutionTableStore",
    "NewEvent",
    "event_from_row",
    "event_parameters",
    "execution_from_row",
    "finish_values",
    "owned_by",
    "parse_json",
    "queue_values",
    "queued_row",
    "stored_event",
    "utc",
]

AnyRow = Row[*tuple[Any, ...]]

EXECUTIONS = cast(Table, ExecutionRow.__table__)
"""The ``executions`` table (one row per submission)."""
EVENTS = cast(Table, ExecutionEventRow.__table__)
"""The ``execution_events`` table (the log subscribers replay)."""

SUMMARY_COLUMNS = (
    EXECUTIONS.c.id,
    EXECUTIONS.c.status,
    EXECUTIONS.c.kernel_name,
    EXECUTIONS.c.timeout_seconds,
    EXECUTIONS.c.cells_total,
    EXECUTIONS.c.cells_done,
    EXECUTIONS.c.error,
    EXECUTIONS.c.attempts,
    EXECUTIONS.c.last_sequence,
    EXECUTIONS.c.created_at,
    EXECUTIONS.c.started_at,
    EXECUTIONS.c.finished_at,
    EXECUTIONS.c.queue,
    EXECUTIONS.c.cached_from,
    EXECUTIONS.c.shares_run_of,
    EXECUTIONS.c.cell_timeout_seconds,
    EXECUTIONS.c.no_output_timeout_seconds,
    EXECUTIONS.c.outputs_truncated,
    EXECUTIONS.c.cancel_requested_at,
    EXECUTIONS.c.owner,
)
"""Everything :class:`Execution` needs, without the two notebook texts."""

EVENT_COLUMNS = (
    EVENTS.c.execution_id,
    EVENTS.c.sequence,
    EVENTS.c.kind,
    EVENTS.c.status,
    EVENTS.c.cell_index,
    EVENTS.c.cells_done,
    EVENTS.c.message,
    EVENTS.c.output_start,
    EVENTS.c.outputs,
    EVENTS.c.created_at,
)

UNFINISHED = (ExecutionStatus.QUEUED.value, ExecutionStatus.RUNNING.value)
"""The statuses from which an execution can still change."""

INSERT_EVENT = insert(EVENTS)
"""Insert one event, or several (a list of parameter sets: executemany)."""

_PARSE_IN_THREAD_BYTES = 1 << 20
"""JSON texts longer than this are parsed off the event loop."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A progress event to append with ``EventLogStore.append_many``.

    Attributes
    ----------
    kind
        What happened.
    status
        The execution's status with this event (not terminal).
    cells_done
        Code cells completed as of this event.
    created_at
        When it happened (timezone-aware); kept as the event's time, so a
        batch written later still records when each step occurred.
    cell_index
        The cell concerned, if any.
    output_start, outputs
        For CELL_OUTPUTS: see :attr:`ExecutionEvent.outputs`.
    """

    kind: EventKind
    status: ExecutionStatus
    cells_done: int
    created_at: datetime
    cell_index: int | None = None
    output_start: int | None = None
    outputs: list[dict[str, Any]] | None = None


def owned_by(owner: str | None) -> list[ColumnElement[bool]]:
    """Return the conditions restricting rows to one owner; none for None."""
    return [] if owner is None else [EXECUTIONS.c.owner == owner]


def queue_values(queue: ExecutionQueue) -> dict[str, Any]:
    """Return the columns that say which queue an execution waits in.

    ``queue_rank`` is the claim order's first key (see
    :mod:`.claims`): write it wherever ``queue`` is written.
    """
    return {"queue": queue.value, "queue_rank": queue.rank}


def queued_row(
    execution_id: str,
    kernel_name: str,
    timeout_seconds: float,
    source_text: str,
    now: datetime,
    *,
    owner: str,
    queue: ExecutionQueue,
) -> dict[str, Any]:
    """Return the columns every new queued execution row starts with."""
    return {
        **queue_values(queue),
        "id": execution_id,
        "owner": owner,
        "status": ExecutionStatus.QUEUED.value,
        "kernel_name": kernel_name,
        "timeout_seconds": timeout_seconds,
        "source_notebook": source_text,
        "result_notebook": None,
        "cells_done": 0,
        "error": None,
        "attempts": 0,
        "created_at": now,
    }


def utc(value: datetime) -> datetime:
    """Return ``value`` in UTC; refuse a naive datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        msg = f"naive datetime {value!r}: pass a timezone-aware value"
        raise ValueError(msg)
    return value.astimezone(UTC)


async def parse_json(text: str | None) -> dict[str, Any] | None:
    """Parse a stored notebook (a large one off the event loop)."""
    if text is None:
        return None
    if len(text) > _PARSE_IN_THREAD_BYTES:
        parsed = await asyncio.to_thread(json.loads, text)
    else:
        parsed = json.loads(text)
    if not isinstance(parsed, dict):
        msg = "stored notebook is not a JSON object"
        raise TypeError(msg)
    return parsed


def execution_from_row(
    row: AnyRow, notebook: dict[str, Any] | None = None
) -> Execution:
    """Map a row of :data:`SUMMARY_COLUMNS` to an :class:`Execution`."""
    return Execution(
        id=row.id,
        status=ExecutionStatus(row.status),
        kernel_name=row.kernel_name,
        timeout_seconds=row.timeout_seconds,
        created_at=row.created_at,
        progress=Progress(cells_total=row.cells_total, cells_done=row.cells_done),
        attempts=row.attempts,
        last_sequence=row.last_sequence,
        started_at=row.started_at,
        finished_at=row.finished_at,
        notebook=notebook,
        error=(
            ExecutionFailure.from_json(row.error) if row.error is not None else None
        ),
        queue=ExecutionQueue(row.queue),
        cached_from=row.cached_from,
        shares_run_of=row.shares_run_of,
        cell_timeout_seconds=row.cell_timeout_seconds,
        no_output_timeout_seconds=row.no_output_timeout_seconds,
        outputs_truncated=bool(row.outputs_truncated),
        cancel_requested_at=row.cancel_requested_at,
        owner=row.owner,
    )


def event_from_row(row: AnyRow) -> ExecutionEvent:
    """Map a row of :data:`EVENT_COLUMNS` to an :class:`ExecutionEvent`."""
    return ExecutionEvent(
        execution_id=row.execution_id,
        sequence=row.sequence,
        kind=EventKind(row.kind),
        status=ExecutionStatus(row.status),
        created_at=row.created_at,
        cell_index=row.cell_index,
        cells_done=row.cells_done,
        message=row.message,
        output_start=row.output_start,
        outputs=row.outputs,
    )


def stored_event(execution_id: str, sequence: int, new: NewEvent) -> ExecutionEvent:
    """Return ``new`` as the event stored at ``sequence``."""
    return ExecutionEvent(
        execution_id=execution_id,
        sequence=sequence,
        kind=new.kind,
        status=new.status,
        created_at=utc(new.created_at),
        cell_index=new.cell_index,
        cells_done=new.cells_done,
        output_start=new.output_start,
        outputs=new.outputs,
    )


def event_parameters(event: ExecutionEvent) -> dict[str, Any]:
    """Return :data:`INSERT_EVENT`'s parameters for ``event`` (every column)."""
    return {
        "execution_id": event.execution_id,
        "sequence": event.sequence,
        "kind": event.kind.value,
        "status": event.status.value,
        "cell_index": event.cell_index,
        "cells_done": event.cells_done,
        "message": event.message,
        "output_start": event.output_start,
        "outputs": event.outputs,
        "created_at": event.created_at,
    }


def finish_values(prefix: str) -> dict[str, Any]:
    """Return the SET clause of every finish, as bound parameters."""
    return {
        "status": bindparam(f"{prefix}_status", type_=String()),
        "finished_at": bindparam(f"{prefix}_now", type_=UTCDateTime()),
        "lease_expires_at": None,
        "result_notebook": bindparam(
            f"{prefix}_result", type_=EXECUTIONS.c.result_notebook.type
        ),
        "error": bindparam(f"{prefix}_error", type_=EXECUTIONS.c.error.type),
        "outputs_truncated": bindparam(
            f"{prefix}_truncated", type_=EXECUTIONS.c.outputs_truncated.type
        ),
    }


def _build_end_followers() -> Update:
    leader_id = bindparam("followers_leader", type_=String())
    leader = EXECUTIONS.alias("leader").c
    return (
        update(EXECUTIONS)
        .where(
            EXECUTIONS.c.shares_run_of == leader_id,
            EXECUTIONS.c.status.in_(UNFINISHED),
        )
        .values(
            **finish_values("followers"),
            cells_done=bindparam("followers_cells_done", type_=Integer()),
            last_sequence=bindparam("followers_sequence", type_=Integer()),
            attempts=select(leader.attempts)
            .where(leader.id == leader_id)
            .scalar_subquery(),
            started_at=select(leader.started_at)
            .where(leader.id == leader_id)
            .scalar_subquery(),
        )
    )


_END_FOLLOWERS = _build_end_followers()


class ExecutionTableStore:
    """Base of the execution store's parts: one session, one transaction.

    A part never commits or rolls back; obtain it from the unit of work
    (``Database.transaction()``), which does.  All ``now`` arguments must be
    timezone-aware; datetimes come back in UTC.

    Parameters
    ----------
    session
        Session inside an open transaction.
    postgres
        Whether the database is PostgreSQL (notifications, advisory locks).
    """

    def __init__(self, session: AsyncSession, *, postgres: bool) -> None:
        self._session = session
        self._postgres = postgres

    async def end_followers(
        self,
        leader_id: str,
        *,
        values: dict[str, Any],
        event: ExecutionEvent,
    ) -> None:
        """End the followers of a shared run as their leader just ended.

        A follower (see ``ResultCacheStore.add_follower``) never runs
        itself: it takes its leader's status, result, error, attempt count
        and start time, and its last sequence is the leader's ``FINISHED``
        event, which its subscribers read from the leader's log.

        Parameters
        ----------
        leader_id
            The run that ended.
        values
            Its end: ``status``, ``now``, ``result``, ``error`` (JSON) and
            ``truncated``, as given to its own finish.
        event
            Its ``FINISHED`` event.
        """
        parameters = {f"followers_{key}": value for key, value in values.items()}
        await self._session.execute(
            _END_FOLLOWERS,
            {
                **parameters,
                "followers_leader": leader_id,
                "followers_cells_done": event.cells_done,
                "followers_sequence": event.sequence,
            },
        )

    async def _change(
        self,
        execution_id: str,
        *,
        conditions: Sequence[ColumnElement[bool]],
        values: dict[str, Any],
        kind: EventKind,
        status: ExecutionStatus,
        cell_index: int | None,
        now: datetime,
        message: str | None = None,
    ) -> ExecutionEvent | None:
        """Conditionally update the row, allocating a sequence, and log it.

        Returns None (and changes nothing) when ``conditions`` do not hold.
        """
        statement = (
            update(EXECUTIONS)
            .where(EXECUTIONS.c.id == execution_id, *conditions)
            .values({**values, "last_sequence": EXECUTIONS.c.last_sequence + 1})
            .returning(EXECUTIONS.c.last_sequence, EXECUTIONS.c.cells_done)
        )
        row = (await self._session.execute(statement)).one_or_none()
        if row is None:
            return None
        return await self._insert_event(
            execution_id,
            sequence=row.last_sequence,
            kind=kind,
            status=status,
            cell_index=cell_index,
            cells_done=row.cells_done,
            message=message,
            now=now,
        )

    async def _insert_event(
        self,
        execution_id: str,
        *,
        sequence: int,
        kind: EventKind,
        status: ExecutionStatus,
        cell_index: int | None,
        cells_done: int,
        now: datetime,
        message: str | None = None,
    ) -> ExecutionEvent:
        event = ExecutionEvent(
            execution_id=execution_id,
            sequence=sequence,
            kind=kind,
            status=status,
            created_at=utc(now),
            cell_index=cell_index,
            cells_done=cells_done,
            message=message,
        )
        await self._session.execute(INSERT_EVENT, event_parameters(event))
        return event

    async def _notify_event(self, execution_id: str, sequence: int) -> None:
        """On PostgreSQL, send a notification without an event (on commit).

        Inserted events notify by themselves (a trigger, see the module
        docstring); this is for changes subscribers must re-read that add
        no event (a cancellation request).
        """
        if self._postgres:
            payload = json.dumps(
                {"id": execution_id, "seq": sequence}, separators=(",", ":")
            )
            await self._session.execute(select(func.pg_notify(EVENTS_CHANNEL, payload)))

    async def _not_found_or_finished(self, execution_id: str) -> Exception:
        """Say why a change of an unfinished execution matched no row."""
        found = await self._session.scalar(
            select(EXECUTIONS.c.id).where(EXECUTIONS.c.id == execution_id)
        )
        if found is None:
            return ExecutionNotFoundError(execution_id)
        return ExecutionFinishedError(execution_id)
