"""Run a whole notebook on an open kernel connection.

:func:`execute_notebook` is the loop nbclient runs, with nbclient's
semantics, over a :class:`~.kernel.KernelConnection` instead of ZMQ: ask for
``kernel_info`` (to record ``language_info``; a pooled kernel's connection
already has the reply, which saves that round trip), run the non-empty code cells
in order, fold the replies into the notebook with
:class:`~.protocol.NotebookOutputFolder`, and stop at the first cell whose
``execute_reply`` is an error.  All decisions about outputs live in the
Sans-I/O folder; this module only sends, waits (with bounds) and reports.

Pipelined execution (the default)
---------------------------------
Over jupyter_server's websocket a request/reply round trip can cost far more
than a trivial cell, so a notebook of many small cells run one request at a
time spends most of its time waiting between cells (``users-and-peers.md``
§4.1).  Instead, the code cells' execute requests are sent ahead without
waiting for replies; the kernel queues them on its shell channel and runs
them one after the other.  Replies are routed by parent ``msg_id`` into one
queue per request (:mod:`.kernel`), and the folder consumes those queues
strictly in cell order, one cell at a time, exactly as in sequential
execution.  The folded notebook is therefore the same message for message:
outputs, ``execution_count``, the ``metadata.execution`` timestamps (taken
from the kernel's message headers, not from our clock), display-id updates
across cells and widget state.  ``pipelined=False`` keeps the
one-cell-at-a-time loop.

Requests are sent :data:`_WINDOW` (16) ahead: the first 16 at once, then
one more each time a cell is complete.  That keeps the kernel's queue from
running dry over a round trip (a 50-cell notebook runs as fast as with
every request sent at once), bounds what is in flight, and -- the reason
for a window rather than one burst -- makes the abort race much rarer (below).

Stop on error, and the abort race
---------------------------------
Requests carry ``stop_on_error: true``.  In ipykernel 7.4
(``kernelbase.py``), when an execution ends in an error, ``execute_request``
sends the reply and then calls ``_abort_queues``: it sets ``_aborting`` and
has the shell-channel thread (``io_loop.add_callback``) post a dummy
``b"stop aborting"`` message to the main subshell's queue.
``dispatch_shell`` answers every ``execute_request`` it dequeues while
``_aborting`` is set with status ``aborted`` (busy/idle, no
``execute_input``, no execution count) and clears the flag when it
dequeues the dummy.  (``stop_on_error_timeout`` is not used on this path,
which ipykernel 7 always takes.)  So a queued request is aborted if and
only if the shell-channel thread forwarded it *before* that callback ran; a
request that reaches the kernel after the failing cell's error was handled
runs normally.  The race is real: with 200 requests sent in one burst after
a failing ``1/0`` and the machine loaded by two busy kernels, 2 or 3 runs in
100 executed some later cells (the tail of the burst arrived after the
error); with the failure after 100 cells, 1 in 100.

No client-side scheduling can close it: nothing the kernel publishes says
"request k+1 is queued" before cell k ends, and an ``execute_request`` has
no "only if the previous one succeeded" condition.  So for IPython kernels
(``kernel_info_reply.implementation == "ipython"``) a silent, history-less
request sent ahead of the first cell installs
:data:`~.protocol.STOP_AFTER_ERROR_GUARD`: an IPython input transformer
that, once an execution has failed, replaces the code of every later cell
by ``raise NoteburstSkippedError`` (a pooled kernel has it installed while
warming up, see :mod:`.pool`).  A request that slips past ipykernel's
abort then fails instead of running, and its error aborts the queue again;
no cell's code runs after the first failure, as in sequential execution
(``tests/jupyter/pipeline_test.py`` sends a request after the error reply
to make the race certain).  Each kernel runs one notebook, so a sticky
failure flag is exactly stop-on-error.  Besides that:

* With the window, a request is sent while 15 earlier cells are still
  queued in the kernel, so the race is rare to begin with.
* The folder never reads a queue past the failing cell, so a late reply
  cannot change the notebook or the returned :class:`CellFailure`.
* After a failure the replies to the remaining requests are drained
  (bounded by ``iopub_timeout``), leaving the kernel quiet; a reply other
  than ``aborted`` or the guard's ``NoteburstSkippedError`` (a kernel that
  is not IPython, which gets no guard) is logged as an error.  For such
  kernels, when a stray cell's side effects would matter, pass
  ``pipelined=False``.

Kernel death
------------
A ``restarting``/``dead`` notice ends the run with
:class:`~.exceptions.KernelDiedError` naming the cell that died.  Pipelined,
that takes care: a dying ipykernel can take its last messages with it
(``os._exit`` in a cell that starts right after the previous one stops the
threads that would still send the previous cell's reply and ``idle``).  So
if the cell being collected had replied, the death is blamed on the next
cell sent; if it had not, on the last later cell that shows (by any message)
that the kernel reached it.  When a cell dies within milliseconds of
starting and took the previous cell's reply and its own first messages with
it, nothing distinguishes that from the previous cell dying, and the
previous cell is blamed (about 1 run in 20 for ``os._exit(1)`` right after a
``print``; sequential execution has no such ambiguity).

Progress callbacks
------------------
In pipelined mode ``on_cell_started(i)`` is reported when the first message
of cell ``i``'s request (its ``busy`` status) is folded, i.e. when the cell
actually started in the kernel, and ``on_cell_finished(i)`` when its reply
and ``idle`` are in.  The callbacks run in that order on one helper task
fed by a queue, so a slow callback (a database write) never delays sending
or collecting later cells; :func:`execute_notebook` waits for every queued
callback before it returns or raises, so on return all of them completed,
in order.  If a callback raises, the run stops and the exception is raised
by :func:`execute_notebook` as soon as it is noticed (while collecting, the
collector races each wait against the helper task).  In sequential mode
the callbacks are awaited inline, as before.

``on_outputs_changed`` is different: it is called synchronously by the
folder as each message changes a cell's outputs, in either mode, so a
pipelined cell's outputs can be reported before its queued
``on_cell_started`` has run.  It only says which outputs changed; the
listener reads them from the notebook when it chooses (to batch them).

Timeouts and cancellation are the caller's tools: wrap the call in
``asyncio.timeout(...)`` for a limit on the whole run, pass ``cell_timeout``
for a limit per cell and ``no_output_timeout`` for a limit on how long a
cell may send nothing, or cancel the task.  Every wait for a message is
bounded by whichever of these applies (and by ``iopub_timeout`` once a
cell's reply is in), the same in pipelined and sequential mode: a cell's
clocks start when the cell before it is complete.  The notebook is mutated
in place as messages are folded, so after a timeout or cancellation it
holds everything folded so far; on cancellation the callback task is cancelled
and awaited, so no task is left behind.  The kernel, however, may still be
running cells (and hold queued requests); discard it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from nbformat import NotebookNode

from . import protocol
from .exceptions import (
    CellTimeoutError,
    JupyterError,
    KernelDiedError,
    NoOutputTimeoutError,
)
from .kernel import KernelConnection
from .protocol import (
    CellOutcome,
    Message,
    NotebookOutputFolder,
    OutputLimits,
    OutputsChanged,
)

__all__ = ["CellFailure", "RunReport", "execute_notebook"]

_log = logging.getLogger(__name__)

CellCallback = Callable[[int], Awaitable[None]]

_WINDOW: Final = 16
"""Pipelined: how many requests are sent ahead of the cell being collected."""


@dataclass(frozen=True, slots=True)
class CellFailure:
    """The cell that raised, ending the run (from its ``execute_reply``).

    Attributes
    ----------
    cell_index
        Index of the cell in ``nb.cells``.
    ename
        Exception class name, e.g. ``ZeroDivisionError``.
    evalue
        Exception message.
    traceback
        Traceback lines as the kernel formatted them (with ANSI colours).
    """

    cell_index: int
    ename: str
    evalue: str
    traceback: list[str]


@dataclass(slots=True)
class RunReport:
    """What a run did besides its outcome; valid even when the run raised."""

    folder: NotebookOutputFolder | None = None

    @property
    def outputs_truncated(self) -> bool:
        """Whether any output was cut or dropped under the output limits."""
        return self.folder is not None and self.folder.outputs_truncated


async def execute_notebook(
    conn: KernelConnection,
    nb: NotebookNode,
    *,
    on_cell_started: CellCallback | None = None,
    on_cell_finished: CellCallback | None = None,
    on_outputs_changed: OutputsChanged | None = None,
    cell_timeout: float | None = None,
    no_output_timeout: float | None = None,
    iopub_timeout: float = 4.0,
    kernel_info_timeout: float = 60.0,
    pipelined: bool = True,
    output_limits: OutputLimits | None = None,
    report: RunReport | None = None,
) -> CellFailure | None:
    """Execute the code cells of ``nb`` in order, writing outputs into it.

    Markdown and raw cells, and code cells with blank source, are left
    untouched (nbclient skips them too).  For each executed cell, its
    outputs, ``execution_count`` and ``metadata.execution`` timestamps are
    set as nbclient sets them; ``nb.metadata.language_info`` comes from the
    kernel, and ``nb.metadata.widgets`` from widget comm messages after a
    successful run.  Cells after a failing cell are left untouched.

    Parameters
    ----------
    conn
        An open connection to a fresh kernel.
    nb
        The notebook; mutated in place.
    on_cell_started
        Called with the cell's index in ``nb.cells`` when a code cell starts:
        pipelined, when its first message from the kernel is folded, on a
        helper task that does not hold up execution; sequential, awaited just
        before the cell is sent.
    on_cell_finished
        Called with the cell's index once a code cell is complete (also for
        the cell that failed); pipelined, on the same helper task, after the
        cell's ``on_cell_started``.  All callbacks have completed when this
        function returns.
    on_outputs_changed
        Called synchronously, as messages are folded, with ``(cell_index,
        first_changed)`` whenever the outputs stored in a cell change from
        index ``first_changed`` on (see
        :class:`~.protocol.NotebookOutputFolder`): appended, cleared, cut by
        a limit, or changed by a display update (also in a finished cell).
        It runs on the cell path, so it must only take note (and not raise);
        read the outputs from ``nb`` later, in batches.
    cell_timeout
        Limit in seconds for each cell; `None` for none.  Pipelined, a cell's
        clock starts when the previous cell is complete (the kernel cannot
        start it earlier); sequential, when it is sent.
    no_output_timeout
        Limit in seconds on how long a running cell may send no message (no
        output, no status); `None` for none.  The clock restarts with every
        message of the cell's and starts as ``cell_timeout``'s does.
    iopub_timeout
        How long to wait for a cell's outputs to end (its iopub ``idle``)
        after its ``execute_reply`` arrived; then move on, as nbclient does.
        Pipelined, also the bound on draining the aborted requests after a
        failure.
    kernel_info_timeout
        Limit in seconds for the initial ``kernel_info`` exchange.  There is
        none if the connection already has a ``kernel_info_reply`` (a pooled
        kernel's, or an earlier run's): the kernel is known to answer, and
        its ``language_info`` does not change.
    pipelined
        Send every cell's request up front (the default; see the module
        docstring), or `False` to send each cell after the previous one is
        complete.
    output_limits
        Byte budgets applied to outputs as they arrive (see
        :class:`~.protocol.OutputLimits`): excess output is dropped at once,
        so memory stays bounded however much a cell prints.
    report
        Filled in with what the run did (whether outputs were truncated),
        also when this function raises.

    Returns
    -------
    CellFailure | None
        The first cell that raised, or `None` if every cell succeeded.

    Raises
    ------
    CellTimeoutError
        If a cell exceeds ``cell_timeout``; `NoOutputTimeoutError` (a
        subclass) if it is silent for ``no_output_timeout``.
    KernelDiedError
        If the kernel died or restarted during a cell (with its index).
    LabUnavailableError
        If the server or the websocket went away.
    KernelProtocolError
        If the kernel's messages could not be understood.
    TimeoutError
        If ``kernel_info`` does not answer within ``kernel_info_timeout``.
    Exception
        Whatever a callback raised.
    """
    folder = NotebookOutputFolder(
        nb, limits=output_limits, on_outputs_changed=on_outputs_changed
    )
    if report is not None:
        report.folder = folder
    info = conn.kernel_info_reply
    if info is None:
        async with asyncio.timeout(kernel_info_timeout):
            info = await conn.kernel_info()
    folder.set_kernel_info(info)
    if not pipelined:
        return await _execute_sequential(
            conn,
            folder,
            on_cell_started=on_cell_started,
            on_cell_finished=on_cell_finished,
            cell_timeout=cell_timeout,
            iopub_timeout=iopub_timeout,
            no_output_timeout=no_output_timeout,
        )
    callbacks = _CallbackRunner(on_cell_started, on_cell_finished)
    try:
        failure = await _execute_pipelined(
            conn,
            folder,
            callbacks,
            cell_timeout=cell_timeout,
            iopub_timeout=iopub_timeout,
            window=_WINDOW,
            guard=protocol.guard_applies(info) and not conn.guard_installed,
            no_output_timeout=no_output_timeout,
        )
    except asyncio.CancelledError:
        await callbacks.cancel()
        raise
    except BaseException as exc:
        # Report what did happen (e.g. the start of the cell that timed out).
        await callbacks.complete(raising=exc)
        raise
    await callbacks.complete()
    return failure


def _failure(outcome: CellOutcome) -> CellFailure:
    reply = outcome.reply
    return CellFailure(
        cell_index=outcome.cell_index,
        ename=str(reply.get("ename", "")),
        evalue=str(reply.get("evalue", "")),
        traceback=[str(line) for line in reply.get("traceback") or []],
    )


def _new_request(
    conn: KernelConnection, folder: NotebookOutputFolder, index: int
) -> Message:
    return protocol.execute_request(
        folder.nb.cells[index].source, session=conn.session_id, username=conn.username
    )


# -- pipelined ----------------------------------------------------------------


class _CallbackRunner:
    """Run the progress callbacks in order on one task, fed by a queue."""

    def __init__(
        self, on_started: CellCallback | None, on_finished: CellCallback | None
    ) -> None:
        self.on_started = on_started
        self.on_finished = on_finished
        self._queue: asyncio.Queue[tuple[CellCallback, int] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._error: Exception | None = None
        self._last_started: int | None = None

    @property
    def busy(self) -> bool:
        """Whether a callback is running or queued (so one could still fail)."""
        return self._running or not self._queue.empty()

    def post(self, callback: CellCallback | None, index: int) -> None:
        """Queue ``callback(index)``; raise a callback's earlier failure."""
        self.raise_error()
        if callback is None:
            return
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(), name="noteburst-cell-callbacks"
            )
        self._queue.put_nowait((callback, index))

    def started(self, index: int) -> None:
        """Queue ``on_started(index)`` unless it already was."""
        if self._last_started != index:
            self._last_started = index
            self.post(self.on_started, index)

    def finished(self, index: int) -> None:
        """Queue ``on_finished(index)``, after ``on_started(index)``."""
        self.started(index)
        self.post(self.on_finished, index)

    def raise_error(self) -> None:
        """Raise the exception of a callback that failed, if one did."""
        if self._error is not None:
            raise self._error

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            callback, index = item
            self._running = True
            try:
                await callback(index)
            except Exception as exc:
                self._error = exc
                return
            finally:
                self._running = False

    async def receive(self, conn: KernelConnection, msg_id: str) -> Message:
        """``conn.receive(msg_id)``, interrupted if a callback fails meanwhile."""
        self.raise_error()
        task = self._task
        if task is None or not self.busy:
            # No callback can run (and fail) until the collector posts one.
            return await conn.receive(msg_id)
        receiving = asyncio.create_task(conn.receive(msg_id))
        try:
            await asyncio.wait({receiving, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not receiving.done():
                # Queue.get is cancellation-safe: no message is lost.
                receiving.cancel()
                await asyncio.wait({receiving})
        if receiving.cancelled():
            self.raise_error()
        return receiving.result()

    async def complete(self, *, raising: BaseException | None = None) -> None:
        """Wait until every queued callback has run.

        Raise a callback's failure, unless the run is already ``raising``
        another exception (then log it).
        """
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        if self._error is None or self._error is raising:
            return
        if raising is None:
            raise self._error
        _log.error("Progress callback failed", exc_info=self._error)

    async def cancel(self) -> None:
        """Stop the callbacks without running the queued ones; wait for the task."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})


async def _execute_pipelined(
    conn: KernelConnection,
    folder: NotebookOutputFolder,
    callbacks: _CallbackRunner,
    *,
    cell_timeout: float | None,
    iopub_timeout: float,
    window: int,
    guard: bool,
    no_output_timeout: float | None = None,
) -> CellFailure | None:
    cells = [i for i, cell in enumerate(folder.nb.cells) if folder.should_execute(cell)]
    sent: list[tuple[int, str]] = []
    guard_id: str | None = None
    if guard and len(cells) > 1:
        # Runs before the first cell (the kernel takes requests in order);
        # its reply is not waited for.
        guard_id = await conn.request(
            protocol.execute_request(
                protocol.STOP_AFTER_ERROR_GUARD,
                session=conn.session_id,
                username=conn.username,
                silent=True,
                store_history=False,
                stop_on_error=False,
            )
        )

    async def send_until(count: int) -> None:
        while len(sent) < min(count, len(cells)):
            index = cells[len(sent)]
            request = _new_request(conn, folder, index)
            sent.append((index, await conn.request(request)))

    try:
        await send_until(window)
        for position, index in enumerate(cells):
            if position == len(sent):  # the connection failed meanwhile
                try:
                    await send_until(position + 1)
                except KernelDiedError as exc:
                    raise KernelDiedError(str(exc), cell_index=index) from exc
            msg_id = sent[position][1]
            try:
                outcome = await _collect_pipelined(
                    conn,
                    folder,
                    callbacks,
                    index,
                    msg_id,
                    followed=position + 1 < len(sent),
                    cell_timeout=cell_timeout,
                    iopub_timeout=iopub_timeout,
                    no_output_timeout=no_output_timeout,
                )
            except KernelDiedError as exc:
                later = sent[position + 1 :]
                blamed = await _blame_death(conn, folder, callbacks, exc, later)
                if blamed is exc:
                    raise
                raise blamed from exc
            if outcome.failed:
                await _drain_aborted(conn, index, sent[position + 1 :], iopub_timeout)
                return _failure(outcome)
            if conn.failure is None:
                await send_until(position + 1 + window)
        folder.finish_notebook()
        return None
    finally:
        for _, msg_id in sent:
            conn.forget(msg_id)
        if guard_id is not None:
            conn.forget(guard_id)


async def _collect_pipelined(
    conn: KernelConnection,
    folder: NotebookOutputFolder,
    callbacks: _CallbackRunner,
    index: int,
    msg_id: str,
    *,
    followed: bool,
    cell_timeout: float | None,
    iopub_timeout: float,
    no_output_timeout: float | None = None,
) -> CellOutcome:
    """Fold one cell's messages; ``followed``: a later request was sent."""
    folder.begin_cell(index, msg_id)
    try:
        scope = asyncio.timeout(cell_timeout)
        try:
            async with scope:
                while not folder.cell_done:
                    if not folder.reply_received:
                        msg = await _within_silence(
                            callbacks.receive(conn, msg_id), index, no_output_timeout
                        )
                    else:
                        try:
                            async with asyncio.timeout(iopub_timeout):
                                msg = await callbacks.receive(conn, msg_id)
                        except TimeoutError:
                            _log.warning(
                                "No iopub idle for cell %s within %s s of its reply;"
                                " moving on",
                                index,
                                iopub_timeout,
                            )
                            break
                    if protocol.parent_msg_id(msg) == msg_id:
                        callbacks.started(index)
                    folder.feed(msg)
        except TimeoutError as exc:
            if cell_timeout is not None and scope.expired():
                raise CellTimeoutError(index, cell_timeout) from exc
            raise
        except KernelDiedError as exc:
            if folder.reply_received and followed:
                # The cell is complete; the kernel died in a later one before
                # this cell's idle got out (os._exit() kills ipykernel's iopub
                # thread with its unsent messages).  The next cells' queues
                # hold the death notice too: blame the first without a reply.
                _log.info("Kernel died after cell %s replied", index)
            elif exc.cell_index is None:
                raise KernelDiedError(str(exc), cell_index=index) from exc
            else:
                raise
        outcome = folder.finish_cell()
        callbacks.finished(index)
        return outcome
    finally:
        folder.abandon_cell()
        conn.forget(msg_id)


async def _blame_death(
    conn: KernelConnection,
    folder: NotebookOutputFolder,
    callbacks: _CallbackRunner,
    died: KernelDiedError,
    later: Sequence[tuple[int, str]],
) -> KernelDiedError:
    """Find the cell the kernel died in, among the requests sent ahead.

    A dying ipykernel can take its last messages with it (``os._exit`` stops
    the threads that send replies and iopub messages), so the cell being
    collected may have completed in the kernel without saying so.  Every
    pending request's queue ends with the death notice; fold the later ones
    that show the kernel reached them (any message of theirs), and blame the
    last of those.  Cells the kernel never reached are left untouched.
    """
    blamed = died
    for index, msg_id in later:
        received: list[Message] = []
        try:
            async with asyncio.timeout(1.0):
                while True:
                    received.append(await conn.receive(msg_id))
        except (JupyterError, TimeoutError):
            pass
        if not any(protocol.parent_msg_id(msg) == msg_id for msg in received):
            break
        folder.begin_cell(index, msg_id)
        callbacks.started(index)
        try:
            for msg in received:
                folder.feed(msg)
        except KernelDiedError as exc:
            blamed = exc
        if not folder.reply_received:
            folder.abandon_cell()
            break
        folder.finish_cell()
        callbacks.finished(index)
    return blamed


async def _drain_aborted(
    conn: KernelConnection,
    failed_index: int,
    pending: Sequence[tuple[int, str]],
    bound: float,
) -> None:
    """Wait for the replies to the requests queued after a failed cell.

    ipykernel answers them ``aborted``; anything else means the kernel ran a
    cell that sequential execution would not have sent (the race described
    in the module docstring).  The notebook is not touched either way.
    """
    executed: list[int] = []
    waiting = list(pending)
    try:
        async with asyncio.timeout(bound):
            for index, msg_id in pending:
                while True:
                    msg = await conn.receive(msg_id)
                    if msg["msg_type"] == "execute_input":
                        executed.append(index)
                    if (
                        msg["msg_type"] == "execute_reply"
                        and protocol.parent_msg_id(msg) == msg_id
                    ):
                        content = msg.get("content") or {}
                        status = content.get("status")
                        if content.get("ename") == protocol.SKIPPED_ENAME:
                            # Arrived late, kept from running by the guard.
                            if index in executed:
                                executed.remove(index)
                        elif status != "aborted" and index not in executed:
                            executed.append(index)
                        break
                waiting.pop(0)
    except TimeoutError:
        _log.warning(
            "%d request(s) queued after failed cell %s not answered within %s s",
            len(waiting),
            failed_index,
            bound,
        )
    except JupyterError as exc:
        _log.warning(
            "Kernel lost while draining after failed cell %s: %s", failed_index, exc
        )
    if executed:
        _log.error(
            "The kernel ran cell(s) %s after cell %s failed instead of aborting"
            " them; the notebook ignores them",
            executed,
            failed_index,
        )


# -- sequential -----------------------------------------------------------------


async def _execute_sequential(
    conn: KernelConnection,
    folder: NotebookOutputFolder,
    *,
    on_cell_started: CellCallback | None,
    on_cell_finished: CellCallback | None,
    cell_timeout: float | None,
    iopub_timeout: float,
    no_output_timeout: float | None = None,
) -> CellFailure | None:
    for index, cell in enumerate(folder.nb.cells):
        if not folder.should_execute(cell):
            continue
        if on_cell_started is not None:
            await on_cell_started(index)
        outcome = await _run_cell(
            conn,
            folder,
            index,
            cell_timeout,
            iopub_timeout,
            no_output_timeout=no_output_timeout,
        )
        if on_cell_finished is not None:
            await on_cell_finished(index)
        if outcome.failed:
            return _failure(outcome)
    folder.finish_notebook()
    return None


async def _run_cell(
    conn: KernelConnection,
    folder: NotebookOutputFolder,
    index: int,
    cell_timeout: float | None,
    iopub_timeout: float,
    *,
    no_output_timeout: float | None = None,
) -> CellOutcome:
    request = _new_request(conn, folder, index)
    msg_id: str = request["msg_id"]
    folder.begin_cell(index, msg_id)
    try:
        scope = asyncio.timeout(cell_timeout)
        try:
            async with scope:
                await conn.request(request)
                await _collect(conn, folder, msg_id, iopub_timeout, no_output_timeout)
        except TimeoutError as exc:
            if cell_timeout is not None and scope.expired():
                raise CellTimeoutError(index, cell_timeout) from exc
            raise
        except KernelDiedError as exc:
            if exc.cell_index is None:
                raise KernelDiedError(str(exc), cell_index=index) from exc
            raise
        return folder.finish_cell()
    finally:
        folder.abandon_cell()
        conn.forget(msg_id)


async def _collect(
    conn: KernelConnection,
    folder: NotebookOutputFolder,
    msg_id: str,
    iopub_timeout: float,
    no_output_timeout: float | None = None,
) -> None:
    while not folder.cell_done:
        if not folder.reply_received:
            index = folder.current_cell
            assert index is not None
            folder.feed(
                await _within_silence(conn.receive(msg_id), index, no_output_timeout)
            )
            continue
        try:
            async with asyncio.timeout(iopub_timeout):
                msg = await conn.receive(msg_id)
        except TimeoutError:
            _log.warning(
                "No iopub idle for cell %s within %s s of its reply; moving on",
                folder.current_cell,
                iopub_timeout,
            )
            return
        folder.feed(msg)


async def _within_silence(
    receiving: Awaitable[Message], index: int, no_output_timeout: float | None
) -> Message:
    """Await the cell's next message, for at most ``no_output_timeout``.

    Each message restarts the clock (this is awaited once per message), so
    the limit is on a silence, not on the cell's whole run.
    """
    if no_output_timeout is None:
        return await receiving
    scope = asyncio.timeout(no_output_timeout)
    try:
        async with scope:
            return await receiving
    except TimeoutError as exc:
        if scope.expired():
            raise NoOutputTimeoutError(index, no_output_timeout) from exc
        raise
