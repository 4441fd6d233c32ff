"""Pipelined execution gives exactly what sequential execution gives.

Each comparison runs the same notebook twice, at once, on two fresh kernels
of the session's jupyter_server: once with every ``execute_request`` sent up
front (the default) and once one cell at a time (``pipelined=False``).  The
notebooks must be equal after masking the execution timestamps, and so must
the :class:`CellFailure`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest
from nbformat import NotebookNode

from noteburst.jupyter.backend import LocalLabBackend
from noteburst.jupyter.exceptions import KernelDiedError
from noteburst.jupyter.execute import CellFailure, execute_notebook
from noteburst.jupyter.protocol import Message, parent_msg_id
from tests.jupyter.fidelity_test import NOTEBOOKS, normalize, read

WAIT = 60


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


def comparable(nb: NotebookNode) -> NotebookNode:
    """:func:`normalize`, with adjacent stream outputs of one name merged.

    ipykernel sends a stream's buffered text when a flush timer fires, and a
    timer armed by an earlier cell's print can fire between the two writes
    of a later ``print`` (text, then newline): the kernel itself splits one
    print into two stream messages now and then, whoever sends the requests.
    Merging keeps these tests about what the client does.
    """
    data: NotebookNode = nbformat.from_dict(normalize(nb))
    for cell in data.cells:
        merged: list[NotebookNode] = []
        for output in cell.get("outputs", []):
            previous = merged[-1] if merged else None
            if (
                previous is not None
                and output.output_type == previous.output_type == "stream"
                and output.name == previous.name
            ):
                previous.text += output.text
            else:
                merged.append(output)
        if "outputs" in cell:
            cell.outputs = merged
    return data


async def run(
    backend: LocalLabBackend, nb: NotebookNode, *, pipelined: bool
) -> CellFailure | None:
    async with backend.kernel("python3") as conn:
        return await execute_notebook(conn, nb, cell_timeout=30, pipelined=pipelined)


async def both_ways(
    backend: LocalLabBackend, make: NotebookNode
) -> tuple[NotebookNode, CellFailure | None, NotebookNode, CellFailure | None]:
    """Run copies of ``make`` pipelined and sequentially, concurrently."""
    piped, sequential = nbformat.from_dict(make), nbformat.from_dict(make)
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tasks:
        piped_run = tasks.create_task(run(backend, piped, pipelined=True))
        sequential_run = tasks.create_task(run(backend, sequential, pipelined=False))
    return piped, piped_run.result(), sequential, sequential_run.result()


@pytest.mark.asyncio
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
async def test_same_notebook_as_sequential(
    jupyter_backend: LocalLabBackend, path: Path
) -> None:
    piped, piped_failure, sequential, sequential_failure = await both_ways(
        jupyter_backend, read(path)
    )
    assert comparable(piped) == comparable(sequential)
    assert piped_failure == sequential_failure
    nbformat.validate(piped)


def failing_in_the_middle(cells: int, failing: int, record: Path) -> NotebookNode:
    """``cells`` code cells that record on disk that they ran; ``failing`` raises.

    A markdown and an empty code cell up front shift cell indices from code
    cell numbers.  The record, a side effect outside the notebook (what a
    cell that ran after the failure would leave behind), holds
    ``PID:CELL`` words, so two kernels can share it.
    """
    sources = ["md:# Title", "", "import os"]
    for i in range(cells):
        body = (
            f"with open({str(record)!r}, 'a') as f:\n"
            f"    f.write(f'{{os.getpid()}}:{i} ')\n"
            f"print({i})"
        )
        if i == failing:
            body += "\nraise ValueError('bad cell')"
        sources.append(body)
    return notebook(*sources)


def cells_that_ran(record: Path) -> dict[str, list[int]]:
    """The cells each kernel (by process id) ran, in order."""
    ran: dict[str, list[int]] = {}
    for word in record.read_text().split():
        pid, cell = word.split(":")
        ran.setdefault(pid, []).append(int(cell))
    return ran


@pytest.mark.asyncio
@pytest.mark.parametrize("attempt", range(10))
async def test_failure_in_a_middle_cell_is_sequential(
    jupyter_backend: LocalLabBackend, tmp_path: Path, attempt: int
) -> None:
    """Stop on error: repeated, to give the abort race chances to show."""

    record = tmp_path / "ran"
    make = failing_in_the_middle(20, 7, record)

    async def one(*, pipelined: bool) -> tuple[NotebookNode, CellFailure | None]:
        nb = nbformat.from_dict(make)
        stage = "starting the kernel"
        try:
            async with asyncio.timeout(WAIT - 5):
                async with jupyter_backend.kernel("python3") as conn:
                    stage = "running"
                    return nb, await execute_notebook(conn, nb, pipelined=pipelined)
        except TimeoutError:
            done = [i for i, cell in enumerate(nb.cells) if cell.get("outputs")]
            pytest.fail(
                f"{'pipelined' if pipelined else 'sequential'} run stuck {stage};"
                f" cells with outputs: {done}"
            )

    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tasks:
        piped_run = tasks.create_task(one(pipelined=True))
        sequential_run = tasks.create_task(one(pipelined=False))

    piped, piped_failure = piped_run.result()
    sequential, sequential_failure = sequential_run.result()
    assert comparable(piped) == comparable(sequential)
    assert piped_failure == sequential_failure
    assert isinstance(piped_failure, CellFailure)
    assert (piped_failure.cell_index, piped_failure.ename) == (3 + 7, "ValueError")
    # No cell after the failing one ran in the kernel, either way.
    assert list(cells_that_ran(record).values()) == [list(range(8))] * 2
    assert piped.cells[3 + 8].execution_count is None
    assert piped.cells[3 + 8].outputs == []
    nbformat.validate(piped)


@pytest.mark.asyncio
async def test_failure_in_the_first_cell_aborts_all_the_rest(
    jupyter_backend: LocalLabBackend, tmp_path: Path
) -> None:
    """The widest race: the first cell fails, a full window queued behind it."""
    for attempt in range(3):
        record = tmp_path / f"ran-{attempt}"
        nb = failing_in_the_middle(101, 0, record)
        async with jupyter_backend.kernel("python3") as conn:
            async with asyncio.timeout(WAIT):
                failure = await execute_notebook(conn, nb)
        assert list(cells_that_ran(record).values()) == [[0]]
        assert failure is not None
        assert failure.cell_index == 3
        assert all(cell.get("execution_count") is None for cell in nb.cells[4:])


@pytest.mark.asyncio
async def test_a_request_arriving_after_the_failure_does_not_run(
    jupyter_backend: LocalLabBackend, tmp_path: Path
) -> None:
    """The abort race, made certain: a request the kernel gets only after the
    failing cell's error (ipykernel then runs it) is kept from running."""
    record = tmp_path / "ran"
    nb = failing_in_the_middle(3, 1, record)
    async with jupyter_backend.kernel("python3") as conn, asyncio.timeout(WAIT):
        failure = await execute_notebook(conn, nb)
        assert failure is not None
        # Sent after the error reply came back: as late as a request can be.
        late = await conn.execute(f"open({str(record)!r}, 'a').write('late:99 ')")
        while True:
            reply = await conn.receive(late)
            if reply["msg_type"] == "execute_reply":
                break
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "NoteburstSkippedError"
    assert list(cells_that_ran(record).values()) == [[0, 1]]


