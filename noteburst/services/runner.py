"""Running one execution: claim it, execute it on a kernel, record its end.

The runner is what a worker's actor calls with an execution id.  The
message is only a wake-up: the runner *claims* the queued execution that
should run next (interactive before batch, oldest first; see
:mod:`noteburst.storage.executions.claims`) with one conditional update, which is
usually the one the message named but not when more urgent work waits.  One
message is sent per queued execution, so every queued execution gets a
worker, and a message delivered twice (Redis redelivery, a sweep, a retry)
finds the queue empty rather than running a notebook twice.  While it
runs it holds a lease that it keeps renewing; a worker that dies stops
renewing, and the recovery sweep (:mod:`.recovery`) queues the execution
again (up to ``max_attempts`` starts, then it fails with ``WORKER_LOST``).  Every
path ends in a terminal status with a reason: the notebook's own error, a
timeout, a dead kernel, an unreachable lab, a cancellation, or an internal
fault.

A database outage (a restart, a failover) is not the execution's fault and
never ends one: the claim, the progress, the cancellation check and the
result are retried with backoff (:mod:`.outage`) for up to
``workers.outage_seconds``, the lease is renewed again as soon as the
database answers, and a notebook that ran to its end is kept and stored
then, so its run is not repeated.  Only a worker that cannot store for
longer than that abandons the attempt; its lease lapses and the sweep
queues the execution again.

Timeouts and cancellation end the same way: the kernel is interrupted, the
notebook is stored as far as it got, and the kernel is shut down (it never
serves another notebook).  A cancellation reaches the worker running the
execution, whichever process that is, through its cancellation bus (LISTEN
on Postgres, the shared in-process bus otherwise): nothing polls.

Cell events and live outputs are written by :mod:`.progress` while the
notebook runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import nbformat
import structlog

from ..config import OutputSettings, WorkerSettings
from ..domain.execution import (
    ErrorCode,
    EventKind,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
)
from ..exceptions import ServiceUnavailableError
from ..jupyter.backend import LabBackend
from ..jupyter.exceptions import (
    CellTimeoutError,
    JupyterError,
)
from ..jupyter.execute import RunReport, execute_notebook
from ..jupyter.kernel import KernelConnection
from ..jupyter.protocol import OutputLimits
from ..metrics import (
    EXECUTION_SECONDS,
    EXECUTIONS_FINISHED,
    EXECUTIONS_HANDED_BACK,
    QUEUE_WAIT_SECONDS,
)
from ..storage.database import Database
from ..storage.events import EventBus, Signal
from ..storage.executions import ClaimedExecution, NewEvent, cancel_signal_key
from ..storage.taskqueue import TaskQueue
from ..storage.unit_of_work import UnitOfWork
from .drain import WorkerDrain
from .interruptions import cancel_when
from .outage import Backoff, until_available
from .outcome import (
    HANDED_BACK,
    SUCCEEDED,
    Outcome,
    cancelled,
    cell_failed,
    cell_timed_out,
    execution_timed_out,
    failed,
    jupyter_failed,
)
from .progress import OutputStreamer, ProgressWriter, append_unwritten
from .webhook import WebhookService

__all__ = ["RETRY_BASE_SECONDS", "ExecutionRunner", "Outcome"]

_logger = structlog.get_logger("noteburst.runner")

RETRY_BASE_SECONDS = 1.0
"""Backoff before the first retry after a lost lab; doubles per attempt."""

INTERRUPT_TIMEOUT_SECONDS = 5.0
"""Bound on the REST call interrupting a timed-out or cancelled kernel."""


class _CancelRequestedError(Exception):
    """The execution's cancellation was requested while it ran."""


class _HandBackOrderedError(Exception):
    """The worker is stopping and its grace period is over."""


