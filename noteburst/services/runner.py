"""Running one execution, and recovering executions whose worker was lost.

The runner is what a worker's actor calls with an execution id.  The
message is only a wake-up: the runner *claims* the queued execution that
should run next (interactive before batch, oldest first; see
``ExecutionStore.claim_next``) with one conditional update, which is
usually the one the message named but not when more urgent work waits.  One
message is sent per queued execution, so every queued execution gets a
worker, and a message delivered twice (Redis redelivery, a sweep, a retry)
finds the queue empty rather than running a notebook twice.  While it
runs it holds a lease that it keeps renewing; a worker that dies stops
renewing, and :meth:`ExecutionRunner.recover` queues the execution again
(up to ``max_attempts`` starts, then it fails with ``WORKER_LOST``).  Every
path ends in a terminal status with a reason: the notebook's own error, a
timeout, a dead kernel, an unreachable lab, a cancellation, or an internal
fault.

Timeouts and cancellation end the same way: the kernel is interrupted, the
notebook is stored as far as it got, and the kernel is shut down (it never
serves another notebook).  A cancellation reaches the worker running the
execution, whichever process that is, through its cancellation bus (LISTEN
on Postgres, the shared in-process bus otherwise): nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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
    CellTimeoutError,
    JupyterError,
    KernelDiedError,
    KernelMessageTooLargeError,
    KernelStartError,
    LabUnavailableError,
    NoOutputTimeoutError,
)
from ..jupyter.execute import CellFailure, RunReport, execute_notebook
from ..jupyter.kernel import KernelConnection
from ..jupyter.protocol import OutputLimits
from ..storage.database import Database
from ..storage.events import EventBus, Signal
from ..storage.execution import (
    ClaimedExecution,
    ExecutionFinishedError,
    ExecutionStore,
    NewEvent,
    cancel_signal_key,
)
from ..storage.taskqueue import TaskQueue
from .webhook import WebhookService

__all__ = ["RETRY_BASE_SECONDS", "ExecutionRunner", "Outcome", "OutputFlush"]

_logger = structlog.get_logger("noteburst.runner")

RETRY_BASE_SECONDS = 1.0
"""Backoff before the first retry after a lost lab; doubles per attempt."""

INTERRUPT_TIMEOUT_SECONDS = 5.0
"""Bound on the REST call interrupting a timed-out or cancelled kernel."""


class _CancelRequestedError(Exception):
    """The execution's cancellation was requested while it ran."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an execution ended."""

    status: ExecutionStatus
    error: ExecutionError | None
    retryable: bool = False
    """An infrastructure failure (the lab went away): worth another attempt."""


