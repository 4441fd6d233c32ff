"""The result cache and shared runs, on SQLite and Postgres.

``tx.cache`` (:mod:`noteburst.storage.executions.cache`): cached results
are found by key and age and copied into cache hits; followers of a shared
run show its state, are never claimed or resent, and finish with it in the
same transaction, whatever ends it.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest

from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    ExecutionFailure,
    ExecutionQueue,
    ExecutionStatus,
)
from noteburst.storage import Database
from tests.storage.executions._helpers import (
    LEASE,
    NOTEBOOK,
    T0,
    add,
    add_follower,
)

KEY = "ab" * 32
SOURCE = json.dumps(NOTEBOOK)
RESULT = json.dumps({"cells": [], "metadata": {"ran": True}, "nbformat": 4})


async def add_run(
    database: Database,
    *,
    now: datetime = T0,
    key: str | None = KEY,
    queue: ExecutionQueue = ExecutionQueue.INTERACTIVE,
) -> str:
    return await add(database, queue, now=now, cells_total=2, cache_key=key)


async def run_to_end(
    database: Database,
    *,
    now: datetime,
    status: ExecutionStatus = ExecutionStatus.SUCCEEDED,
    error: ExecutionFailure | None = None,
) -> str:
    async with database.transaction() as tx:
        started = await tx.claims.claim_next(
            now=now, lease_until=now + LEASE, max_attempts=3
        )
        assert started is not None  # with its RUNNING event
        claimed = started.execution
    async with database.transaction() as tx:
        await tx.events.append(
            claimed.id,
            kind=EventKind.CELL_FINISHED,
            status=ExecutionStatus.RUNNING,
            cell_index=0,
            cells_done=2,
            now=now,
        )
        assert await tx.claims.finish(
            claimed.id,
            status=status,
            result_text=RESULT,
            error=error,
            now=now,
            attempt=claimed.attempts,
        )
    return claimed.id


@pytest.mark.asyncio
async def test_the_newest_success_within_the_age_is_found(database: Database) -> None:
    async with database.transaction() as tx:
        assert await tx.cache.find_cached(KEY, finished_after=None) is None
    old = await add_run(database, now=T0)
    assert await run_to_end(database, now=T0 + timedelta(minutes=1)) == old
    new = await add_run(database, now=T0 + timedelta(minutes=2))
    assert await run_to_end(database, now=T0 + timedelta(minutes=3)) == new
    await add_run(database, now=T0 + timedelta(minutes=4))
    await run_to_end(
        database,
        now=T0 + timedelta(minutes=5),
        status=ExecutionStatus.FAILED,
        error=ExecutionFailure(code=ErrorCode.CELL_ERROR, message="boom"),
    )
    await add_run(database, now=T0 + timedelta(minutes=6), key=None)
    await run_to_end(database, now=T0 + timedelta(minutes=7))
    async with database.transaction() as tx:
        # Failures and runs without a key are never results of the key.
        assert await tx.cache.find_cached(KEY, finished_after=None) == new
        at_limit = T0 + timedelta(minutes=3)
        assert await tx.cache.find_cached(KEY, finished_after=at_limit) == new
        too_late = at_limit + timedelta(microseconds=1)
        assert await tx.cache.find_cached(KEY, finished_after=too_late) is None
        assert await tx.cache.find_cached("cd" * 32, finished_after=None) is None


@pytest.mark.asyncio
async def test_a_cache_hit_is_a_new_succeeded_execution_with_the_result(
    database: Database,
) -> None:
    cached = await add_run(database)
    await run_to_end(database, now=T0 + timedelta(minutes=1))
    hit_id = str(uuid.uuid4())
    now = T0 + timedelta(hours=1)
    async with database.transaction() as tx:
        event = await tx.cache.add_cache_hit(
            execution_id=hit_id,
            cached_from=cached,
            timeout_seconds=5.0,
            source_text=SOURCE,
            queue=ExecutionQueue.BATCH,
            now=now,
        )
        missing = await tx.cache.add_cache_hit(
            execution_id=str(uuid.uuid4()),
            cached_from=str(uuid.uuid4()),
            timeout_seconds=5.0,
            source_text=SOURCE,
            queue=ExecutionQueue.BATCH,
            now=now,
        )
    assert missing is None
    assert event is not None
    assert (event.sequence, event.kind, event.status) == (
        1,
        EventKind.FINISHED,
        ExecutionStatus.SUCCEEDED,
    )
    async with database.transaction() as tx:
        hit = await tx.executions.get(hit_id, with_notebook=True)
        events = await tx.events.after(hit_id, 0)
        # A hit is not itself a cached result (its age would be wrong).
        assert await tx.cache.find_cached(KEY, finished_after=None) == cached
    assert hit is not None
    assert hit.status is ExecutionStatus.SUCCEEDED
    assert hit.cache_hit
    assert hit.cached_from == cached
    assert hit.queue is ExecutionQueue.BATCH
    assert hit.timeout_seconds == 5.0
    assert (hit.created_at, hit.finished_at, hit.started_at) == (now, now, None)
    assert (hit.progress.cells_total, hit.progress.cells_done) == (2, 2)
    assert hit.notebook == json.loads(RESULT)
    assert events == [event]


@pytest.mark.asyncio
async def test_followers_show_the_shared_run_and_finish_with_it(
    database: Database,
) -> None:
    leader = await add_run(database, queue=ExecutionQueue.BATCH)
    other = await add_run(database, key=None, now=T0 + timedelta(seconds=1))
    # A batch follower leaves the leader where it is...
    batch_follower = await add_follower(database, leader, queue=ExecutionQueue.BATCH)
    async with database.transaction() as tx:
        assert await tx.claims.queue_position(leader) == 2
        assert await tx.claims.queue_position(batch_follower) == 2
        assert await tx.cache.find_shared_run(KEY, include_running=False) == leader
        queued, _ = await tx.claims.find_orphans(now=T0, queued_before=T0 + LEASE)
    assert queued == [leader, other]  # a follower is never resent
    # ...an interactive one moves it to the interactive queue.
    follower = await add_follower(database, leader)
    async with database.transaction() as tx:
        assert await tx.claims.queue_position(follower) == 1
        assert await tx.claims.queue_position(other) == 2

    now = T0 + timedelta(minutes=1)
    async with database.transaction() as tx:
        claimed = await tx.claims.claim_next(
            now=now, lease_until=now + LEASE, max_attempts=3
        )
        assert claimed is not None
        assert claimed.execution.id == leader  # followers are never claimed
    async with database.transaction() as tx:
        shown = await tx.executions.get(follower)
        led = await tx.executions.get(leader)
        assert await tx.cache.find_shared_run(KEY, include_running=False) is None
        assert await tx.cache.find_shared_run(KEY, include_running=True) == leader
        assert await tx.claims.queue_position(follower) is None
    assert shown is not None
    assert led is not None
    assert shown.id == follower
    assert shown.shares_run_of == leader
    assert (shown.status, shown.started_at, shown.attempts) == (
        ExecutionStatus.RUNNING,
        now,
        1,
    )
    assert shown.last_sequence == led.last_sequence == 2

    # However the shared run ends (here: a sweeper giving up on it), its
    # followers end the same way, in the same transaction.
    error = ExecutionFailure(code=ErrorCode.WORKER_LOST, message="lost")
    async with database.transaction() as tx:
        final = await tx.claims.finish(
            leader,
            status=ExecutionStatus.FAILED,
            result_text=None,
            error=error,
            now=now,
        )
    assert final is not None
    async with database.transaction() as tx:
        for follower_id in (follower, batch_follower):
            ended = await tx.executions.get(follower_id)
            assert ended is not None
            assert (ended.status, ended.error, ended.finished_at) == (
                ExecutionStatus.FAILED,
                error,
                now,
            )
            assert ended.last_sequence == final.sequence
            assert ended.started_at == now
        untouched = await tx.executions.get(other)
    assert untouched is not None
    assert untouched.status is ExecutionStatus.QUEUED
