"""The unit of work: every store of a block runs in its one transaction.

``Database.transaction()`` yields a :class:`~noteburst.storage.unit_of_work.UnitOfWork`
whose stores all run in its transaction: what a block wrote is rolled back
if it raises.
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
