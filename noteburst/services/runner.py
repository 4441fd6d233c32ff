"""Running one execution, and recovering executions whose worker was lost.

The runner is what a worker's actor calls with an execution id.  It first
*claims* the execution with one conditional update, so a message delivered
twice (Redis redelivery, a sweep, a retry) runs the notebook once.  While it
runs it holds a lease that it keeps renewing; a worker that dies stops
renewing, and :meth:`ExecutionRunner.recover` queues the execution again
(up to ``max_attempts`` starts, then it fails with ``WORKER_LOST``).  Every
path ends in a terminal status with a reason: the notebook's own error, a
timeout, a dead kernel, an unreachable lab, or an internal fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import nbformat
import structlog

from ..domain.execution import (
    ErrorCode,
    EventKind,
    Execution,
    ExecutionError,
    ExecutionStatus,
)
from ..jupyter.backend import LabBackend
from ..jupyter.exceptions import (
    JupyterError,
    KernelDiedError,
    KernelStartError,
    LabUnavailableError,
)
from ..jupyter.execute import CellFailure, execute_notebook
from ..storage.database import Database
from ..storage.events import EventBus
from ..storage.taskqueue import TaskQueue

__all__ = ["RETRY_BASE_SECONDS", "ExecutionRunner", "Outcome"]

_logger = structlog.get_logger("noteburst.runner")

RETRY_BASE_SECONDS = 1.0
"""Backoff before the first retry after a lost lab; doubles per attempt."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an execution ended."""

    status: ExecutionStatus
    error: ExecutionError | None
    retryable: bool = False
    """An infrastructure failure (the lab went away): worth another attempt."""


