"""Which kernels submissions may name on this deployment.

The API process needs the list once, at start, to refuse an unknown kernel
at submission rather than when a worker tries to start it.  It lives here,
beside the REST client it may use, because the answer comes from Jupyter:
the configured server's kernelspecs, or those installed beside Noteburst,
which is what the local server Noteburst starts will offer.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from jupyter_client.kernelspec import KernelSpecManager

from .rest import JupyterRestClient

__all__ = ["discover_kernel_names"]


async def discover_kernel_names(
    *,
    configured: Sequence[str] | None,
    url: str | None,
    token: str | None,
    http: httpx.AsyncClient,
    request_timeout: float,
) -> list[str]:
    """Return the kernels submissions may name.

    Parameters
    ----------
    configured
        Names given in the configuration; they win when given.
    url
        Base URL of the Jupyter server executions run on, asked for its
        kernelspecs when no names are configured; None for the local
        server Noteburst starts (the kernelspecs installed here are listed).
    token
        Token for ``url``.
    http
        Client for the request.
    request_timeout
        Seconds for the request.

    Raises
    ------
    JupyterError
        Raised if the server at ``url`` cannot be asked.
    """
    if configured is not None:
        return list(configured)
    if url is not None:
        client = JupyterRestClient(
            http=http, base_url=url, token=token, timeout=request_timeout
        )
        return await client.kernelspecs()
    return sorted(KernelSpecManager().find_kernel_specs())
