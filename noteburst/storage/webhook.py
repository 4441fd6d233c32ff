"""Reading and changing webhooks and their delivery attempts.

:class:`WebhookStore` is bound to the caller's transaction (get one from
``tx.webhooks`` inside ``Database.transaction()``, so a
submission stores its webhook with its execution) and never commits.

The outbox needs no write when an execution ends: a pending webhook whose
execution has a terminal status is owed, and the terminal status is
committed by whatever ended it (the runner, a cancel, the recovery sweep, a
cache hit, the end of a shared run that its followers share).  An attempt
is taken with one conditional ``UPDATE`` (:meth:`WebhookStore.claim`), so
two workers woken for the same webhook cannot both send it, and the lease
it sets lets the sweep hand the webhook to another worker if this one dies
mid-attempt.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..dbschema import ExecutionRow, WebhookDeliveryRow, WebhookRow
from ..domain.execution import ExecutionStatus
from ..domain.webhook import WebhookDelivery, WebhookState, WebhookTarget

__all__ = ["ClaimedWebhook", "WebhookStore"]

_W = WebhookRow
_D = WebhookDeliveryRow
_E = ExecutionRow

_TERMINAL = tuple(s.value for s in ExecutionStatus if s.is_terminal)


@dataclass(frozen=True, slots=True)
class ClaimedWebhook:
    """A webhook taken for one delivery attempt."""

    execution_id: str
    url: str
    secret_ciphertext: str
    attempt: int
    """This attempt's number (the fencing token of :meth:`WebhookStore.record`)."""


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        msg = f"naive datetime {value!r}: pass a timezone-aware value"
        raise ValueError(msg)
    return value.astimezone(UTC)


def _due(now: datetime) -> list[ColumnElement[bool]]:
    """Conditions of a webhook that should be attempted now."""
    return [
        _W.state == WebhookState.PENDING.value,
        or_(_W.next_attempt_at.is_(None), _W.next_attempt_at <= now),
        or_(_W.lease_expires_at.is_(None), _W.lease_expires_at < now),
        _W.execution_id.in_(select(_E.id).where(_E.status.in_(_TERMINAL))),
    ]


class WebhookStore:
    """Webhooks and delivery attempts, within one transaction.

    Parameters
    ----------
    session
        Session inside an open transaction.
    """

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(
        self, execution_id: str, *, url: str, secret_ciphertext: str, now: datetime
    ) -> None:
        """Register the webhook of a new execution (pending)."""
        await self._session.execute(
            insert(_W).values(
                execution_id=execution_id,
                url=url,
                secret_ciphertext=secret_ciphertext,
                state=WebhookState.PENDING.value,
                attempts=0,
                created_at=_utc(now),
            )
        )

    async def get(self, execution_id: str) -> WebhookTarget | None:
        """Return the webhook of an execution (never its secret), or None."""
        row = (
            await self._session.execute(
                select(
                    _W.execution_id, _W.url, _W.state, _W.attempts, _W.next_attempt_at
                ).where(_W.execution_id == execution_id)
            )
        ).one_or_none()
        if row is None:
            return None
        return WebhookTarget(
            execution_id=row.execution_id,
            url=row.url,
            state=WebhookState(row.state),
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
        )

    async def deliveries(self, execution_id: str) -> builtins.list[WebhookDelivery]:
        """Every recorded attempt, oldest first."""
        result = await self._session.execute(
            select(
                _D.attempt,
                _D.started_at,
                _D.status_code,
                _D.latency_seconds,
                _D.error,
                _D.succeeded,
            )
            .where(_D.execution_id == execution_id)
            .order_by(_D.attempt)
        )
        return [
            WebhookDelivery(
                attempt=row.attempt,
                started_at=row.started_at,
                status_code=row.status_code,
                latency_seconds=row.latency_seconds,
                error=row.error,
                succeeded=bool(row.succeeded),
            )
            for row in result
        ]

    async def claim(
        self, execution_id: str, *, now: datetime, lease_until: datetime
    ) -> ClaimedWebhook | None:
        """Take a due webhook for one attempt, if nobody holds it.

        Due: pending, its execution terminal, its backoff over and no live
        lease.  Counts the attempt and sets the lease.

        Returns
        -------
        ClaimedWebhook or None
            None if it is not due (a duplicate or early wake-up, an attempt
            in flight elsewhere, already delivered or given up, unknown).
        """
        now = _utc(now)
        statement = (
            update(_W)
            .where(_W.execution_id == execution_id, *_due(now))
            .values(attempts=_W.attempts + 1, lease_expires_at=_utc(lease_until))
            .returning(_W.execution_id, _W.url, _W.secret_ciphertext, _W.attempts)
            .execution_options(synchronize_session=False)
        )
        row = (await self._session.execute(statement)).one_or_none()
        if row is None:
            return None
        return ClaimedWebhook(
            execution_id=row.execution_id,
            url=row.url,
            secret_ciphertext=row.secret_ciphertext,
            attempt=row.attempts,
        )

    async def record(
        self,
        execution_id: str,
        delivery: WebhookDelivery,
        *,
        state: WebhookState,
        next_attempt_at: datetime | None,
        now: datetime,
    ) -> bool:
        """Store an attempt and what follows it; release the lease.

        Returns
        -------
        bool
            False if the attempt was no longer this worker's (its lease
            lapsed and another attempt started): nothing is changed then.
        """
        now = _utc(now)
        statement = (
            update(_W)
            .where(
                _W.execution_id == execution_id,
                _W.attempts == delivery.attempt,
                _W.state == WebhookState.PENDING.value,
            )
            .values(
                state=state.value,
                next_attempt_at=None
                if next_attempt_at is None
                else _utc(next_attempt_at),
                lease_expires_at=None,
                completed_at=None if state is WebhookState.PENDING else now,
            )
            .returning(_W.execution_id)
            .execution_options(synchronize_session=False)
        )
        if (await self._session.execute(statement)).one_or_none() is None:
            return False
        await self._session.execute(
            insert(_D).values(
                execution_id=execution_id,
                attempt=delivery.attempt,
                started_at=_utc(delivery.started_at),
                status_code=delivery.status_code,
                latency_seconds=delivery.latency_seconds,
                error=delivery.error,
                succeeded=delivery.succeeded,
            )
        )
        return True

    async def due(
        self, *, now: datetime, ending_with: str | None = None
    ) -> builtins.list[str]:
        """Return the executions whose webhook is owed an attempt now, oldest first.

        Parameters
        ----------
        now
            Current time (a webhook in backoff until later is not due; once
            due, the sweep finds it even if its delayed message was lost).
        ending_with
            Only the webhooks of this execution and of the followers of its
            shared run (which ended with it).
        """
        now = _utc(now)
        query = select(_W.execution_id).where(*_due(now))
        if ending_with is not None:
            query = query.where(
                _W.execution_id.in_(
                    select(_E.id).where(
                        or_(_E.id == ending_with, _E.shares_run_of == ending_with)
                    )
                )
            )
        query = query.order_by(_W.created_at, _W.execution_id)
        return list(await self._session.scalars(query))
