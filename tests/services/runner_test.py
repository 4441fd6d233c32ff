"""ExecutionRunner against real Postgres/SQLite and a real jupyter_server.

Duplicate delivery, lease-based recovery of lost workers, timeouts and
kernel start failures: each must end in exactly one terminal state with a
clear reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from noteburst.constants import EXECUTION_TASK_QUEUE
from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    ExecutionEvent,
    ExecutionFailure,
    ExecutionStatus,
)
from noteburst.exceptions import ExecutionNotFoundError, InvalidInputError
from noteburst.factory import WorkerFactory
from noteburst.jupyter import execute as jupyter_execute
from noteburst.jupyter.backend import LocalLabBackend
from noteburst.services import runner as runner_module
from noteburst.services.runner import ExecutionRunner
from noteburst.storage.database import Database
from noteburst.storage.executions import ClaimStore, EventLogStore, NewEvent
from tests.support.notebooks import notebook
from tests.support.runner_harness import Harness
from tests.support.waiting import wait_until


async def _events(harness: Harness, execution_id: str) -> list[Any]:
    async with harness.api.database.transaction() as tx:
        return list(await tx.events.after(execution_id, 0))


@pytest.mark.asyncio
async def test_a_message_delivered_twice_runs_once(harness: Harness) -> None:
    execution = await harness.service.submissions.submit(
        notebook("import os; os.getpid()")
    )
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            harness.runner.run(execution.id), harness.runner.run(execution.id)
        ),
        120,
    )
    assert sorted(o is None for o in outcomes) == [False, True]
    # A third delivery after the end changes nothing either.
    assert await harness.runner.run(execution.id) is None
    final = await harness.service.executions.get(execution.id)
    assert final is not None
    assert final.status is ExecutionStatus.SUCCEEDED
    assert final.attempts == 1
    kinds = [e.kind for e in await _events(harness, execution.id)]
    assert kinds.count(EventKind.RUNNING) == 1
    assert kinds.count(EventKind.FINISHED) == 1


@pytest.mark.asyncio
async def test_timeout_returns_partial_notebook(harness: Harness) -> None:
    execution = await harness.service.submissions.submit(
        notebook("print('started')", "import time; time.sleep(60)", "print('never')"),
        timeout_seconds=2,
    )
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 60)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.TIMED_OUT
    assert outcome.error is not None
    assert outcome.error.code is ErrorCode.TIMEOUT
    assert outcome.error.cell_index == 1
    result = await harness.service.executions.get_notebook(execution.id)
    assert result is not None
    assert result["cells"][0]["outputs"][0]["text"] == "started\n"
    assert result["cells"][2]["outputs"] == []


@pytest.mark.asyncio
async def test_kernel_that_cannot_start_fails_clearly(harness: Harness) -> None:
    execution = await harness.service.submissions.submit(
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
    execution = await harness.service.submissions.submit(notebook("1"))
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
            task_queue=harness.api.task_queue,
            lease_seconds=30,
            max_attempts=2,
        )
        first = await asyncio.wait_for(runner.run(execution.id), 60)
        assert first is not None
        assert first.retryable
        requeued = await harness.service.executions.get(execution.id)
        assert requeued is not None
        assert requeued.status is ExecutionStatus.QUEUED
        assert requeued.attempts == 1
        # The retry was sent with a backoff (a delayed message).
        assert harness.broker.queues[f"{EXECUTION_TASK_QUEUE}.DQ"].qsize() == 1

        second = await asyncio.wait_for(runner.run(execution.id), 60)
        assert second is not None
        await backend.aclose()
    final = await harness.service.executions.get(execution.id)
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
    execution = await harness.service.submissions.submit(
        # No outputs, so no CELL_OUTPUTS events: only cell starts and ends.
        notebook(*(f"x{i} = {i} * 2" for i in range(cells)))
    )
    harness.broker.flush_all()
    all_ran = asyncio.Event()
    batches: list[list[EventKind]] = []
    real_append = EventLogStore.append_many

    async def held_append(
        self: EventLogStore, execution_id: str, events: Sequence[NewEvent]
    ) -> list[ExecutionEvent]:
        batches.append([event.kind for event in events])
        if len(batches) == 1:
            await all_ran.wait()
        return await real_append(self, execution_id, events)

    real_finish = ClaimStore.finish

    async def noted_finish(
        self: ClaimStore, execution_id: str, **kwargs: Any
    ) -> ExecutionEvent | None:
        # The end of a run writes what is left with its own statements.
        if kwargs.get("progress"):
            batches.append([event.kind for event in kwargs["progress"]])
        return await real_finish(self, execution_id, **kwargs)

    real_execute = jupyter_execute.execute_notebook

    async def execute_then_release(*args: Any, **kwargs: Any) -> Any:
        result = await real_execute(*args, **kwargs)
        all_ran.set()
        return result

    monkeypatch.setattr(EventLogStore, "append_many", held_append)
    monkeypatch.setattr(ClaimStore, "finish", noted_finish)
    monkeypatch.setattr(runner_module, "execute_notebook", execute_then_release)

    def row(event: ExecutionEvent) -> tuple[int, EventKind, int | None, int]:
        return (event.sequence, event.kind, event.cell_index, event.cells_done)

    async def watch() -> list[tuple[int, EventKind, int | None, int]]:
        stream = harness.service.watcher.watch(execution.id, after_sequence=0)
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
    final = await harness.service.executions.get(execution.id)
    assert final is not None
    assert final.progress.cells_done == cells


def _interruptible_sleep(marker: Path) -> str:
    """A cell that waits, and records in ``marker`` that it was interrupted."""
    return (
        "import pathlib, time\n"
        "try:\n"
        "    print('waiting', flush=True)\n"
        "    time.sleep(120)\n"
        "except KeyboardInterrupt:\n"
        f"    pathlib.Path({str(marker)!r}).write_text('interrupted')\n"
        "    raise\n"
    )


async def _interrupted(marker: Path) -> None:
    async def written() -> bool:
        return await asyncio.to_thread(marker.exists)

    await wait_until(written, "the kernel was interrupted", timeout=30)


@pytest.mark.asyncio
async def test_cell_timeout_interrupts_and_keeps_the_partial_notebook(
    harness: Harness, tmp_path: Path
) -> None:
    marker = tmp_path / "interrupted"
    execution = await harness.service.submissions.submit(
        notebook("print('first')", _interruptible_sleep(marker), "print('never')"),
        cell_timeout_seconds=2,
    )
    assert execution.cell_timeout_seconds == 2
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.TIMED_OUT
    assert outcome.error is not None
    assert outcome.error.code is ErrorCode.TIMEOUT
    assert outcome.error.cell_index == 1
    assert outcome.error.message == "cell 1 exceeded its cell timeout of 2 s"
    await _interrupted(marker)
    result = await harness.service.executions.get_notebook(execution.id)
    assert result is not None
    assert result["cells"][0]["outputs"][0]["text"] == "first\n"
    assert result["cells"][1]["outputs"][0]["text"] == "waiting\n"
    assert result["cells"][2]["outputs"] == []


@pytest.mark.asyncio
async def test_no_output_timeout_ends_the_execution(harness: Harness) -> None:
    execution = await harness.service.submissions.submit(
        notebook(
            "import time\nfor i in range(10):\n    print(i, flush=True)\n"
            "    time.sleep(0.2)",
            "import time; time.sleep(120)",
        ),
        no_output_timeout_seconds=1.5,
    )
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.TIMED_OUT
    assert outcome.error is not None
    assert outcome.error.cell_index == 1
    assert outcome.error.message == "cell 1 exceeded its no-output timeout of 1.5 s"
    final = await harness.service.executions.get(execution.id)
    assert final is not None
    assert final.status is ExecutionStatus.TIMED_OUT
    assert final.no_output_timeout_seconds == 1.5


@pytest.mark.asyncio
async def test_whole_execution_timeout_interrupts_and_names_the_cell(
    harness: Harness, tmp_path: Path
) -> None:
    marker = tmp_path / "interrupted"
    execution = await harness.service.submissions.submit(
        notebook("print('first')", _interruptible_sleep(marker)), timeout_seconds=3
    )
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.TIMED_OUT
    assert outcome.error is not None
    assert outcome.error.message == (
        "execution exceeded its timeout of 3 s while cell 1 was running"
    )
    await _interrupted(marker)
    result = await harness.service.executions.get_notebook(execution.id)
    assert result is not None
    assert result["cells"][1]["outputs"][0]["text"] == "waiting\n"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cellTimeoutSeconds", 0),
        ("cellTimeoutSeconds", float("inf")),
        ("noOutputTimeoutSeconds", -1),
        ("noOutputTimeoutSeconds", 1e12),
    ],
)
async def test_bad_cell_timeouts_are_refused(
    harness: Harness, field: str, value: float
) -> None:
    cell, silence = (value, None) if field == "cellTimeoutSeconds" else (None, value)
    with pytest.raises(InvalidInputError) as caught:
        await harness.service.submissions.submit(
            notebook("1"), cell_timeout_seconds=cell, no_output_timeout_seconds=silence
        )
    assert caught.value.field == field


@pytest.mark.asyncio
async def test_a_queued_execution_is_cancelled_at_once(harness: Harness) -> None:
    execution = await harness.service.submissions.submit(notebook("print('never')"))
    cancelled = await harness.service.executions.cancel(execution.id)
    assert cancelled.status is ExecutionStatus.CANCELLED
    assert cancelled.error is not None
    assert cancelled.error.code is ErrorCode.CANCELLED
    # The worker that receives the message later does nothing.
    assert await harness.runner.run(execution.id) is None
    # Cancelling again returns it unchanged; an unknown id is refused.
    again = await harness.service.executions.cancel(execution.id)
    assert (again.status, again.last_sequence) == (
        ExecutionStatus.CANCELLED,
        cancelled.last_sequence,
    )
    with pytest.raises(ExecutionNotFoundError):
        await harness.service.executions.cancel("no-such-execution")
    kinds = [e.kind for e in await _events(harness, execution.id)]
    assert kinds == [EventKind.QUEUED, EventKind.FINISHED]


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
async def test_a_running_execution_is_interrupted_and_cancelled(
    harness: Harness, tmp_path: Path
) -> None:
    """The request reaches the worker by notification (LISTEN on Postgres)."""
    marker = tmp_path / "interrupted"
    execution = await harness.service.submissions.submit(
        notebook("print('first')", _interruptible_sleep(marker), "print('never')")
    )
    harness.broker.flush_all()

    async def watch() -> list[ExecutionEvent]:
        seen: list[ExecutionEvent] = []
        async for watched in harness.service.watcher.watch(
            execution.id, after_sequence=0
        ):
            seen.append(watched.event)
            # Cancel once "waiting" is folded, not at the cell's start: on a
            # loaded machine the kernel could still be in that print when
            # the interrupt came, and output not yet read is not kept.
            if watched.event.kind is EventKind.CELL_OUTPUTS and (
                watched.event.cell_index == 1
            ):
                waiting.set()
        return seen

    waiting = asyncio.Event()
    watcher = asyncio.create_task(watch())
    running = asyncio.create_task(harness.runner.run(execution.id))
    async with asyncio.timeout(120):
        await waiting.wait()
    requested = await harness.service.executions.cancel(execution.id)
    assert requested.status is ExecutionStatus.RUNNING
    assert requested.cancel_requested_at is not None
    outcome = await asyncio.wait_for(running, 60)
    seen = await asyncio.wait_for(watcher, 60)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.CANCELLED
    assert outcome.error is not None
    assert outcome.error.code is ErrorCode.CANCELLED
    assert outcome.error.cell_index == 1
    await _interrupted(marker)
    assert (seen[-1].kind, seen[-1].status) == (
        EventKind.FINISHED,
        ExecutionStatus.CANCELLED,
    )
    result = await harness.service.executions.get_notebook(execution.id)
    assert result is not None
    assert result["cells"][0]["outputs"][0]["text"] == "first\n"
    assert result["cells"][1]["outputs"][0]["text"] == "waiting\n"
    assert result["cells"][2]["outputs"] == []
    final = await harness.service.executions.cancel(execution.id)
    assert final.status is ExecutionStatus.CANCELLED
    assert final.attempts == 1
    # Nothing is left queued for it, and a redelivered message does nothing.
    assert await harness.runner.run(execution.id) is None


@pytest.mark.asyncio
async def test_a_cell_error_is_never_retried(harness: Harness) -> None:
    execution = await harness.service.submissions.submit(
        notebook("raise RuntimeError('no')")
    )
    harness.broker.flush_all()
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    assert outcome is not None
    assert not outcome.retryable
    assert outcome.error is not None
    assert outcome.error.code is ErrorCode.CELL_ERROR
    final = await harness.service.executions.get(execution.id)
    assert final is not None
    assert (final.status, final.attempts) == (ExecutionStatus.FAILED, 1)
    assert all(queue.qsize() == 0 for queue in harness.broker.queues.values())


KERNEL_DEATHS = {
    "os._exit": "import os; os._exit(1)",
    "segfault": "import ctypes; ctypes.string_at(0)",
    # What the kernel OOM killer does once memory is exhausted.
    "SIGKILL": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
}


@pytest.mark.asyncio
@pytest.mark.parametrize("death", list(KERNEL_DEATHS))
async def test_a_dying_kernel_fails_the_execution_and_the_lab_stays_usable(
    harness: Harness, death: str
) -> None:
    # The dying cell is the first code cell: pipelined, a cell dying within
    # milliseconds of the previous one's end can be blamed on it (see
    # noteburst.jupyter.execute, "Kernel death"); that case is covered in
    # tests/jupyter/pipeline_test.py.
    execution = await harness.service.submissions.submit(
        notebook("# md:dies next", KERNEL_DEATHS[death], "print('never')")
    )
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.error is not None
    assert (outcome.status, outcome.error.code) == (
        ExecutionStatus.FAILED,
        ErrorCode.KERNEL_DIED,
    ), outcome.error.message
    assert outcome.error.cell_index == 1
    result = await harness.service.executions.get_notebook(execution.id)
    assert result is not None
    assert result["cells"][2]["outputs"] == []

    after = await harness.service.submissions.submit(notebook("print('next')"))
    next_outcome = await asyncio.wait_for(harness.runner.run(after.id), 120)
    assert next_outcome is not None
    assert next_outcome.status is ExecutionStatus.SUCCEEDED


@pytest.mark.asyncio
async def test_memory_exhaustion_under_a_limit_is_a_cell_error(
    harness: Harness,
) -> None:
    """Under RLIMIT_AS an allocation fails in Python: MemoryError, kernel alive.

    (Exhaustion without a limit ends in the OOM killer's SIGKILL: the
    SIGKILL case above.)
    """
    execution = await harness.service.submissions.submit(
        notebook(
            "import resource\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "hog = [bytearray(1 << 20) for _ in range(4096)]",
            "print('never')",
        )
    )
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.cell_index, outcome.error.ename) == (
        ErrorCode.CELL_ERROR,
        0,
        "MemoryError",
    )
    after = await harness.service.submissions.submit(notebook("print('next')"))
    next_outcome = await asyncio.wait_for(harness.runner.run(after.id), 120)
    assert next_outcome is not None
    assert next_outcome.status is ExecutionStatus.SUCCEEDED


@pytest.mark.asyncio
async def test_a_kernel_that_ignores_the_interrupt_is_shut_down(
    harness: Harness,
) -> None:
    """After a timeout the kernel is interrupted, then shut down regardless.

    It never serves another notebook: the next execution gets another one.
    """
    execution = await harness.service.submissions.submit(
        notebook(
            "import os, signal, time\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "print(os.getpid(), flush=True)\n"
            "time.sleep(300)"
        ),
        cell_timeout_seconds=2,
    )
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.TIMED_OUT
    result = await harness.service.executions.get_notebook(execution.id)
    assert result is not None
    pid = int(result["cells"][0]["outputs"][0]["text"])

    async def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await wait_until(gone, f"kernel process {pid} is shut down", timeout=60)
    after = await harness.service.submissions.submit(
        notebook("import os; print(os.getpid())")
    )
    assert await asyncio.wait_for(harness.runner.run(after.id), 120) is not None
    next_result = await harness.service.executions.get_notebook(after.id)
    assert next_result is not None
    assert int(next_result["cells"][0]["outputs"][0]["text"]) != pid


@pytest.mark.asyncio
async def test_a_message_too_large_to_receive_fails_clearly(harness: Harness) -> None:
    """One output over the websocket's 64 MiB limit: OUTPUT_TOO_LARGE, not a retry."""
    execution = await harness.service.submissions.submit(
        notebook("print('before')", "print('x' * (65 << 20))", "print('never')")
    )
    harness.broker.flush_all()
    outcome = await asyncio.wait_for(harness.runner.run(execution.id), 120)
    assert outcome is not None
    assert not outcome.retryable
    assert outcome.error is not None
    assert (outcome.status, outcome.error.code, outcome.error.cell_index) == (
        ExecutionStatus.FAILED,
        ErrorCode.OUTPUT_TOO_LARGE,
        1,
    ), outcome.error.message
    assert "larger than 67108864 bytes" in outcome.error.message
    result = await harness.service.executions.get_notebook(execution.id)
    assert result is not None
    assert result["cells"][0]["outputs"][0]["text"] == "before\n"
    assert all(queue.qsize() == 0 for queue in harness.broker.queues.values())


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


