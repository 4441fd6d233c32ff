"""One real jupyter_server for the whole test run (a pytest plugin module).

The ``jupyter_server`` fixture is session-scoped: starting the server is a
slow process start (Python importing jupyter_server and its extensions),
and kernels on one server run in parallel, so every test shares the server
and takes fresh kernels from it (``LocalLabBackend(http=..., root_dir=...,
url=jupyter_server.url, token=jupyter_server.token)`` or the
``jupyter_backend`` fixture).

The fixture is synchronous, so it works with any test event loop scope
(pytest-asyncio 1.x strict mode has no shared ``event_loop`` fixture).
:class:`~noteburst.jupyter.local.LocalJupyterServer` is not tied to a loop,
so its ``start()`` and ``stop()`` each run in ``asyncio.run`` on a helper
thread, which leaves the main thread's event loop state alone.  Teardown
stops the server with SIGTERM; its finalizer kills it at interpreter exit if
the run is interrupted first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio

from noteburst.jupyter.backend import LocalLabBackend
from noteburst.jupyter.local import LocalJupyterServer

__all__ = ["JupyterServerInfo", "jupyter_backend", "jupyter_server", "run_in_thread"]

T = TypeVar("T")


@dataclass(frozen=True)
class JupyterServerInfo:
    """Where the session's jupyter_server listens.

    Attributes
    ----------
    url
        Base URL, with a trailing slash.
    token
        API token (send it as ``Authorization: token ...``).
    root_dir
        The directory it serves; kernels start in it.
    pid
        Process id of the server.
    """

    url: str
    token: str
    root_dir: Path
    pid: int


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh event loop in a helper thread."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _session_server(
    tmp_path_factory: pytest.TempPathFactory, fork_kernels: str | None
) -> Iterator[JupyterServerInfo]:
    root_dir = tmp_path_factory.mktemp("jupyter-server")
    server = LocalJupyterServer(
        root_dir=root_dir, start_timeout=60, fork_kernels=fork_kernels
    )
    run_in_thread(server.start())
    try:
        assert server.pid is not None
        yield JupyterServerInfo(
            url=server.url, token=server.token, root_dir=root_dir, pid=server.pid
        )
    finally:
        run_in_thread(server.stop())


@pytest.fixture(scope="session")
def jupyter_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[JupyterServerInfo]:
    """Start one jupyter_server for the session; stop it at the end.

    Its kernels are started the plain way (see ``forking_jupyter_server``).
    """
    yield from _session_server(tmp_path_factory, None)


@pytest.fixture(scope="session")
def forking_jupyter_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[JupyterServerInfo]:
    """A session server whose ``python3`` kernels are forked from a template."""
    yield from _session_server(tmp_path_factory, FORK_WARMUP)


FORK_WARMUP = "import json, decimal"
"""The forking server's warm-up code."""


@contextlib.asynccontextmanager
async def backend_on(
    server: JupyterServerInfo, root_dir: Path
) -> AsyncIterator[LocalLabBackend]:
    """A started backend on a session server; closed on exit."""
    async with httpx.AsyncClient(trust_env=False) as http:
        backend = LocalLabBackend(
            http=http,
            root_dir=root_dir,
            url=server.url,
            token=server.token,
            kernel_start_timeout=60,
            request_timeout=30,
        )
        await backend.start()
        try:
            yield backend
        finally:
            await backend.aclose()


@pytest_asyncio.fixture
async def jupyter_backend(
    jupyter_server: JupyterServerInfo, tmp_path: Path
) -> AsyncIterator[LocalLabBackend]:
    """A started backend on the session server; closed after the test."""
    async with backend_on(jupyter_server, tmp_path) as backend:
        yield backend


@pytest_asyncio.fixture
async def forked_backend(
    forking_jupyter_server: JupyterServerInfo, tmp_path: Path
) -> AsyncIterator[LocalLabBackend]:
    """A started backend on the forking session server; closed after the test."""
    async with backend_on(forking_jupyter_server, tmp_path) as backend:
        yield backend
