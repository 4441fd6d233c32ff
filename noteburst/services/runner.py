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
from ..exceptions import ExecutionNotFoundError
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
from ..storage.execution import ExecutionFinishedError, ExecutionStore, NewEvent
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
        progress = _ProgressWriter(self._db, self._bus, execution_id)
        # The kernel is retired only once the result is stored and announced:
        # its shutdown, and the pool's replacement kernel that starts when it
        # is closed, cost CPU that would otherwise compete with storing and
        # pushing the result.
        async with contextlib.AsyncExitStack() as kernel_scope:
            try:
                outcome = await self._execute(
                    execution, notebook, progress, kernel_scope
                )
            finally:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
                # Progress events not written yet go first into the
                # transaction that ends this attempt, so they precede its event.
                unwritten = await progress.stop()
            if outcome.retryable and execution.attempts < self._max_attempts:
                await self._retry_later(execution, outcome, unwritten)
                return outcome
            result_text = json.dumps(
                notebook, ensure_ascii=False, separators=(",", ":")
            )
            async with self._db.transaction() as store:
                await _append_unwritten(store, execution_id, unwritten)
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

    async def _retry_later(
        self, execution: Execution, outcome: Outcome, unwritten: list[NewEvent]
    ) -> None:
        """Queue an execution again after an infrastructure failure.

        A cell error is never retried (it is an answer, not a fault); a lab
        that went away is, with exponential backoff, up to ``max_attempts``
        starts, after which the failure is final.  The attempt count is on
        the execution, and the new QUEUED event tells subscribers.
        """
        delay = min(RETRY_BASE_SECONDS * 2 ** (execution.attempts - 1), 30.0)
        now = datetime.now(UTC)
        async with self._db.transaction() as store:
            await _append_unwritten(store, execution.id, unwritten)
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
        self,
        execution: Execution,
        notebook: nbformat.NotebookNode,
        progress: _ProgressWriter,
        kernel_scope: contextlib.AsyncExitStack,
    ) -> Outcome:
        current_cell: int | None = None
        cells_done = 0

        async def started(index: int) -> None:
            nonlocal current_cell
            current_cell = index
            progress.post(EventKind.CELL_STARTED, index, cells_done)

        async def finished(index: int) -> None:
            nonlocal cells_done
            cells_done += 1
            progress.post(EventKind.CELL_FINISHED, index, cells_done)

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
                # Retired when the caller leaves kernel_scope (see run).
                kernel = await kernel_scope.enter_async_context(
                    self._backend.kernel(
                        execution.kernel_name, on_progress=lab_starting
                    )
                )
                try:
                    failure = await execute_notebook(
                        kernel,
                        notebook,
                        on_cell_started=started,
                        on_cell_finished=finished,
                    )
                except BaseException as exc:
                    # Give the kernel back now, with the failure: the backend
                    # may know better what it means (a kernel that "died"
                    # because its lab went away is LabUnavailableError).
                    await kernel_scope.__aexit__(type(exc), exc, exc.__traceback__)
                    raise
                # A failed progress write fails the execution, as before.
                await progress.settle()
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


class _ProgressWriter:
    """Writes one execution's cell events from one task, batching a backlog.

    The progress callbacks only :meth:`post` (never wait); the writer task
    writes everything posted since its previous write in one transaction
    (:meth:`ExecutionStore.append_events`) and announces it.  A trivial cell
    takes a few milliseconds, a transaction about as long (more on a loaded
    machine), so one write per event fell behind and held up the end of the
    execution; batched, the backlog is one transaction, and sequences stay
    gap-free and in posting order (the store allocates them per batch, and
    there is only one writer).  Each event keeps the time it was posted.

    A failed write is raised by the next :meth:`post` (stopping the run at
    the next cell, as a failed inline write did) and by :meth:`settle`.
    :meth:`stop` ends the task and hands back what is not written yet, for
    the transaction that ends the attempt (so no extra transaction).
    """

    def __init__(self, database: Database, bus: EventBus, execution_id: str) -> None:
        self._db = database
        self._bus = bus
        self._execution_id = execution_id
        self._pending: list[NewEvent] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._error: Exception | None = None
        self._stopped = False

    def post(self, kind: EventKind, cell_index: int, cells_done: int) -> None:
        """Queue an event for writing; raise an earlier write's failure."""
        if self._error is not None:
            raise self._error
        if self._stopped:
            msg = "progress writer already stopped"
            raise RuntimeError(msg)
        self._pending.append(
            NewEvent(
                kind=kind,
                status=ExecutionStatus.RUNNING,
                cells_done=cells_done,
                created_at=datetime.now(UTC),
                cell_index=cell_index,
            )
        )
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(), name=f"progress-writer-{self._execution_id}"
            )
        self._wake.set()

    async def settle(self) -> None:
        """Wait for the write in flight, if any; raise if a write failed.

        Call once nothing more will be posted: no further batch is started
        (what is still pending goes into the transaction that ends the
        attempt, see :meth:`stop`), so the end of a run waits for at most
        one progress transaction, not for the one in flight and the next.
        """
        self._stopped = True
        await self._idle.wait()
        if self._error is not None:
            raise self._error

    async def stop(self) -> list[NewEvent]:
        """Stop writing (after the write in flight); return what is left.

        A write that failed is not retried, and nothing is returned then
        (the execution is failed by :meth:`settle`, or was already finished
        by someone else).
        """
        self._stopped = True
        self._wake.set()
        if self._task is not None:
            await self._task
        pending, self._pending = self._pending, []
        return pending if self._error is None else []

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            if not self._pending:
                continue
            batch, self._pending = self._pending, []
            self._idle.clear()
            try:
                await self._write(batch)
            except Exception as exc:
                self._error = exc
                return
            finally:
                self._idle.set()

    async def _write(self, batch: list[NewEvent]) -> None:
        async with self._db.transaction() as store:
            events = await store.append_events(self._execution_id, batch)
        self._bus.announce(self._execution_id, events[-1].sequence)


async def _append_unwritten(
    store: ExecutionStore, execution_id: str, unwritten: list[NewEvent]
) -> None:
    """Write the progress events a stopped writer left, if still allowed."""
    if not unwritten:
        return
    # Refused only if the execution is gone or finished: its end is then
    # refused too, as the progress writes would have been.
    with contextlib.suppress(ExecutionFinishedError, ExecutionNotFoundError):
        await store.append_events(execution_id, unwritten)


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
