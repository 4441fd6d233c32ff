"""Per-user quotas on SQLite and Postgres: counting one user's executions.

``tx.quotas`` (:mod:`noteburst.storage.executions.quotas`):
``owner_counts`` counts one user's queued and running executions and those
submitted since a time, whatever their status, and no other user's; and
``lock_owner`` makes count-then-add atomic, so concurrent submissions of
one user never overshoot a limit together.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from noteburst.domain.execution import ExecutionStatus
from noteburst.storage import Database
from noteburst.storage.executions import OwnerCounts
from tests.storage.executions._helpers import T0, add, add_in, claim


@pytest.mark.asyncio
async def test_owner_counts_counts_queued_running_and_recent_per_owner(
    database: Database,
) -> None:
    since = T0 + timedelta(minutes=1)
    recent = since + timedelta(seconds=1)
    await add(database, owner="alice", now=T0)  # queued, old
    await add(database, owner="alice", now=recent)  # queued, recent
    old_running = await add(database, owner="alice", now=T0)
    assert await claim(database, old_running, now=recent) is not None
    finished = await add(database, owner="alice", now=since)  # at the limit
    async with database.transaction() as tx:
        assert await tx.claims.finish(
            finished,
            status=ExecutionStatus.SUCCEEDED,
            result_text=None,
            error=None,
            now=recent,
        )
    await add(database, owner="bob", now=recent)
    async with database.transaction() as tx:
        alice = await tx.quotas.owner_counts("alice", since=since)
        bob = await tx.quotas.owner_counts("bob", since=since)
        nobody = await tx.quotas.owner_counts("nobody", since=since)
        alice_all = await tx.quotas.owner_counts("alice", since=T0)
    assert alice == OwnerCounts(queued=2, running=1, recent=2)
    assert bob == OwnerCounts(queued=1, running=0, recent=1)
    assert nobody == OwnerCounts(queued=0, running=0, recent=0)
    assert alice_all == OwnerCounts(queued=2, running=1, recent=4)


@pytest.mark.asyncio
async def test_lock_owner_keeps_concurrent_submissions_within_a_limit(
    database: Database,
) -> None:
    async def submit_if_none_queued() -> bool:
        async with database.transaction() as tx:
            await tx.quotas.lock_owner("alice")
            counts = await tx.quotas.owner_counts("alice", since=T0)
            if counts.queued >= 1:
                return False
            await asyncio.sleep(0.05)  # let the others count meanwhile
            await add_in(tx, owner="alice")
            return True

    submitted = await asyncio.gather(*(submit_if_none_queued() for _ in range(4)))
    assert sorted(submitted) == [False, False, False, True]
    async with database.transaction() as tx:
        counts = await tx.quotas.owner_counts("alice", since=T0)
    assert counts.queued == 1
