"""ExecutionRunner against real Postgres/SQLite and a real jupyter_server.

Duplicate delivery, lease-based recovery of lost workers, timeouts and
kernel start failures: each must end in exactly one terminal state with a
clear reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from dramatiq.brokers.stub import StubBroker

from noteburst.constants import EXECUTION_QUEUE
from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    ExecutionEvent,
    ExecutionStatus,
)
from noteburst.factory import Factory, ProcessContext, create_broker
from noteburst.jupyter import execute as jupyter_execute
from noteburst.jupyter.backend import LocalLabBackend
from noteburst.services import runner as runner_module
from noteburst.services.execution import ExecutionService
from noteburst.services.runner import ExecutionRunner
from noteburst.storage.events import LocalEventBus
from noteburst.storage.execution import ExecutionStore, NewEvent
from tests.support.app import make_config
from tests.support.notebooks import notebook


@dataclass
class Harness:
    service: ExecutionService
    runner: ExecutionRunner
    api: ProcessContext
    broker: StubBroker


@pytest_asyncio.fixture
async def harness(
    tmp_path: Path, jupyter_server: Any, database_url: str
) -> AsyncIterator[Harness]:
    config = make_config(
        tmp_path,
        jupyter_server,
        database_url=database_url,
        kernel_names=["python3", "no-such-kernel"],
        max_attempts=2,
    )
    broker = create_broker(config)
    assert isinstance(broker, StubBroker)
    bus = LocalEventBus()
    api = await ProcessContext.for_api(config, broker=broker, local_bus=bus)
    worker = await ProcessContext.for_worker(config, broker=broker, bus=bus)
    try:
        yield Harness(
            service=Factory(api).create_execution_service(),
            runner=Factory(worker).create_runner(),
            api=api,
            broker=broker,
        )
    finally:
        await worker.aclose()
        await api.aclose()


async def _events(harness: Harness, execution_id: str) -> list[Any]:
    async with harness.api.database.transaction() as store:
        return list(await store.events_after(execution_id, 0))


@pytest.mark.asyncio
async def test_a_message_delivered_twice_runs_once(harness: Harness) -> None:
    execution = await harness.service.submit(notebook("import os; os.getpid()"))
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            harness.runner.run(execution.id), harness.runner.run(execution.id)
        ),
        120,
    )
    assert sorted(o is None for o in outcomes) == [False, True]
    # A third delivery after the end changes nothing either.
    assert await harness.runner.run(execution.id) is None
    final = await harness.service.get(execution.id)
    assert final is not None
    assert final.status is ExecutionStatus.SUCCEEDED
    assert final.attempts == 1
    kinds = [e.kind for e in await _events(harness, execution.id)]
    assert kinds.count(EventKind.RUNNING) == 1
    assert kinds.count(EventKind.FINISHED) == 1


@pytest.mark.asyncio
async def test_a_lost_worker_is_recovered_then_given_up(harness: Harness) -> None:
    execution = await harness.service.submit(notebook("print('again')"))
    harness.broker.flush_all()
    long_ago = datetime.now(UTC) - timedelta(hours=1)

    async def crash_while_running() -> None:
        # What a worker that died mid-run leaves behind: a claim whose
        # lease has expired.
        async with harness.api.database.transaction() as store:
            claimed = await store.claim(
                execution.id, now=long_ago, lease_until=long_ago, max_attempts=2
            )
            assert claimed is not None

    await crash_while_running()
    assert await harness.runner.recover() == 1
    assert harness.broker.queues[EXECUTION_QUEUE].qsize() == 1
    requeued = await harness.service.get(execution.id)
    assert requeued is not None
    assert requeued.status is ExecutionStatus.QUEUED

    await crash_while_running()  # second (and last allowed) attempt dies too
    assert await harness.runner.recover() == 0
    failed = await harness.service.get(execution.id)
    assert failed is not None
    assert failed.status is ExecutionStatus.FAILED
    assert failed.error is not None
    assert failed.error.code is ErrorCode.WORKER_LOST
    kinds = [e.kind for e in await _events(harness, execution.id)]
    assert kinds == [
        EventKind.QUEUED,
        EventKind.QUEUED,
        EventKind.FINISHED,
    ]


@pytest.mark.asyncio
async def test_recovered_execution_runs_to_completion(harness: Harness) -> None:
    execution = await harness.service.submit(notebook("print('second try')"))
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    async with harness.api.database.transaction() as store:
        assert await store.claim(
            execution.id, now=long_ago, lease_until=long_ago, max_attempts=2
        )
    await harness.runner.recover()
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED
    final = await harness.service.get(execution.id)
    assert final is not None
    assert final.attempts == 2


@pytest.mark.asyncio
async def test_timeout_returns_partial_notebook(harness: Harness) -> None:
    execution = await harness.service.submit(
        notebook("print('started')", "import time; time.sleep(60)", "print('never')"),
        timeout_seconds=2,
    )
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 60)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.TIMED_OUT
    assert outcome.error is not None
    assert outcome.error.code is ErrorCode.TIMEOUT
    assert outcome.error.cell_index == 1
    result = await harness.service.get_notebook(execution.id)
    assert result is not None
    assert result["cells"][0]["outputs"][0]["text"] == "started\n"
    assert result["cells"][2]["outputs"] == []


@pytest.mark.asyncio
async def test_kernel_that_cannot_start_fails_clearly(harness: Harness) -> None:
    execution = await harness.service.submit(
        notebook("1"), kernel_name="no-such-kernel"
    )
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 60)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.code is ErrorCode.KERNEL_START_FAILED
    assert "no-such-kernel" in outcome.error.message


@pytest.mark.asyncio
async def test_a_lost_lab_is_retried_then_fails_clearly(
    harness: Harness, tmp_path: Path
) -> None:
    """The lab's server is gone (stopped under us): retried with backoff, then final."""
    execution = await harness.service.submit(notebook("1"))
    harness.broker.flush_all()
    async with httpx.AsyncClient() as http:
        backend = LocalLabBackend(
            http=http, root_dir=tmp_path / "lab", start_timeout=60, request_timeout=5
        )
        await backend.start()
        assert backend.server is not None
        await backend.server.stop()  # the lab dies while the worker lives
        runner = ExecutionRunner(
            database=harness.api.database,
            bus=harness.api.bus,
            backend=backend,
            queue=harness.api.queue,
            lease_seconds=30,
            max_attempts=2,
        )
        first = await asyncio.wait_for(runner.run(execution.id), 60)
        assert first is not None
        assert first.retryable
        requeued = await harness.service.get(execution.id)
        assert requeued is not None
        assert requeued.status is ExecutionStatus.QUEUED
        assert requeued.attempts == 1
        # The retry was sent with a backoff (a delayed message).
        assert harness.broker.queues[f"{EXECUTION_QUEUE}.DQ"].qsize() == 1

        second = await asyncio.wait_for(runner.run(execution.id), 60)
        assert second is not None
        await backend.aclose()
    final = await harness.service.get(execution.id)
    assert final is not None
    assert final.status is ExecutionStatus.FAILED
    assert final.attempts == 2
    assert final.error is not None
    assert final.error.code is ErrorCode.LAB_UNAVAILABLE
    kinds = [e.kind for e in await _events(harness, execution.id)]
    assert kinds == [
        EventKind.QUEUED,
        EventKind.RUNNING,
        EventKind.QUEUED,
        EventKind.RUNNING,
        EventKind.FINISHED,
    ]


