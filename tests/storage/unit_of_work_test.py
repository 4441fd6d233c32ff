"""The unit of work: one transaction, and only the stores it asks for.

``Database.transaction()`` yields a :class:`~noteburst.storage.unit_of_work.UnitOfWork`
whose stores all run in its transaction: what a block wrote is rolled back
if it raises; a store is built the first time the block asks for it (once),
and ``stores_used`` names those asked for, in order of first use.
"""

from __future__ import annotations

import uuid

import pytest

from noteburst.storage import Database
from tests.storage.executions._helpers import T0


@pytest.mark.asyncio
async def test_transaction_rolls_back_on_error(database: Database) -> None:
    execution_id = str(uuid.uuid4())

    class BoomError(Exception):
        pass

    async def fail_after_add() -> None:
        async with database.transaction() as tx:
            await tx.executions.add(
                execution_id=execution_id,
                kernel_name="python3",
                timeout_seconds=1.0,
                source_text="{}",
                cells_total=0,
                now=T0,
            )
            raise BoomError

    with pytest.raises(BoomError):
        await fail_after_add()
    async with database.transaction() as tx:
        assert await tx.executions.get(execution_id) is None


@pytest.mark.asyncio
async def test_stores_are_built_only_when_asked_for(database: Database) -> None:
    async with database.transaction() as tx:
        assert not tx.stores_used
        events = tx.events
        claims = tx.claims
        assert tx.events is events  # built once, then reused
        assert await tx.executions.get(str(uuid.uuid4())) is None
        assert await events.latest(str(uuid.uuid4())) is None
        # In order of first use (not alphabetical), each once.
        assert tx.stores_used == ("events", "claims", "executions")
    async with database.transaction() as other:
        # Each transaction builds its own.
        assert not other.stores_used
        assert other.claims is not claims
        assert other.stores_used == ("claims",)
