"""Execution records on SQLite and Postgres: add, read, list and page them.

``tx.executions`` (:mod:`noteburst.storage.executions.records`): an added
execution reads back as stored, with its ``QUEUED`` event; a large notebook
round-trips; listing pages newest first (the id breaking ties) and filters
by status; invalid cursors and page sizes are refused; every datetime comes
back timezone-aware, in UTC, and leases compare in UTC.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from noteburst.domain.execution import EventKind, ExecutionEvent, ExecutionStatus
from noteburst.exceptions import InvalidInputError
from noteburst.storage import Database, cursor_for
from tests.storage.executions._helpers import LEASE, NOTEBOOK, T0, add, claim, get


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
