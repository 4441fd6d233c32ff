"""Which web pages can reach in: the websocket Origin check.

Noteburst runs code for its callers, and the embedded default listens on
loopback with no authentication.  A way a web page the user merely opens
could use it, checked here against a real uvicorn, with the headers a
browser would send:

- Cross-site websocket hijacking: browsers apply no CORS to websockets, so
  a page on another origin could open one.  Strawberry (0.339 and later, the
  floor in pyproject.toml) refuses a handshake whose ``Origin`` is not the
  ``Host`` it was sent to with HTTP 403; one without ``Origin`` (not a
  browser, so no ambient credentials) is accepted.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol

from tests.support.app import Noteburst, make_config, running

ATTACKER = "attacker.example"


def _port(nb: Noteburst) -> int:
    return int(nb.url.rsplit(":", 1)[1])


async def _handshake(nb: Noteburst, host: str, origin: str | None) -> str | int:
    """Open a graphql-transport-ws socket to ``nb`` addressed to ``host``.

    The TCP connection goes to the instance whatever ``host`` says (as a
    rebound name would). Returns the server's answer to connection_init
    once the handshake is accepted, else the handshake's HTTP status.
    """
    try:
        async with connect(
            f"ws://{host}/graphql",
            host="127.0.0.1",
            port=_port(nb),
            origin=None if origin is None else Origin(origin),
            subprotocols=[Subprotocol("graphql-transport-ws")],
            proxy=None,
            open_timeout=30,
            close_timeout=10,
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init"}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            return str(reply["type"])
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.asyncio
async def test_websockets_from_other_origins_are_refused(
    tmp_path: Path, jupyter_server: Any
) -> None:
    """Strawberry's Origin check, on an accepted Host.

    Another local page (another port) is another origin too.
    """
    config = make_config(tmp_path, jupyter_server)
    async with running(config, run_worker=False) as nb:
        host = f"127.0.0.1:{_port(nb)}"
        assert await _handshake(nb, host, None) == "connection_ack"
        assert await _handshake(nb, host, f"http://{host}") == "connection_ack"
        for origin in (
            f"http://{ATTACKER}",
            f"http://{ATTACKER}:{_port(nb)}",
            "http://127.0.0.1:1",
            f"http://localhost:{_port(nb)}",
            "null",
        ):
            assert await _handshake(nb, host, origin) == 403, origin
