"""Run a whole notebook on an open kernel connection.

:func:`execute_notebook` is the loop nbclient runs, with nbclient's
semantics, over a :class:`~.kernel.KernelConnection` instead of ZMQ: ask for
``kernel_info`` (to record ``language_info``), then send each non-empty code
cell in order, fold the replies into the notebook with
:class:`~.protocol.NotebookOutputFolder`, and stop at the first cell whose
``execute_reply`` is an error.  All decisions about outputs live in the
Sans-I/O folder; this module only waits, with bounds.

Timeouts and cancellation are the caller's tools: wrap the call in
``asyncio.timeout(...)`` for a limit on the whole run, pass ``cell_timeout``
for a limit per cell, or cancel the task.  The notebook is mutated in place
as messages arrive, so after a timeout or cancellation it holds everything
received so far, and no task is left behind (this function creates none).
The kernel, however, may still be running the cell; discard it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nbformat import NotebookNode

from . import protocol
from .exceptions import CellTimeoutError, KernelDiedError
from .kernel import KernelConnection
from .protocol import CellOutcome, NotebookOutputFolder

__all__ = ["CellFailure", "execute_notebook"]

_log = logging.getLogger(__name__)

CellCallback = Callable[[int], Awaitable[None]]


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


async def execute_notebook(
    conn: KernelConnection,
    nb: NotebookNode,
    *,
    on_cell_started: CellCallback | None = None,
    on_cell_finished: CellCallback | None = None,
    cell_timeout: float | None = None,
    iopub_timeout: float = 4.0,
    kernel_info_timeout: float = 60.0,
) -> CellFailure | None:
    """Execute the code cells of ``nb`` in order, writing outputs into it.

    Markdown and raw cells, and code cells with blank source, are left
    untouched (nbclient skips them too).  For each executed cell, its
    outputs, ``execution_count`` and ``metadata.execution`` timestamps are
    set as nbclient sets them; ``nb.metadata.language_info`` comes from the
    kernel, and ``nb.metadata.widgets`` from widget comm messages after a
    successful run.

    Parameters
    ----------
    conn
        An open connection to a fresh kernel.
    nb
        The notebook; mutated in place.
    on_cell_started
        Awaited with the cell's index in ``nb.cells`` just before a code cell
        is sent to the kernel.  Keep it quick: messages queue meanwhile.
    on_cell_finished
        Awaited with the cell's index once a code cell is complete (also for
        the cell that failed).
    cell_timeout
        Limit in seconds for each cell; `None` for none.
    iopub_timeout
        How long to wait for a cell's outputs to end (its iopub ``idle``)
        after its ``execute_reply`` arrived; then move on, as nbclient does.
    kernel_info_timeout
        Limit in seconds for the initial ``kernel_info`` exchange.

    Returns
    -------
    CellFailure | None
        The first cell that raised, or `None` if every cell succeeded.

    Raises
    ------
    CellTimeoutError
        If a cell exceeds ``cell_timeout``.
    KernelDiedError
        If the kernel died or restarted during a cell (with its index).
    LabUnavailableError
        If the server or the websocket went away.
    KernelProtocolError
        If the kernel's messages could not be understood.
    TimeoutError
        If ``kernel_info`` does not answer within ``kernel_info_timeout``.
    """
    folder = NotebookOutputFolder(nb)
    async with asyncio.timeout(kernel_info_timeout):
        info = await conn.kernel_info()
    folder.set_kernel_info(info)

    for index, cell in enumerate(nb.cells):
        if not folder.should_execute(cell):
            continue
        if on_cell_started is not None:
            await on_cell_started(index)
        outcome = await _run_cell(conn, folder, index, cell_timeout, iopub_timeout)
        if on_cell_finished is not None:
            await on_cell_finished(index)
        if outcome.failed:
            reply = outcome.reply
            return CellFailure(
                cell_index=index,
                ename=str(reply.get("ename", "")),
                evalue=str(reply.get("evalue", "")),
                traceback=[str(line) for line in reply.get("traceback") or []],
            )
    folder.finish_notebook()
    return None


async def _run_cell(
    conn: KernelConnection,
    folder: NotebookOutputFolder,
    index: int,
    cell_timeout: float | None,
    iopub_timeout: float,
) -> CellOutcome:
    request = protocol.execute_request(
        folder.nb.cells[index].source, session=conn.session_id, username=conn.username
    )
    msg_id: str = request["msg_id"]
    folder.begin_cell(index, msg_id)
    try:
        scope = asyncio.timeout(cell_timeout)
        try:
            async with scope:
                await conn.request(request)
                await _collect(conn, folder, msg_id, iopub_timeout)
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
) -> None:
    while not folder.cell_done:
        if not folder.reply_received:
            folder.feed(await conn.receive(msg_id))
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
