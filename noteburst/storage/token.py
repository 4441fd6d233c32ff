"""Reading and changing stored API tokens.

:class:`TokenStore` is bound to one transaction and never commits; it
returns :class:`~noteburst.domain.auth.TokenInfo` objects and, for the one
look-up made while authenticating, the stored hash beside them.
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from noteburst.dbschema import ApiTokenRow
from noteburst.domain.auth import TokenInfo

__all__ = ["TokenStore"]

_T = ApiTokenRow
_COLUMNS = (
    _T.key,
    _T.user,
    _T.scopes,
    _T.created_at,
    _T.expires_at,
    _T.revoked_at,
)


def _to_domain(row: Any) -> TokenInfo:
    return TokenInfo(
        key=row.key,
        user=row.user,
        scopes=tuple(row.scopes.split()),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


class TokenStore:
    """API tokens, within one transaction.

    Parameters
    ----------
    session
        Session inside an open transaction.
    """

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(
        self,
        *,
        key: str,
        secret_hash: str,
        user: str,
        scopes: builtins.list[str],
        now: datetime,
        expires_at: datetime | None,
    ) -> TokenInfo:
        """Store a new token and return what is known about it."""
        await self._session.execute(
            insert(_T).values(
                key=key,
                secret_hash=secret_hash,
                user=user,
                scopes=" ".join(scopes),
                created_at=now,
                expires_at=expires_at,
            )
        )
        return TokenInfo(
            key=key,
            user=user,
            scopes=tuple(scopes),
            created_at=now.astimezone(UTC),
            expires_at=None if expires_at is None else expires_at.astimezone(UTC),
            revoked_at=None,
        )

    async def get_with_hash(self, key: str) -> tuple[TokenInfo, str] | None:
        """Look a token up by key (one primary-key read), with its hash."""
        row = (
            await self._session.execute(
                select(*_COLUMNS, _T.secret_hash).where(_T.key == key)
            )
        ).one_or_none()
        return None if row is None else (_to_domain(row), row.secret_hash)

    async def list(self, *, user: str | None = None) -> builtins.list[TokenInfo]:
        """All tokens (of one user, if given), oldest first."""
        query = select(*_COLUMNS).order_by(_T.created_at, _T.key)
        if user is not None:
            query = query.where(_T.user == user)
        return [_to_domain(row) for row in (await self._session.execute(query)).all()]

    async def revoke(self, key: str, *, now: datetime) -> TokenInfo | None:
        """Mark a token revoked (keeping the first revocation time).

        Returns
        -------
        TokenInfo or None
            The token after the change, or None if there is no such key.
        """
        await self._session.execute(
            update(_T)
            .where(_T.key == key)
            .values(
                revoked_at=func.coalesce(
                    _T.revoked_at, literal(now, type_=_T.revoked_at.type)
                )
            )
            .execution_options(synchronize_session=False)
        )
        found = await self.get_with_hash(key)
        return None if found is None else found[0]
