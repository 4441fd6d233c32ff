"""LocalLabBackend: fresh kernels, background shutdown, own or existing server."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nbformat
import pytest
import pytest_asyncio

from noteburst.jupyter.backend import (
    KERNEL_START_ATTEMPTS,
    LabBackend,
    LocalLabBackend,
)
from noteburst.jupyter.exceptions import (
    JupyterError,
    KernelStartError,
    LabUnavailableError,
)
from noteburst.jupyter.execute import execute_notebook
from noteburst.jupyter.local import LocalJupyterServer
from tests.support.jupyter import JupyterServerInfo

WAIT = 30


async def kernel_ids(http: httpx.AsyncClient, server: JupyterServerInfo) -> set[str]:
    response = await http.get(
        f"{server.url}api/kernels", headers={"Authorization": f"token {server.token}"}
    )
    response.raise_for_status()
    return {kernel["id"] for kernel in response.json()}


@pytest.mark.asyncio
async def test_kernels_are_fresh_and_shut_down_in_the_background(
    jupyter_server: JupyterServerInfo, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        backend = LocalLabBackend(
            http=http,
            root_dir=tmp_path,
            url=jupyter_server.url,
            token=jupyter_server.token,
        )
        assert isinstance(backend, LabBackend)
        with pytest.raises(JupyterError):
            _ = backend.rest
        await backend.start()
        await backend.start()  # idempotent
        assert backend.server is None
        assert backend.pool is None  # no warm_kernels: kernels start on demand
        assert "python3" in await backend.kernel_names()

        async with asyncio.timeout(WAIT):
            async with backend.kernel("python3") as first:
                assert first.kernel_id in await kernel_ids(http, jupyter_server)
                nb = nbformat.v4.new_notebook(
                    cells=[nbformat.v4.new_code_cell("leak = 1")]
                )
                assert await execute_notebook(first, nb) is None
            assert backend.pending_shutdowns == 1
            async with backend.kernel("python3") as second:
                assert second.kernel_id != first.kernel_id
                nb = nbformat.v4.new_notebook(
                    cells=[nbformat.v4.new_code_cell("'leak' in dir()")]
                )
                assert await execute_notebook(second, nb) is None
                assert nb.cells[0].outputs[0].data["text/plain"] == "False"
                assert nb.cells[0].execution_count == 1

        async with asyncio.timeout(WAIT):
            await backend.aclose()
        assert backend.pending_shutdowns == 0
        remaining = await kernel_ids(http, jupyter_server)
        assert first.kernel_id not in remaining
        assert second.kernel_id not in remaining


@pytest.mark.asyncio
async def test_error_in_the_block_still_shuts_the_kernel_down(
    jupyter_server: JupyterServerInfo, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        backend = LocalLabBackend(
            http=http,
            root_dir=tmp_path,
            url=jupyter_server.url,
            token=jupyter_server.token,
        )
        await backend.start()
        try:
            with pytest.raises(RuntimeError, match="caller"):
                async with backend.kernel("python3") as conn:
                    raise RuntimeError("caller failed")
        finally:
            async with asyncio.timeout(WAIT):
                await backend.aclose()
        assert conn.kernel_id not in await kernel_ids(http, jupyter_server)


@pytest.mark.asyncio
async def test_backend_with_its_own_server(tmp_path: Path) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        backend = LocalLabBackend(http=http, root_dir=tmp_path, start_timeout=60)
        async with asyncio.timeout(WAIT * 2):
            await backend.start()
            server = backend.server
            assert server is not None
            assert server.running
            async with backend.kernel("python3") as conn:
                nb = nbformat.v4.new_notebook(
                    cells=[nbformat.v4.new_code_cell("6 * 7")]
                )
                assert await execute_notebook(conn, nb) is None
            assert nb.cells[0].outputs[0].data["text/plain"] == "42"
            await backend.aclose()
        assert server.pid is None
        assert server.log_tail().strip()
        assert backend.server is None
        with pytest.raises(JupyterError):
            await backend.kernel_names()


@pytest.mark.asyncio
async def test_unreachable_existing_server(tmp_path: Path) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        backend = LocalLabBackend(
            http=http,
            root_dir=tmp_path,
            url="http://127.0.0.1:9/",
            token="t",
            request_timeout=5,
        )
        with pytest.raises(LabUnavailableError):
            await backend.start()
        await backend.aclose()


DYING_KERNEL = Path(__file__).with_name("dying_kernel.py")


@pytest_asyncio.fixture
async def server_with_dying_kernels(
    tmp_path: Path,
) -> AsyncIterator[LocalJupyterServer]:
    """A server offering ``dies-once`` and ``always-dies`` (dying_kernel.py).

    Its restarter looks for dead kernels every 0.3 s, not every 3 s.
    """
    data = tmp_path / "jupyter-path"
    for name, times in (("dies-once", 1), ("always-dies", 99)):
        spec = data / "kernels" / name
        spec.mkdir(parents=True)
        argv = [sys.executable, str(DYING_KERNEL), str(tmp_path / f"{name}.deaths")]
        argv += [str(times), "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": name, "language": "python"})
        )
    server = LocalJupyterServer(
        root_dir=tmp_path,
        start_timeout=60,
        extra_args=["--KernelRestarter.time_to_dead=0.3"],
        env={"JUPYTER_PATH": str(data)},
    )
    async with asyncio.timeout(WAIT * 2):
        await server.start()
    try:
        yield server
    finally:
        async with asyncio.timeout(WAIT):
            await server.stop()


@pytest.mark.asyncio
async def test_a_new_kernel_that_dies_before_answering_is_replaced(
    server_with_dying_kernels: LocalJupyterServer, tmp_path: Path
) -> None:
    """No execution fails for a kernel that died before running any of it.

    A kernel reported ``restarting`` between its websocket's opening and its
    ``kernel_info_reply`` failed a CI run; the next kernel is used instead,
    and a kernel that keeps dying is a start failure that says so.
    """
    server = server_with_dying_kernels
    async with httpx.AsyncClient(trust_env=False) as http:
        backend = LocalLabBackend(
            http=http, root_dir=tmp_path, url=server.url, token=server.token
        )
        await backend.start()
        try:
            async with asyncio.timeout(WAIT * 2):
                async with backend.kernel("dies-once") as conn:
                    nb = nbformat.v4.new_notebook(
                        cells=[nbformat.v4.new_code_cell("6 * 7")]
                    )
                    assert await execute_notebook(conn, nb) is None
                assert nb.cells[0].outputs[0].data["text/plain"] == "42"
                assert (tmp_path / "dies-once.deaths").read_text() == "died\n"

                with pytest.raises(KernelStartError, match="died before it answered"):
                    async with backend.kernel("always-dies"):
                        pass
                deaths = (tmp_path / "always-dies.deaths").read_text()
                assert deaths == "died\n" * KERNEL_START_ATTEMPTS
        finally:
            async with asyncio.timeout(WAIT):
                await backend.aclose()
