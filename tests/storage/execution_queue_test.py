"""The database as the queue: claim order, backoff and queue positions.

Against real SQLite and Postgres: ``claim_next`` takes interactive before
batch and oldest first, concurrent claimers take different executions,
retries in backoff wait (unless their own delayed message wakes a worker),
and ``queue_position`` counts what a free worker takes first.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from noteburst.domain.execution import Execution, ExecutionQueue, ExecutionStatus
from noteburst.storage import Database

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
LEASE = timedelta(seconds=30)
NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


async def add(database: Database, queue: ExecutionQueue, *, now: datetime = T0) -> str:
    execution_id = str(uuid.uuid4())
    async with database.transaction() as tx:
        await tx.executions.add(
            execution_id=execution_id,
            kernel_name="python3",
            timeout_seconds=60.0,
            source_text=json.dumps(NOTEBOOK),
            cells_total=1,
            now=now,
            queue=queue,
        )
    return execution_id


async def claim_next(
    database: Database,
    *,
    now: datetime = T0 + timedelta(minutes=1),
    woken_for: str | None = None,
    max_attempts: int = 3,
) -> Execution | None:
    async with database.transaction() as tx:
        claimed = await tx.claims.claim_next(
            now=now,
            lease_until=now + LEASE,
            max_attempts=max_attempts,
            woken_for=woken_for,
        )
    return None if claimed is None else claimed.execution


async def positions(database: Database, *ids: str) -> list[int | None]:
    async with database.transaction() as tx:
        return [await tx.claims.queue_position(i) for i in ids]


@pytest.mark.asyncio
async def test_interactive_is_claimed_before_batch_then_oldest_first(
    database: Database,
) -> None:
    batch_old = await add(database, ExecutionQueue.BATCH, now=T0)
    batch_new = await add(database, ExecutionQueue.BATCH, now=T0 + timedelta(1))
    interactive_old = await add(
        database, ExecutionQueue.INTERACTIVE, now=T0 + timedelta(2)
    )
    interactive_new = await add(
        database, ExecutionQueue.INTERACTIVE, now=T0 + timedelta(3)
    )
    later = T0 + timedelta(days=4)
    assert await positions(
        database, interactive_old, interactive_new, batch_old, batch_new
    ) == [1, 2, 3, 4]

    claimed = []
    # Whatever message woke the worker, it takes the most urgent execution.
    while execution := await claim_next(database, now=later, woken_for=batch_new):
        assert execution.status is ExecutionStatus.RUNNING
        assert execution.attempts == 1
        claimed.append(execution.id)
        queued_ids = [batch_old, batch_new, interactive_old, interactive_new]
        remaining = [i for i in queued_ids if i not in claimed]
        # Positions move up as executions ahead are claimed; claimed ones
        # have none.
        assert await positions(database, *claimed) == [None] * len(claimed)
        ordered = [
            i
            for i in (interactive_old, interactive_new, batch_old, batch_new)
            if i in remaining
        ]
        assert await positions(database, *ordered) == list(range(1, len(ordered) + 1))
    assert claimed == [interactive_old, interactive_new, batch_old, batch_new]
    async with database.transaction() as tx:
        assert await tx.claims.queue_position(str(uuid.uuid4())) is None


@pytest.mark.asyncio
async def test_concurrent_claimers_take_different_executions(
    database: Database,
) -> None:
    ids = {await add(database, ExecutionQueue.INTERACTIVE) for _ in range(6)}
    claimed = await asyncio.gather(*(claim_next(database) for _ in range(8)))
    taken = [c.id for c in claimed if c is not None]
    assert sorted(taken) == sorted(ids)  # each once, and two found nothing


@pytest.mark.asyncio
async def test_a_retry_in_backoff_waits_for_its_own_message(
    database: Database,
) -> None:
    retried = await add(database, ExecutionQueue.INTERACTIVE, now=T0)
    first = await claim_next(database, now=T0)
    assert first is not None
    assert first.id == retried
    backoff_ends = T0 + timedelta(seconds=10)
    async with database.transaction() as tx:
        assert await tx.claims.requeue(
            retried,
            now=T0,
            lease_expired_before=T0 + timedelta(days=1),
            not_before=backoff_ends,
        )
    other = await add(database, ExecutionQueue.BATCH, now=T0 + timedelta(seconds=1))
    during = T0 + timedelta(seconds=5)
    # Another wake-up during the backoff takes other work, not the retry...
    taken = await claim_next(database, now=during, woken_for=other)
    assert taken is not None
    assert taken.id == other
    assert await claim_next(database, now=during) is None
    # ...but the retry's own (delayed) message ends its wait...
    again = await claim_next(database, now=during, woken_for=retried)
    assert again is not None
    assert again.id == retried
    assert again.attempts == 2


@pytest.mark.asyncio
async def test_backoff_ends_for_every_wake_up(database: Database) -> None:
    retried = await add(database, ExecutionQueue.BATCH, now=T0)
    assert await claim_next(database, now=T0)
    async with database.transaction() as tx:
        assert await tx.claims.requeue(
            retried,
            now=T0,
            lease_expired_before=T0 + timedelta(days=1),
            not_before=T0 + timedelta(seconds=10),
        )
    assert await claim_next(database, now=T0 + timedelta(seconds=9)) is None
    # The sweep leaves it to its delayed message until the backoff is over.
    async with database.transaction() as tx:
        during, _ = await tx.claims.find_orphans(
            now=T0 + timedelta(seconds=9), queued_before=T0 + timedelta(days=1)
        )
        after, _ = await tx.claims.find_orphans(
            now=T0 + timedelta(seconds=10), queued_before=T0 + timedelta(days=1)
        )
    assert (during, after) == ([], [retried])
    later = await claim_next(database, now=T0 + timedelta(seconds=10))
    assert later is not None
    assert later.id == retried


@pytest.mark.asyncio
async def test_executions_out_of_attempts_are_not_claimed(database: Database) -> None:
    execution_id = await add(database, ExecutionQueue.INTERACTIVE)
    assert await claim_next(database, max_attempts=1)
    async with database.transaction() as tx:
        assert await tx.claims.requeue(
            execution_id, now=T0, lease_expired_before=T0 + timedelta(days=1)
        )
    assert await claim_next(database, max_attempts=1) is None
    assert await claim_next(database, max_attempts=2) is not None
