"""Execution rows: recording a submission, reading one, paging through them.

A submission becomes one ``executions`` row (status ``QUEUED``) and its
first event, sequence 1, in one statement each; the insert reads the new
row back (``RETURNING``), so a submission needs no read after it.  Reads
return :class:`~noteburst.domain.execution.Execution` values; an unfinished
follower of a shared run (see :mod:`.cache`) reads as its leader's status
and progress under its own id.

Pages are newest first, keyed by an opaque cursor (:func:`cursor_for`) of
``(created_at, id)``, so a page never repeats or skips a row when new
executions arrive in between.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, String, and_, bindparam, or_, select

from noteburst.constants import LOCAL_USER
from noteburst.domain.execution import (
    EventKind,
    Execution,
    ExecutionEvent,
    ExecutionQueue,
    ExecutionStatus,
    Progress,
)
from noteburst.exceptions import InvalidInputError

from ._base import (
    EXECUTIONS,
    SUMMARY_COLUMNS,
    UNFINISHED,
    AnyRow,
    ExecutionTableStore,
    execution_from_row,
    owned_by,
    parse_json,
    queued_row,
    utc,
)

__all__ = ["AddedExecution", "ExecutionRecordStore", "cursor_for"]

_CURSOR_VERSION = "v1"

_INSERT_QUEUED = EXECUTIONS.insert().returning(*SUMMARY_COLUMNS)
"""``add``'s insert, which also reads back what the submission returns."""


def _build_get(*, with_notebook: bool, owned: bool) -> Select[Any]:
    columns = (
        (*SUMMARY_COLUMNS, EXECUTIONS.c.result_notebook)
        if with_notebook
        else SUMMARY_COLUMNS
    )
    statement = select(*columns).where(
        EXECUTIONS.c.id == bindparam("get_id", type_=String())
    )
    if owned:
        statement = statement.where(
            EXECUTIONS.c.owner == bindparam("get_owner", type_=String())
        )
    return statement


_GET = {
    (with_notebook, owned): _build_get(with_notebook=with_notebook, owned=owned)
    for with_notebook in (False, True)
    for owned in (False, True)
}
"""``ExecutionRecordStore.get``'s statements, by (with_notebook, owner given)."""


@dataclass(frozen=True, slots=True)
class AddedExecution:
    """What :meth:`ExecutionRecordStore.add` recorded."""

    execution: Execution
    """The new execution, as a read would return it."""
    event: ExecutionEvent
    """Its ``QUEUED`` event."""


def cursor_for(execution: Execution) -> str:
    """Opaque pagination cursor pointing just after ``execution``.

    Parameters
    ----------
    execution
        An execution from :meth:`ExecutionRecordStore.list`.

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


class ExecutionRecordStore(ExecutionTableStore):
    """Add executions and read them, within one transaction."""

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
        now = utc(now)
        result = await self._session.execute(
            _INSERT_QUEUED,
            {
                **queued_row(
                    execution_id,
                    kernel_name,
                    timeout_seconds,
                    source_text,
                    now,
                    owner=owner,
                    queue=queue,
                ),
                "cells_total": cells_total,
                "last_sequence": 1,
                "cache_key": cache_key,
                "cell_timeout_seconds": cell_timeout_seconds,
                "no_output_timeout_seconds": no_output_timeout_seconds,
            },
        )
        execution = execution_from_row(result.one())
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
        notebook = await parse_json(row.result_notebook) if with_notebook else None
        if row.shares_run_of is not None and row.status in UNFINISHED:
            return await self._follower_view(row, notebook)
        return execution_from_row(row, notebook)

    async def get_result_notebook(
        self, execution_id: str, *, owner: str | None = None
    ) -> dict[str, Any] | None:
        """Load the executed notebook; None if absent, unfinished or not owner's."""
        text = await self._session.scalar(
            select(EXECUTIONS.c.result_notebook).where(
                EXECUTIONS.c.id == execution_id, *owned_by(owner)
            )
        )
        return await parse_json(text)

    async def get_source_notebook(self, execution_id: str) -> dict[str, Any] | None:
        """Load the submitted notebook; None if there is no such execution."""
        text = await self._session.scalar(
            select(EXECUTIONS.c.source_notebook).where(EXECUTIONS.c.id == execution_id)
        )
        return await parse_json(text)

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
        columns = EXECUTIONS.c
        query = select(*SUMMARY_COLUMNS).where(*owned_by(owner))
        if status is not None:
            query = query.where(columns.status == status.value)
        if after is not None:
            created_at, execution_id = _parse_cursor(after)
            query = query.where(
                or_(
                    columns.created_at < created_at,
                    and_(columns.created_at == created_at, columns.id < execution_id),
                )
            )
        query = query.order_by(columns.created_at.desc(), columns.id.desc()).limit(
            first + 1
        )
        rows = (await self._session.execute(query)).all()
        page = [execution_from_row(row) for row in rows[:first]]
        return page, len(rows) > first

    async def _follower_view(
        self, row: AnyRow, notebook: dict[str, Any] | None
    ) -> Execution:
        """Show an unfinished follower as its leader's status and progress."""
        own = execution_from_row(row, notebook)
        leader_row = (
            await self._session.execute(
                select(*SUMMARY_COLUMNS).where(EXECUTIONS.c.id == row.shares_run_of)
            )
        ).one_or_none()
        if leader_row is None:
            return own
        leader = execution_from_row(leader_row)
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