@dataclass(frozen=True, slots=True)
class OutputFlush:
    """When a running cell's outputs are written as a CELL_OUTPUTS event.

    Outputs are gathered, not written per kernel message: a cell printing
    in a tight loop sends thousands of messages a second.  They are written
    ``seconds`` after the first change not yet written, as soon as the
    changes reach ``max_bytes`` (a rough count: text and MIME values), and
    at the end of each cell, so a cell has at most about
    ``duration / seconds + bytes / max_bytes + 1`` such events.

    Appended outputs are written once, but a clear_output animation or a
    display updated in a loop sends the same outputs again at every flush.
    Once an attempt's live flushes have sent ``max_resent_bytes`` again,
    such changes are written only at the ends of cells (appends still go
    out live), so a long animation cannot fill the events table.
    """

    seconds: float = 0.2
    max_bytes: int = 65536
    max_resent_bytes: int = 8 << 20
    progress_seconds: float = 0.1
    """Least time between two writes of cell events (progress and outputs).

    The end of an attempt writes what is left at once, so a notebook that
    runs within this time has all its cell events written in the
    transaction that stores its result: one write and one wake-up of each
    subscriber instead of one per batch, which on a two-core machine took
    CPU from the kernel and the push of the result.  A longer execution's
    subscribers see progress at least this often.
    """


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
    output_flush
        How cells' outputs are gathered into CELL_OUTPUTS events.
    cancels
        Where cancellations of running executions are announced (see
        :func:`~noteburst.storage.execution.cancel_signal_key`); `None` for
        ``bus``.
    output_limits
        Byte budgets for outputs, enforced as they arrive; `None` for none.
    webhooks
        Woken when an execution ends, after its terminal event is announced
        and its kernel retired; `None`: no webhooks.
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
        output_flush: OutputFlush | None = None,
        cancels: EventBus | None = None,
        output_limits: OutputLimits | None = None,
        webhooks: WebhookService | None = None,
    ) -> None:
        self._webhooks = webhooks
        self._cancels = cancels if cancels is not None else bus
        self._output_limits = output_limits
        self._db = database
        self._bus = bus
        self._backend = backend
        self._queue = queue
        self._lease = timedelta(seconds=lease_seconds)
        self._max_attempts = max_attempts
        self._output_flush = output_flush or OutputFlush()

    async def run(self, execution_id: str) -> Outcome | None:
        """Claim and run one execution.

        ``execution_id`` is the id the message carried: it wakes the worker,
        which then runs whichever queued execution is next in claim order
        (the named one may be run by another wake-up).

        Returns
        -------
        Outcome or None
            How it ended, or `None` if nothing was ready to run (the message
            was a duplicate, or its execution was taken by another wake-up).
        """
        log = _logger.bind(woken_for=execution_id)
        now = datetime.now(UTC)
        async with contextlib.AsyncExitStack() as subscriptions:
            async with self._db.transaction() as store:
                claimed = await store.claim_next(
                    now=now,
                    lease_until=now + self._lease,
                    max_attempts=self._max_attempts,
                    woken_for=execution_id,
                )
                if claimed is None:
                    log.info("Nothing queued is ready; wake-up ignored")
                    return None
                # Subscribed before the claim commits, so a cancellation
                # requested after it wakes this worker, and one requested
                # before it is on the claimed row: no read needed to start.
                cancel_signal = await subscriptions.enter_async_context(
                    self._cancels.subscribe(cancel_signal_key(claimed.execution.id))
                )
            return await self._run_claimed(claimed, cancel_signal, log)

    async def _run_claimed(
        self,
        claimed: ClaimedExecution,
        cancel_signal: Signal,
        log: structlog.typing.FilteringBoundLogger,
    ) -> Outcome:
        """Run a claimed execution to its end (see :meth:`run`)."""
        execution = claimed.execution
        execution_id = execution.id
        log = log.bind(execution_id=execution_id)
        self._bus.announce(execution_id, claimed.event.sequence)
        log.info("Execution started", attempt=execution.attempts)
        notebook = nbformat.from_dict(claimed.source)
        renewer = asyncio.create_task(
            self._keep_lease(execution_id, execution.attempts)
        )
        progress = _ProgressWriter(
            self._db,
            self._bus,
            execution_id,
            interval=self._output_flush.progress_seconds,
        )
        outputs = _OutputStreamer(notebook, progress, self._output_flush)
        report = RunReport()
        # The kernel is retired only once the result is stored and announced:
        # its shutdown, and the pool's replacement kernel that starts when it
        # is closed, cost CPU that would otherwise compete with storing and
        # pushing the result.
        async with contextlib.AsyncExitStack() as kernel_scope:
            try:
                outcome = await self._execute(
                    execution,
                    notebook,
                    cancel_signal=cancel_signal,
                    progress=progress,
                    outputs=outputs,
                    kernel_scope=kernel_scope,
                    report=report,
                )
            finally:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
                # Whatever was folded, also before a timeout or a death.
                outputs.close()
                # Progress events not written yet go first into the
                # transaction that ends this attempt, so they precede its event.
                unwritten = await progress.stop()
            if (
                outcome.retryable
                and execution.attempts < self._max_attempts
                and not await self._cancel_requested(execution_id)
            ):
                await self._retry_later(execution, outcome, unwritten)
                return outcome
            result_text = json.dumps(
                notebook, ensure_ascii=False, separators=(",", ":")
            )
            async with self._db.transaction() as store:
                final = await store.finish(
                    execution_id,
                    status=outcome.status,
                    result_text=result_text,
                    error=outcome.error,
                    now=datetime.now(UTC),
                    # If the lease lapsed and another worker took over, its
                    # result wins; this one is dropped, with its progress.
                    attempt=execution.attempts,
                    outputs_truncated=report.outputs_truncated,
                    progress=unwritten,
                )
            if final is not None:
                self._bus.announce(execution_id, final.sequence)
        log.info(
            "Execution finished",
            status=outcome.status.value,
            error_code=outcome.error.code.value if outcome.error else None,
        )
        if final is not None and self._webhooks is not None:
            # Off the response path: the terminal event is announced and the
            # kernel retired; the delivery itself runs in its own actor.
            await self._webhooks.wake(execution_id)
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
                execution.id,
                now=now,
                lease_expired_before=now + timedelta(days=36500),
                not_before=now + timedelta(seconds=delay),
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
            ended: list[str] = []
            for execution_id in running:
                execution = await store.get(execution_id)
                if execution is None:
                    continue
                if execution.cancel_requested_at is not None:
                    # Its worker was lost before it could end it; nobody
                    # wants it run again.
                    event = await store.finish(
                        execution_id,
                        status=ExecutionStatus.CANCELLED,
                        result_text=None,
                        error=ExecutionError(
                            code=ErrorCode.CANCELLED,
                            message="cancelled; its worker was lost meanwhile",
                        ),
                        now=now,
                    )
                elif execution.attempts >= self._max_attempts:
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
                    if event.kind is EventKind.FINISHED:
                        ended.append(execution_id)
        for execution_id in resend:
            await self._queue.enqueue_execution(execution_id)
        if resend:
            _logger.warning("Re-queued lost executions", count=len(resend))
        if self._webhooks is not None:
            for execution_id in ended:
                await self._webhooks.wake(execution_id)
        return len(resend)

    async def _execute(  # noqa: PLR0911, PLR0912 - one return per kind of outcome
        self,
        execution: Execution,
        notebook: nbformat.NotebookNode,
        *,
        cancel_signal: Signal,
        progress: _ProgressWriter,
        outputs: _OutputStreamer,
        kernel_scope: contextlib.AsyncExitStack,
        report: RunReport,
    ) -> Outcome:
        current_cell: int | None = None
        cells_done = 0

        async def started(index: int) -> None:
            nonlocal current_cell
            current_cell = index
            progress.post(EventKind.CELL_STARTED, index, cells_done)
            outputs.cell_started(index)

        async def finished(index: int) -> None:
            nonlocal cells_done
            outputs.flush()  # the cell's outputs precede its end
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
            async with (
                asyncio.timeout(execution.timeout_seconds) as scope,
                self._cancel_on_request(
                    execution.id,
                    cancel_signal,
                    requested=execution.cancel_requested_at is not None,
                ),
            ):
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
                        on_outputs_changed=outputs.changed,
                        cell_timeout=execution.cell_timeout_seconds,
                        no_output_timeout=execution.no_output_timeout_seconds,
                        output_limits=self._output_limits,
                        report=report,
                    )
                except BaseException as exc:
                    if isinstance(exc, asyncio.CancelledError | TimeoutError):
                        # Stop the cell before the kernel is shut down.
                        await _interrupt(kernel)
                    # Give the kernel back now, with the failure: the backend
                    # may know better what it means (a kernel that "died"
                    # because its lab went away is LabUnavailableError).
                    await kernel_scope.__aexit__(type(exc), exc, exc.__traceback__)
                    raise
                # A failed progress write fails the execution, as before.
                await progress.settle()
        except _CancelRequestedError:
            return Outcome(
                ExecutionStatus.CANCELLED,
                ExecutionError(
                    code=ErrorCode.CANCELLED,
                    message=(
                        "cancelled"
                        if current_cell is None
                        else f"cancelled while cell {current_cell} was running"
                    ),
                    cell_index=current_cell,
                ),
            )
        except CellTimeoutError as exc:
            return _cell_timed_out(exc)
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
                        + (
                            ""
                            if current_cell is None
                            else f" while cell {current_cell} was running"
                        )
                    ),
                    cell_index=current_cell,
                ),
            )
        except KernelStartError as exc:
            return _failed(ErrorCode.KERNEL_START_FAILED, str(exc), None)
        except KernelDiedError as exc:
            # The kernel's own account names the cell even when the dying
            # cell's start was never reported (its messages died with it).
            died_in = exc.cell_index if exc.cell_index is not None else current_cell
            return _failed(ErrorCode.KERNEL_DIED, str(exc), died_in)
        except KernelMessageTooLargeError as exc:
            return _failed(
                ErrorCode.OUTPUT_TOO_LARGE,
                f"cell {current_cell}: {exc}" if current_cell is not None else str(exc),
                current_cell,
            )
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

    @contextlib.asynccontextmanager
    async def _cancel_on_request(
        self, execution_id: str, signal: Signal, *, requested: bool
    ) -> AsyncIterator[None]:
        """Cancel the block when the execution's cancellation is requested.

        ``signal`` is the execution's subscription on the cancellation bus,
        made before its claim committed, and ``requested`` whether the
        claimed row already held a request; so no request is missed without
        reading the row again here.  A watcher task re-reads the stored
        request on every wake-up (a resync after a lost LISTEN connection
        included).  On a request it cancels the task running the block,
        which leaves it with :class:`_CancelRequestedError`; any other
        cancellation passes through unchanged.
        """
        task = asyncio.current_task()
        assert task is not None
        already = requested
        requested = False

        async def watch() -> None:
            nonlocal requested
            if not already:
                while True:
                    await signal.wait()
                    if await self._cancel_requested(execution_id):
                        break
            requested = True
            task.cancel()

        watcher = asyncio.create_task(watch(), name=f"cancel-watch-{execution_id}")
        watcher.add_done_callback(_log_watcher_failure)
        try:
            yield
        except asyncio.CancelledError:
            if requested and task.uncancel() == 0:
                raise _CancelRequestedError from None
            raise
        finally:
            watcher.cancel()
            await asyncio.wait({watcher})

    async def _cancel_requested(self, execution_id: str) -> bool:
        async with self._db.transaction() as store:
            return await store.cancel_requested(execution_id)

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

    Writes are at least ``interval`` seconds apart, counted from the
    writer's start for the first one (see :attr:`OutputFlush.progress_seconds`).

    A failed write is raised by the next :meth:`post` (stopping the run at
    the next cell, as a failed inline write did) and by :meth:`settle`.
    :meth:`stop` ends the task and hands back what is not written yet, for
    the transaction that ends the attempt (so no extra transaction).
    """

    def __init__(
        self,
        database: Database,
        bus: EventBus,
        execution_id: str,
        *,
        interval: float = 0.0,
    ) -> None:
        self._db = database
        self._bus = bus
        self._execution_id = execution_id
        self._interval = interval
        self._started = asyncio.get_running_loop().time()
        self._pending: list[NewEvent] = []
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._error: Exception | None = None
        self._stopped = False
        self._cells_done = 0

    @property
    def cells_done(self) -> int:
        """``cells_done`` of the last event queued (0 before any)."""
        return self._cells_done

    def post(self, kind: EventKind, cell_index: int, cells_done: int) -> None:
        """Queue an event for writing; raise an earlier write's failure."""
        if self._error is not None:
            raise self._error
        self.append(
            NewEvent(
                kind=kind,
                status=ExecutionStatus.RUNNING,
                cells_done=cells_done,
                created_at=datetime.now(UTC),
                cell_index=cell_index,
            )
        )

    def append(self, event: NewEvent) -> None:
        """Queue ``event`` for writing, never raising an earlier write's failure.

        For writers that must not raise (the output streamer runs inside
        the folding of kernel messages); :meth:`post` and :meth:`settle`
        still report the failure, and the events are then dropped.
        """
        if self._stopped:
            msg = "progress writer already stopped"
            raise RuntimeError(msg)
        self._cells_done = event.cells_done
        self._pending.append(event)
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
        self._stopping.set()
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
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        pending, self._pending = self._pending, []
        return pending if self._error is None else []

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_write = self._started + self._interval
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            pause = next_write - loop.time()
            if pause > 0:
                # Gather more, unless the attempt ends meanwhile (then the
                # pending events go into its own transaction, see stop).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._stopping.wait()
                if self._stopping.is_set():
                    return
            next_write = loop.time() + self._interval
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