@pytest.mark.asyncio
async def test_no_guard_for_a_one_cell_notebook_or_sequential_runs(
    jupyter_backend: LocalLabBackend,
) -> None:
    """Nothing is sent ahead then, so nothing needs guarding; the kernel's
    state after the run is the notebook's alone."""
    for pipelined in (True, False):
        nb = notebook("1/0", "print('after')") if not pipelined else notebook("1/0")
        async with jupyter_backend.kernel("python3") as conn, asyncio.timeout(WAIT):
            assert await execute_notebook(conn, nb, pipelined=pipelined) is not None
            again = notebook("print('still usable')")
            assert await execute_notebook(conn, again, pipelined=False) is None
        assert again.cells[0].outputs[0].text == "still usable\n"


@pytest.mark.asyncio
@pytest.mark.parametrize("pipelined", [True, False])
async def test_callbacks_in_order_for_every_cell(
    jupyter_backend: LocalLabBackend, *, pipelined: bool
) -> None:
    nb = notebook("md:title", "x = 1", "", *(f"print(x + {i})" for i in range(10)))
    nb.cells.append(nbformat.v4.new_code_cell("raise KeyError('k')"))
    nb.cells.append(nbformat.v4.new_code_cell("print('never')"))
    events: list[tuple[str, int]] = []

    async def started(index: int) -> None:
        events.append(("started", index))

    async def finished(index: int) -> None:
        # The cell is complete in the notebook when it is reported finished.
        assert nb.cells[index].execution_count is not None
        events.append(("finished", index))

    async with jupyter_backend.kernel("python3") as conn, asyncio.timeout(WAIT):
        failure = await execute_notebook(
            conn,
            nb,
            on_cell_started=started,
            on_cell_finished=finished,
            pipelined=pipelined,
        )

    assert failure is not None
    assert failure.cell_index == 13
    expected = []
    for index in [1, *range(3, 14)]:
        expected += [("started", index), ("finished", index)]
    assert events == expected


