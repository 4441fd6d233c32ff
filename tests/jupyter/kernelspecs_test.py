"""Which kernels submissions may name: configured, the server's, or installed."""

from __future__ import annotations

import httpx
import pytest

from noteburst.jupyter.exceptions import JupyterError
from noteburst.jupyter.kernelspecs import discover_kernel_names
from tests.support.jupyter import JupyterServerInfo


@pytest.mark.asyncio
async def test_configured_names_win_without_asking(
    jupyter_server: JupyterServerInfo,
) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        names = await discover_kernel_names(
            configured=["ir", "python3"],
            url=jupyter_server.url,
            token="wrong",  # never sent: nothing is asked
            http=http,
            request_timeout=30,
        )
    assert names == ["ir", "python3"]


@pytest.mark.asyncio
async def test_the_configured_server_is_asked(
    jupyter_server: JupyterServerInfo,
) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        names = await discover_kernel_names(
            configured=None,
            url=jupyter_server.url,
            token=jupyter_server.token,
            http=http,
            request_timeout=30,
        )
        assert "python3" in names
        with pytest.raises(JupyterError):
            await discover_kernel_names(
                configured=None,
                url=jupyter_server.url,
                token="wrong",
                http=http,
                request_timeout=30,
            )


@pytest.mark.asyncio
async def test_without_a_server_the_installed_kernelspecs_are_listed() -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        names = await discover_kernel_names(
            configured=None, url=None, token=None, http=http, request_timeout=30
        )
    assert "python3" in names
    assert names == sorted(names)
