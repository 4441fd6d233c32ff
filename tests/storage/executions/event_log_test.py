"""The event log on SQLite and Postgres: gap-free sequences, batches, replay.

``tx.events`` (:mod:`noteburst.storage.executions.event_log`): ``append``
allocates gap-free sequences even under concurrent writers, ``append_many``
writes a batch in order with each event's own time, ``after`` and
``latest`` read the log back (optionally by kind), and appending to a
finished or unknown execution is refused.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from noteburst.domain.execution import EventKind, ExecutionStatus
from noteburst.exceptions import ExecutionFinishedError, ExecutionNotFoundError
from noteburst.storage import Database, NewEvent
from tests.storage.executions._helpers import T0, add, claim, get


@pytest.mark.asyncio
async def test_append_event_allocates_gap_free_sequences(database: Database) -> None:
    execution_id = await add(database)
    assert await claim(database, execution_id) is not None
    async with database.transaction() as tx:
        running = await tx.events.append(
            execution_id,
            kind=EventKind.RUNNING,
            status=ExecutionStatus.RUNNING,
            cells_done=0,
            now=T0,
        )
        started = await tx.events.append(
            execution_id,
            kind=EventKind.CELL_STARTED,
            status=ExecutionStatus.RUNNING,
            cell_index=0,
            now=T0,
        )
        done = await tx.events.append(
            execution_id,
            kind=EventKind.CELL_FINISHED,
            status=ExecutionStatus.RUNNING,
            cell_index=0,
            cells_done=1,
            now=T0,
        )
        # cells_done=None keeps the stored count.
        next_started = await tx.events.append(
            execution_id,
            kind=EventKind.CELL_STARTED,
            status=ExecutionStatus.RUNNING,
            cell_index=1,
            now=T0,
        )
    assert [e.sequence for e in (running, started, done, next_started)] == [2, 3, 4, 5]
    assert next_started.cells_done == 1
    assert next_started.cell_index == 1

    async def one_event(index: int) -> int:
        async with database.transaction() as tx:
            event = await tx.events.append(
                execution_id,
                kind=EventKind.CELL_FINISHED,
                status=ExecutionStatus.RUNNING,
                cell_index=index,
                now=T0,
            )
        return event.sequence

    concurrent = await asyncio.gather(*(one_event(i) for i in range(10)))
    assert sorted(concurrent) == list(range(6, 16))

    async with database.transaction() as tx:
        events = await tx.events.after(execution_id, 0)
        tail = await tx.events.after(execution_id, 13)
        latest = await tx.events.latest(execution_id)
        execution = await tx.executions.get(execution_id)
        none_latest = await tx.events.latest(str(uuid.uuid4()))
        starts = await tx.events.after(
            execution_id, 2, kinds=[EventKind.CELL_STARTED, EventKind.QUEUED]
        )
        latest_running = await tx.events.latest(
            execution_id, kinds=[EventKind.RUNNING, EventKind.QUEUED]
        )
        no_such_kind = await tx.events.latest(execution_id, kinds=[EventKind.FINISHED])
    assert starts == [started, next_started]
    assert latest_running == running
    assert no_such_kind is None
    assert [e.sequence for e in events] == list(range(1, 16))
    assert events[1:5] == [running, started, done, next_started]
    assert [e.sequence for e in tail] == [14, 15]
    assert latest == events[-1]
    assert execution is not None
    assert execution.last_sequence == 15
    assert execution.progress.cells_done == 1
    assert none_latest is None


@pytest.mark.asyncio
async def test_append_events_writes_a_batch_in_order(database: Database) -> None:
    execution_id = await add(database)
    assert await claim(database, execution_id) is not None

    def progress(kind: EventKind, index: int, done: int, second: int) -> NewEvent:
        return NewEvent(
            kind=kind,
            status=ExecutionStatus.RUNNING,
            cells_done=done,
            created_at=T0 + timedelta(seconds=second),
            cell_index=index,
        )

    batch = [
        progress(EventKind.CELL_STARTED, 0, 0, 1),
        progress(EventKind.CELL_FINISHED, 0, 1, 2),
        progress(EventKind.CELL_STARTED, 1, 1, 3),
    ]
    async with database.transaction() as tx:
        assert await tx.events.append_many(execution_id, []) == []
        first = await tx.events.append_many(execution_id, batch)
        single = await tx.events.append(
            execution_id,
            kind=EventKind.CELL_FINISHED,
            status=ExecutionStatus.RUNNING,
            cell_index=1,
            cells_done=2,
            now=T0 + timedelta(seconds=4),
        )
        second = await tx.events.append_many(
            execution_id, [progress(EventKind.CELL_STARTED, 2, 2, 5)]
        )
    assert [e.sequence for e in (*first, single, *second)] == [2, 3, 4, 5, 6]
    assert [(e.kind, e.cell_index, e.cells_done) for e in first] == [
        (EventKind.CELL_STARTED, 0, 0),
        (EventKind.CELL_FINISHED, 0, 1),
        (EventKind.CELL_STARTED, 1, 1),
    ]
    async with database.transaction() as tx:
        events = await tx.events.after(execution_id, 1)
        execution = await tx.executions.get(execution_id)
    assert events == [*first, single, *second]
    assert [e.created_at for e in events] == [
        T0 + timedelta(seconds=s) for s in range(1, 6)
    ]
    assert execution is not None
    assert execution.last_sequence == 6
    assert execution.progress.cells_done == 2

    async with database.transaction() as tx:
        await tx.claims.finish(
            execution_id,
            status=ExecutionStatus.SUCCEEDED,
            result_text=None,
            error=None,
            now=T0,
        )
    async with database.transaction() as tx:
        with pytest.raises(ExecutionFinishedError):
            await tx.events.append_many(execution_id, batch)
        with pytest.raises(ExecutionNotFoundError):
            await tx.events.append_many(str(uuid.uuid4()), batch)
    assert (await get(database, execution_id)).last_sequence == 7


@pytest.mark.asyncio
async def test_append_event_to_unknown_execution(database: Database) -> None:
    async with database.transaction() as tx:
        with pytest.raises(ExecutionNotFoundError):
            await tx.events.append(
                str(uuid.uuid4()),
                kind=EventKind.RUNNING,
                status=ExecutionStatus.RUNNING,
                now=T0,
            )
