"""Writing a running execution's progress: cell events and live outputs.

Two pieces sit between the kernel and the event log while a notebook runs:

* :class:`ProgressWriter` writes one execution's cell events from one task,
  batching what piles up while a write is in flight, so the cells never
  wait for the database;
* :class:`OutputStreamer` turns the output folder's change notices into
  ``CELL_OUTPUTS`` events, gathered per cell on a timer and a byte
  threshold (``config.outputs``), so a client replaying them rebuilds
  exactly the executed notebook's outputs.

Both are made per attempt by :class:`~noteburst.services.runner.ExecutionRunner`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nbformat
import structlog

from ..config import OutputSettings
from ..domain.execution import EventKind, ExecutionStatus
from ..exceptions import (
    ExecutionFinishedError,
    ExecutionNotFoundError,
    ServiceUnavailableError,
)
from ..storage.database import Database
from ..storage.events import EventBus
from ..storage.executions import NewEvent
from ..storage.unit_of_work import UnitOfWork
from .outage import Backoff

__all__ = ["OutputStreamer", "ProgressWriter", "append_unwritten"]

_logger = structlog.get_logger("noteburst.progress")


class ProgressWriter:
    """Writes one execution's cell events from one task, batching a backlog.

    The progress callbacks only :meth:`post` (never wait); the writer task
    writes everything posted since its previous write in one transaction
    (``EventLogStore.append_many``) and announces it.  A trivial cell takes
    no longer than the transaction that records it, so one write per event
    fell behind and held up the end of the execution; batched, the backlog
    is one transaction, and sequences stay gap-free and in posting order
    (the store allocates them per batch, and there is only one writer).
    Each event keeps the time it was posted.

    Writes are at least ``interval`` seconds apart, counted from the
    writer's start for the first one (``outputs.progress_flush_seconds``).
    The end of an attempt writes what is left at once, so a notebook that
    runs within this time has all its cell events written in the
    transaction that stores its result: one write and one wake-up of each
    subscriber instead of one per batch, each of which competes for the CPU
    with the kernel and the push of the result.  A longer execution's
    subscribers see progress at least this often.

    A write the database refused for being unavailable (a restart, a
    failover) is kept, ahead of what was posted since, and tried again
    with backoff: the notebook runs on, and what is still unwritten when
    the attempt ends goes into the transaction that stores its result.
    Any other failed write is raised by the next :meth:`post` (stopping the
    run at the next cell) and by :meth:`settle`.
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
        self._backoff = Backoff()
        self._unavailable = 0

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
            except ServiceUnavailableError as exc:
                # Keep the batch, ahead of what was posted meanwhile.
                self._pending[:0] = batch
                if not await self._wait_out_outage(exc):
                    return
                continue
            except Exception as exc:
                self._error = exc
                return
            finally:
                self._idle.set()
            if self._unavailable:
                _logger.info("Progress written again", execution_id=self._execution_id)
                self._unavailable = 0

    async def _wait_out_outage(self, error: ServiceUnavailableError) -> bool:
        """Back off before writing again; False if the attempt ends meanwhile."""
        if self._unavailable == 0:
            _logger.warning(
                "Progress not written: database unavailable; retrying",
                execution_id=self._execution_id,
                error=error.detail,
            )
        delay = self._backoff.delay(self._unavailable)
        self._unavailable += 1
        self._idle.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        if self._stopping.is_set():
            return False
        self._wake.set()
        return True

    async def _write(self, batch: list[NewEvent]) -> None:
        async with self._db.transaction() as tx:
            events = await tx.events.append_many(self._execution_id, batch)
        self._bus.announce(self._execution_id, events[-1].sequence)


@dataclass(slots=True)
class _CellOutputsSent:
    """What the CELL_OUTPUTS events written so far told of one cell."""

    held: int = 0
    """How many outputs a client replaying them holds."""
    first_changed: int | None = None
    """Lowest index changed since (None: nothing changed)."""


class OutputStreamer:
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

    Outputs are gathered, not written per kernel message: a cell printing
    in a tight loop sends thousands of messages a second.  They are written
    ``flush_seconds`` after the first change not yet written, as soon as
    the changes reach ``flush_bytes`` (a rough count: text and MIME
    values), before each CELL_FINISHED and at the end, so a cell has at
    most about ``duration / flush_seconds + bytes / flush_bytes + 1`` such
    events.  Appended outputs are written once, but a clear_output
    animation or a display updated in a loop sends the same outputs again
    at every flush: once an attempt's live flushes have sent
    ``max_resent_bytes`` again, such changes are written only at the ends
    of cells (appends still go out live), so a long animation cannot fill
    the events table.

    A pipelined cell's outputs can be folded before its CELL_STARTED is
    queued (that callback runs on a helper task); they wait for it, so a
    cell's CELL_OUTPUTS events come after its CELL_STARTED event and before
    its CELL_FINISHED event (display updates of finished cells aside).
    """

    def __init__(
        self,
        notebook: nbformat.NotebookNode,
        writer: ProgressWriter,
        settings: OutputSettings,
    ) -> None:
        self.notebook = notebook
        self.writer = writer
        self.settings = settings
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
        if self._gathered_bytes >= self.settings.flush_bytes:
            self.flush(live=True)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.settings.flush_seconds, self._on_timer
            )

    def cell_started(self, cell_index: int) -> None:
        """Let the outputs of cells up to ``cell_index`` be written."""
        self._started = max(self._started, cell_index)
        if self._timer is None and any(
            index <= self._started and sent.first_changed is not None
            for index, sent in self._cells.items()
        ):
            self._timer = asyncio.get_running_loop().call_later(
                self.settings.flush_seconds, self._on_timer
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
                if live and self._resent_bytes >= self.settings.max_resent_bytes:
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
    """Copy a JSON tree (cheaper than ``copy.deepcopy``: no memo, no dispatch)."""
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


async def append_unwritten(
    tx: UnitOfWork, execution_id: str, unwritten: list[NewEvent]
) -> None:
    """Write the progress events a stopped writer left, if still allowed."""
    if not unwritten:
        return
    # Refused only if the execution is gone or finished: its end is then
    # refused too, as the progress writes would have been.
    with contextlib.suppress(ExecutionFinishedError, ExecutionNotFoundError):
        await tx.events.append_many(execution_id, unwritten)
