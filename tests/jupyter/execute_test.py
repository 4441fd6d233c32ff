"""execute_notebook: callbacks, failures, time limits and cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import nbformat
import pytest
from nbformat import NotebookNode

from noteburst.jupyter.backend import LocalLabBackend
from noteburst.jupyter.exceptions import (
    CellTimeoutError,
    KernelMessageTooLargeError,
    NoOutputTimeoutError,
)
from noteburst.jupyter.execute import CellFailure, RunReport, execute_notebook
from noteburst.jupyter.kernel import KernelConnection
from noteburst.jupyter.protocol import TRUNCATION_MARKER, Message, OutputLimits
from noteburst.jupyter.rest import JupyterRestClient

WAIT = 30


def notebook(*cells: str) -> NotebookNode:
    """Code cells from sources; a source starting with "md:" is a markdown cell."""
    nb: NotebookNode = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(s[3:])
            if s.startswith("md:")
            else nbformat.v4.new_code_cell(s)
            for s in cells
        ]
    )
    return nb


@pytest.mark.asyncio
@pytest.mark.parametrize("pipelined", [True, False])
async def test_callbacks_get_indices_into_cells(
    jupyter_backend: LocalLabBackend, *, pipelined: bool
) -> None:
    nb = notebook(
        "md:title", "x = 1", "", "md:more", "print(x)", "raise KeyError('k')", "x"
    )
    events: list[tuple[str, int]] = []

    async def started(index: int) -> None:
        events.append(("started", index))
        # Outputs of earlier cells are already in place.
        if index == 4:
            assert nb.cells[1].execution_count == 1

    async def finished(index: int) -> None:
        events.append(("finished", index))

    async with jupyter_backend.kernel("python3") as conn, asyncio.timeout(WAIT):
        failure = await execute_notebook(
            conn,
            nb,
            on_cell_started=started,
            on_cell_finished=finished,
            pipelined=pipelined,
        )

    assert events == [
        ("started", 1),
        ("finished", 1),
        ("started", 4),
        ("finished", 4),
        ("started", 5),
        ("finished", 5),
    ]
    assert isinstance(failure, CellFailure)
    assert (failure.cell_index, failure.ename, failure.evalue) == (5, "KeyError", "'k'")
    assert any("KeyError" in line for line in failure.traceback)
    assert nb.cells[4].outputs[0].text == "1\n"
    assert nb.cells[6].execution_count is None
    assert nb.metadata.language_info.name == "python"
    nbformat.validate(nb)


@pytest.mark.asyncio
@pytest.mark.parametrize("pipelined", [True, False])
async def test_cell_timeout_keeps_partial_outputs(
    jupyter_backend: LocalLabBackend, *, pipelined: bool
) -> None:
    nb = notebook(
        "print('fast')", "print('slow', flush=True)\nimport time\ntime.sleep(60)", "1"
    )
    async with jupyter_backend.kernel("python3") as conn:
        reached = asyncio.Event()

        async def started(index: int) -> None:
            if index == 1:
                reached.set()

        with pytest.raises(CellTimeoutError) as caught:
            async with asyncio.timeout(WAIT):
                await execute_notebook(
                    conn,
                    nb,
                    on_cell_started=started,
                    cell_timeout=1.0,
                    pipelined=pipelined,
                )
    assert reached.is_set()
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.cell_index == 1
    assert nb.cells[0].outputs[0].text == "fast\n"
    assert nb.cells[1].outputs[0].text == "slow\n"
    assert nb.cells[2].execution_count is None


@pytest.mark.asyncio
@pytest.mark.parametrize("pipelined", [True, False])
async def test_cancellation_keeps_outputs_and_leaks_no_task(
    jupyter_backend: LocalLabBackend, *, pipelined: bool
) -> None:
    nb = notebook(
        "print('one')",
        "print('partial', flush=True)\nimport time\ntime.sleep(60)",
        "print('never')",
    )
    async with jupyter_backend.kernel("python3") as conn:
        partial_output = asyncio.Event()
        receive = conn.receive

        async def spying_receive(msg_id: str) -> Message:
            msg = await receive(msg_id)
            if msg["msg_type"] == "stream" and msg["content"]["text"] == "partial\n":
                partial_output.set()  # folded before the runner awaits again
            return msg

        conn.receive = spying_receive  # type: ignore[method-assign]
        before = asyncio.all_tasks()
        task = asyncio.create_task(execute_notebook(conn, nb, pipelined=pipelined))
        async with asyncio.timeout(WAIT):
            await partial_output.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # execute_notebook left no task behind.
        assert asyncio.all_tasks() == before
        assert f"kernel-reader-{conn.kernel_id}" in {t.get_name() for t in before}
        # The connection is still usable: nothing is half-read.
        conn.receive = receive  # type: ignore[method-assign]
        async with asyncio.timeout(WAIT):
            await conn.interrupt()
            info = await conn.kernel_info()
        assert info["msg_type"] == "kernel_info_reply"
    assert nb.cells[0].outputs[0].text == "one\n"
    assert nb.cells[1].outputs[0].text == "partial\n"
    assert set(nb.cells[1].metadata.execution) >= {
        "iopub.status.busy",
        "iopub.execute_input",
    }
    assert nb.cells[2].outputs == []


@pytest.mark.asyncio
async def test_whole_run_timeout_from_the_caller(
    jupyter_backend: LocalLabBackend,
) -> None:
    nb = notebook("print('started', flush=True)\nimport time\ntime.sleep(60)")
    async with jupyter_backend.kernel("python3") as conn:
        with pytest.raises(TimeoutError) as caught:
            async with asyncio.timeout(1.5):
                await execute_notebook(conn, nb)
        assert not isinstance(caught.value, CellTimeoutError)
    assert nb.cells[0].outputs[0].text == "started\n"


@pytest.mark.asyncio
async def test_a_connection_can_run_notebooks_in_sequence(
    jupyter_backend: LocalLabBackend,
) -> None:
    """On a reused kernel, cell counts restart (as nbclient's); output counts do not."""
    first, second = notebook("a = 1", "a"), notebook("a + 1")
    async with jupyter_backend.kernel("python3") as conn, asyncio.timeout(WAIT):
        assert await execute_notebook(conn, first) is None
        assert await execute_notebook(conn, second) is None
    assert first.cells[1].outputs[0].data["text/plain"] == "1"
    assert second.cells[0].execution_count == 1
    assert second.cells[0].outputs[0].data["text/plain"] == "2"
    assert second.cells[0].outputs[0].execution_count == 3


@pytest.mark.asyncio
@pytest.mark.parametrize("pipelined", [True, False])
async def test_no_output_timeout_names_the_silent_cell(
    jupyter_backend: LocalLabBackend, *, pipelined: bool
) -> None:
    """A cell that keeps printing runs on; one that goes silent times out."""
    nb = notebook(
        "import time\nfor i in range(12):\n"
        "    print(i, flush=True)\n    time.sleep(0.25)",
        "print('quiet now', flush=True)\nimport time\ntime.sleep(60)",
        "print('never')",
    )
    async with jupyter_backend.kernel("python3") as conn:
        with pytest.raises(NoOutputTimeoutError) as caught:
            async with asyncio.timeout(WAIT):
                await execute_notebook(
                    conn, nb, no_output_timeout=1.5, pipelined=pipelined
                )
    assert isinstance(caught.value, CellTimeoutError)
    assert caught.value.cell_index == 1
    assert "no output for 1.5 s" in str(caught.value)
    # The first cell ran longer than the limit in all, but never went silent.
    assert len(nb.cells[0].outputs) == 12
    assert nb.cells[1].outputs[0].text == "quiet now\n"
    assert nb.cells[2].execution_count is None


@pytest.mark.asyncio
@pytest.mark.parametrize("pipelined", [True, False])
async def test_output_limits_are_applied_as_messages_arrive(
    jupyter_backend: LocalLabBackend, *, pipelined: bool
) -> None:
    """Far more output than the budget: cut, marked, reported; the rest runs."""
    chunk = 64 * 1024
    nb = notebook(
        f"import sys\nfor _ in range(512):\n    sys.stdout.write('x' * {chunk})\n"
        "    sys.stdout.flush()",
        "print('after')",
        "1 / 0",
    )
    report = RunReport()
    limits = OutputLimits(max_output_bytes=2 * chunk, max_total_bytes=8 * chunk)
    async with jupyter_backend.kernel("python3") as conn, asyncio.timeout(120):
        failure = await execute_notebook(
            conn, nb, output_limits=limits, report=report, pipelined=pipelined
        )
    assert report.outputs_truncated
    assert failure is not None
    assert failure.cell_index == 2
    flood = nb.cells[0].outputs
    assert TRUNCATION_MARKER in flood[-1].text
    stored = len(nbformat.writes(nb).encode())
    assert stored < 12 * chunk  # 32 MiB printed
    # The budget was spent, so later outputs are dropped (marked), but the
    # error that explains the failure is always kept.
    assert TRUNCATION_MARKER in nb.cells[1].outputs[0].text
    assert nb.cells[2].outputs[-1].output_type == "error"


@pytest.mark.asyncio
async def test_a_message_over_the_size_limit_fails_clearly(
    jupyter_server: Any,
) -> None:
    """A single message larger than the socket accepts is named, not a silent drop."""
    async with httpx.AsyncClient() as http:
        rest = JupyterRestClient(
            http=http,
            base_url=jupyter_server.url,
            token=jupyter_server.token,
            timeout=30,
        )
        kernel_id = await rest.create_kernel("python3")
        try:
            conn = await KernelConnection.open(
                rest, kernel_id, max_message_bytes=1024 * 1024
            )
            async with conn:
                nb = notebook("print('x' * (3 * 1024 * 1024))")
                with pytest.raises(KernelMessageTooLargeError) as caught:
                    async with asyncio.timeout(WAIT):
                        await execute_notebook(conn, nb)
            assert caught.value.limit == 1024 * 1024
        finally:
            await rest.delete_kernel(kernel_id)
