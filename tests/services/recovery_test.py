"""RecoverySweep: lost workers and lost messages, against real databases.

A worker that died mid-run leaves a claim whose lease lapsed; the sweep
queues it again (and sends its message) until its attempts are spent, then
fails it with ``WORKER_LOST``.  One whose cancel was requested is ended
``CANCELLED`` instead of being queued again.  Subscribers are woken only
once the sweep's changes are committed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import make_url

from noteburst.config import WorkerSettings
from noteburst.constants import EXECUTION_TASK_QUEUE
from noteburst.domain.execution import ErrorCode, EventKind, ExecutionStatus
from noteburst.services.recovery import RecoverySweep
from noteburst.storage.events import LocalEventBus
from tests.support.notebooks import notebook
from tests.support.runner_harness import Harness


async def _events(harness: Harness, execution_id: str) -> list[EventKind]:
    async with harness.api.database.transaction() as tx:
        return [event.kind for event in await tx.events.after(execution_id, 0)]


async def _crash_while_running(harness: Harness, execution_id: str) -> None:
    """Leave what a worker that died mid-run leaves: a lapsed claim."""
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    async with harness.api.database.transaction() as tx:
        claimed = await tx.claims.claim(
            execution_id, now=long_ago, lease_until=long_ago, max_attempts=2
        )
        assert claimed is not None


@pytest.mark.asyncio
async def test_a_lost_worker_is_recovered_then_given_up(harness: Harness) -> None:
    execution = await harness.service.submissions.submit(notebook("print('again')"))
    harness.broker.flush_all()
    await _crash_while_running(harness, execution.id)
    assert await harness.recovery.sweep() == 1
    assert harness.broker.queues[EXECUTION_TASK_QUEUE].qsize() == 1
    requeued = await harness.service.executions.get(execution.id)
    assert requeued is not None
    assert requeued.status is ExecutionStatus.QUEUED

    await _crash_while_running(
        harness, execution.id
    )  # second (and last allowed) attempt dies too
    assert await harness.recovery.sweep() == 0
    failed = await harness.service.executions.get(execution.id)
    assert failed is not None
    assert failed.status is ExecutionStatus.FAILED
    assert failed.error is not None
    assert failed.error.code is ErrorCode.WORKER_LOST
    assert await _events(harness, execution.id) == [
        EventKind.QUEUED,
        EventKind.QUEUED,
        EventKind.FINISHED,
    ]


@pytest.mark.asyncio
async def test_recovered_execution_runs_to_completion(harness: Harness) -> None:
    execution = await harness.service.submissions.submit(
        notebook("print('second try')")
    )
    await _crash_while_running(harness, execution.id)
    await harness.recovery.sweep()
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED
    final = await harness.service.executions.get(execution.id)
    assert final is not None
    assert final.attempts == 2


@pytest.mark.asyncio
async def test_a_cancelled_execution_whose_worker_died_is_not_run_again(
    harness: Harness,
) -> None:
    execution = await harness.service.submissions.submit(notebook("print('never')"))
    harness.broker.flush_all()
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    async with harness.api.database.transaction() as tx:
        # A worker claimed it and died (its lease long expired).
        assert await tx.claims.claim(
            execution.id, now=long_ago, lease_until=long_ago, max_attempts=2
        )
    requested = await harness.service.executions.cancel(execution.id)
    assert requested.status is ExecutionStatus.RUNNING
    assert requested.cancel_requested_at is not None
    # A duplicate message cannot claim it any more...
    assert await harness.runner.run(execution.id) is None
    # ...and the sweep ends it instead of queueing it again.
    assert await harness.recovery.sweep() == 0
    final = await harness.service.executions.get(execution.id)
    assert final is not None
    assert final.status is ExecutionStatus.CANCELLED
    assert final.error is not None
    assert final.error.code is ErrorCode.CANCELLED
    assert all(queue.qsize() == 0 for queue in harness.broker.queues.values())


class _CommitCheckingBus(LocalEventBus):
    """An embedded bus that notes whether each announced event is committed.

    It looks through a connection of its own, as a woken subscriber would:
    an event announced before its transaction commits is not there yet.
    """

    def __init__(self, sqlite_path: str) -> None:
        super().__init__()
        self._path = sqlite_path
        self.seen: list[tuple[str, int, bool]] = []

    def announce(self, execution_id: str, sequence: int) -> None:
        with sqlite3.connect(self._path, timeout=0) as reader:
            (count,) = reader.execute(
                "SELECT count(*) FROM execution_events "
                "WHERE execution_id = ? AND sequence = ?",
                (execution_id, sequence),
            ).fetchone()
        reader.close()
        self.seen.append((execution_id, sequence, count == 1))
        super().announce(execution_id, sequence)


@pytest.mark.asyncio
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_sweep_wakes_subscribers_only_after_its_commit(
    harness: Harness,
) -> None:
    """A requeue and a give-up are announced once a subscriber can read them."""
    requeued = await harness.service.submissions.submit(notebook("1"))
    given_up = await harness.service.submissions.submit(notebook("2"))
    await _crash_while_running(harness, given_up.id)
    await harness.recovery.sweep()  # its first attempt is requeued
    await _crash_while_running(harness, given_up.id)  # its last one is lost too
    await _crash_while_running(harness, requeued.id)
    path = make_url(harness.worker.config.effective_database_url).database
    assert path is not None
    bus = _CommitCheckingBus(path)
    sweep = RecoverySweep(
        database=harness.worker.database,
        bus=bus,
        task_queue=harness.worker.task_queue,
        workers=WorkerSettings(lease_seconds=30, max_attempts=2),
    )
    async with asyncio.timeout(30):
        assert await sweep.sweep() == 1
    assert sorted(seen[:2] for seen in bus.seen) == sorted(
        [(requeued.id, 2), (given_up.id, 3)]
    )
    assert all(committed for _, _, committed in bus.seen), bus.seen