@pytest.mark.asyncio
async def test_slow_callback_does_not_hold_up_the_kernel(
    jupyter_backend: LocalLabBackend,
) -> None:
    nb = notebook(*(f"print({i})" for i in range(20)))
    last_cell = len(nb.cells) - 1
    release = asyncio.Event()
    events: list[tuple[str, int]] = []

    async def started(index: int) -> None:
        events.append(("started", index))
        if index == 0:
            await release.wait()  # e.g. a slow database write

    async def finished(index: int) -> None:
        events.append(("finished", index))

    async with jupyter_backend.kernel("python3") as conn:
        receive = conn.receive
        last_cell_done = asyncio.Event()
        msg_ids: dict[str, int] = {}
        request = conn.request

        async def spying_request(msg: Message) -> str:
            msg_id = await request(msg)
            # Cells' requests only: not the silent guard sent first.
            if msg["msg_type"] == "execute_request" and not msg["content"]["silent"]:
                msg_ids[msg_id] = len(msg_ids)
            return msg_id

        async def spying_receive(msg_id: str) -> Message:
            msg = await receive(msg_id)
            if (
                msg_ids.get(parent_msg_id(msg) or "") == last_cell
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                last_cell_done.set()  # folded before the runner awaits again
            return msg

        conn.request = spying_request  # type: ignore[method-assign]
        conn.receive = spying_receive  # type: ignore[method-assign]
        run = asyncio.create_task(
            execute_notebook(
                conn, nb, on_cell_started=started, on_cell_finished=finished
            )
        )
        try:
            async with asyncio.timeout(WAIT):
                await last_cell_done.wait()
            # The whole notebook ran and was folded while the first callback
            # is still blocked ...
            assert nb.cells[last_cell].outputs[0].text == f"{last_cell}\n"
            assert events == [("started", 0)]
            assert not run.done()
            # ... and the run ends only once every callback completed.
            release.set()
            async with asyncio.timeout(WAIT):
                assert await run is None
        finally:
            run.cancel()
            await asyncio.wait({run})
    expected = []
    for index in range(len(nb.cells)):
        expected += [("started", index), ("finished", index)]
    assert events == expected


@pytest.mark.asyncio
async def test_failing_callback_stops_the_run(
    jupyter_backend: LocalLabBackend,
) -> None:
    nb = notebook("print(1)", "import time\ntime.sleep(60)", "print(3)")

    async def started(index: int) -> None:
        if index == 1:
            raise RuntimeError("database down")

    async with jupyter_backend.kernel("python3") as conn:
        before = asyncio.all_tasks()
        with pytest.raises(RuntimeError, match="database down"):
            async with asyncio.timeout(WAIT):
                await execute_notebook(conn, nb, on_cell_started=started)
        assert asyncio.all_tasks() == before
    assert nb.cells[0].outputs[0].text == "1\n"
    assert nb.cells[2].outputs == []


@pytest.mark.asyncio
async def test_cancellation_with_a_blocked_callback_leaks_no_task(
    jupyter_backend: LocalLabBackend,
) -> None:
    nb = notebook("print(1)", "print(2)")
    entered = asyncio.Event()

    async def started(index: int) -> None:
        entered.set()
        await asyncio.Event().wait()  # never returns

    async with jupyter_backend.kernel("python3") as conn:
        before = asyncio.all_tasks()
        run = asyncio.create_task(execute_notebook(conn, nb, on_cell_started=started))
        async with asyncio.timeout(WAIT):
            await entered.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert asyncio.all_tasks() == before


@pytest.mark.asyncio
@pytest.mark.parametrize("attempt", range(3))
async def test_kernel_death_is_blamed_on_the_cell_that_died(
    jupyter_backend: LocalLabBackend, attempt: int
) -> None:
    """``os._exit`` can take the previous cells' unsent ``idle`` down with it."""
    nb = notebook(
        "print('alive')",
        "x = 1",
        "print('dying', flush=True)\nimport os\nos._exit(1)",
        "print('never')",
    )
    async with jupyter_backend.kernel("python3") as conn:
        with pytest.raises(KernelDiedError) as caught:
            async with asyncio.timeout(WAIT):
                await execute_notebook(conn, nb)
    # Known limit of pipelining (see execute.py): a kernel that dies within
    # milliseconds of starting a cell may take the previous cell's unsent
    # reply with it, and under load (seen in CI) the previous cell is then
    # blamed.  Sequential execution attributes exactly (kernel_test.py).
    assert caught.value.cell_index in {1, 2}
    assert nb.cells[0].outputs[0].text == "alive\n"
    assert nb.cells[3].outputs == []
    assert nb.cells[3].execution_count is None
