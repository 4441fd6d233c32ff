"""Cancellation requests on SQLite and Postgres: at once if queued, else asked.

``tx.cancels`` (:mod:`noteburst.storage.executions.cancels`): a queued
execution is finished ``CANCELLED`` by the request itself, with a
``FINISHED`` event, and the followers sharing its run end with it; a
running one only gets ``cancel_requested_at`` (the first request's time),
``requested`` turns true and no claim takes it any more; a request limited
to another ``owner``, or for an unknown id, touches nothing.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from noteburst.constants import LOCAL_USER
from noteburst.domain.execution import ErrorCode, EventKind, ExecutionStatus
from noteburst.storage import Database
from tests.storage.executions._helpers import LEASE, T0, add, add_follower, claim, get


@pytest.mark.asyncio
async def test_a_queued_execution_is_cancelled_at_once_with_its_followers(
    database: Database,
) -> None:
    execution_id = await add(database)
    follower = await add_follower(database, execution_id)
    now = T0 + timedelta(seconds=5)
    async with database.transaction() as tx:
        event = await tx.cancels.request(execution_id, now=now, owner=LOCAL_USER)
    assert event is not None
    assert (event.sequence, event.kind, event.status, event.created_at) == (
        2,
        EventKind.FINISHED,
        ExecutionStatus.CANCELLED,
        now,
    )
    async with database.transaction() as tx:
        # Finished: a second request changes nothing.
        assert await tx.cancels.request(execution_id, now=now + LEASE) is None
        events = await tx.events.after(execution_id, 0)
        # The follower's own row ended too: ``get`` shows an unfinished
        # follower as its leader, ``list`` the rows as stored.
        cancelled, _ = await tx.executions.list(
            first=10, after=None, status=ExecutionStatus.CANCELLED
        )
    assert [e.kind for e in events] == [EventKind.QUEUED, EventKind.FINISHED]
    assert events[-1] == event
    assert {e.id for e in cancelled} == {execution_id, follower}
    for ended_id in (execution_id, follower):
        ended = await get(database, ended_id)
        assert ended.status is ExecutionStatus.CANCELLED
        assert ended.finished_at == now
        assert ended.error is not None
        assert ended.error.code is ErrorCode.CANCELLED
        assert ended.last_sequence == event.sequence
    # A worker that receives its message later finds nothing to claim.
    assert await claim(database, execution_id, now=now) is None


@pytest.mark.asyncio
async def test_a_running_execution_only_gets_the_request(database: Database) -> None:
    execution_id = await add(database)
    claimed = await claim(database, execution_id)
    assert claimed is not None
    asked = T0 + timedelta(seconds=1)
    async with database.transaction() as tx:
        assert not await tx.cancels.requested(execution_id)
        assert await tx.cancels.request(execution_id, now=asked) is None
        assert await tx.cancels.requested(execution_id)
        # A second request keeps the time of the first.
        later = asked + timedelta(seconds=1)
        assert await tx.cancels.request(execution_id, now=later) is None
    running = await get(database, execution_id)
    assert running.status is ExecutionStatus.RUNNING
    assert running.cancel_requested_at == asked
    assert running.finished_at is None
    assert running.last_sequence == claimed.last_sequence  # no event
    # Its worker is the one to finish it: even with its lease expired, no
    # other worker claims it.
    expired = T0 + LEASE + timedelta(seconds=1)
    assert await claim(database, execution_id, now=expired) is None


@pytest.mark.asyncio
async def test_another_owners_request_touches_nothing(database: Database) -> None:
    queued = await add(database)
    running = await add(database)
    assert await claim(database, running) is not None
    async with database.transaction() as tx:
        for execution_id in (queued, running, str(uuid.uuid4())):
            assert (
                await tx.cancels.request(execution_id, now=T0, owner="someone-else")
                is None
            )
        assert not await tx.cancels.requested(running)
        assert not await tx.cancels.requested(str(uuid.uuid4()))
    untouched_queued = await get(database, queued)
    untouched_running = await get(database, running)
    assert untouched_queued.status is ExecutionStatus.QUEUED
    assert untouched_queued.last_sequence == 1
    assert untouched_running.status is ExecutionStatus.RUNNING
    assert untouched_running.cancel_requested_at is None
