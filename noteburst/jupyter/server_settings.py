"""Code loaded *by jupyter_server*, not by Noteburst: a faster kernel websocket.

tornado leaves Nagle's algorithm on for websocket connections and
jupyter_server never turns it off, so after the first iopub message of a
cell the rest wait for the client's delayed ACK (40 ms on Linux): a ``1+1``
round trip takes ~48 ms instead of ~5.5 ms (``jupyter-on-loopback.md``, G1).
A client-side fix does not help behind JupyterHub's proxy, where the hop
that waits is tornado to node; the fix has to be in the server.

:class:`NoDelayConnection` is that fix.  :class:`~.local.LocalJupyterServer`
passes it on the command line; operators of a JupyterHub add the same
argument to their spawner, with Noteburst installed in the single-user
environment (or this file on its ``PYTHONPATH``)::

    c.Spawner.args = [
        "--ServerApp.kernel_websocket_connection_class="
        "noteburst.jupyter.server_settings.NoDelayConnection",
        "--ZMQChannelsWebsocketConnection.limit_rate=False",
    ]

The second argument matters as much: with the default IOPub rate limits the
server silently drops large outputs (G3).  This module imports
jupyter_server, so nothing else in :mod:`noteburst.jupyter` imports it.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.connection.channels import (
    ZMQChannelsWebsocketConnection,
)

__all__ = ["NoDelayConnection"]


class NoDelayConnection(ZMQChannelsWebsocketConnection):  # type: ignore[misc]
    """Kernel websocket connection with ``TCP_NODELAY`` set on the socket."""

    def connect(self) -> Any:
        """Turn Nagle's algorithm off, then connect as usual."""
        self.websocket_handler.set_nodelay(True)
        return super().connect()
