"""Which web pages can reach in: the Host check and the websocket Origin check.

Noteburst runs code for its callers, and the embedded default listens on
loopback with no authentication.  Two ways a web page the user merely opens
could use it, each checked here against a real uvicorn, with the headers a
browser would send:

- DNS rebinding: the page's own name is made to resolve to 127.0.0.1, so
  the browser treats Noteburst as the page's origin and sends ``Host`` and
  ``Origin`` both naming it.  Only the name gives it away: the app refuses
  names outside ``Config.effective_allowed_hosts`` with HTTP 400, on every
  route and on the websocket handshake.
- Cross-site websocket hijacking: browsers apply no CORS to websockets, so
  a page on another origin could open one.  Strawberry (0.339 and later, the
  floor in pyproject.toml) refuses a handshake whose ``Origin`` is not the
  ``Host`` it was sent to with HTTP 403; one without ``Origin`` (not a
  browser, so no ambient credentials) is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.app import Noteburst, make_config, running

ATTACKER = "attacker.example"


async def _post(nb: Noteburst, host: str, *, origin: bool = True) -> httpx.Response:
    """POST a query to /graphql as a page on ``host`` would (Host, Origin)."""
    headers = {"Host": host}
    if origin:
        headers["Origin"] = f"http://{host}"
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        return await client.post(
            nb.url + "/graphql", json={"query": "{ __typename }"}, headers=headers
        )


async def _get(nb: Noteburst, path: str, host: str, accept: str) -> httpx.Response:
    headers = {"Host": host, "Origin": f"http://{host}", "Accept": accept}
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        return await client.get(nb.url + path, headers=headers)


@pytest.mark.asyncio
async def test_a_rebound_name_is_refused_on_loopback(
    tmp_path: Path, jupyter_server: Any
) -> None:
    """The embedded default (loopback, no auth) answers no foreign name.

    ``*.localhost`` is refused too: not every resolver keeps it on loopback.
    """
    config = make_config(tmp_path, jupyter_server)
    assert config.host == "127.0.0.1"
    assert config.auth.mode == "none"
    async with running(config, run_worker=False) as nb:
        for name in (ATTACKER, "noteburst.localhost", "localhost.attacker.example"):
            host = f"{name}:{nb.port}"
            posted = await _post(nb, host)
            assert (posted.status_code, posted.text) == (400, "Invalid host header")
            health = await _get(nb, "/healthz", host, "application/json")
            assert health.status_code == 400
            page = await _get(nb, "/graphql", host, "text/html")
            assert page.status_code == 400
            assert await nb.handshake(host=host, origin=f"http://{host}") == 400
            assert await nb.handshake(host=host, origin=None) == 400


@pytest.mark.asyncio
async def test_loopback_names_are_accepted_on_loopback(
    tmp_path: Path, jupyter_server: Any
) -> None:
    """What local browsers and clients use keeps working, with or without port."""
    config = make_config(tmp_path, jupyter_server)
    async with running(config, run_worker=False) as nb:
        port = nb.port
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"[::1]:{port}",
            "LOCALHOST",
            "127.0.0.1",
        ):
            posted = await _post(nb, host)
            assert posted.status_code == 200, host
            assert posted.json() == {"data": {"__typename": "Query"}}
            health = await _get(nb, "/healthz", host, "application/json")
            assert health.status_code == 200, host
        # Same origin over the websocket: Origin names the Host (with its port).
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            assert (
                await nb.handshake(host=host, origin=f"http://{host}")
                == "connection_ack"
            )
        assert (
            await nb.handshake(host=f"localhost:{port}", origin=None)
            == "connection_ack"
        )


@pytest.mark.asyncio
async def test_configured_names_replace_the_loopback_default(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(
        tmp_path, jupyter_server, allowed_hosts=["noteburst.example", "*.apps.example"]
    )
    async with running(config, run_worker=False) as nb:
        port = nb.port
        for name in ("noteburst.example", "NB.apps.example"):
            host = f"{name}:{port}"
            posted = await _post(nb, host)
            assert posted.status_code == 200, host
            assert posted.json() == {"data": {"__typename": "Query"}}
            assert (
                await nb.handshake(host=host, origin=f"http://{host}")
                == "connection_ack"
            )
            page = await _get(nb, "/graphql", host, "text/html")
            assert page.status_code == 200
        for name in (ATTACKER, "apps.example", "127.0.0.1"):
            host = f"{name}:{port}"
            posted = await _post(nb, host)
            assert (posted.status_code, posted.text) == (400, "Invalid host header")
            assert await nb.handshake(host=host, origin=f"http://{host}") == 400


@pytest.mark.asyncio
async def test_websockets_from_other_origins_are_refused(
    tmp_path: Path, jupyter_server: Any
) -> None:
    """Strawberry's Origin check, on an accepted Host.

    Another local page (another port) is another origin too.
    """
    config = make_config(tmp_path, jupyter_server)
    async with running(config, run_worker=False) as nb:
        host = f"127.0.0.1:{nb.port}"
        assert await nb.handshake(host=host, origin=None) == "connection_ack"
        assert (
            await nb.handshake(host=host, origin=f"http://{host}") == "connection_ack"
        )
        for origin in (
            f"http://{ATTACKER}",
            f"http://{ATTACKER}:{nb.port}",
            "http://127.0.0.1:1",
            f"http://localhost:{nb.port}",
            "null",
        ):
            assert await nb.handshake(host=host, origin=origin) == 403, origin
