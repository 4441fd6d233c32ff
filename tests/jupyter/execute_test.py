"""execute_notebook: callbacks, failures, time limits and cancellation."""

from __future__ import annotations

import asyncio

import nbformat
import pytest
from nbformat import NotebookNode

from noteburst.jupyter.backend import LocalLabBackend
from noteburst.jupyter.exceptions import CellTimeoutError
from noteburst.jupyter.execute import CellFailure, execute_notebook
from noteburst.jupyter.protocol import Message

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