def _runner_gathering_progress(harness: Harness, seconds: float) -> ExecutionRunner:
    """The harness's runner, but writing cell events at most every ``seconds``."""
    config = harness.worker.config
    outputs = config.outputs.model_copy(update={"progress_flush_seconds": seconds})
    config = config.model_copy(update={"outputs": outputs})
    return WorkerFactory(
        dataclasses.replace(harness.worker, config=config)
    ).create_runner()


@pytest.mark.asyncio
async def test_a_quick_notebook_has_its_cell_events_written_with_its_result(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the gathering time, no progress write before the end.

    That is the point of gathering (one write and one wake-up of each
    subscriber per small notebook); the events are all there, in order.
    """
    cells = 4
    execution = await harness.service.submissions.submit(
        notebook(*(f"x{i} = {i}" for i in range(cells)))
    )
    harness.broker.flush_all()
    writes: list[tuple[str, int]] = []
    real_append = EventLogStore.append_many
    real_finish = ClaimStore.finish

    async def counted_append(
        self: EventLogStore, execution_id: str, events: Sequence[NewEvent]
    ) -> list[ExecutionEvent]:
        writes.append(("append", len(events)))
        return await real_append(self, execution_id, events)

    async def counted_finish(
        self: ClaimStore, execution_id: str, **kwargs: Any
    ) -> ExecutionEvent | None:
        writes.append(("finish", len(kwargs.get("progress", ()))))
        return await real_finish(self, execution_id, **kwargs)

    monkeypatch.setattr(EventLogStore, "append_many", counted_append)
    monkeypatch.setattr(ClaimStore, "finish", counted_finish)
    runner = _runner_gathering_progress(harness, seconds=3600)
    outcome = await asyncio.wait_for(runner.run(execution.id), 120)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED
    # One write of all of them: the finish, which stores the result.
    assert writes == [("finish", 2 * cells)]
    stored = await _events(harness, execution.id)
    assert [e.sequence for e in stored] == list(range(1, len(stored) + 1))
    assert [e.kind for e in stored] == [
        EventKind.QUEUED,
        EventKind.RUNNING,
        *[EventKind.CELL_STARTED, EventKind.CELL_FINISHED] * cells,
        EventKind.FINISHED,
    ]


def _held_until(release: Path) -> str:
    """Source of a cell that runs until ``release`` exists (at most 60 s)."""
    return (
        "import os, time\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(release)!r}):\n"
        "    assert time.monotonic() < deadline, 'never released'\n"
        "    time.sleep(0.01)"
    )


async def _cell_started(harness: Harness, execution_id: str, index: int) -> None:
    """Watch ``execution_id`` until cell ``index`` has started."""
    async with asyncio.timeout(60):
        async for watched in harness.service.watcher.watch(execution_id):
            event = watched.event
            if event.kind is EventKind.CELL_STARTED and event.cell_index == index:
                return


@pytest.mark.asyncio
async def test_a_running_cell_is_seen_live_despite_gathering(
    harness: Harness, tmp_path: Path
) -> None:
    """Gathering delays progress by at most its time, never until the end."""
    release = tmp_path / "release"
    execution = await harness.service.submissions.submit(
        notebook(
            "x = 1",
            _held_until(release),
        )
    )
    harness.broker.flush_all()
    runner = _runner_gathering_progress(harness, seconds=0.05)
    run = asyncio.create_task(runner.run(execution.id))
    try:
        await _cell_started(harness, execution.id, 1)
        # The second cell is still waiting for us: its start came out live.
        assert not run.done()
        release.touch()
        outcome = await asyncio.wait_for(run, 60)
    finally:
        release.touch()
        await asyncio.wait_for(asyncio.shield(run), 60)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED


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