class ExecutionRunner:
    """Run executions on a lab backend and record every step.

    Parameters
    ----------
    database
        Where executions live (an engine bound to this worker's loop).
    bus
        Told about each committed event.
    backend
        Provides fresh kernels.
    queue
        Used by :meth:`recover` to hand executions to workers again.
    lease_seconds
        How long a claim lasts without renewal.
    max_attempts
        How many times an execution may be started.
    """

    def __init__(
        self,
        *,
        database: Database,
        bus: EventBus,
        backend: LabBackend,
        queue: TaskQueue,
        lease_seconds: float,
        max_attempts: int,
    ) -> None:
        self._db = database
        self._bus = bus
        self._backend = backend
        self._queue = queue
        self._lease = timedelta(seconds=lease_seconds)
        self._max_attempts = max_attempts

    async def run(self, execution_id: str) -> Outcome | None:
        """Claim and run one execution.

        Returns
        -------
        Outcome or None
            How it ended, or `None` if it was not claimable (already running
            elsewhere, finished, or out of attempts): a duplicate message.
        """
        log = _logger.bind(execution_id=execution_id)
        now = datetime.now(UTC)
        async with self._db.transaction() as store:
            execution = await store.claim(
                execution_id,
                now=now,
                lease_until=now + self._lease,
                max_attempts=self._max_attempts,
            )
            if execution is None:
                log.info("Execution not claimable; duplicate delivery ignored")
                return None
            source = await store.get_source_notebook(execution_id)
            event = await store.append_event(
                execution_id,
                kind=EventKind.RUNNING,
                status=ExecutionStatus.RUNNING,
                cells_done=0,
                now=now,
            )
        self._bus.announce(execution_id, event.sequence)
        log.info("Execution started", attempt=execution.attempts)
        assert source is not None
        notebook = nbformat.from_dict(source)
        renewer = asyncio.create_task(
            self._keep_lease(execution_id, execution.attempts)
        )
        try:
            outcome = await self._execute(execution, notebook)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if outcome.retryable and execution.attempts < self._max_attempts:
            await self._retry_later(execution, outcome)
            return outcome
        result_text = json.dumps(notebook, ensure_ascii=False, separators=(",", ":"))
        async with self._db.transaction() as store:
            final = await store.finish(
                execution_id,
                status=outcome.status,
                result_text=result_text,
                error=outcome.error,
                now=datetime.now(UTC),
                # If the lease lapsed and another worker took over, its
                # result wins; this one is dropped.
                attempt=execution.attempts,
            )
        if final is not None:
            self._bus.announce(execution_id, final.sequence)
        log.info(
            "Execution finished",
            status=outcome.status.value,
            error_code=outcome.error.code.value if outcome.error else None,
        )
        return outcome

    async def _retry_later(self, execution: Execution, outcome: Outcome) -> None:
        """Queue an execution again after an infrastructure failure.

        A cell error is never retried (it is an answer, not a fault); a lab
        that went away is, with exponential backoff, up to ``max_attempts``
        starts, after which the failure is final.  The attempt count is on
        the execution, and the new QUEUED event tells subscribers.
        """
        delay = min(RETRY_BASE_SECONDS * 2 ** (execution.attempts - 1), 30.0)
        now = datetime.now(UTC)
        async with self._db.transaction() as store:
            event = await store.requeue(
                execution.id, now=now, lease_expired_before=now + timedelta(days=36500)
            )
        if event is None:
            return  # taken over meanwhile; the other worker owns it
        self._bus.announce(execution.id, event.sequence)
        await self._queue.enqueue_execution(execution.id, delay_seconds=delay)
        _logger.warning(
            "Execution will be retried",
            execution_id=execution.id,
            attempt=execution.attempts,
            delay_seconds=delay,
            reason=outcome.error.message if outcome.error else None,
        )

    async def recover(self, *, everything_running: bool = False) -> int:
        """Queue again what a lost worker or a lost message left behind.

        Parameters
        ----------
        everything_running
            Treat every running execution as lost, whatever its lease: true
            at the start of the embedded default, where this process is the
            only worker.

        Returns
        -------
        int
            How many executions were handed to workers again.
        """
        now = datetime.now(UTC)
        # Leases expiring before this are lost; at the start of the only
        # worker, every lease is (nobody else can renew one), however long
        # it was granted for.
        cutoff = now + timedelta(days=36500) if everything_running else now
        async with self._db.transaction() as store:
            queued, running = await store.find_orphans(
                now=cutoff,
                queued_before=now if everything_running else now - self._lease,
            )
            resend = list(queued)
            for execution_id in running:
                execution = await store.get(execution_id)
                if execution is None:
                    continue
                if execution.attempts >= self._max_attempts:
                    event = await store.finish(
                        execution_id,
                        status=ExecutionStatus.FAILED,
                        result_text=None,
                        error=ExecutionError(
                            code=ErrorCode.WORKER_LOST,
                            message=(
                                f"the worker running this execution was lost "
                                f"{execution.attempts} times"
                            ),
                        ),
                        now=now,
                    )
                else:
                    event = await store.requeue(
                        execution_id, now=now, lease_expired_before=cutoff
                    )
                    if event is not None:
                        resend.append(execution_id)
                if event is not None:
                    self._bus.announce(execution_id, event.sequence)
        for execution_id in resend:
            await self._queue.enqueue_execution(execution_id)
        if resend:
            _logger.warning("Re-queued lost executions", count=len(resend))
        return len(resend)

    async def _execute(  # noqa: PLR0911 - one return per kind of outcome
        self, execution: Execution, notebook: nbformat.NotebookNode
    ) -> Outcome:
        current_cell: int | None = None
        cells_done = 0

        async def started(index: int) -> None:
            nonlocal current_cell
            current_cell = index
            await self._record(execution.id, EventKind.CELL_STARTED, index, None)

        async def finished(index: int) -> None:
            nonlocal cells_done
            cells_done += 1
            await self._record(execution.id, EventKind.CELL_FINISHED, index, cells_done)

        async def lab_starting(message: str) -> None:
            async with self._db.transaction() as store:
                event = await store.append_event(
                    execution.id,
                    kind=EventKind.LAB_STARTING,
                    status=ExecutionStatus.RUNNING,
                    message=message,
                    now=datetime.now(UTC),
                )
            self._bus.announce(execution.id, event.sequence)

        try:
            async with asyncio.timeout(execution.timeout_seconds) as scope:
                async with self._backend.kernel(
                    execution.kernel_name, on_progress=lab_starting
                ) as kernel:
                    failure = await execute_notebook(
                        kernel,
                        notebook,
                        on_cell_started=started,
                        on_cell_finished=finished,
                    )
        except TimeoutError:
            if not scope.expired():
                raise
            return Outcome(
                ExecutionStatus.TIMED_OUT,
                ExecutionError(
                    code=ErrorCode.TIMEOUT,
                    message=(
                        f"execution exceeded its timeout of "
                        f"{execution.timeout_seconds:g} s"
                    ),
                    cell_index=current_cell,
                ),
            )
        except KernelStartError as exc:
            return _failed(ErrorCode.KERNEL_START_FAILED, str(exc), None)
        except KernelDiedError as exc:
            return _failed(ErrorCode.KERNEL_DIED, str(exc), current_cell)
        except LabUnavailableError as exc:
            failed = _failed(ErrorCode.LAB_UNAVAILABLE, str(exc), current_cell)
            return Outcome(failed.status, failed.error, retryable=True)
        except JupyterError as exc:
            return _failed(ErrorCode.LAB_UNAVAILABLE, str(exc), current_cell)
        except Exception:
            _logger.exception(
                "Execution failed unexpectedly", execution_id=execution.id
            )
            return _failed(
                ErrorCode.INTERNAL,
                "internal error in Noteburst; see the service logs",
                current_cell,
            )
        if failure is not None:
            return _cell_failed(failure)
        return Outcome(ExecutionStatus.SUCCEEDED, None)

    async def _record(
        self,
        execution_id: str,
        kind: EventKind,
        cell_index: int,
        cells_done: int | None,
    ) -> None:
        async with self._db.transaction() as store:
            event = await store.append_event(
                execution_id,
                kind=kind,
                status=ExecutionStatus.RUNNING,
                cell_index=cell_index,
                cells_done=cells_done,
                now=datetime.now(UTC),
            )
        self._bus.announce(execution_id, event.sequence)

    async def _keep_lease(self, execution_id: str, attempt: int) -> None:
        interval = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._db.transaction() as store:
                    await store.renew_lease(
                        execution_id,
                        lease_until=datetime.now(UTC) + self._lease,
                        attempt=attempt,
                    )
            except Exception:
                _logger.warning("Lease renewal failed", execution_id=execution_id)


def _failed(code: ErrorCode, message: str, cell_index: int | None) -> Outcome:
    return Outcome(
        ExecutionStatus.FAILED,
        ExecutionError(code=code, message=message, cell_index=cell_index),
    )


def _cell_failed(failure: CellFailure) -> Outcome:
    return Outcome(
        ExecutionStatus.FAILED,
        ExecutionError(
            code=ErrorCode.CELL_ERROR,
            message=(
                f"cell {failure.cell_index} raised {failure.ename}: {failure.evalue}"
            ),
            cell_index=failure.cell_index,
            ename=failure.ename,
            evalue=failure.evalue,
            traceback=list(failure.traceback),
        ),
    )
