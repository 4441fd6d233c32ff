"""LocalLabBackend: fresh kernels, background shutdown, own or existing server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import nbformat
import pytest

from noteburst.jupyter.backend import LabBackend, LocalLabBackend
from noteburst.jupyter.exceptions import JupyterError, LabUnavailableError
from noteburst.jupyter.execute import execute_notebook
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
