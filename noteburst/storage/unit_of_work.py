"""One database transaction, with every store bound to it by name.

``async with database.transaction() as tx:`` opens a transaction and yields
a :class:`UnitOfWork`; ``tx.claims.claim_next(...)``,
``tx.events.append_many(...)``, ``tx.webhooks.add(...)`` all run in it, and
it commits when the block ends (or rolls back if it raises).  A store is
built the first time the block asks for it, so a transaction pays only for
the stores it uses.  Stores never commit: a service decides what belongs in
one transaction.
"""

from __future__ import annotations

from functools import cached_property

from sqlalchemy.ext.asyncio import AsyncSession

from .executions import (
    CancellationStore,
    ClaimStore,
    EventLogStore,
    ExecutionRecordStore,
    ResultCacheStore,
    RetentionStore,
    UserQuotaStore,
)
from .identity import IdentityLeaseStore
from .rendering import RenderingStore
from .token import TokenStore
from .webhook import WebhookStore

__all__ = ["UnitOfWork"]


class UnitOfWork:
    """The stores of one open transaction.

    Obtain one from ``Database.transaction()``; do not keep it (or a store
    from it) past the ``async with`` block.

    Parameters
    ----------
    session
        The transaction's session.
    postgres
        Whether the database is PostgreSQL (stores use notifications and
        advisory locks there).
    """

    def __init__(self, session: AsyncSession, *, postgres: bool) -> None:
        self._session = session
        self._postgres = postgres

    @property
    def stores_used(self) -> tuple[str, ...]:
        """Names of the stores this transaction asked for (for its logs)."""
        return tuple(name for name in vars(self) if not name.startswith("_"))

    @cached_property
    def executions(self) -> ExecutionRecordStore:
        """Submitting, reading and paging executions."""
        return ExecutionRecordStore(self._session, postgres=self._postgres)

    @cached_property
    def events(self) -> EventLogStore:
        """The executions' event logs."""
        return EventLogStore(self._session, postgres=self._postgres)

    @cached_property
    def claims(self) -> ClaimStore:
        """Claims, leases, queue order and the finish of a run."""
        return ClaimStore(self._session, postgres=self._postgres)

    @cached_property
    def cancels(self) -> CancellationStore:
        """Cancellation requests."""
        return CancellationStore(self._session, postgres=self._postgres)

    @cached_property
    def cache(self) -> ResultCacheStore:
        """The result cache and shared runs."""
        return ResultCacheStore(self._session, postgres=self._postgres)

    @cached_property
    def quotas(self) -> UserQuotaStore:
        """Per-user counts behind the submission limits."""
        return UserQuotaStore(self._session, postgres=self._postgres)

    @cached_property
    def retention(self) -> RetentionStore:
        """Old finished executions, found and purged a batch at a time."""
        return RetentionStore(self._session, postgres=self._postgres)

    @cached_property
    def webhooks(self) -> WebhookStore:
        """Webhook targets and their deliveries."""
        return WebhookStore(self._session)

    @cached_property
    def renderings(self) -> RenderingStore:
        """Stored HTML renderings of executed notebooks."""
        return RenderingStore(self._session, postgres=self._postgres)

    @cached_property
    def tokens(self) -> TokenStore:
        """API tokens."""
        return TokenStore(self._session)

    @cached_property
    def identities(self) -> IdentityLeaseStore:
        """Leases on JupyterHub bot identities."""
        return IdentityLeaseStore(self._session, postgres=self._postgres)
