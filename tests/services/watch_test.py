"""ExecutionWatcher.watch: how a subscription starts and what it yields.

Against real Postgres/SQLite and the session's jupyter_server.  A replay
from ``afterSequence`` starts with one read of the execution and its
events; an end committed while a subscription starts is yielded with the
execution as it ended (its error included); a watcher of some kinds that
joins mid-run starts from the latest event of those kinds; a watch never
ends before yielding the terminal event.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    ExecutionEvent,
    ExecutionFailure,
    ExecutionStatus,
)
from noteburst.storage.database import Database
from noteburst.storage.executions import EventLogStore
from tests.support.notebooks import held_until as _held_until
from tests.support.notebooks import notebook
from tests.support.runner_harness import Harness
from tests.support.runner_harness import cell_started as _cell_started
from tests.support.runner_harness import stored_events as _events


@pytest.mark.asyncio
async def test_a_replay_starts_with_one_read(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subscribing with afterSequence reads the execution and its events once.

    A dashboard subscribes right after submitting, with afterSequence 0:
    one transaction starts its subscription (it used to be two, the current
    state and then the same events again), and the stream is the same.
    """
    execution = await harness.service.submissions.submit(notebook("x = 1", "print(x)"))
    harness.broker.flush_all()
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED
    stored = await _events(harness, execution.id)

    transactions = 0
    real_transaction = Database.transaction

    def counted(self: Database) -> Any:
        nonlocal transactions
        transactions += 1
        return real_transaction(self)

    monkeypatch.setattr(Database, "transaction", counted)
    async with asyncio.timeout(60):
        replayed = [
            watched.event
            async for watched in harness.service.watcher.watch(
                execution.id, after_sequence=0
            )
        ]
        assert (replayed, transactions) == (stored, 1)
        transactions = 0
        statuses = [
            watched.event.kind
            async for watched in harness.service.watcher.watch(
                execution.id, after_sequence=1, kinds=[EventKind.RUNNING]
            )
        ]
        assert (statuses, transactions) == (
            [EventKind.RUNNING, EventKind.FINISHED],
            1,
        )


@pytest.mark.asyncio
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("after_sequence", [0, None], ids=["replay", "current"])
async def test_an_end_committed_while_a_subscription_starts_carries_its_error(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, after_sequence: int | None
) -> None:
    """The execution yielded with an event is read after that event.

    Each statement of a PostgreSQL transaction sees what was committed
    before it (read committed).  A subscription whose first read took the
    execution before its events, with the end committed between the two,
    yielded FINISHED with the execution still running: no error, no result
    (a cancelled execution's error was missing once in CI).  Here the end
    is committed just before the first event read of the subscription.
    """
    execution = await harness.service.submissions.submit(notebook("print('never run')"))
    error = ExecutionFailure(
        code=ErrorCode.CANCELLED, message="cancelled", cell_index=0
    )
    ended = False

    async def end_first() -> None:
        nonlocal ended
        if ended:
            return
        ended = True
        async with harness.worker.database.transaction() as other:
            event = await other.claims.finish(
                execution.id,
                status=ExecutionStatus.CANCELLED,
                result_text=None,
                error=error,
                now=datetime.now(UTC),
            )
        assert event is not None
        harness.worker.bus.announce(execution.id, event.sequence)

    real_events_after = EventLogStore.after
    real_latest_event = EventLogStore.latest

    async def events_after(self: EventLogStore, *args: Any, **kwargs: Any) -> Any:
        await end_first()
        return await real_events_after(self, *args, **kwargs)

    async def latest_event(self: EventLogStore, *args: Any, **kwargs: Any) -> Any:
        await end_first()
        return await real_latest_event(self, *args, **kwargs)

    monkeypatch.setattr(EventLogStore, "after", events_after)
    monkeypatch.setattr(EventLogStore, "latest", latest_event)
    async with asyncio.timeout(60):
        watched = [
            item
            async for item in harness.service.watcher.watch(
                execution.id, after_sequence=after_sequence
            )
        ]
    last = watched[-1]
    assert last.event.kind is EventKind.FINISHED
    assert last.execution.status is ExecutionStatus.CANCELLED
    assert last.execution.error == error


@pytest.mark.asyncio
async def test_a_watcher_of_some_kinds_starts_from_the_latest_of_them(
    harness: Harness, tmp_path: Path
) -> None:
    """Joining mid-run, a status watcher's current state is RUNNING, not a cell."""
    release = tmp_path / "release"
    execution = await harness.service.submissions.submit(
        notebook(
            "print('first')",
            _held_until(release),
        )
    )
    harness.broker.flush_all()
    run = asyncio.create_task(harness.runner.run(execution.id))
    status_kinds = (EventKind.QUEUED, EventKind.RUNNING, EventKind.LAB_STARTING)
    try:
        await _cell_started(harness, execution.id, 1)
        latest = (await _events(harness, execution.id))[-1]
        assert latest.kind is EventKind.CELL_STARTED
        joined: list[ExecutionEvent] = []

        async def join() -> None:
            async for watched in harness.service.watcher.watch(
                execution.id, kinds=status_kinds
            ):
                joined.append(watched.event)
                if len(joined) == 1:
                    release.touch()

        await asyncio.wait_for(join(), 60)
        outcome = await asyncio.wait_for(run, 60)
    finally:
        release.touch()
        await asyncio.wait_for(asyncio.shield(run), 60)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED
    assert [e.kind for e in joined] == [EventKind.RUNNING, EventKind.FINISHED]
    stored = {e.sequence: e for e in await _events(harness, execution.id)}
    assert [stored[e.sequence] for e in joined] == joined


@pytest.mark.asyncio
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("after_sequence", [0, None], ids=["replay", "current"])
async def test_an_end_committed_after_an_empty_read_is_still_yielded(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, after_sequence: int | None
) -> None:
    """A watch never ends before yielding the terminal event.

    A round reads the events, then the execution.  On PostgreSQL each
    statement sees what was committed before it, so an end committed
    between the two reads showed a terminal execution after an empty event
    read, and the watch ended without FINISHED (seen in CI as
    app_webhooks_test and app_auth_test failures).
    """
    execution = await harness.service.submissions.submit(notebook("print('x')"))
    error = ExecutionFailure(code=ErrorCode.CANCELLED, message="cancelled")
    ended = False
    real_after = EventLogStore.after

    async def after_then_end(self: EventLogStore, *args: Any, **kwargs: Any) -> Any:
        nonlocal ended
        events = await real_after(self, *args, **kwargs)
        if not events and not ended:
            # The end commits between this read and the execution's.
            ended = True
            async with harness.worker.database.transaction() as other:
                event = await other.claims.finish(
                    execution.id,
                    status=ExecutionStatus.CANCELLED,
                    result_text=None,
                    error=error,
                    now=datetime.now(UTC),
                )
            assert event is not None
            harness.worker.bus.announce(execution.id, event.sequence)
        return events

    monkeypatch.setattr(EventLogStore, "after", after_then_end)
    async with asyncio.timeout(60):
        watch = harness.service.watcher.watch(
            execution.id, after_sequence=after_sequence
        )
        watched = [await anext(watch)]
        # A wake-up with nothing new yet (a resync does that): the next
        # round's event read finds nothing, and the end lands right after.
        harness.api.bus.announce(execution.id, watched[0].event.sequence)
        watched.extend([item async for item in watch])
    assert ended
    assert [item.event.kind for item in watched] == [
        EventKind.QUEUED,
        EventKind.FINISHED,
    ]
    assert watched[-1].execution.status is ExecutionStatus.CANCELLED
    assert watched[-1].execution.error == error
