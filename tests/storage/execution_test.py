"""The execution store (records, event log, claims, cancels) on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    Execution,
    ExecutionEvent,
    ExecutionFailure,
    ExecutionStatus,
)
from noteburst.exceptions import (
    ExecutionFinishedError,
    ExecutionNotFoundError,
    InvalidInputError,
)
from noteburst.storage import Database, NewEvent, cursor_for

T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
LEASE = timedelta(seconds=30)
NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


async def add(
    database: Database, *, now: datetime = T0, execution_id: str | None = None
) -> str:
    execution_id = execution_id or str(uuid.uuid4())
    async with database.transaction() as tx:
        await tx.executions.add(
            execution_id=execution_id,
            kernel_name="python3",
            timeout_seconds=60.0,
            source_text=json.dumps(NOTEBOOK),
            cells_total=3,
            now=now,
        )
    return execution_id


async def claim(
    database: Database, execution_id: str, *, now: datetime = T0, max_attempts: int = 3
) -> Execution | None:
    async with database.transaction() as tx:
        return await tx.claims.claim(
            execution_id, now=now, lease_until=now + LEASE, max_attempts=max_attempts
        )


async def get(database: Database, execution_id: str) -> Execution:
    async with database.transaction() as tx:
        execution = await tx.executions.get(execution_id)
    assert execution is not None
    return execution


@pytest.mark.asyncio
async def test_add_and_get(database: Database) -> None:
    execution_id = str(uuid.uuid4())
    async with database.transaction() as tx:
        added = await tx.executions.add(
            execution_id=execution_id,
            kernel_name="python3",
            timeout_seconds=12.5,
            source_text=json.dumps(NOTEBOOK),
            cells_total=3,
            now=T0,
        )
    event = added.event
    assert event == ExecutionEvent(
        execution_id=execution_id,
        sequence=1,
        kind=EventKind.QUEUED,
        status=ExecutionStatus.QUEUED,
        created_at=T0,
        cell_index=None,
        cells_done=0,
    )
    async with database.transaction() as tx:
        execution = await tx.executions.get(execution_id, with_notebook=True)
        source = await tx.executions.get_source_notebook(execution_id)
        result = await tx.executions.get_result_notebook(execution_id)
        events = await tx.events.after(execution_id, 0)
        missing = await tx.executions.get(str(uuid.uuid4()))
        missing_source = await tx.executions.get_source_notebook(str(uuid.uuid4()))
    assert execution is not None
    assert execution.id == execution_id
    assert execution.status is ExecutionStatus.QUEUED
    assert execution.kernel_name == "python3"
    assert execution.timeout_seconds == 12.5
    assert execution.created_at == T0
    assert execution.created_at.tzinfo is UTC
    assert (execution.progress.cells_total, execution.progress.cells_done) == (3, 0)
    assert execution.attempts == 0
    assert execution.last_sequence == 1
    assert execution.started_at is None
    assert execution.finished_at is None
    assert execution.notebook is None
    assert execution.error is None
    assert source == NOTEBOOK
    assert result is None
    assert events == [event]
    assert missing is None
    assert missing_source is None
    # What the insert read back is what a read returns (without notebook).
    assert added.execution == dataclasses.replace(execution, notebook=None)


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
async def test_large_notebook_round_trips(database: Database) -> None:
    big = dict(NOTEBOOK, metadata={"blob": "x" * (3 * 1024 * 1024)})
    execution_id = str(uuid.uuid4())
    async with database.transaction() as tx:
        await tx.executions.add(
            execution_id=execution_id,
            kernel_name="python3",
            timeout_seconds=1.0,
            source_text=json.dumps(big),
            cells_total=0,
            now=T0,
        )
    async with database.transaction() as tx:
        assert await tx.executions.get_source_notebook(execution_id) == big


@pytest.mark.asyncio
async def test_list_pages_newest_first(database: Database) -> None:
    # Three share a timestamp, so the id must break the tie.
    times = [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=1), T0]
    times += [T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)]
    ids = [await add(database, now=t) for t in times]
    expected = sorted(zip(times, ids, strict=True), key=lambda pair: pair, reverse=True)
    expected_ids = [execution_id for _, execution_id in expected]

    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        async with database.transaction() as tx:
            page, has_next = await tx.executions.list(first=4, after=after, status=None)
        pages += 1
        seen += [e.id for e in page]
        if not has_next:
            break
        after = cursor_for(page[-1])
    assert seen == expected_ids
    assert pages == 2

    async with database.transaction() as tx:
        page, has_next = await tx.executions.list(
            first=len(ids), after=None, status=None
        )
        assert [e.id for e in page] == expected_ids
        assert has_next is False
        empty, more = await tx.executions.list(first=0, after=None, status=None)
        assert (empty, more) == ([], True)


@pytest.mark.asyncio
async def test_list_filters_by_status(database: Database) -> None:
    ids = [await add(database, now=T0 + timedelta(seconds=i)) for i in range(5)]
    for execution_id in ids[1::2]:
        assert await claim(database, execution_id) is not None
    async with database.transaction() as tx:
        running, more = await tx.executions.list(
            first=10, after=None, status=ExecutionStatus.RUNNING
        )
        queued, _ = await tx.executions.list(
            first=1, after=None, status=ExecutionStatus.QUEUED
        )
        queued_rest, _ = await tx.executions.list(
            first=10, after=cursor_for(queued[0]), status=ExecutionStatus.QUEUED
        )
        failed, _ = await tx.executions.list(
            first=10, after=None, status=ExecutionStatus.FAILED
        )
    assert [e.id for e in running] == [ids[3], ids[1]]
    assert all(e.status is ExecutionStatus.RUNNING for e in running)
    assert more is False
    assert [e.id for e in queued + queued_rest] == [ids[4], ids[2], ids[0]]
    assert failed == []


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "",
        _b64("v1|yesterday|abc"),
        _b64("v2|2030-01-01T00:00:00+00:00|abc"),
        _b64("v1|2030-01-01T00:00:00|abc"),  # naive
        _b64("v1|2030-01-01T00:00:00+00:00|"),
        base64.b64encode(b"\xff\xfe").decode(),
    ],
)
async def test_list_rejects_invalid_cursor(database: Database, cursor: str) -> None:
    async with database.transaction() as tx:
        with pytest.raises(InvalidInputError) as info:
            await tx.executions.list(first=5, after=cursor, status=None)
    assert info.value.field == "after"


@pytest.mark.asyncio
async def test_list_rejects_negative_first(database: Database) -> None:
    async with database.transaction() as tx:
        with pytest.raises(InvalidInputError) as info:
            await tx.executions.list(first=-1, after=None, status=None)
    assert info.value.field == "first"


@pytest.mark.asyncio
async def test_claim_only_once(database: Database) -> None:
    execution_id = await add(database)
    now = T0 + timedelta(seconds=1)
    claimed = await claim(database, execution_id, now=now)
    assert claimed is not None
    assert claimed.status is ExecutionStatus.RUNNING
    assert claimed.attempts == 1
    assert claimed.started_at == now
    assert await claim(database, execution_id, now=now) is None
    assert await claim(database, str(uuid.uuid4())) is None


@pytest.mark.asyncio
async def test_concurrent_claims_one_wins(database: Database) -> None:
    ids = [await add(database) for _ in range(10)]
    for execution_id in ids:
        results = await asyncio.gather(
            claim(database, execution_id), claim(database, execution_id)
        )
        assert sum(result is not None for result in results) == 1


@pytest.mark.asyncio
async def test_expired_lease_can_be_claimed_until_attempts_run_out(
    database: Database,
) -> None:
    execution_id = await add(database)
    first = await claim(database, execution_id, max_attempts=2)
    assert first is not None
    assert first.attempts == 1
    # Still leased: a second worker must not take it.
    assert await claim(database, execution_id, now=T0 + LEASE, max_attempts=2) is None
    expired = T0 + LEASE + timedelta(microseconds=1)
    second = await claim(database, execution_id, now=expired, max_attempts=2)
    assert second is not None
    assert second.attempts == 2
    assert second.started_at == expired
    later = expired + LEASE + timedelta(seconds=1)
    assert await claim(database, execution_id, now=later, max_attempts=2) is None
    assert await claim(database, execution_id, now=later, max_attempts=3) is not None


@pytest.mark.asyncio
async def test_renew_lease(database: Database) -> None:
    execution_id = await add(database)
    async with database.transaction() as tx:
        assert not await tx.claims.renew_lease(execution_id, lease_until=T0 + LEASE)
    claimed = await claim(database, execution_id)
    assert claimed is not None
    async with database.transaction() as tx:
        assert await tx.claims.renew_lease(
            execution_id, lease_until=T0 + 3 * LEASE, attempt=claimed.attempts
        )
        assert not await tx.claims.renew_lease(
            execution_id, lease_until=T0 + 3 * LEASE, attempt=claimed.attempts + 1
        )
    # The renewed lease keeps other workers out past the original expiry.
    assert await claim(database, execution_id, now=T0 + 2 * LEASE) is None
    assert await claim(database, execution_id, now=T0 + 4 * LEASE) is not None


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


@pytest.mark.asyncio
async def test_finish_only_once(database: Database) -> None:
    execution_id = await add(database)
    claimed = await claim(database, execution_id)
    assert claimed is not None
    result = dict(NOTEBOOK, metadata={"executed": True})
    error = ExecutionFailure(
        code=ErrorCode.CELL_ERROR,
        message="cell 1 raised ValueError: no",
        cell_index=1,
        ename="ValueError",
        evalue="no",
        traceback=["line 1", "line 2"],
    )
    finished_at = T0 + timedelta(seconds=5)
    async with database.transaction() as tx:
        with pytest.raises(ValueError, match="terminal"):
            await tx.claims.finish(
                execution_id,
                status=ExecutionStatus.RUNNING,
                result_text=None,
                error=None,
                now=finished_at,
            )
        stale = await tx.claims.finish(
            execution_id,
            status=ExecutionStatus.FAILED,
            result_text=None,
            error=None,
            now=finished_at,
            attempt=claimed.attempts + 1,
        )
        event = await tx.claims.finish(
            execution_id,
            status=ExecutionStatus.FAILED,
            result_text=json.dumps(result),
            error=error,
            now=finished_at,
            attempt=claimed.attempts,
        )
        again = await tx.claims.finish(
            execution_id,
            status=ExecutionStatus.SUCCEEDED,
            result_text=None,
            error=None,
            now=finished_at,
        )
    assert stale is None
    assert event is not None
    assert (event.sequence, event.kind, event.status) == (
        2,
        EventKind.FINISHED,
        ExecutionStatus.FAILED,
    )
    assert again is None

    async with database.transaction() as tx:
        execution = await tx.executions.get(execution_id, with_notebook=True)
        notebook = await tx.executions.get_result_notebook(execution_id)
        with pytest.raises(ExecutionFinishedError):
            await tx.events.append(
                execution_id,
                kind=EventKind.CELL_STARTED,
                status=ExecutionStatus.RUNNING,
                cell_index=2,
                now=finished_at,
            )
        # Nothing changed, and nothing can renew or claim it any more.
        assert not await tx.claims.renew_lease(execution_id, lease_until=finished_at)
        assert await tx.claims.requeue(execution_id, now=finished_at + LEASE) is None
    assert execution is not None
    assert execution.status is ExecutionStatus.FAILED
    assert execution.finished_at == finished_at
    assert execution.error == error
    assert execution.notebook == result
    assert execution.last_sequence == 2
    assert notebook == result
    assert await claim(database, execution_id, now=finished_at + 2 * LEASE) is None


@pytest.mark.asyncio
async def test_finish_writes_the_progress_left_before_its_end(
    database: Database,
) -> None:
    execution_id = await add(database)
    claimed = await claim(database, execution_id)
    assert claimed is not None
    left = [
        NewEvent(
            kind=kind,
            status=ExecutionStatus.RUNNING,
            cells_done=done,
            created_at=T0 + timedelta(seconds=done + 1),
            cell_index=0,
            output_start=0 if kind is EventKind.CELL_OUTPUTS else None,
            outputs=[{"output_type": "stream"}]
            if kind is EventKind.CELL_OUTPUTS
            else None,
        )
        for kind, done in (
            (EventKind.CELL_STARTED, 0),
            (EventKind.CELL_OUTPUTS, 0),
            (EventKind.CELL_FINISHED, 1),
        )
    ]
    finished_at = T0 + timedelta(seconds=5)
    async with database.transaction() as tx:
        # A superseded attempt's end is refused, and so is its progress.
        assert (
            await tx.claims.finish(
                execution_id,
                status=ExecutionStatus.SUCCEEDED,
                result_text=None,
                error=None,
                now=finished_at,
                attempt=claimed.attempts + 1,
                progress=left,
            )
            is None
        )
        event = await tx.claims.finish(
            execution_id,
            status=ExecutionStatus.SUCCEEDED,
            result_text=None,
            error=None,
            now=finished_at,
            attempt=claimed.attempts,
            progress=left,
        )
    assert event is not None
    async with database.transaction() as tx:
        events = await tx.events.after(execution_id, claimed.last_sequence)
        execution = await tx.executions.get(execution_id)
    # After the claim: the progress in order, then the end, which carries
    # the last cells_done on, as the execution does.
    first = claimed.last_sequence + 1
    assert [(e.sequence, e.kind, e.cells_done) for e in events] == [
        (first, EventKind.CELL_STARTED, 0),
        (first + 1, EventKind.CELL_OUTPUTS, 0),
        (first + 2, EventKind.CELL_FINISHED, 1),
        (first + 3, EventKind.FINISHED, 1),
    ]
    assert events[-1] == event
    assert events[1].outputs == [{"output_type": "stream"}]
    assert [e.created_at for e in events] == [
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=2),
        finished_at,
    ]
    assert execution is not None
    assert (execution.last_sequence, execution.progress.cells_done) == (first + 3, 1)
    assert execution.status is ExecutionStatus.SUCCEEDED


@pytest.mark.asyncio
async def test_finish_queued_without_notebook(database: Database) -> None:
    execution_id = await add(database)
    async with database.transaction() as tx:
        event = await tx.claims.finish(
            execution_id,
            status=ExecutionStatus.CANCELLED,
            result_text=None,
            error=None,
            now=T0,
        )
        execution = await tx.executions.get(execution_id, with_notebook=True)
    assert event is not None
    assert event.status is ExecutionStatus.CANCELLED
    assert execution is not None
    assert execution.notebook is None
    assert execution.error is None


@pytest.mark.asyncio
async def test_requeue_lost_execution(database: Database) -> None:
    execution_id = await add(database)
    assert await claim(database, execution_id) is not None
    async with database.transaction() as tx:
        await tx.events.append(
            execution_id,
            kind=EventKind.CELL_FINISHED,
            status=ExecutionStatus.RUNNING,
            cell_index=0,
            cells_done=1,
            now=T0,
        )
        # The lease has not expired: a live worker may still hold it.
        assert await tx.claims.requeue(execution_id, now=T0 + LEASE) is None
        early = await tx.claims.requeue(
            execution_id, now=T0, lease_expired_before=T0 + 2 * LEASE
        )
    assert early is not None
    assert early.kind is EventKind.QUEUED
    assert early.status is ExecutionStatus.QUEUED
    assert early.cells_done == 0
    assert early.sequence == 3

    claimed = await claim(database, execution_id, now=T0 + timedelta(seconds=1))
    assert claimed is not None
    assert claimed.attempts == 2
    expired = T0 + timedelta(seconds=1) + LEASE + timedelta(seconds=1)
    async with database.transaction() as tx:
        event = await tx.claims.requeue(execution_id, now=expired)
        execution = await tx.executions.get(execution_id)
    assert event is not None
    assert event.sequence == 4
    assert execution is not None
    assert execution.status is ExecutionStatus.QUEUED
    assert execution.attempts == 2


@pytest.mark.asyncio
async def test_find_orphans(database: Database) -> None:
    old_queued = await add(database, now=T0)
    new_queued = await add(database, now=T0 + timedelta(seconds=60))
    lost = await add(database, now=T0)
    alive = await add(database, now=T0)
    finished = await add(database, now=T0)
    assert await claim(database, lost, now=T0) is not None
    assert await claim(database, alive, now=T0 + timedelta(seconds=50)) is not None
    async with database.transaction() as tx:
        await tx.claims.finish(
            finished,
            status=ExecutionStatus.SUCCEEDED,
            result_text="{}",
            error=None,
            now=T0,
        )
        queued, running = await tx.claims.find_orphans(
            now=T0 + timedelta(seconds=60), queued_before=T0 + timedelta(seconds=30)
        )
    assert queued == [old_queued]
    assert running == [lost]
    assert new_queued not in queued


@pytest.mark.asyncio
async def test_datetimes_are_utc_aware(database: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2030, 6, 1, 12, 0, 0, 123456, tzinfo=plus_two)
    execution_id = await add(database, now=local)
    execution = await get(database, execution_id)
    assert execution.created_at == local
    assert execution.created_at.tzinfo is UTC
    assert execution.created_at.hour == 10
    async with database.transaction() as tx:
        events = await tx.events.after(execution_id, 0)
        with pytest.raises(ValueError, match="naive"):
            await tx.executions.add(
                execution_id=str(uuid.uuid4()),
                kernel_name="python3",
                timeout_seconds=1.0,
                source_text="{}",
                cells_total=0,
                now=datetime(2030, 1, 1),
            )
    assert events[0].created_at == local
    assert events[0].created_at.tzinfo is UTC

    # Comparisons happen in UTC too: a lease given in +02:00 expires correctly.
    claimed = await claim(database, execution_id, now=local)
    assert claimed is not None
    assert claimed.started_at == local
    just_before = (local + LEASE).astimezone(UTC) - timedelta(microseconds=1)
    assert await claim(database, execution_id, now=just_before) is None
    assert await claim(database, execution_id, now=local + LEASE + LEASE) is not None
