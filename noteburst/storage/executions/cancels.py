"""Cancellation: at once for a queued execution, through its worker if running.

A queued execution is finished ``CANCELLED`` by the request itself (a
worker that receives its message later finds nothing to claim), and the
followers sharing its run end with it.  A running one only gets
``cancel_requested_at``: the worker running it hears the request (on
PostgreSQL a notification on :data:`~noteburst.constants.CANCELS_CHANNEL`,
delivered on commit, under :func:`cancel_signal_key`), interrupts the
kernel and finishes it ``CANCELLED`` with its partial notebook.  A claim no
longer takes an execution whose cancellation was requested.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import func, literal, select, update

from noteburst.constants import CANCELS_CHANNEL
from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    ExecutionEvent,
    ExecutionFailure,
    ExecutionStatus,
)

from ._base import EXECUTIONS, ExecutionTableStore, owned_by, utc

__all__ = ["CancellationStore", "cancel_signal_key"]


def cancel_signal_key(execution_id: str) -> str:
    """Return the key under which an execution's cancellation is announced.

    Workers subscribe to it on their cancellation bus (LISTEN on
    :data:`~noteburst.constants.CANCELS_CHANNEL` on PostgreSQL, the shared
    in-process bus otherwise); it differs from the execution id so that an
    in-process bus does not wake the worker for every progress event.
    """
    return f"cancel:{execution_id}"


class CancellationStore(ExecutionTableStore):
    """Request and look up cancellations, within one transaction."""

    async def request(
        self, execution_id: str, *, now: datetime, owner: str | None = None
    ) -> ExecutionEvent | None:
        """Cancel an execution: at once if queued, through its worker if running.

        A finished execution is left unchanged.  A running one keeps the
        time of the first request.  With ``owner``, only an execution of
        that user is touched (another user's is left alone exactly as an
        unknown id is).

        Returns
        -------
        ExecutionEvent or None
            The ``FINISHED`` event if a queued execution was cancelled; None
            otherwise (running, finished or unknown: read it to tell).
        """
        now = utc(now)
        failure = ExecutionFailure(
            code=ErrorCode.CANCELLED, message="cancelled before it started"
        )
        values: dict[str, Any] = {
            "status": ExecutionStatus.CANCELLED.value,
            "finished_at": now,
            "lease_expires_at": None,
            "error": failure.to_json(),
        }
        event = await self._change(
            execution_id,
            conditions=[
                EXECUTIONS.c.status == ExecutionStatus.QUEUED.value,
                *owned_by(owner),
            ],
            values=values,
            kind=EventKind.FINISHED,
            status=ExecutionStatus.CANCELLED,
            cell_index=None,
            now=now,
        )
        if event is not None:
            # Submissions sharing this run end with it, as after any finish.
            await self.end_followers(
                execution_id,
                values={
                    "status": ExecutionStatus.CANCELLED.value,
                    "now": now,
                    "result": None,
                    "error": failure.to_json(),
                    "truncated": False,
                },
                event=event,
            )
            return event
        columns = EXECUTIONS.c
        statement = (
            update(EXECUTIONS)
            .where(
                columns.id == execution_id,
                columns.status == ExecutionStatus.RUNNING.value,
                *owned_by(owner),
            )
            .values(
                cancel_requested_at=func.coalesce(
                    columns.cancel_requested_at,
                    literal(now, type_=columns.cancel_requested_at.type),
                )
            )
            .returning(columns.id)
        )
        running = (await self._session.execute(statement)).one_or_none()
        if running is not None and self._postgres:
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

    async def requested(self, execution_id: str) -> bool:
        """Whether cancellation of the execution was asked for."""
        requested = await self._session.scalar(
            select(EXECUTIONS.c.cancel_requested_at).where(
                EXECUTIONS.c.id == execution_id
            )
        )
        return requested is not None
