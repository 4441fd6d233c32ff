"""Reading, listing and cancelling executions, for one caller.

Every service is made for one :class:`~noteburst.domain.auth.Caller`.  A
caller without the admin scope reads, lists and cancels only executions it
submitted; another user's id is treated exactly as an unknown one (the same
query with an owner condition, the same answer), so nobody can learn that
an id exists.

Submitting is :mod:`.submission`; following an execution's events live is
:mod:`.watch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from ..domain.auth import Caller
from ..domain.execution import Execution, ExecutionStatus
from ..exceptions import ExecutionNotFoundError, InvalidInputError
from ..storage.database import Database
from ..storage.events import EventBus
from ..storage.executions import cancel_signal_key, cursor_for
from .webhook import WebhookService

__all__ = ["MAX_PAGE_SIZE", "ExecutionPage", "ExecutionService"]

_logger = structlog.get_logger("noteburst.executions")

MAX_PAGE_SIZE = 100
"""Most executions one page of :meth:`ExecutionService.list` may hold."""


@dataclass(frozen=True, slots=True)
class ExecutionPage:
    """One page of executions, newest first."""

    executions: list[Execution]
    cursors: list[str]
    has_next_page: bool


class ExecutionService:
    """Read, list and cancel executions.

    Parameters
    ----------
    database
        Where executions live.
    bus
        Wakes watchers (and, embedded, the worker) on a cancellation.
    caller
        Who is asking: only their executions are visible unless they are
        an administrator.
    webhooks
        Woken when a cancellation ends an execution; `None`: no webhooks.
    """

    def __init__(
        self,
        *,
        database: Database,
        bus: EventBus,
        caller: Caller,
        webhooks: WebhookService | None = None,
    ) -> None:
        self._db = database
        self._bus = bus
        self._owner = caller.owner_filter
        self._webhooks = webhooks

    async def get(self, execution_id: str) -> Execution | None:
        """Return an execution (without its notebook), or `None`.

        None also for another user's execution, unless the caller is an
        administrator.
        """
        async with self._db.transaction() as tx:
            return await tx.executions.get(execution_id, owner=self._owner)

    async def get_notebook(self, execution_id: str) -> dict[str, Any] | None:
        """Return the executed notebook, once the execution is terminal."""
        async with self._db.transaction() as tx:
            return await tx.executions.get_result_notebook(
                execution_id, owner=self._owner
            )

    async def get_source_notebook(self, execution_id: str) -> dict[str, Any] | None:
        """Return the notebook as submitted (parameters injected), or `None`.

        None also for another user's execution, unless the caller is an
        administrator: ownership is checked in the same transaction.
        """
        async with self._db.transaction() as tx:
            if await tx.executions.get(execution_id, owner=self._owner) is None:
                return None
            return await tx.executions.get_source_notebook(execution_id)

    async def list(
        self,
        *,
        first: int | None,
        after: str | None,
        status: ExecutionStatus | None,
    ) -> ExecutionPage:
        """List executions newest first.

        Raises
        ------
        InvalidInputError
            Raised if ``first`` is out of range or ``after`` is not a cursor
            this service issued.
        """
        size = 20 if first is None else first
        if not 0 <= size <= MAX_PAGE_SIZE:
            raise InvalidInputError("first", f"must be between 0 and {MAX_PAGE_SIZE}")
        async with self._db.transaction() as tx:
            executions, has_next = await tx.executions.list(
                first=size, after=after, status=status, owner=self._owner
            )
        return ExecutionPage(
            executions=executions,
            cursors=[cursor_for(e) for e in executions],
            has_next_page=has_next,
        )

    async def queue_position(self, execution_id: str) -> int | None:
        """1-based place of a queued execution in the claim order, else None."""
        async with self._db.transaction() as tx:
            return await tx.claims.queue_position(execution_id, owner=self._owner)

    async def cancel(self, execution_id: str) -> Execution:
        """Cancel an execution; idempotent.

        A queued execution ends ``cancelled`` at once.  For a running one the
        request is recorded and its worker (in whatever process) is told;
        it interrupts the kernel and ends the execution ``cancelled`` with
        the notebook as far as it got, which subscribers see as the
        terminal event.  A finished execution is returned unchanged.

        Returns
        -------
        Execution
            The execution after the request: ``cancelled`` if it was queued,
            still ``running`` (with ``cancel_requested_at``) if it was
            running, as it was if it had finished.

        Raises
        ------
        ExecutionNotFoundError
            Raised if there is no such execution (or it is another user's).
        """
        async with self._db.transaction() as tx:
            event = await tx.cancels.request(
                execution_id, now=datetime.now(UTC), owner=self._owner
            )
            execution = await tx.executions.get(execution_id, owner=self._owner)
        if execution is None:
            raise ExecutionNotFoundError(execution_id)
        if event is not None:
            self._bus.announce(execution_id, event.sequence)
            await self._wake_webhooks(execution_id)
        elif execution.status is ExecutionStatus.RUNNING:
            # For the in-process bus; on Postgres the NOTIFYs already went out.
            self._bus.announce(cancel_signal_key(execution_id), 0)
            self._bus.announce(execution_id, 0)  # watchers refresh their snapshot
        _logger.info(
            "Cancellation requested",
            execution_id=execution_id,
            status=execution.status.value,
        )
        return execution

    async def _wake_webhooks(self, execution_id: str) -> None:
        if self._webhooks is not None:
            await self._webhooks.wake(execution_id)