HAND_BACK_MESSAGE = "handed back to the queue by a stopping worker; it runs again"
"""The message of the ``QUEUED`` event of a hand-back."""


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
    task_queue
        Where a retry's delayed message is sent.
    workers
        ``config.workers``: how long a claim lasts without renewal
        (``lease_seconds``) and how many times an execution may be started
        (``max_attempts``).
    outputs
        How cells' events and outputs are gathered into writes
        (``config.outputs``); default: the defaults.
    cancels
        Where cancellations of running executions are announced (see
        :func:`~noteburst.storage.executions.cancel_signal_key`); `None` for
        ``bus``.
    output_limits
        Byte budgets for outputs, enforced as they arrive; `None` for none.
    webhooks
        Woken when an execution ends, after its terminal event is announced
        and its kernel retired; `None`: no webhooks.
    drain
        The worker's graceful stop (see :mod:`.drain`): counts running
        executions and orders them handed back; `None`: never stopped so.
    """

    def __init__(
        self,
        *,
        database: Database,
        bus: EventBus,
        backend: LabBackend,
        task_queue: TaskQueue,
        workers: WorkerSettings,
        outputs: OutputSettings | None = None,
        cancels: EventBus | None = None,
        output_limits: OutputLimits | None = None,
        webhooks: WebhookService | None = None,
        drain: WorkerDrain | None = None,
    ) -> None:
        self._webhooks = webhooks
        self._drain = drain
        self._cancels = cancels if cancels is not None else bus
        self._output_limits = output_limits
        self._db = database
        self._bus = bus
        self._backend = backend
        self._task_queue = task_queue
        self._lease = timedelta(seconds=workers.lease_seconds)
        self._max_attempts = workers.max_attempts
        self._outage_seconds = workers.outage_seconds
        self._outputs = outputs or OutputSettings()

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
        if self._drain is not None and self._drain.stopping:
            # This worker is stopping: the wake-up goes to another one.
            await self._task_queue.enqueue_execution(execution_id)
            log.info("Worker stopping; wake-up sent back to the queue")
            return None
        async with contextlib.AsyncExitStack() as subscriptions:
            claim = await until_available(
                lambda: self._claim(execution_id, subscriptions),
                what="a claim",
                give_up_after=self._outage_seconds,
                woken_for=execution_id,
            )
            if claim is None:
                log.info("Nothing queued is ready; wake-up ignored")
                return None
            claimed, cancel_signal = claim
            with contextlib.ExitStack() as running:
                if self._drain is not None:
                    running.enter_context(self._drain.run())
                return await self._run_claimed(claimed, cancel_signal, log)

    async def _claim(
        self, woken_for: str, subscriptions: contextlib.AsyncExitStack
    ) -> tuple[ClaimedExecution, Signal] | None:
        """Claim the next queued execution and subscribe to its cancellation.

        The subscription joins ``subscriptions`` only once the claim has
        committed, so a claim retried after an outage leaves none behind.
        """
        now = datetime.now(UTC)
        async with contextlib.AsyncExitStack() as attempt:
            async with self._db.transaction() as tx:
                claimed = await tx.claims.claim_next(
                    now=now,
                    lease_until=now + self._lease,
                    max_attempts=self._max_attempts,
                    woken_for=woken_for,
                )
                if claimed is None:
                    return None
                # Subscribed before the claim commits, so a cancellation
                # requested after it wakes this worker, and one requested
                # before it is on the claimed row: no read needed to start.
                cancel_signal = await attempt.enter_async_context(
                    self._cancels.subscribe(cancel_signal_key(claimed.execution.id))
                )
            await subscriptions.enter_async_context(attempt.pop_all())
        return claimed, cancel_signal

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
        began = time.monotonic()
        if execution.attempts == 1:
            waited = datetime.now(UTC) - execution.created_at
            QUEUE_WAIT_SECONDS.labels(execution.queue.value).observe(
                max(waited.total_seconds(), 0.0)
            )
        notebook = nbformat.from_dict(claimed.source)
        renewer = asyncio.create_task(
            self._keep_lease(execution_id, execution.attempts)
        )
        progress = ProgressWriter(
            self._db,
            self._bus,
            execution_id,
            interval=self._outputs.progress_flush_seconds,
        )
        outputs = OutputStreamer(notebook, progress, self._outputs)
        report = RunReport()
        try:
            # The kernel is retired only once the result is stored and
            # announced: its shutdown, and the pool's replacement kernel that
            # starts when it is closed, cost CPU that would otherwise compete
            # with storing and pushing the result.
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
                    # Whatever was folded, also before a timeout or a death.
                    outputs.close()
                    # Progress events not written yet go first into the
                    # transaction that ends this attempt, so they precede
                    # its event.
                    unwritten = await progress.stop()
                if outcome is HANDED_BACK:
                    await self._hand_back(execution, unwritten)
                    return outcome
                if outcome.retryable and await self._may_retry(execution):
                    await self._retry_later(execution, outcome, unwritten)
                    return outcome
                # The lease is renewed until the result is stored: a store
                # waiting out a database outage keeps the execution its own.
                final = await self._store_result(
                    execution, notebook, outcome, report, unwritten
                )
                if final is not None:
                    self._bus.announce(execution_id, final.sequence)
                    _count_finished(outcome, time.monotonic() - began)
        except ServiceUnavailableError:
            log.error(
                "Database unavailable for too long; attempt abandoned, the "
                "recovery sweep will queue the execution again",
                outage_seconds=self._outage_seconds,
            )
            raise
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
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

    async def _may_retry(self, execution: Execution) -> bool:
        """Whether an infrastructure failure may be followed by another attempt."""
        if execution.attempts >= self._max_attempts:
            return False
        return not await until_available(
            lambda: self._cancel_requested(execution.id),
            what="a cancellation check",
            give_up_after=self._outage_seconds,
            execution_id=execution.id,
        )

    async def _store_result(
        self,
        execution: Execution,
        notebook: nbformat.NotebookNode,
        outcome: Outcome,
        report: RunReport,
        unwritten: list[NewEvent],
    ) -> ExecutionEvent | None:
        """End the attempt: store its notebook, status and remaining progress.

        Retried through a database outage (the finish is conditional on
        this attempt, so a retry of a commit that did land is refused, not
        applied twice).  `None` if the execution is no longer this
        attempt's: the lease lapsed and another worker took over, whose
        result wins; this one is dropped, with its progress.
        """
        result_text = json.dumps(notebook, ensure_ascii=False, separators=(",", ":"))

        async def store() -> ExecutionEvent | None:
            async with self._db.transaction() as tx:
                return await tx.claims.finish(
                    execution.id,
                    status=outcome.status,
                    result_text=result_text,
                    error=outcome.error,
                    now=datetime.now(UTC),
                    attempt=execution.attempts,
                    outputs_truncated=report.outputs_truncated,
                    progress=unwritten,
                )

        return await until_available(
            store,
            what="the result",
            give_up_after=self._outage_seconds,
            execution_id=execution.id,
        )

    async def _hand_back(self, execution: Execution, unwritten: list[NewEvent]) -> None:
        """Give the execution back to the queue: this worker is stopping.

        Its attempt is given back too (see ``ClaimStore.hand_back``), and a
        new wake-up goes out at once, for another worker.  If the database
        cannot take it, the lease lapses and the sweep requeues it.
        """

        async def hand_back(tx: UnitOfWork) -> ExecutionEvent | None:
            return await tx.claims.hand_back(
                execution.id,
                attempt=execution.attempts,
                now=datetime.now(UTC),
                message=HAND_BACK_MESSAGE,
            )

        if not await self._queue_again(
            execution.id, hand_back, unwritten, what="a hand-back"
        ):
            return  # taken over meanwhile; the other worker owns it
        EXECUTIONS_HANDED_BACK.inc()
        _logger.warning(
            "Execution handed back to the queue: this worker is stopping",
            execution_id=execution.id,
        )

    async def _queue_again(
        self,
        execution_id: str,
        write: Callable[[UnitOfWork], Awaitable[ExecutionEvent | None]],
        unwritten: list[NewEvent],
        *,
        what: str,
        delay_seconds: float | None = None,
    ) -> bool:
        """Store the execution as queued again (``write``), then wake a worker.

        The progress not written yet goes first, in the same transaction,
        retried through a database outage.  The wake-up may be lost (the
        queue is down): the execution is stored as queued, and the recovery
        sweep sends it again once the queue answers.

        Returns
        -------
        bool
            False if ``write`` found the execution no longer this attempt's
            (another worker took it over): nothing was changed.
        """

        async def store() -> ExecutionEvent | None:
            async with self._db.transaction() as tx:
                await append_unwritten(tx, execution_id, unwritten)
                return await write(tx)

        event = await until_available(
            store,
            what=what,
            give_up_after=self._outage_seconds,
            execution_id=execution_id,
        )
        if event is None:
            return False
        self._bus.announce(execution_id, event.sequence)
        try:
            await self._task_queue.enqueue_execution(
                execution_id, delay_seconds=delay_seconds
            )
        except Exception:
            _logger.exception(
                "Queue unavailable; the recovery sweep will send the wake-up",
                execution_id=execution_id,
            )
        return True

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

        async def requeue(tx: UnitOfWork) -> ExecutionEvent | None:
            now = datetime.now(UTC)
            return await tx.claims.requeue(
                execution.id,
                now=now,
                lease_expired_before=now + timedelta(days=36500),
                not_before=now + timedelta(seconds=delay),
            )

        if not await self._queue_again(
            execution.id, requeue, unwritten, what="a retry", delay_seconds=delay
        ):
            return  # taken over meanwhile; the other worker owns it
        _logger.warning(
            "Execution will be retried",
            execution_id=execution.id,
            attempt=execution.attempts,
            delay_seconds=delay,
            reason=outcome.error.message if outcome.error else None,
        )

    async def _execute(  # noqa: PLR0911 - one return per kind of outcome
        self,
        execution: Execution,
        notebook: nbformat.NotebookNode,
        *,
        cancel_signal: Signal,
        progress: ProgressWriter,
        outputs: OutputStreamer,
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
            try:
                async with self._db.transaction() as tx:
                    event = await tx.events.append(
                        execution.id,
                        kind=EventKind.LAB_STARTING,
                        status=ExecutionStatus.RUNNING,
                        message=message,
                        now=datetime.now(UTC),
                    )
            except ServiceUnavailableError as exc:
                # A courtesy to watchers; the lab's start goes on without it.
                _logger.warning(
                    "Lab start progress not recorded: database unavailable",
                    execution_id=execution.id,
                    error=exc.detail,
                )
                return
            self._bus.announce(execution.id, event.sequence)

        try:
            async with (
                asyncio.timeout(execution.timeout_seconds) as scope,
                self._cancel_on_request(
                    execution.id,
                    cancel_signal,
                    requested=execution.cancel_requested_at is not None,
                ),
                self._hand_back_on_order(),
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
            return cancelled(current_cell)
        except _HandBackOrderedError:
            return HANDED_BACK
        except CellTimeoutError as exc:
            return cell_timed_out(exc)
        except TimeoutError:
            if not scope.expired():
                raise
            return execution_timed_out(execution.timeout_seconds, current_cell)
        except JupyterError as exc:
            return jupyter_failed(exc, current_cell)
        except ServiceUnavailableError:
            raise  # not the execution's fault: the attempt is abandoned
        except Exception:
            _logger.exception(
                "Execution failed unexpectedly", execution_id=execution.id
            )
            return failed(
                ErrorCode.INTERNAL,
                "internal error in Noteburst; see the service logs",
                current_cell,
            )
        if failure is not None:
            return cell_failed(failure)
        return SUCCEEDED

    def _cancel_on_request(
        self, execution_id: str, signal: Signal, *, requested: bool
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Cancel the block when the execution's cancellation is requested.

        ``signal`` is the execution's subscription on the cancellation bus,
        made before its claim committed, and ``requested`` whether the
        claimed row already held a request; so no request is missed without
        reading the row again here.  The watcher re-reads the stored
        request on every wake-up (a resync after a lost LISTEN connection
        included).  The block then leaves with :class:`_CancelRequestedError`.
        """

        async def request() -> None:
            if requested:
                return
            while True:
                await signal.wait()
                # Through an outage: the bus wakes every subscriber once it
                # listens again, and the read then tells.
                if await until_available(
                    lambda: self._cancel_requested(execution_id),
                    what="a cancellation check",
                    give_up_after=None,
                    execution_id=execution_id,
                ):
                    return

        return cancel_when(
            request,
            raises=_CancelRequestedError,
            name=f"cancel-watch-{execution_id}",
            on_watcher_failure=(
                "Cancellation watcher failed; this execution cannot be cancelled"
            ),
        )

    def _hand_back_on_order(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Cancel the block when the stopping worker orders a hand-back.

        The block then leaves with :class:`_HandBackOrderedError` (the
        kernel is interrupted on the way out, as for a cancellation).
        """
        drain = self._drain
        if drain is None:
            return contextlib.nullcontext()

        async def order() -> None:
            await drain.hand_back.wait()

        return cancel_when(order, raises=_HandBackOrderedError, name="hand-back-watch")

    async def _cancel_requested(self, execution_id: str) -> bool:
        async with self._db.transaction() as tx:
            return await tx.cancels.requested(execution_id)

    async def _keep_lease(self, execution_id: str, attempt: int) -> None:
        """Renew the lease every third of it; after a failure, retry sooner.

        A renewal that failed (the database was unavailable) is tried again
        with a short backoff rather than a third of a lease later, so that
        once the database is back the lease is extended before another
        worker's recovery sweep could take it for lost.
        """
        interval = self._lease.total_seconds() / 3
        backoff = Backoff()
        failures = 0
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                async with self._db.transaction() as tx:
                    await tx.claims.renew_lease(
                        execution_id,
                        lease_until=datetime.now(UTC) + self._lease,
                        attempt=attempt,
                    )
            except Exception as exc:
                if failures == 0:
                    _logger.warning(
                        "Lease renewal failed; retrying",
                        execution_id=execution_id,
                        error=str(exc),
                    )
                delay = min(backoff.delay(failures), interval)
                failures += 1
            else:
                if failures:
                    _logger.info("Lease renewed again", execution_id=execution_id)
                failures = 0
                delay = interval


def _count_finished(outcome: Outcome, seconds: float) -> None:
    """Count a stored end in the metrics (once, by the worker that stored it)."""
    status = outcome.status.value
    code = outcome.error.code.value if outcome.error is not None else ""
    EXECUTIONS_FINISHED.labels(status, code).inc()
    EXECUTION_SECONDS.labels(status).observe(seconds)


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
