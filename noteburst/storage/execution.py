"""Reading and changing executions and their event log.

:class:`ExecutionStore` is the only code that knows how executions are laid
out in tables.  It is bound to one transaction by
:meth:`noteburst.storage.database.Database.transaction`, never commits, and
returns domain objects only.

Every state change goes through a single conditional ``UPDATE ...
RETURNING`` on the execution row.  That statement both decides whether the
change is allowed (a claim only of a queued or abandoned execution, a finish
only of an unfinished one) and allocates the next event sequence from
``executions.last_sequence``; the row lock it takes serialises concurrent
writers of one execution, so sequences have no gaps and two workers can
never both claim the same execution.  On Postgres every insert of events
sends ``pg_notify`` on :data:`~noteburst.constants.EVENTS_CHANNEL` from a
trigger (migration ``5d8f3a1c2b7e``: no round trip of its own), delivered
only when (and if) the transaction commits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import dataclasses
import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    Select,
    String,
    Table,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, aliased

from noteburst.constants import CANCELS_CHANNEL, EVENTS_CHANNEL, LOCAL_USER
from noteburst.dbschema import ExecutionEventRow, ExecutionRow, UTCDateTime
from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    Execution,
    ExecutionError,
    ExecutionEvent,
    ExecutionQueue,
    ExecutionStatus,
    Progress,
)
from noteburst.exceptions import (
    ExecutionNotFoundError,
    InvalidInputError,
    NoteburstError,
)

from .webhook import WebhookStore

__all__ = [
    "AddedExecution",
    "ClaimedExecution",
    "ExecutionFinishedError",
    "ExecutionStore",
    "NewEvent",
    "OwnerCounts",
    "cancel_signal_key",
    "cursor_for",
]

_AnyRow = Row[*tuple[Any, ...]]
_E = ExecutionRow
_EV = ExecutionEventRow
# The tables themselves, for the statements on every execution's path: a
# Core statement built once skips both building (coercing every value and
# column, then computing its cache key) and the ORM's execution layer, which
# together cost ten times what SQLite took to run them.
_EXECUTIONS = cast(Table, ExecutionRow.__table__)
_EVENTS = cast(Table, ExecutionEventRow.__table__)
_X = _EXECUTIONS.c
_V = _EVENTS.c

_CURSOR_VERSION = "v1"
_PARSE_IN_THREAD_BYTES = 1 << 20
"""JSON texts longer than this are parsed off the event loop."""

_SUMMARY_COLUMNS = (
    _X.id,
    _X.status,
    _X.kernel_name,
    _X.timeout_seconds,
    _X.cells_total,
    _X.cells_done,
    _X.error,
    _X.attempts,
    _X.last_sequence,
    _X.created_at,
    _X.started_at,
    _X.finished_at,
    _X.queue,
    _X.cached_from,
    _X.shares_run_of,
    _X.cell_timeout_seconds,
    _X.no_output_timeout_seconds,
    _X.outputs_truncated,
    _X.cancel_requested_at,
    _X.owner,
)
"""Everything :class:`Execution` needs, without the two notebook texts."""

_EVENT_COLUMNS = (
    _V.execution_id,
    _V.sequence,
    _V.kind,
    _V.status,
    _V.cell_index,
    _V.cells_done,
    _V.message,
    _V.output_start,
    _V.outputs,
    _V.created_at,
)

_UNFINISHED = (ExecutionStatus.QUEUED.value, ExecutionStatus.RUNNING.value)

_CACHE_LOCK_CLASS = 0x6E62_6361  # "nbca"
"""First key of the Postgres advisory locks that serialise one cache key."""

_OWNER_LOCK_CLASS = 0x6E62_6F77  # "nbow"
"""First key of the Postgres advisory locks that serialise one user's
submissions (so per-user limits are checked and applied atomically)."""


def _owned(owner: str | None) -> builtins.list[ColumnElement[bool]]:
    """Return the conditions restricting rows to one owner; none for None."""
    return [] if owner is None else [_E.owner == owner]


def _claim_rank(
    queue: InstrumentedAttribute[str] | ColumnElement[str],
) -> ColumnElement[int]:
    """Return SQL computing :attr:`ExecutionQueue.rank` of a ``queue`` column."""
    return case(
        (queue == ExecutionQueue.INTERACTIVE.value, ExecutionQueue.INTERACTIVE.rank),
        else_=ExecutionQueue.BATCH.rank,
    )


def _build_claim_next(*, with_woken_for: bool) -> Update:
    """Build the statement of :meth:`ExecutionStore.claim_next`, once.

    It is on every execution's path from queue to kernel, and building it
    per call (ORM expressions on an alias) cost a few milliseconds of CPU,
    more than running it; its values are bound parameters instead.
    """
    now = bindparam("claim_now", type_=UTCDateTime())
    # An alias, so the subquery is not correlated with the updated table.
    queued = _EXECUTIONS.alias("queued").c
    ready = [queued.not_before.is_(None), queued.not_before <= now]
    if with_woken_for:
        ready.append(queued.id == bindparam("claim_woken_for", type_=String()))
    candidate = (
        select(queued.id)
        .where(
            queued.status == ExecutionStatus.QUEUED.value,
            queued.shares_run_of.is_(None),
            queued.attempts < bindparam("claim_max_attempts", type_=Integer()),
            or_(*ready),
        )
        .order_by(_claim_rank(queued.queue), queued.created_at, queued.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        update(_EXECUTIONS)
        .where(_X.id == candidate, _X.status == ExecutionStatus.QUEUED.value)
        .values(
            status=ExecutionStatus.RUNNING.value,
            attempts=_X.attempts + 1,
            started_at=now,
            lease_expires_at=bindparam("claim_lease_until", type_=UTCDateTime()),
            not_before=None,
            cells_done=0,
            # The RUNNING event's sequence, allocated here rather than by a
            # second UPDATE (see ExecutionStore.claim_next).
            last_sequence=_X.last_sequence + 1,
        )
        .returning(*_SUMMARY_COLUMNS, _X.source_notebook)
    )


_CLAIM_NEXT = {
    with_woken_for: _build_claim_next(with_woken_for=with_woken_for)
    for with_woken_for in (False, True)
}
"""The claim statements, without and with a ``claim_woken_for`` parameter."""

# The other statements on every execution's path, built once (see _EXECUTIONS).
# Parameter names differ from column names: SQLAlchemy reserves those for the
# SET and VALUES clauses it writes itself.

_INSERT_QUEUED = insert(_EXECUTIONS).returning(*_SUMMARY_COLUMNS)
"""``add``'s insert, which also reads back what the submission returns."""
_INSERT_EVENT = insert(_EVENTS)