@pytest.mark.asyncio
async def test_progress_events_are_batched_without_holding_up_the_cells(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow event write neither delays the cells nor loses or reorders events.

    The first progress write is held until every cell has run: the cells
    must not wait for it, the backlog must go out in one more write, and a
    watcher must still see every event once, in order, with no gaps.
    """
    cells = 12
    execution = await harness.service.submit(
        # No outputs, so no CELL_OUTPUTS events: only cell starts and ends.
        notebook(*(f"x{i} = {i} * 2" for i in range(cells)))
    )
    harness.broker.flush_all()
    all_ran = asyncio.Event()
    batches: list[list[EventKind]] = []
    real_append = ExecutionStore.append_events

    async def held_append(
        self: ExecutionStore, execution_id: str, events: Sequence[NewEvent]
    ) -> list[ExecutionEvent]:
        batches.append([event.kind for event in events])
        if len(batches) == 1:
            await all_ran.wait()
        return await real_append(self, execution_id, events)

    real_execute = jupyter_execute.execute_notebook

    async def execute_then_release(*args: Any, **kwargs: Any) -> Any:
        result = await real_execute(*args, **kwargs)
        all_ran.set()
        return result

    monkeypatch.setattr(ExecutionStore, "append_events", held_append)
    monkeypatch.setattr(runner_module, "execute_notebook", execute_then_release)

    def row(event: ExecutionEvent) -> tuple[int, EventKind, int | None, int]:
        return (event.sequence, event.kind, event.cell_index, event.cells_done)

    async def watch() -> list[tuple[int, EventKind, int | None, int]]:
        stream = harness.service.watch(execution.id, after_sequence=0)
        return [row(watched.event) async for watched in stream]

    watcher = asyncio.create_task(watch())
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    seen = await asyncio.wait_for(watcher, 60)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED

    # One write held up, then the whole backlog in one more.
    assert batches[0] == [EventKind.CELL_STARTED]
    assert len(batches) == 2
    assert sum(len(batch) for batch in batches) == 2 * cells

    expected: list[tuple[int, EventKind, int | None, int]] = [
        (1, EventKind.QUEUED, None, 0),
        (2, EventKind.RUNNING, None, 0),
    ]
    for i in range(cells):
        expected.append((len(expected) + 1, EventKind.CELL_STARTED, i, i))
        expected.append((len(expected) + 1, EventKind.CELL_FINISHED, i, i + 1))
    expected.append((len(expected) + 1, EventKind.FINISHED, None, cells))
    assert seen == expected
    stored = await _events(harness, execution.id)
    assert [row(e) for e in stored] == expected
    times = [e.created_at for e in stored]
    assert times == sorted(times)
    final = await harness.service.get(execution.id)
    assert final is not None
    assert final.progress.cells_done == cells
