"""Stored renderings of executed notebooks, read and written in a transaction.

Two API processes may render the same variant at once; the second insert
is dropped (``ON CONFLICT DO NOTHING``) and both callers return equal HTML,
so no lock is needed across processes.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ..dbschema import ExecutionRenderingRow

__all__ = ["RenderingStore"]


class RenderingStore:
    """Get and keep renderings; the caller's transaction commits.

    Parameters
    ----------
    session
        The session of the caller's transaction.
    postgres
        Whether the database is PostgreSQL (decided by the Database).
    """

    def __init__(self, session: AsyncSession, *, postgres: bool) -> None:
        self._session = session
        self._postgres = postgres

    async def get(self, execution_id: str, variant: str) -> str | None:
        """Return the stored rendering, or `None`."""
        result = await self._session.execute(
            select(ExecutionRenderingRow.content).where(
                ExecutionRenderingRow.execution_id == execution_id,
                ExecutionRenderingRow.variant == variant,
            )
        )
        return result.scalar_one_or_none()

    async def put(
        self, execution_id: str, variant: str, content: str, *, now: datetime
    ) -> None:
        """Keep a rendering unless one is stored already."""
        values = {
            "execution_id": execution_id,
            "variant": variant,
            "content": content,
            "created_at": now,
        }
        if self._postgres:
            statement = postgresql.insert(ExecutionRenderingRow).values(values)
            await self._session.execute(statement.on_conflict_do_nothing())
        else:
            lite = sqlite.insert(ExecutionRenderingRow).values(values)
            await self._session.execute(lite.on_conflict_do_nothing())