def _build_get(*, with_notebook: bool, owned: bool) -> Select[Any]:
    columns = (
        (*_SUMMARY_COLUMNS, _X.result_notebook) if with_notebook else _SUMMARY_COLUMNS
    )
    statement = select(*columns).where(_X.id == bindparam("get_id", type_=String()))
    if owned:
        statement = statement.where(_X.owner == bindparam("get_owner", type_=String()))
    return statement


_GET = {
    (with_notebook, owned): _build_get(with_notebook=with_notebook, owned=owned)
    for with_notebook in (False, True)
    for owned in (False, True)
}
"""``ExecutionStore.get``'s statements, by (with_notebook, owner given)."""


def _build_events(*, latest: bool, of_kinds: bool) -> Select[Any]:
    statement = select(*_EVENT_COLUMNS).where(
        _V.execution_id == bindparam("events_id", type_=String())
    )
    if of_kinds:
        statement = statement.where(
            _V.kind.in_(bindparam("events_kinds", expanding=True, type_=String()))
        )
    if latest:
        return statement.order_by(_V.sequence.desc()).limit(1)
    return statement.where(
        _V.sequence > bindparam("events_after", type_=Integer())
    ).order_by(_V.sequence)


_EVENTS_AFTER = {
    of_kinds: _build_events(latest=False, of_kinds=of_kinds)
    for of_kinds in (False, True)
}
_LATEST_EVENT = {
    of_kinds: _build_events(latest=True, of_kinds=of_kinds)
    for of_kinds in (False, True)
}


def _build_owner_counts() -> Select[int, int, int]:
    owner = bindparam("counts_owner", type_=String())
    recent = _X.created_at >= bindparam("counts_since", type_=UTCDateTime())
    return select(
        func.count(case((_X.status == ExecutionStatus.QUEUED.value, 1))),
        func.count(case((_X.status == ExecutionStatus.RUNNING.value, 1))),
        func.count(case((recent, 1))),
    ).where(_X.owner == owner, or_(_X.status.in_(_UNFINISHED), recent))


_OWNER_COUNTS = _build_owner_counts()

_ALLOCATE_EVENTS = (
    update(_EXECUTIONS)
    .where(
        _X.id == bindparam("alloc_id", type_=String()),
        _X.status.in_(_UNFINISHED),
    )
    .values(
        status=bindparam("alloc_status", type_=String()),
        cells_done=bindparam("alloc_cells_done", type_=Integer()),
        last_sequence=_X.last_sequence + bindparam("alloc_count", type_=Integer()),
    )
    .returning(_X.last_sequence)
)
"""Allocate sequences for a batch of progress events (``append_events``)."""


def _finish_values(prefix: str) -> dict[str, Any]:
    """Return the SET clause of every finish, as bound parameters."""
    return {
        "status": bindparam(f"{prefix}_status", type_=String()),
        "finished_at": bindparam(f"{prefix}_now", type_=UTCDateTime()),
        "lease_expires_at": None,
        "result_notebook": bindparam(f"{prefix}_result", type_=_X.result_notebook.type),
        "error": bindparam(f"{prefix}_error", type_=_X.error.type),
        "outputs_truncated": bindparam(
            f"{prefix}_truncated", type_=_X.outputs_truncated.type
        ),
    }


def _build_finish(*, with_attempt: bool) -> Update:
    statement = update(_EXECUTIONS).where(
        _X.id == bindparam("finish_id", type_=String()), _X.status.in_(_UNFINISHED)
    )
    if with_attempt:
        statement = statement.where(
            _X.attempts == bindparam("finish_attempt", type_=Integer())
        )
    return statement.values(
        **_finish_values("finish"),
        # The progress events written with the end, if any, come first.
        last_sequence=_X.last_sequence
        + 1
        + bindparam("finish_progress_count", type_=Integer()),
        cells_done=func.coalesce(
            bindparam("finish_cells_done", type_=Integer()), _X.cells_done
        ),
    ).returning(_X.last_sequence, _X.cells_done, _X.cache_key)


_FINISH = {
    with_attempt: _build_finish(with_attempt=with_attempt)
    for with_attempt in (False, True)
}
"""``ExecutionStore.finish``'s statements, without and with an attempt check."""


