"""Noteburst's adapter to Jupyter servers: kernels, websockets, notebook runs.

This package is self-contained: it imports only its own modules and
third-party libraries (httpx, websockets, nbformat), never the rest of
Noteburst, so it can be tested against real Jupyter servers on its own and
could become a library.  The layers, bottom up:

* :mod:`.protocol`: Sans-I/O framing, messages, and the folding of kernel
  messages into notebook outputs with nbclient's exact semantics;
* :mod:`.rest` and :mod:`.kernel`: the server's REST API and a kernel's
  websocket, with every transport error converted into :mod:`.exceptions`;
* :mod:`.execute`: :func:`execute_notebook`, the run loop;
* :mod:`.backend`: where kernels come from (:class:`LabBackend`), with
  :class:`LocalLabBackend` over :mod:`.local`'s private jupyter_server.

:mod:`.server_settings` is loaded by jupyter_server itself and is not
imported here.

Typical use::

    async with httpx.AsyncClient() as http:
        backend = LocalLabBackend(http=http, root_dir=path)
        await backend.start()
        try:
            async with backend.kernel("python3") as conn:
                async with asyncio.timeout(600):
                    failure = await execute_notebook(conn, nb)
        finally:
            await backend.aclose()
"""

from __future__ import annotations

from .backend import LabBackend, LocalLabBackend
from .exceptions import (
    CellTimeoutError,
    JupyterError,
    JupyterWebError,
    KernelDiedError,
    KernelProtocolError,
    KernelStartError,
    LabUnavailableError,
)
from .execute import CellFailure, execute_notebook
from .kernel import KernelConnection
from .local import LocalJupyterServer
from .pool import KernelPool, PoolStats
from .protocol import NotebookOutputFolder, WireProtocol
from .rest import JupyterRestClient

__all__ = [
    "CellFailure",
    "CellTimeoutError",
    "JupyterError",
    "JupyterRestClient",
    "JupyterWebError",
    "KernelConnection",
    "KernelDiedError",
    "KernelPool",
    "KernelProtocolError",
    "KernelStartError",
    "LabBackend",
    "LabUnavailableError",
    "LocalJupyterServer",
    "LocalLabBackend",
    "NotebookOutputFolder",
    "PoolStats",
    "WireProtocol",
    "execute_notebook",
]
