"""ExecutionWatcher.watch: how a subscription starts and what it yields.

Against real Postgres/SQLite and the session's jupyter_server.  A replay
from ``afterSequence`` starts with one read of the execution and its
events; an end committed while a subscription starts is yielded with the
execution as it ended (its error included); a watcher of some kinds that
joins mid-run starts from the latest event of those kinds; a watch never
ends before yielding the terminal event.  Many watchers of one execution
share one read per wake-up (the process's feed), a watcher the feed has
overtaken reads the gap itself, and cell events wake no status watcher.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from noteburst.domain.cache import CacheMode, CachePolicy
from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    ExecutionEvent,
    ExecutionFailure,
    ExecutionStatus,
)
from noteburst.services.watch import ExecutionWatcher, WatchedEvent
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


async def _first_events(
    watches: list[AsyncIterator[WatchedEvent]],
) -> list[ExecutionEvent]:
    """The current state each watch starts with (all subscribed after this)."""
    async with asyncio.timeout(60):
        return [(await anext(watch)).event for watch in watches]


async def _rest(watch: AsyncIterator[WatchedEvent]) -> list[ExecutionEvent]:
    return [watched.event async for watched in watch]


@pytest.mark.asyncio
async def test_watchers_of_one_execution_share_each_read(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty watchers of one execution cost one event read per wake-up, not forty.

    Each watcher read the log for itself after every wake-up, so the last
    of many learnt of an event only after all the others' reads (bench/
    fanout.py).  Now the process's feed reads once and hands the same
    events to every watcher, each keeping its own kinds and resume point.
    """
    release = tmp_path / "release"
    execution = await harness.service.submissions.submit(
        notebook(_held_until(release), "print('a')", "1 + 1")
    )
    harness.broker.flush_all()
    run = asyncio.create_task(harness.runner.run(execution.id))
    reads = 0
    real_after = EventLogStore.after

    async def counted(self: EventLogStore, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real_after(self, *args, **kwargs)

    watcher = harness.service.watcher
    watches = [
        *(watcher.watch(execution.id) for _ in range(15)),
        *(watcher.watch(execution.id, kinds=_STATUS) for _ in range(15)),
        *(watcher.watch(execution.id, after_sequence=0) for _ in range(10)),
    ]
    try:
        await _cell_started(harness, execution.id, 0)
        monkeypatch.setattr(EventLogStore, "after", counted)
        firsts = await _first_events(watches)
        feed = harness.api.feeds.feed(execution.id)
        assert feed is not None
        reads, feed_reads = 0, feed.reads
        release.touch()
        async with asyncio.timeout(60):
            rests = await asyncio.gather(*(_rest(watch) for watch in watches))
            outcome = await run
    finally:
        release.touch()
        await asyncio.wait_for(asyncio.shield(run), 60)
        for watch in watches:
            await watch.aclose()  # type: ignore[attr-defined]
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED
    assert 0 < reads == feed.reads - feed_reads < len(watches)
    stored = await _events(harness, execution.id)
    at_start = next(e for e in stored if e.kind is EventKind.CELL_STARTED)
    running = next(e for e in stored if e.kind is EventKind.RUNNING)
    seen = [[first, *rest] for first, rest in zip(firsts, rests, strict=True)]
    assert seen[:15] == [stored[at_start.sequence - 1 :]] * 15
    assert seen[15:30] == [[running, stored[-1]]] * 15
    assert seen[30:] == [stored] * 10
    assert stored[-1].kind is EventKind.FINISHED


_STATUS = (EventKind.QUEUED, EventKind.RUNNING, EventKind.LAB_STARTING)


@pytest.mark.asyncio
async def test_status_watchers_are_woken_once_for_the_end(
    harness: Harness, tmp_path: Path
) -> None:
    """The cell events status watchers skip wake none of them.

    The feed reads only the kinds its watchers want; a read that finds none
    publishes nothing, and the next batch covers its range.
    """
    release = tmp_path / "release"
    execution = await harness.service.submissions.submit(
        notebook(_held_until(release), "print('a')", "1 + 1")
    )
    harness.broker.flush_all()
    run = asyncio.create_task(harness.runner.run(execution.id))
    watches = [
        harness.service.watcher.watch(execution.id, kinds=_STATUS) for _ in range(5)
    ]
    try:
        await _cell_started(harness, execution.id, 0)
        firsts = await _first_events(watches)
        feed = harness.api.feeds.feed(execution.id)
        assert feed is not None
        assert feed.head is not None
        anchor = feed.head
        release.touch()
        async with asyncio.timeout(60):
            rests = await asyncio.gather(*(_rest(watch) for watch in watches))
            outcome = await run
            only = await anchor.following()
    finally:
        release.touch()
        await asyncio.wait_for(asyncio.shield(run), 60)
        for watch in watches:
            await watch.aclose()  # type: ignore[attr-defined]
    assert outcome is not None
    stored = await _events(harness, execution.id)
    assert [e.kind for e in only.events] == [EventKind.FINISHED]
    assert (only.start, only.end) == (anchor.end, stored[-1].sequence)
    assert [
        [f.kind, *(e.kind for e in r)] for f, r in zip(firsts, rests, strict=True)
    ] == [[EventKind.RUNNING, EventKind.FINISHED]] * 5


@pytest.mark.asyncio
async def test_a_late_joiner_behind_the_feed_gets_every_event_once(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher whose own read the feed has overtaken reads the gap, then joins.

    The late watcher's backlog read is made stale: before it returns, the
    run goes on and the feed publishes events past it (up to a held cell).
    The watcher must read the difference itself, then take the rest from
    the feed's batches: every stored event once, in order.
    """
    first_hold, second_hold = tmp_path / "first", tmp_path / "second"
    execution = await harness.service.submissions.submit(
        notebook(
            _held_until(first_hold),
            "print('between')",
            _held_until(second_hold),
            "print('end')",
        )
    )
    harness.broker.flush_all()
    run = asyncio.create_task(harness.runner.run(execution.id))
    real_read_own = ExecutionWatcher._read_own
    overtaken = False

    async def stale_read(self: ExecutionWatcher, *args: Any, **kwargs: Any) -> Any:
        nonlocal overtaken
        result = await real_read_own(self, *args, **kwargs)
        if overtaken:
            return result
        overtaken = True
        feed = harness.api.feeds.feed(execution.id)
        assert feed is not None
        assert feed.head is not None
        batch = feed.head
        first_hold.touch()
        while not any(
            e.kind is EventKind.CELL_STARTED and e.cell_index == 2 for e in batch.events
        ):
            batch = await batch.following()
        assert batch.end > result[0].last_sequence
        return result

    early = harness.service.watcher.watch(execution.id)
    late_seen: list[ExecutionEvent] = []

    async def late() -> None:
        async for watched in harness.service.watcher.watch(
            execution.id, after_sequence=0
        ):
            late_seen.append(watched.event)
            if watched.event.kind is EventKind.CELL_STARTED and (
                watched.event.cell_index == 2
            ):
                second_hold.touch()

    try:
        await _cell_started(harness, execution.id, 0)
        (early_first,) = await _first_events([early])
        monkeypatch.setattr(ExecutionWatcher, "_read_own", stale_read)
        async with asyncio.timeout(60):
            await late()
            early_rest = await _rest(early)
            outcome = await run
    finally:
        first_hold.touch()
        second_hold.touch()
        await asyncio.wait_for(asyncio.shield(run), 60)
        await early.aclose()  # type: ignore[attr-defined]
    assert overtaken
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED
    stored = await _events(harness, execution.id)
    assert late_seen == stored
    assert [early_first, *early_rest] == stored[early_first.sequence - 1 :]


@pytest.mark.asyncio
async def test_watchers_joining_at_once_share_their_backlog_read(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty watchers subscribing together make one backlog read, not twenty.

    At 10,000 subscribers opened together on PostgreSQL each read on its
    own, and the waits for a pooled connection timed out (bench/fanout.py).
    """
    release = tmp_path / "release"
    execution = await harness.service.submissions.submit(
        notebook(_held_until(release), "print('a')")
    )
    harness.broker.flush_all()
    run = asyncio.create_task(harness.runner.run(execution.id))
    backlog_reads = 0
    real_read_own = ExecutionWatcher._read_own

    async def counted(self: ExecutionWatcher, *args: Any, **kwargs: Any) -> Any:
        nonlocal backlog_reads
        backlog_reads += 1
        return await real_read_own(self, *args, **kwargs)

    watches = [
        harness.service.watcher.watch(execution.id, kinds=_STATUS) for _ in range(20)
    ]
    try:
        await _cell_started(harness, execution.id, 0)
        monkeypatch.setattr(ExecutionWatcher, "_read_own", counted)
        async with asyncio.timeout(60):
            firsts = await asyncio.gather(*(anext(watch) for watch in watches))
        release.touch()
        async with asyncio.timeout(60):
            rests = await asyncio.gather(*(_rest(watch) for watch in watches))
            await run
    finally:
        release.touch()
        await asyncio.wait_for(asyncio.shield(run), 60)
        for watch in watches:
            await watch.aclose()  # type: ignore[attr-defined]
    assert backlog_reads == 1
    assert {w.event.kind for w in firsts} == {EventKind.RUNNING}
    assert [[e.kind for e in rest] for rest in rests] == [[EventKind.FINISHED]] * 20


_STATUS_KINDS = [EventKind.QUEUED, EventKind.RUNNING, EventKind.LAB_STARTING]


@pytest.mark.asyncio
@pytest.mark.parametrize("case", ["stale", "kinds", "cancel", "follower"])
async def test_every_watch_ends_with_its_terminal_event(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """An end committed right after a round's empty read is still yielded.

    Each case makes an empty read certain: a wake-up with nothing new
    (``stale``), a cell event that a status-only watch filters out
    (``kinds``), a cancellation request, which wakes watchers without
    writing an event (``cancel``), and a wake-up of the run a follower
    shares (``follower``).  The hook commits the end right after that
    empty read; the watch must yield FINISHED and only then complete.
    """
    source = notebook(f"'{case}'")
    use = CachePolicy(CacheMode.USE)
    run = await harness.service.submissions.submit(source, cache=use)
    watched_id = run.id
    if case == "follower":
        follower = await harness.service.submissions.submit(source, cache=use)
        assert follower.shares_run_of == run.id
        watched_id = follower.id
    now = datetime.now(UTC)
    async with harness.worker.database.transaction() as tx:
        claimed = await tx.claims.claim_next(
            now=now,
            lease_until=now + timedelta(minutes=5),
            max_attempts=3,
            woken_for=run.id,
        )
    assert claimed is not None
    harness.worker.bus.announce(run.id, claimed.event.sequence)

    armed = False
    ended = False
    ending: list[asyncio.Task[None]] = []
    real_after = EventLogStore.after

    async def after_then_end(self: EventLogStore, *args: Any, **kwargs: Any) -> Any:
        nonlocal ended
        events = await real_after(self, *args, **kwargs)
        if armed and not events and not ended:
            ended = True
            if harness.worker.database.is_postgres:
                await end()  # between this read and the next statement
            else:
                # SQLite's reader holds the write lock to its commit: the
                # end lands right after the round (no gap to fall into).
                ending.append(asyncio.create_task(end()))
        return events

    async def end() -> None:
        async with harness.worker.database.transaction() as other:
            event = await other.claims.finish(
                run.id,
                status=ExecutionStatus.SUCCEEDED,
                result_text=json.dumps(source),
                error=None,
                now=datetime.now(UTC),
                attempt=claimed.execution.attempts,
            )
        assert event is not None
        for stream in {run.id, watched_id}:
            harness.worker.bus.announce(stream, event.sequence)

    monkeypatch.setattr(EventLogStore, "after", after_then_end)
    kinds = _STATUS_KINDS if case == "kinds" else None
    async with asyncio.timeout(60):
        watch = harness.service.watcher.watch(watched_id, kinds=kinds)
        watched = [await anext(watch)]
        armed = True
        if case == "kinds":
            async with harness.worker.database.transaction() as tx:
                cell = await tx.events.append(
                    run.id,
                    kind=EventKind.CELL_STARTED,
                    status=ExecutionStatus.RUNNING,
                    now=datetime.now(UTC),
                    cell_index=0,
                )
            harness.worker.bus.announce(run.id, cell.sequence)
        elif case == "cancel":
            await harness.service.executions.cancel(run.id)
        else:
            harness.api.bus.announce(run.id, watched[0].event.sequence)
        watched.extend([item async for item in watch])
        await asyncio.gather(*ending)
    assert ended
    assert watched[-1].event.kind is EventKind.FINISHED
    assert [item.event.kind for item in watched].count(EventKind.FINISHED) == 1
    assert watched[-1].execution.status is ExecutionStatus.SUCCEEDED