def _build_finish_followers() -> Update:
    leader_id = bindparam("followers_leader", type_=String())
    leader = _EXECUTIONS.alias("leader").c
    return (
        update(_EXECUTIONS)
        .where(_X.shares_run_of == leader_id, _X.status.in_(_UNFINISHED))
        .values(
            **_finish_values("followers"),
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


_FINISH_FOLLOWERS = _build_finish_followers()
"""Give the followers of a run that just finished its end and result."""


@dataclass(frozen=True, slots=True)
class ClaimedExecution:
    """What :meth:`ExecutionStore.claim_next` hands a worker."""

    execution: Execution
    """The execution, now ``running`` (with its new attempt count)."""
    source: dict[str, Any]
    """The submitted notebook (with its parameters injected)."""
    event: ExecutionEvent
    """The ``RUNNING`` event recorded with the claim."""


@dataclass(frozen=True, slots=True)
class AddedExecution:
    """What :meth:`ExecutionStore.add` recorded."""

    execution: Execution
    """The new execution, as a read would return it."""
    event: ExecutionEvent
    """Its ``QUEUED`` event."""


class ExecutionFinishedError(NoteburstError):
    """A change was refused because the execution already finished.

    Raised by :meth:`ExecutionStore.append_event`, typically to a worker
    still running an execution that was cancelled or given up on.
    """

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution {execution_id!r} has already finished")
        self.execution_id = execution_id


@dataclass(frozen=True, slots=True)
class OwnerCounts:
    """A user's executions, as counted for the per-user limits."""

    queued: int
    running: int
    recent: int
    """Submitted since the time asked for (a minute ago)."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A progress event to append with :meth:`ExecutionStore.append_events`.

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


def cancel_signal_key(execution_id: str) -> str:
    """Return the key under which an execution's cancellation is announced.

    Workers subscribe to it on their cancellation bus (LISTEN on
    :data:`~noteburst.constants.CANCELS_CHANNEL` on Postgres, the shared
    in-process bus otherwise); it differs from the execution id so that an
    in-process bus does not wake the worker for every progress event.
    """
    return f"cancel:{execution_id}"


def _queued_row(
    execution_id: str,
    kernel_name: str,
    timeout_seconds: float,
    source_text: str,
    now: datetime,
    *,
    owner: str,
) -> dict[str, Any]:
    """Return the columns every new queued execution row starts with."""
    return {
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


def cursor_for(execution: Execution) -> str:
    """Opaque pagination cursor pointing just after ``execution``.

    Parameters
    ----------
    execution
        An execution from :meth:`ExecutionStore.list`.

    Returns
    -------
    str
        URL-safe text to pass back as ``after``.
    """
    created = execution.created_at.astimezone(UTC).isoformat()
    raw = f"{_CURSOR_VERSION}|{created}|{execution.id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    invalid = InvalidInputError("after", "not a cursor returned by this API")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        version, created, execution_id = raw.split("|", 2)
        created_at = datetime.fromisoformat(created)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid from exc
    if version != _CURSOR_VERSION or created_at.tzinfo is None or not execution_id:
        raise invalid
    return created_at, execution_id


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        msg = f"naive datetime {value!r}: pass a timezone-aware value"
        raise ValueError(msg)
    return value.astimezone(UTC)


async def _parse_json(text: str | None) -> dict[str, Any] | None:
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


def _to_domain(row: _AnyRow, notebook: dict[str, Any] | None = None) -> Execution:
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
        error=ExecutionError.from_json(row.error) if row.error is not None else None,
        queue=ExecutionQueue(row.queue),
        cached_from=row.cached_from,
        shares_run_of=row.shares_run_of,
        cell_timeout_seconds=row.cell_timeout_seconds,
        no_output_timeout_seconds=row.no_output_timeout_seconds,
        outputs_truncated=bool(row.outputs_truncated),
        cancel_requested_at=row.cancel_requested_at,
        owner=row.owner,
    )


def _event_to_domain(row: _AnyRow) -> ExecutionEvent:
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


def _stored_event(execution_id: str, sequence: int, new: NewEvent) -> ExecutionEvent:
    """Return ``new`` as the event stored at ``sequence``."""
    return ExecutionEvent(
        execution_id=execution_id,
        sequence=sequence,
        kind=new.kind,
        status=new.status,
        created_at=_utc(new.created_at),
        cell_index=new.cell_index,
        cells_done=new.cells_done,
        output_start=new.output_start,
        outputs=new.outputs,
    )


def _event_parameters(event: ExecutionEvent) -> dict[str, Any]:
    """Return ``_INSERT_EVENT``'s parameters for ``event`` (every column)."""
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


class ExecutionStore:
    """Executions and events, within one transaction.

    Obtain one from ``Database.transaction()``; it never commits or rolls
    back itself.  Methods that record a change return the
    :class:`ExecutionEvent` they appended; after the transaction commits,
    pass its ``execution_id`` and ``sequence`` to ``EventBus.announce``.

    All ``now`` arguments must be timezone-aware; datetimes come back in UTC.

    Parameters
    ----------
    session
        Session inside an open transaction.
    """

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self._notify = session.get_bind().dialect.name == "postgresql"

    def webhooks(self) -> WebhookStore:
        """Return the webhooks store, in this same transaction."""
        return WebhookStore(self._session)

    async def add(
        self,
        *,
        execution_id: str,
        kernel_name: str,
        timeout_seconds: float,
        source_text: str,
        cells_total: int,
        now: datetime,
        queue: ExecutionQueue = ExecutionQueue.INTERACTIVE,
        cache_key: str | None = None,
        cell_timeout_seconds: float | None = None,
        no_output_timeout_seconds: float | None = None,
        owner: str = LOCAL_USER,
    ) -> AddedExecution:
        """Record a new execution, queued, with its first event.

        Parameters
        ----------
        execution_id
            New UUID, as text.
        kernel_name
            Kernel to run it with.
        timeout_seconds
            Whole-execution timeout.
        source_text
            Submitted notebook as JSON text (stored verbatim).
        cells_total
            Number of code cells.
        now
            Submission time; becomes ``created_at``.
        queue
            Which queue it waits in.
        cache_key
            Its result cache key if its success is to be cached (and
            identical submissions may share its run), else None.
        cell_timeout_seconds
            Limit per cell, or None.
        no_output_timeout_seconds
            Limit on a cell's silence, or None.
        owner
            The submitting user.

        Returns
        -------
        AddedExecution
            The execution as stored (read back by the insert itself, so
            there is no read after it) and its ``QUEUED`` event, sequence 1.
        """
        now = _utc(now)
        result = await self._session.execute(
            _INSERT_QUEUED,
            {
                **_queued_row(
                    execution_id,
                    kernel_name,
                    timeout_seconds,
                    source_text,
                    now,
                    owner=owner,
                ),
                "cells_total": cells_total,
                "last_sequence": 1,
                "queue": queue.value,
                "cache_key": cache_key,
                "cell_timeout_seconds": cell_timeout_seconds,
                "no_output_timeout_seconds": no_output_timeout_seconds,
            },
        )
        execution = _to_domain(result.one())
        event = await self._insert_event(
            execution_id,
            sequence=1,
            kind=EventKind.QUEUED,
            status=ExecutionStatus.QUEUED,
            cell_index=None,
            cells_done=0,
            now=now,
        )
        return AddedExecution(execution, event)

    async def get(
        self,
        execution_id: str,
        *,
        with_notebook: bool = False,
        owner: str | None = None,
    ) -> Execution | None:
        """Look up one execution.

        Parameters
        ----------
        execution_id
            Its id.
        with_notebook
            Also load and parse the executed notebook into
            ``Execution.notebook`` (None until it finishes).
        owner
            Only an execution of this user (another's is None, as an unknown
            id is, by the same query); None: anyone's.

        Returns
        -------
        Execution or None
            None if there is no such execution.
        """
        parameters = {"get_id": execution_id}
        if owner is not None:
            parameters["get_owner"] = owner
        result = await self._session.execute(
            _GET[with_notebook, owner is not None], parameters
        )
        row = result.one_or_none()
        if row is None:
            return None
        notebook = await _parse_json(row.result_notebook) if with_notebook else None
        if row.shares_run_of is not None and row.status in _UNFINISHED:
            return await self._follower_view(row, notebook)
        return _to_domain(row, notebook)

    async def get_result_notebook(
        self, execution_id: str, *, owner: str | None = None
    ) -> dict[str, Any] | None:
        """Load the executed notebook; None if absent, unfinished or not owner's."""
        text = await self._session.scalar(
            select(_E.result_notebook).where(_E.id == execution_id, *_owned(owner))
        )
        return await _parse_json(text)

    async def get_source_notebook(self, execution_id: str) -> dict[str, Any] | None:
        """Load the submitted notebook; None if there is no such execution."""
        text = await self._session.scalar(
            select(_E.source_notebook).where(_E.id == execution_id)
        )
        return await _parse_json(text)

    async def list(
        self,
        *,
        first: int,
        after: str | None,
        status: ExecutionStatus | None,
        owner: str | None = None,
    ) -> tuple[builtins.list[Execution], bool]:
        """One page of executions, newest first.

        Parameters
        ----------
        first
            Page size, at least 0 (the caller caps it); 0 returns no
            executions but still tells whether any exist.
        after
            Cursor from :func:`cursor_for` of the previous page's last
            execution, or None for the first page.
        status
            Only executions in this status, or all.
        owner
            Only executions of this user, or everyone's.

        Returns
        -------
        tuple of (list of Execution, bool)
            The page, and whether more executions follow it.

        Raises
        ------
        InvalidInputError
            ``first`` is negative or ``after`` is not a valid cursor.
        """
        if first < 0:
            raise InvalidInputError("first", "must not be negative")
        query = select(*_SUMMARY_COLUMNS).where(*_owned(owner))
        if status is not None:
            query = query.where(_E.status == status.value)
        if after is not None:
            created_at, execution_id = _parse_cursor(after)
            query = query.where(
                or_(
                    _E.created_at < created_at,
                    and_(_E.created_at == created_at, _E.id < execution_id),
                )
            )
        query = query.order_by(_E.created_at.desc(), _E.id.desc()).limit(first + 1)
        rows = (await self._session.execute(query)).all()
        page = [_to_domain(row) for row in rows[:first]]
        return page, len(rows) > first

    async def claim(
        self,
        execution_id: str,
        *,
        now: datetime,
        lease_until: datetime,
        max_attempts: int,
    ) -> Execution | None:
        """Take an execution for running, if nobody else holds it.

        Succeeds for a queued execution, or a running one whose lease
        expired before ``now`` (its worker is presumed dead), as long as it
        has been claimed fewer than ``max_attempts`` times.  Sets it
        running with a lease until ``lease_until``, counts the attempt and
        sets ``started_at`` to ``now``.  Of concurrent claims exactly one
        succeeds.

        Appends no event: append ``RUNNING`` with :meth:`append_event` in
        the same transaction.

        Returns
        -------
        Execution or None
            The claimed execution (``attempts`` already incremented; use it
            as the fencing token of :meth:`renew_lease` and :meth:`finish`),
            or None: a duplicate message, a live claim elsewhere, a finished
            or unknown execution, or attempts exhausted.
        """
        now, lease_until = _utc(now), _utc(lease_until)
        statement = (
            update(_E)
            .where(
                _E.id == execution_id,
                _E.attempts < max_attempts,
                _E.cancel_requested_at.is_(None),
                or_(
                    _E.status == ExecutionStatus.QUEUED.value,
                    and_(
                        _E.status == ExecutionStatus.RUNNING.value,
                        _E.lease_expires_at < now,
                    ),
                ),
            )
            .values(
                status=ExecutionStatus.RUNNING.value,
                attempts=_E.attempts + 1,
                started_at=now,
                lease_expires_at=lease_until,
            )
            .returning(*_SUMMARY_COLUMNS)
            .execution_options(synchronize_session=False)
        )
        row = (await self._session.execute(statement)).one_or_none()
        return None if row is None else _to_domain(row)

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
            (``Execution.attempts`` as returned by :meth:`claim`), so a worker
            whose lease lapsed and whose execution was claimed again finds
            out.

        Returns
        -------
        bool
            False if the execution is no longer running (or no longer this
            attempt's): the worker should stop.
        """
        lease_until = _utc(lease_until)
        conditions = [
            _E.id == execution_id,
            _E.status == ExecutionStatus.RUNNING.value,
        ]
        if attempt is not None:
            conditions.append(_E.attempts == attempt)
        statement = (
            update(_E)
            .where(*conditions)
            .values(lease_expires_at=lease_until)
            .returning(_E.id)
            .execution_options(synchronize_session=False)
        )
        return (await self._session.execute(statement)).one_or_none() is not None

    async def append_event(
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
        event; allocates the next sequence; on Postgres sends the
        notification (delivered on commit).  Use :meth:`finish` to finish.

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
        now = _utc(now)
        values: dict[str, Any] = {"status": status.value}
        if cells_done is not None:
            values["cells_done"] = cells_done
        event = await self._change(
            execution_id,
            conditions=[_E.status.in_(_UNFINISHED)],
            values=values,
            kind=kind,
            status=status,
            cell_index=cell_index,
            message=message,
            now=now,
        )
        if event is None:
            if await self._missing(execution_id):
                raise ExecutionNotFoundError(execution_id)
            raise ExecutionFinishedError(execution_id)
        return event

    async def append_events(
        self, execution_id: str, events: Sequence[NewEvent]
    ) -> builtins.list[ExecutionEvent]:
        """Record several progress events of an unfinished execution at once.

        The same as calling :meth:`append_event` for each, in order, but with
        one ``UPDATE`` (allocating all the sequences), one multi-row
        ``INSERT`` and, on Postgres, one notification (for the last event):
        a worker batches the cell events that piled up while its previous
        write was in flight.  The execution takes the last event's status
        and ``cells_done``.

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
            if await self._missing(execution_id):
                raise ExecutionNotFoundError(execution_id)
            raise ExecutionFinishedError(execution_id)
        first_sequence = row.last_sequence - len(events) + 1
        stored = [
            _stored_event(execution_id, first_sequence + offset, new)
            for offset, new in enumerate(events)
        ]
        # A list of parameter sets (executemany), not ``.values([...])``: a
        # multi-row VALUES clause is compiled anew for every batch size, and
        # compiling it was a fifth of a small notebook's CPU in the worker.
        # On Postgres asyncpg pipelines the rows' inserts in one round trip.
        await self._session.execute(
            _INSERT_EVENT, [_event_parameters(event) for event in stored]
        )
        return stored

    async def finish(
        self,
        execution_id: str,
        *,
        status: ExecutionStatus,
        result_text: str | None,
        error: ExecutionError | None,
        now: datetime,
        attempt: int | None = None,
        outputs_truncated: bool = False,
        progress: Sequence[NewEvent] = (),
    ) -> ExecutionEvent | None:
        """Finish an execution, once.

        Stores the executed notebook and error, sets ``finished_at``, clears
        the lease and appends the ``FINISHED`` event carrying ``status``,
        after ``progress``: the end of a run writes the cell events not
        written yet with the same two statements (sequences allocated by
        the one ``UPDATE``, events inserted by the one ``INSERT``), rather
        than with an :meth:`append_events` of their own before it.

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
            Events to append before ``FINISHED`` (as :meth:`append_events`
            would), written only if the finish is; their ``cells_done``
            carries over to the execution and the ``FINISHED`` event.

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
        now = _utc(now)
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
                _stored_event(execution_id, first_sequence + offset, new)
                for offset, new in enumerate(progress)
            ),
            event,
        ]
        await self._session.execute(
            _INSERT_EVENT, [_event_parameters(stored) for stored in events]
        )
        if row.cache_key is None:
            # Only a run with a cache key can have followers (they find it
            # by its key): no statement for them.
            return event
        followers = {f"followers_{key}": value for key, value in values.items()}
        await self._session.execute(
            _FINISH_FOLLOWERS,
            {
                **followers,
                "followers_leader": execution_id,
                "followers_cells_done": event.cells_done,
                "followers_sequence": event.sequence,
            },
        )
        return event

    async def request_cancel(
        self, execution_id: str, *, now: datetime, owner: str | None = None
    ) -> ExecutionEvent | None:
        """Cancel an execution: at once if queued, through its worker if running.

        A queued execution is finished ``cancelled`` here (a worker that
        receives its message later finds nothing to claim).  A running one
        gets ``cancel_requested_at`` (kept from the first request) and, on
        Postgres, a notification on :data:`~noteburst.constants.CANCELS_CHANNEL`
        (delivered on commit) for the worker that runs it, which interrupts
        the kernel and finishes it ``cancelled`` with its partial notebook;
        :meth:`claim` no longer takes it.  A finished execution is left
        unchanged.

        With ``owner``, only an execution of that user is touched (another
        user's is left alone exactly as an unknown id is).

        Returns
        -------
        ExecutionEvent or None
            The ``FINISHED`` event if a queued execution was cancelled; None
            otherwise (running, finished or unknown: read it to tell).
        """
        now = _utc(now)
        values: dict[str, Any] = {
            "status": ExecutionStatus.CANCELLED.value,
            "finished_at": now,
            "lease_expires_at": None,
            "error": ExecutionError(
                code=ErrorCode.CANCELLED, message="cancelled before it started"
            ).to_json(),
        }
        event = await self._change(
            execution_id,
            conditions=[_E.status == ExecutionStatus.QUEUED.value, *_owned(owner)],
            values=values,
            kind=EventKind.FINISHED,
            status=ExecutionStatus.CANCELLED,
            cell_index=None,
            now=now,
        )
        if event is not None:
            # Submissions sharing this run end with it, as after any finish.
            await self._finish_followers(execution_id, values, event)
            return event
        statement = (
            update(_E)
            .where(
                _E.id == execution_id,
                _E.status == ExecutionStatus.RUNNING.value,
                *_owned(owner),
            )
            .values(
                cancel_requested_at=func.coalesce(
                    _E.cancel_requested_at,
                    literal(now, type_=_E.cancel_requested_at.type),
                )
            )
            .returning(_E.id)
            .execution_options(synchronize_session=False)
        )
        running = (await self._session.execute(statement)).one_or_none()
        if running is not None and self._notify:
            payload = json.dumps(
                {"id": cancel_signal_key(execution_id)}, separators=(",", ":")
            )
            await self._session.execute(
                select(func.pg_notify(CANCELS_CHANNEL, payload))
            )
            # Subscribers re-read the execution on a wake-up without events
            # (they keep a snapshot otherwise), so they see cancelRequested.
            await self._notify_event(execution_id, 0)
        return None

    async def cancel_requested(self, execution_id: str) -> bool:
        """Whether cancellation of the execution was asked for."""
        requested = await self._session.scalar(
            select(_E.cancel_requested_at).where(_E.id == execution_id)
        )
        return requested is not None

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
        0 cells.  The caller then sends a new
        queue message.  When ``attempts`` has reached the limit,
        :meth:`claim` would refuse it; finish it instead, with
        ``ExecutionStatus.FAILED`` and ``ErrorCode.WORKER_LOST``.

        ``not_before`` holds a retry back: :meth:`claim_next` leaves it to
        other wake-ups until then (its own, delayed, message may take it).

        Returns
        -------
        ExecutionEvent or None
            The ``QUEUED`` event, or None if it was not a lost execution.
        """
        now = _utc(now)
        cutoff = now if lease_expired_before is None else _utc(lease_expired_before)
        return await self._change(
            execution_id,
            conditions=[
                _E.status == ExecutionStatus.RUNNING.value,
                _E.lease_expires_at < cutoff,
            ],
            values={
                "status": ExecutionStatus.QUEUED.value,
                "lease_expires_at": None,
                "cells_done": 0,
                "not_before": None if not_before is None else _utc(not_before),
            },
            kind=EventKind.QUEUED,
            status=ExecutionStatus.QUEUED,
            cell_index=None,
            now=now,
        )

    async def events_after(
        self,
        execution_id: str,
        after_sequence: int,
        *,
        kinds: Collection[EventKind] | None = None,
    ) -> builtins.list[ExecutionEvent]:
        """Events with a sequence above ``after_sequence``, oldest first.

        ``kinds``, if given, keeps only events of those kinds (their
        sequences keep their gaps).
        """
        parameters: dict[str, Any] = {
            "events_id": execution_id,
            "events_after": after_sequence,
        }
        if kinds is not None:
            parameters["events_kinds"] = [kind.value for kind in kinds]
        result = await self._session.execute(
            _EVENTS_AFTER[kinds is not None], parameters
        )
        return [_event_to_domain(row) for row in result]

    async def latest_event(
        self, execution_id: str, *, kinds: Collection[EventKind] | None = None
    ) -> ExecutionEvent | None:
        """Return the newest event (of ``kinds``, if given), else None.

        None: there is no such execution, or it has no event of ``kinds``.
        """
        parameters: dict[str, Any] = {"events_id": execution_id}
        if kinds is not None:
            parameters["events_kinds"] = [kind.value for kind in kinds]
        result = await self._session.execute(
            _LATEST_EVENT[kinds is not None], parameters
        )
        row = result.one_or_none()
        return None if row is None else _event_to_domain(row)

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
        now, queued_before = _utc(now), _utc(queued_before)
        queued = await self._session.scalars(
            select(_E.id)
            .where(
                _E.status == ExecutionStatus.QUEUED.value,
                _E.created_at < queued_before,
                # A follower is never claimed: its leader's message is what counts.
                _E.shares_run_of.is_(None),
                # A retry in backoff has its delayed message; resending now
                # would cut the backoff short.
                or_(_E.not_before.is_(None), _E.not_before <= now),
            )
            .order_by(_E.created_at, _E.id)
        )
        lost = await self._session.scalars(
            select(_E.id)
            .where(
                _E.status == ExecutionStatus.RUNNING.value,
                _E.lease_expires_at < now,
            )
            .order_by(_E.created_at, _E.id)
        )
        return builtins.list(queued), builtins.list(lost)

    async def claim_next(
        self,
        *,
        now: datetime,
        lease_until: datetime,
        max_attempts: int,
        woken_for: str | None = None,
    ) -> ClaimedExecution | None:
        """Take the queued execution that should run next, if there is one.

        The database is the queue: whichever execution a worker's message
        named, the worker takes the first queued execution in claim order
        (interactive before batch, then oldest first), so a free worker
        always serves the most urgent work, and every message (one is sent
        per queued execution, and the recovery sweep resends lost ones)
        starts one execution or finds the queue empty.  On Postgres the
        candidate row is locked with ``FOR UPDATE SKIP LOCKED``, so
        concurrent claimers take different executions instead of queueing
        on one row lock; on SQLite every transaction holds the database's
        write lock (``BEGIN IMMEDIATE``), which serialises claimers.

        Skipped: followers of a shared run (they never run themselves),
        executions out of attempts, and retries still in backoff (see
        :meth:`requeue`), except the one ``woken_for`` names: its message
        was delayed by that backoff, so its delivery means the wait is over.

        The claim also records the ``RUNNING`` event (its sequence is
        allocated by the claiming ``UPDATE``, which returns the submitted
        notebook too): the claim is on every execution's path from queue to
        kernel, and this makes it two statements instead of four.

        Returns
        -------
        ClaimedExecution or None
            The claimed execution, its notebook and its ``RUNNING`` event, or
            None if nothing is ready to run.
        """
        now = _utc(now)
        statement = _CLAIM_NEXT[woken_for is not None]
        parameters = {
            "claim_now": now,
            "claim_lease_until": _utc(lease_until),
            "claim_max_attempts": max_attempts,
            "claim_woken_for": woken_for,
        }
        row = (await self._session.execute(statement, parameters)).one_or_none()
        if row is None:
            return None
        execution = _to_domain(row)
        source = await _parse_json(row.source_notebook)
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
        columns = (_E.id, _E.status, _E.queue, _E.created_at, _E.shares_run_of)
        row = (
            await self._session.execute(
                select(*columns).where(_E.id == execution_id, *_owned(owner))
            )
        ).one_or_none()
        if row is not None and row.shares_run_of is not None:
            if row.status != ExecutionStatus.QUEUED.value:
                return None
            row = (
                await self._session.execute(
                    select(*columns).where(_E.id == row.shares_run_of)
                )
            ).one_or_none()
        if row is None or row.status != ExecutionStatus.QUEUED.value:
            return None
        rank = ExecutionQueue(row.queue).rank
        ahead = await self._session.scalar(
            select(func.count())
            .select_from(_E)
            .where(
                _E.status == ExecutionStatus.QUEUED.value,
                _E.shares_run_of.is_(None),
                or_(
                    _claim_rank(_E.queue) < rank,
                    and_(
                        _claim_rank(_E.queue) == rank,
                        or_(
                            _E.created_at < row.created_at,
                            and_(_E.created_at == row.created_at, _E.id < row.id),
                        ),
                    ),
                ),
            )
        )
        return int(ahead or 0) + 1

    async def lock_owner(self, owner: str) -> None:
        """Serialise one user's submissions until this transaction ends.

        Counting a user's executions against the per-user limits and then
        adding one must be atomic, or concurrent submissions would each see
        room for one more and overshoot together.  Postgres takes a
        transaction-scoped advisory lock on a hash of the user name (two
        users sharing a hash only wait for each other, briefly); on SQLite
        the transaction already holds the write lock.  Take it before
        :meth:`lock_cache_key`, always in that order.
        """
        if self._notify:  # i.e. Postgres
            digest = hashlib.sha256(owner.encode("utf-8")).digest()
            objid = int.from_bytes(digest[:4], "big", signed=True)
            await self._session.execute(
                select(func.pg_advisory_xact_lock(_OWNER_LOCK_CLASS, objid))
            )

    async def owner_counts(self, owner: str, *, since: datetime) -> OwnerCounts:
        """Count a user's queued and running executions and recent submissions.

        One statement, answered from the ``(owner, status)`` and ``(owner,
        created_at, id)`` indexes.

        Parameters
        ----------
        owner
            The user.
        since
            Submissions created at or after this count as recent.
        """
        parameters = {"counts_owner": owner, "counts_since": _utc(since)}
        row = (await self._session.execute(_OWNER_COUNTS, parameters)).one()
        return OwnerCounts(queued=row[0], running=row[1], recent=row[2])

    async def lock_cache_key(self, cache_key: str) -> None:
        """Serialise submissions of one cache key until this transaction ends.

        Looking for a cached result or a run to share, then adding an
        execution, must be atomic per key, or two identical submissions
        arriving together would both start a run.  Postgres takes a
        transaction-scoped advisory lock on the key (two-key form, in its
        own key space); on SQLite the transaction already holds the write
        lock.
        """
        if self._notify:  # i.e. Postgres
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
        query = select(_E.id).where(
            _E.cache_key == cache_key,
            _E.status == ExecutionStatus.SUCCEEDED.value,
        )
        if finished_after is not None:
            query = query.where(_E.finished_at >= _utc(finished_after))
        query = query.order_by(_E.finished_at.desc(), _E.id).limit(1)
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
        statuses = _UNFINISHED if include_running else (ExecutionStatus.QUEUED.value,)
        found: str | None = await self._session.scalar(
            select(_E.id)
            .where(_E.cache_key == cache_key, _E.status.in_(statuses))
            .order_by(_E.created_at, _E.id)
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

        The follower is never claimed; until it finishes, :meth:`get` shows
        the leader's status and progress under its id, and its events are
        the leader's.  :meth:`finish` of the leader finishes it likewise,
        in the same transaction.  An interactive follower moves a queued
        leader to the interactive queue, as someone is now waiting for it.
        """
        now = _utc(now)
        await self._session.execute(
            insert(_E).values(
                **_queued_row(
                    execution_id,
                    kernel_name,
                    timeout_seconds,
                    source_text,
                    now,
                    owner=owner,
                ),
                cells_total=cells_total,
                last_sequence=0,
                queue=queue.value,
                shares_run_of=leader_id,
            )
        )
        if queue is ExecutionQueue.INTERACTIVE:
            await self._session.execute(
                update(_E)
                .where(
                    _E.id == leader_id,
                    _E.status == ExecutionStatus.QUEUED.value,
                    _E.queue != queue.value,
                )
                .values(queue=queue.value)
                .execution_options(synchronize_session=False)
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
        now = _utc(now)
        timestamp = _E.created_at.type
        source = select(
            literal(execution_id),
            literal(ExecutionStatus.SUCCEEDED.value),
            _E.kernel_name,
            literal(timeout_seconds),
            literal(source_text),
            _E.result_notebook,
            _E.cells_total,
            _E.cells_done,
            literal(0),
            literal(1),
            literal(now, timestamp),
            literal(now, timestamp),
            literal(queue.value),
            _E.id,
            literal(owner),
        ).where(_E.id == cached_from, _E.status == ExecutionStatus.SUCCEEDED.value)
        await self._session.execute(
            insert(_E).from_select(
                [
                    _E.id,
                    _E.status,
                    _E.kernel_name,
                    _E.timeout_seconds,
                    _E.source_notebook,
                    _E.result_notebook,
                    _E.cells_total,
                    _E.cells_done,
                    _E.attempts,
                    _E.last_sequence,
                    _E.created_at,
                    _E.finished_at,
                    _E.queue,
                    _E.cached_from,
                    _E.owner,
                ],
                source,
            )
        )
        # None if nothing was copied (the cached execution is gone).
        cells_done = await self._session.scalar(
            select(_E.cells_done).where(_E.id == execution_id)
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

    async def _finish_followers(
        self, leader_id: str, values: dict[str, Any], event: ExecutionEvent
    ) -> None:
        """Give the followers of a run that just finished its end and result."""
        leader = aliased(_E)
        await self._session.execute(
            update(_E)
            .where(_E.shares_run_of == leader_id, _E.status.in_(_UNFINISHED))
            .values(
                {
                    **values,
                    "cells_done": event.cells_done,
                    "last_sequence": event.sequence,
                    "attempts": select(leader.attempts)
                    .where(leader.id == leader_id)
                    .scalar_subquery(),
                    "started_at": select(leader.started_at)
                    .where(leader.id == leader_id)
                    .scalar_subquery(),
                }
            )
            .execution_options(synchronize_session=False)
        )

    async def _follower_view(
        self, row: _AnyRow, notebook: dict[str, Any] | None
    ) -> Execution:
        """Show an unfinished follower as its leader's status and progress."""
        own = _to_domain(row, notebook)
        leader_row = (
            await self._session.execute(
                select(*_SUMMARY_COLUMNS).where(_E.id == row.shares_run_of)
            )
        ).one_or_none()
        if leader_row is None:
            return own
        leader = _to_domain(leader_row)
        return dataclasses.replace(
            own,
            status=leader.status,
            progress=Progress(
                cells_total=own.progress.cells_total,
                cells_done=leader.progress.cells_done,
            ),
            attempts=leader.attempts,
            last_sequence=leader.last_sequence,
            started_at=leader.started_at,
            finished_at=leader.finished_at,
            error=leader.error,
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
        """Conditionally update the row, allocating a sequence, and log it."""
        statement = (
            update(_E)
            .where(_E.id == execution_id, *conditions)
            .values({**values, "last_sequence": _E.last_sequence + 1})
            .returning(_E.last_sequence, _E.cells_done)
            .execution_options(synchronize_session=False)
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
            created_at=_utc(now),
            cell_index=cell_index,
            cells_done=cells_done,
            message=message,
        )
        await self._session.execute(_INSERT_EVENT, _event_parameters(event))
        return event

    async def _notify_event(self, execution_id: str, sequence: int) -> None:
        """On Postgres, send a notification without an event (on commit).

        Inserted events notify by themselves (a trigger, see the module
        docstring); this is for changes subscribers must re-read that add
        no event (a cancellation request).
        """
        if self._notify:
            payload = json.dumps(
                {"id": execution_id, "seq": sequence}, separators=(",", ":")
            )
            await self._session.execute(select(func.pg_notify(EVENTS_CHANNEL, payload)))

    async def _missing(self, execution_id: str) -> bool:
        found = await self._session.scalar(select(_E.id).where(_E.id == execution_id))
        return found is None