@dataclass(slots=True)
class _CellOutputsSent:
    """What the CELL_OUTPUTS events written so far told of one cell."""

    held: int = 0
    """How many outputs a client replaying them holds."""
    first_changed: int | None = None
    """Lowest index changed since (None: nothing changed)."""


class _OutputStreamer:
    """Turns the folder's change notices into batched CELL_OUTPUTS events.

    :meth:`changed` is the folder's ``on_outputs_changed`` hook, called for
    every kernel message that changes outputs; it only notes the lowest
    changed index per cell (and a rough byte count), so the cell path pays
    no copy and no database write.  A flush reads the changed cells'
    outputs from the notebook, which holds exactly what the folder stored
    (after clear_output, display updates and output limits), and queues one
    event per cell with the writer: ``outputs[output_start:]`` where
    ``output_start`` is the lowest changed index, capped at what earlier
    events gave.  Applying ``outputs[output_start:] = event.outputs`` in
    order therefore rebuilds the cell's outputs; appends are the case
    ``output_start == held``, a cleared cell starts at 0.

    Flushes happen on a timer and a byte threshold (see
    :class:`OutputFlush`, also for the budget of outputs sent again),
    before each CELL_FINISHED, and at the end.  A
    pipelined cell's outputs can be folded before its CELL_STARTED is
    queued (that callback runs on a helper task); they wait for it, so a
    cell's CELL_OUTPUTS events come after its CELL_STARTED event and before
    its CELL_FINISHED event (display updates of finished cells aside).
    """

    def __init__(
        self,
        notebook: nbformat.NotebookNode,
        writer: _ProgressWriter,
        policy: OutputFlush,
    ) -> None:
        self.notebook = notebook
        self.writer = writer
        self.policy = policy
        self._cells: dict[int, _CellOutputsSent] = {}
        self._started = -1
        self._gathered_bytes = 0
        self._resent_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def changed(self, cell_index: int, first_changed: int) -> None:
        """Note that outputs of a cell changed from ``first_changed`` on."""
        if self._closed:
            return
        sent = self._cells.setdefault(cell_index, _CellOutputsSent())
        if sent.first_changed is None or first_changed < sent.first_changed:
            sent.first_changed = first_changed
        outs = self.notebook.cells[cell_index].outputs
        if first_changed < len(outs):
            self._gathered_bytes += _rough_size(outs[first_changed])
        if cell_index > self._started:
            return  # flushed once its CELL_STARTED is queued
        if self._gathered_bytes >= self.policy.max_bytes:
            self.flush(live=True)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.policy.seconds, self._on_timer
            )

    def cell_started(self, cell_index: int) -> None:
        """Let the outputs of cells up to ``cell_index`` be written."""
        self._started = max(self._started, cell_index)
        if self._timer is None and any(
            index <= self._started and sent.first_changed is not None
            for index, sent in self._cells.items()
        ):
            self._timer = asyncio.get_running_loop().call_later(
                self.policy.seconds, self._on_timer
            )

    def flush(self, *, everything: bool = False, live: bool = False) -> None:
        """Queue the changes of started cells (all cells if ``everything``).

        A ``live`` flush (timer, size) leaves out changes that would send
        outputs again once the policy's ``max_resent_bytes`` are spent.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._gathered_bytes = 0
        for index in sorted(self._cells):
            sent = self._cells[index]
            if sent.first_changed is None:
                continue
            if index > self._started and not everything:
                continue
            outs = self.notebook.cells[index].outputs
            start = min(sent.first_changed, sent.held)
            if start < sent.held:
                if live and self._resent_bytes >= self.policy.max_resent_bytes:
                    continue  # at the cell's end
                resent = outs[start : sent.held]
                self._resent_bytes += sum(_rough_size(out) for out in resent)
            sent.first_changed = None
            if start == sent.held == len(outs):
                continue
            sent.held = len(outs)
            self.writer.append(
                NewEvent(
                    kind=EventKind.CELL_OUTPUTS,
                    status=ExecutionStatus.RUNNING,
                    cells_done=self.writer.cells_done,
                    created_at=datetime.now(UTC),
                    cell_index=index,
                    output_start=start,
                    # A copy: later messages change outputs in place.
                    outputs=[_json_copy(out) for out in outs[start:]],
                )
            )

    def close(self) -> None:
        """Queue every change not written yet; ignore later notices."""
        if not self._closed:
            self.flush(everything=True)
            self._closed = True

    def _on_timer(self) -> None:
        self._timer = None
        self.flush(live=True)


def _json_copy(value: Any) -> Any:
    """Copy a JSON tree (twice as fast as ``copy.deepcopy`` on outputs)."""
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    return value


def _rough_size(output: dict[str, Any]) -> int:
    """Bytes of an output's text or MIME values, roughly (for batching only)."""
    if "text" in output:
        return len(output["text"])
    size = 0
    for value in (output.get("data") or {}).values():
        size += len(value) if isinstance(value, str) else 256
    return size + sum(len(line) for line in output.get("traceback") or ())


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


def _log_watcher_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _logger.error(
            "Cancellation watcher failed; this execution cannot be cancelled",
            exc_info=task.exception(),
        )


async def _interrupt(kernel: KernelConnection) -> None:
    """Interrupt the kernel's running cell; log, never raise (it is retired next)."""
    try:
        async with asyncio.timeout(INTERRUPT_TIMEOUT_SECONDS):
            await kernel.interrupt()
    except (JupyterError, TimeoutError) as exc:
        _logger.warning(
            "Could not interrupt kernel; it is shut down anyway",
            kernel_id=kernel.kernel_id,
            error=str(exc),
        )


def _cell_timed_out(exc: CellTimeoutError) -> Outcome:
    which = (
        "no-output timeout" if isinstance(exc, NoOutputTimeoutError) else "cell timeout"
    )
    return Outcome(
        ExecutionStatus.TIMED_OUT,
        ExecutionError(
            code=ErrorCode.TIMEOUT,
            message=(
                f"cell {exc.cell_index} exceeded its {which} of {exc.timeout:g} s"
            ),
            cell_index=exc.cell_index,
        ),
    )


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
