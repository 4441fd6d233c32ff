"""Our notebook runs must write exactly what nbclient writes.

Each notebook in ``tests/data/notebooks`` is executed four times, at once:
by ``nbclient.NotebookClient`` in-process (the reference), by
``execute_notebook`` over our websocket client with each wire protocol, and
by it on a kernel forked from a template (:mod:`noteburst.forkserver`).  The
results must be equal after masking the ``metadata.execution`` timestamps,
the only thing that is meant to differ between two runs.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
import pytest_asyncio
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat import NotebookNode
from traitlets.config import Config

from noteburst.jupyter.backend import LocalLabBackend
from noteburst.jupyter.execute import CellFailure, execute_notebook
from noteburst.jupyter.protocol import WireProtocol
from tests.support.jupyter import JupyterServerInfo

NOTEBOOKS_DIR = Path(__file__).parent.parent / "data" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
TIMING_KEYS = {
    "iopub.status.busy",
    "iopub.execute_input",
    "shell.execute_reply",
    "iopub.status.idle",
}
EXPECTED_FAILURES = {
    "error_middle": ("ValueError", "bad value 42", 2),
}


@pytest_asyncio.fixture
async def legacy_backend(
    jupyter_server: JupyterServerInfo, tmp_path: Path
) -> AsyncIterator[LocalLabBackend]:
    """A backend on the session server that speaks the legacy JSON protocol."""
    async with httpx.AsyncClient(trust_env=False) as http:
        backend = LocalLabBackend(
            http=http,
            root_dir=tmp_path,
            url=jupyter_server.url,
            token=jupyter_server.token,
            wire_protocol=WireProtocol.LEGACY,
        )
        await backend.start()
        try:
            yield backend
        finally:
            await backend.aclose()


def read(path: Path) -> NotebookNode:
    nb: NotebookNode = nbformat.read(path, as_version=4)
    return nb


async def run_with_nbclient(
    nb: NotebookNode, runtime: Path
) -> CellExecutionError | None:
    # Over IPC, not TCP: a TCP kernel binds ports that jupyter_client chose
    # and released, and with the suite's other servers starting kernels at
    # once, another process took one first ("Address already in use", the
    # kernel died before kernel_info; seen once in CI).  nbclient has no
    # restarter to retry with new ports, as a Jupyter server does.
    ipc = Config({"KernelManager": {"transport": "ipc", "ip": str(runtime / "ipc")}})
    client = NotebookClient(
        nb, kernel_name="python3", timeout=60, startup_timeout=60, config=ipc
    )
    try:
        await client.async_execute()
    except CellExecutionError as exc:
        return exc
    return None


async def run_with_noteburst(
    backend: LocalLabBackend, nb: NotebookNode, wire_protocol: WireProtocol
) -> CellFailure | None:
    async with backend.kernel("python3") as conn:
        assert conn.protocol is wire_protocol
        return await execute_notebook(conn, nb, cell_timeout=30)


def normalize(nb: NotebookNode) -> dict[str, Any]:
    """The notebook as plain data, with execution timestamps masked."""
    data: dict[str, Any] = copy.deepcopy(dict(nb))
    data["cells"] = [dict(cell) for cell in data["cells"]]
    for cell in data["cells"]:
        metadata = dict(cell["metadata"])
        if "execution" in metadata:
            timing = metadata["execution"]
            assert set(timing) == TIMING_KEYS, (cell["id"], timing)
            for value in timing.values():
                assert isinstance(value, str)
                assert value.endswith("Z")
            metadata["execution"] = dict.fromkeys(timing, "<timestamp>")
        cell["metadata"] = metadata
    return nbformat.from_dict(data)  # type: ignore[no-any-return]


@pytest.mark.asyncio
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
async def test_same_notebook_as_nbclient(
    jupyter_backend: LocalLabBackend,
    legacy_backend: LocalLabBackend,
    forked_backend: LocalLabBackend,
    nbclient_runtime: Path,
    path: Path,
) -> None:
    reference, over_v1, over_legacy = read(path), read(path), read(path)
    on_forked = read(path)

    async with asyncio.timeout(90), asyncio.TaskGroup() as tasks:
        nbclient_run = tasks.create_task(run_with_nbclient(reference, nbclient_runtime))
        v1_run = tasks.create_task(
            run_with_noteburst(jupyter_backend, over_v1, WireProtocol.V1)
        )
        legacy_run = tasks.create_task(
            run_with_noteburst(legacy_backend, over_legacy, WireProtocol.LEGACY)
        )
        forked_run = tasks.create_task(
            run_with_noteburst(forked_backend, on_forked, WireProtocol.V1)
        )
    nbclient_error, failure_v1, failure_legacy, failure_forked = (
        nbclient_run.result(),
        v1_run.result(),
        legacy_run.result(),
        forked_run.result(),
    )

    expected = normalize(reference)
    assert normalize(over_v1) == expected
    assert normalize(over_legacy) == expected
    assert normalize(on_forked) == expected
    nbformat.validate(over_v1)
    nbformat.validate(over_legacy)

    if path.stem in EXPECTED_FAILURES:
        ename, evalue, cell_index = EXPECTED_FAILURES[path.stem]
        assert nbclient_error is not None
        assert (nbclient_error.ename, nbclient_error.evalue) == (ename, evalue)
        for failure in (failure_v1, failure_legacy, failure_forked):
            assert failure is not None
            assert (failure.ename, failure.evalue, failure.cell_index) == (
                ename,
                evalue,
                cell_index,
            )
            assert (
                failure.traceback == over_v1.cells[cell_index].outputs[-1]["traceback"]
            )
    else:
        assert nbclient_error is None
        assert failure_v1 is None
        assert failure_legacy is None
        assert failure_forked is None


def test_every_feature_is_covered() -> None:
    """The notebooks keep exercising what the fidelity test is about."""
    sources = "\n".join(
        cell.source
        for path in NOTEBOOKS
        for cell in read(path).cells
        if cell.cell_type == "code"
    )
    for needle in (
        "file=sys.stderr",
        "HTML(",
        "Image(",
        "SVG(",
        "JSON(",
        "clear_output()",
        "clear_output(wait=True)",
        "display_id=True",
        ".update(",
        "update_display(",
        "raise ValueError",
        "🎉",
        "create_comm(",
    ):
        assert needle in sources, needle
    cell_types = {cell.cell_type for path in NOTEBOOKS for cell in read(path).cells}
    assert cell_types == {"code", "markdown", "raw"}
    assert any(
        cell.cell_type == "code" and not cell.source.strip()
        for path in NOTEBOOKS
        for cell in read(path).cells
    )
