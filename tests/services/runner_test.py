"""ExecutionRunner against real Postgres/SQLite and a real jupyter_server.

Claims (a queue message is a wake-up: the runner takes the most urgent
queued execution, and a duplicate finds nothing), timeouts (of the whole
execution, of a cell, without output), kernels that cannot start, die or
ignore an interrupt, outputs too large to receive, a lab lost mid-run
(retried with backoff, then final), cell errors (never retried) and the
cancel of a running execution: each must end in exactly one terminal
state with a clear reason.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from noteburst.config import WorkerSettings
from noteburst.constants import EXECUTION_TASK_QUEUE
from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    ExecutionEvent,
    ExecutionQueue,
    ExecutionStatus,
)
from noteburst.jupyter.backend import LocalLabBackend
from noteburst.services.runner import ExecutionRunner
from tests.support.notebooks import notebook
from tests.support.runner_harness import Harness
from tests.support.runner_harness import stored_events as _events
from tests.support.waiting import wait_until


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
async def test_each_message_runs_the_most_urgent_queued_execution(
    harness: Harness,
) -> None:
    batch = await harness.service.submissions.submit(
        notebook("'batch'"), queue=ExecutionQueue.BATCH
    )
    interactive = await harness.service.submissions.submit(notebook("'interactive'"))

    # The batch execution's message arrives first, but the worker it wakes
    # runs the interactive execution, submitted later.
    first = await asyncio.wait_for(harness.runner.run(batch.id), 120)
    assert first is not None
    assert first.status is ExecutionStatus.SUCCEEDED
    ran_first = await harness.service.executions.get(interactive.id)
    waiting = await harness.service.executions.get(batch.id)
    assert ran_first is not None
    assert ran_first.status is ExecutionStatus.SUCCEEDED
    assert waiting is not None
    assert waiting.status is ExecutionStatus.QUEUED

    # The interactive execution's own message then runs the batch one...
    second = await asyncio.wait_for(harness.runner.run(interactive.id), 120)
    assert second is not None
    done = await harness.service.executions.get(batch.id)
    assert done is not None
    assert done.status is ExecutionStatus.SUCCEEDED
    assert done.attempts == 1
    # ...and a duplicate finds nothing to do.
    assert await harness.runner.run(batch.id) is None
    for execution_id in (batch.id, interactive.id):
        final = await harness.service.executions.get(execution_id)
        assert final is not None
        assert (final.status, final.attempts) == (ExecutionStatus.SUCCEEDED, 1)


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
            workers=WorkerSettings(lease_seconds=30, max_attempts=2),
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
