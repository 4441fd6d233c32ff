"""Per-user quotas: count a user's executions, atomically with a submission.

Counting a user's queued, running and recent executions against the
per-user limits and then adding one must be atomic, or concurrent
submissions would each see room for one more and overshoot together; the
submission service takes :meth:`UserQuotaStore.lock_owner` first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, String, bindparam, case, func, or_, select

from noteburst.dbschema import UTCDateTime
from noteburst.domain.execution import ExecutionStatus

from ._base import EXECUTIONS, UNFINISHED, ExecutionTableStore, utc

__all__ = ["OwnerCounts", "UserQuotaStore"]

_OWNER_LOCK_CLASS = 0x6E62_6F77  # "nbow"
"""First key of the PostgreSQL advisory locks that serialise one user's
submissions (so per-user limits are checked and applied atomically)."""


def _build_owner_counts() -> Select[int, int, int]:
    columns = EXECUTIONS.c
    owner = bindparam("counts_owner", type_=String())
    recent = columns.created_at >= bindparam("counts_since", type_=UTCDateTime())
    return select(
        func.count(case((columns.status == ExecutionStatus.QUEUED.value, 1))),
        func.count(case((columns.status == ExecutionStatus.RUNNING.value, 1))),
        func.count(case((recent, 1))),
    ).where(columns.owner == owner, or_(columns.status.in_(UNFINISHED), recent))


_OWNER_COUNTS = _build_owner_counts()


@dataclass(frozen=True, slots=True)
class OwnerCounts:
    """A user's executions, as counted for the per-user limits."""

    queued: int
    running: int
    recent: int
    """Submitted since the time asked for (a minute ago)."""


class UserQuotaStore(ExecutionTableStore):
    """Lock and count one user's executions, within one transaction."""

    async def lock_owner(self, owner: str) -> None:
        """Serialise one user's submissions until this transaction ends.

        PostgreSQL takes a transaction-scoped advisory lock on a hash of the
        user name (two users sharing a hash only wait for each other,
        briefly); on SQLite the transaction already holds the write lock.
        Take it before ``ResultCacheStore.lock_key``, always in that order.
        """
        if self._postgres:
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
        parameters = {"counts_owner": owner, "counts_since": utc(since)}
        row = (await self._session.execute(_OWNER_COUNTS, parameters)).one()
        return OwnerCounts(queued=row[0], running=row[1], recent=row[2])
