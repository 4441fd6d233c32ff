"""Leases on bot identities, so two workers never drive the same lab.

Each worker process claims one identity from the configured pool with a
conditional update, renews the lease while it lives, and releases it on a
clean stop.  A worker that crashes stops renewing; once its lease expires
another worker takes the identity over, and with it the lab.  The lease is
in the database every worker already shares, so no extra service is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ..dbschema import LabIdentityRow

__all__ = ["IdentityLeaseStore"]


class IdentityLeaseStore:
    """Claim, renew and release identity leases in one transaction.

    Parameters
    ----------
    session
        The session of the caller's transaction; the store never commits.
    postgres
        Whether the database is PostgreSQL (decided by the Database).
    """

    def __init__(self, session: AsyncSession, *, postgres: bool) -> None:
        self._session = session
        self._postgres = postgres

    async def claim(
        self,
        candidates: Sequence[str],
        *,
        holder: str,
        now: datetime,
        lease_until: datetime,
    ) -> str | None:
        """Take the first identity that is free, expired, or already ours.

        Parameters
        ----------
        candidates
            The pool, in order of preference.
        holder
            A name unique to the claiming worker process.
        now
            Current time; leases that expired before it are free.
        lease_until
            Expiry of the new lease.

        Returns
        -------
        str or None
            The identity claimed, or `None` when every one is held.
        """
        await self._ensure_rows(candidates)
        for name in candidates:
            result = await self._session.execute(
                update(LabIdentityRow)
                .where(
                    LabIdentityRow.name == name,
                    or_(
                        LabIdentityRow.holder.is_(None),
                        LabIdentityRow.holder == holder,
                        LabIdentityRow.lease_expires_at < now,
                    ),
                )
                .values(holder=holder, lease_expires_at=lease_until, acquired_at=now)
                .returning(LabIdentityRow.name)
            )
            if result.scalar_one_or_none() is not None:
                return name
        return None

    async def renew(self, name: str, *, holder: str, lease_until: datetime) -> bool:
        """Extend our lease; `False` if it is no longer ours (taken over)."""
        result = await self._session.execute(
            update(LabIdentityRow)
            .where(LabIdentityRow.name == name, LabIdentityRow.holder == holder)
            .values(lease_expires_at=lease_until)
            .returning(LabIdentityRow.name)
        )
        return result.scalar_one_or_none() is not None

    async def release(self, name: str, *, holder: str) -> bool:
        """Give the identity back; `False` if it was not ours."""
        result = await self._session.execute(
            update(LabIdentityRow)
            .where(LabIdentityRow.name == name, LabIdentityRow.holder == holder)
            .values(holder=None, lease_expires_at=None)
            .returning(LabIdentityRow.name)
        )
        return result.scalar_one_or_none() is not None

    async def holder_of(self, name: str) -> str | None:
        """Return who holds ``name`` (expired or not), for diagnostics."""
        result = await self._session.execute(
            select(LabIdentityRow.holder).where(LabIdentityRow.name == name)
        )
        return result.scalar_one_or_none()

    async def _ensure_rows(self, names: Sequence[str]) -> None:
        if not names:
            return
        rows = [{"name": name} for name in names]
        # Both dialects spell "insert unless present" the same way, but
        # through their own Insert classes.
        if self._postgres:
            await self._session.execute(
                postgresql.insert(LabIdentityRow).values(rows).on_conflict_do_nothing()
            )
        else:
            await self._session.execute(
                sqlite.insert(LabIdentityRow).values(rows).on_conflict_do_nothing()
            )
