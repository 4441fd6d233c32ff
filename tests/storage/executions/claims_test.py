"""Claims on SQLite and Postgres: the database as the queue, leases, the finish.

``tx.claims`` (:mod:`noteburst.storage.executions.claims`): an execution is
claimed once (of concurrent claims exactly one wins), again only after its
lease expired and while attempts remain, and a renewed lease keeps others
out; ``claim_next`` takes interactive before batch and oldest first,
concurrent claimers take different executions, and a retry in backoff waits
(unless its own delayed message wakes a worker); ``queue_position`` counts
what a free worker takes first.  The claim reads that order from
``ix_executions_claim_order`` and stops at its first entry, without sorting
the queue (checked on the plans of both databases).  A run finishes once (a superseded
attempt's finish and progress are refused), writing the progress left
before its end; a lost run is requeued, and ``find_orphans`` finds what the
sweep must resend or requeue.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection

from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    Execution,
    ExecutionFailure,
    ExecutionQueue,
    ExecutionStatus,
)
from noteburst.exceptions import ExecutionFinishedError
from noteburst.storage import Database, NewEvent
from noteburst.storage.database import make_engine
from tests.storage.executions._helpers import (
    LEASE,
    NOTEBOOK,
    T0,
    add,
    add_follower,
    add_in,
    claim,
)


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


@pytest.mark.asyncio
@pytest.mark.parametrize("woken", [False, True])
async def test_the_claim_reads_the_head_of_its_index(
    database_url: str, woken: bool
) -> None:
    # The claim statement as the driver receives it, explained on the
    # same database: an index scan of ix_executions_claim_order that stops
    # at the first row, and no sort of the queue.
    engine = make_engine(database_url)
    caught: list[tuple[str, Any]] = []

    def catch(
        _conn: Connection,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        _many: bool,
    ) -> None:
        if "FROM executions AS queued" in statement:
            caught.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", catch)
    database = Database(engine)
    try:
        async with database.transaction() as tx:
            ids = [
                await add_in(
                    tx,
                    ExecutionQueue.BATCH if i % 3 else ExecutionQueue.INTERACTIVE,
                    now=T0 + timedelta(seconds=(i * 7919) % 200),
                )
                for i in range(200)
            ]
        woken_for = ids[-1] if woken else None
        assert await claim_next(database, woken_for=woken_for) is not None
        statement, parameters = caught[-1]
        async with engine.connect() as connection:
            transaction = await connection.begin()
            if database.is_postgres:
                await connection.exec_driver_sql("ANALYZE executions")
                # Off, so that on a table this small the seq scan and sort
                # of the whole queue cannot win on cost.
                await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
                plan = (
                    await connection.exec_driver_sql(
                        "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters
                    )
                ).scalar_one()
                nodes = list(plan_nodes(plan[0]["Plan"]))
                scans = [n for n in nodes if n.get("Index Name") == CLAIM_INDEX]
                assert len(scans) == 1, nodes
                assert scans[0]["Node Type"] == "Index Scan"
                assert scans[0]["Actual Rows"] == 1  # stopped at the first
                assert not [n for n in nodes if n["Node Type"] == "Sort"]
            else:
                rows = (
                    await connection.exec_driver_sql(
                        "EXPLAIN QUERY PLAN " + statement, parameters
                    )
                ).all()
                details = [row._mapping["detail"] for row in rows]
                assert f"SEARCH queued USING INDEX {CLAIM_INDEX} (status=?)" in (
                    details
                ), details
                assert not [d for d in details if "TEMP B-TREE" in d], details
            await transaction.rollback()
    finally:
        await database.aclose()


CLAIM_INDEX = "ix_executions_claim_order"


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a PostgreSQL JSON plan, depth first."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


@pytest.mark.asyncio
async def test_hand_back_requeues_its_own_run_and_gives_the_attempt_back(
    database: Database,
) -> None:
    execution_id = await add(database)
    claimed = await claim(database, execution_id)
    assert claimed is not None
    assert claimed.attempts == 1
    async with database.transaction() as tx:
        # Another attempt's run (a sweep took it over) is not handed back.
        assert (
            await tx.claims.hand_back(
                execution_id, attempt=2, now=T0, message="stopping"
            )
            is None
        )
        event = await tx.claims.hand_back(
            execution_id, attempt=1, now=T0, message="stopping"
        )
        execution = await tx.executions.get(execution_id)
    assert event is not None
    assert (event.kind, event.status, event.message) == (
        EventKind.QUEUED,
        ExecutionStatus.QUEUED,
        "stopping",
    )
    assert event.cells_done == 0
    assert execution is not None
    assert execution.status is ExecutionStatus.QUEUED
    assert execution.attempts == 0  # an upgrade does not use up attempts
    # It is claimable at once, by anyone, as a fresh execution.
    again = await claim_next(database, max_attempts=1)
    assert again is not None
    assert (again.id, again.attempts) == (execution_id, 1)
    async with database.transaction() as tx:
        # Only a running execution is handed back.
        await tx.claims.finish(
            execution_id,
            status=ExecutionStatus.SUCCEEDED,
            result_text=json.dumps(NOTEBOOK),
            error=None,
            now=T0,
            attempt=1,
        )
        assert (
            await tx.claims.hand_back(
                execution_id, attempt=1, now=T0, message="stopping"
            )
            is None
        )


@pytest.mark.asyncio
async def test_queue_depths_count_what_waits_for_a_worker(database: Database) -> None:
    async with database.transaction() as tx:
        assert await tx.claims.queue_depths() == {
            ExecutionQueue.INTERACTIVE: 0,
            ExecutionQueue.BATCH: 0,
        }
    leader = await add(database)
    await add(database)
    await add(database, ExecutionQueue.BATCH)
    await add_follower(database, leader)  # waits for its leader, not a worker
    running = await add(database, ExecutionQueue.BATCH)
    assert await claim(database, running) is not None
    async with database.transaction() as tx:
        assert await tx.claims.queue_depths() == {
            ExecutionQueue.INTERACTIVE: 2,
            ExecutionQueue.BATCH: 1,
        }
