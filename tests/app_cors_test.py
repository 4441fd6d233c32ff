"""Front ends on other origins: listed ones work, others can neither read nor act.

``NOTEBURST_CORS_ORIGINS`` lists the origins of trusted front ends.  Checked
against a real uvicorn with the requests a browser sends (``Origin``, the
preflight ``OPTIONS``, the websocket handshake's ``Origin``):

- a listed origin gets CORS headers on its preflight and on its answers
  (credentials allowed), and opens subscriptions;
- any other origin is refused with HTTP 403 before anything runs (a
  mutation included: CORS alone would only hide the answer, after the
  request had run with the user's ambient credentials), its preflight gets
  no CORS headers, and its websocket handshake is refused;
- requests without ``Origin`` (not a browser's) and same-origin ones work
  as before; with the list empty (the default) only those do.

Real browsers on two origins are the next step (issue 19); these pin the
server's side of the contract.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from noteburst.config import Config
from tests.support.app import Noteburst, make_config, running
from tests.support.notebooks import notebook

FRONT_END = "https://dashboard.example.org"
OTHER = "https://attacker.example"
TIMEOUT = 60.0

MUTATION = """
mutation Submit($input: SubmitExecutionInput!) {
  submitExecution(input: $input) { __typename ... on Execution { id } }
}
"""


async def _post(
    nb: Noteburst, origin: str | None, query: str = "{ __typename }", **variables: Any
) -> httpx.Response:
    headers = {} if origin is None else {"Origin": origin}
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        return await client.post(
            nb.url + "/graphql",
            json={"query": query, "variables": variables},
            headers=headers,
        )


async def _preflight(nb: Noteburst, origin: str) -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        return await client.options(nb.url + "/graphql", headers=headers)


async def _executions(nb: Noteburst) -> int:
    data = await nb.execute("{ executions(first: 50) { edges { node { id } } } }")
    return len(data["executions"]["edges"])


@pytest.mark.asyncio
async def test_a_listed_origin_works_and_another_is_refused(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(tmp_path, jupyter_server, cors_origins=[FRONT_END + "/"])
    assert config.cors_origins == [FRONT_END]
    async with asyncio.timeout(TIMEOUT), running(config, run_worker=False) as nb:
        allowed = await _preflight(nb, FRONT_END)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == FRONT_END
        assert allowed.headers["access-control-allow-credentials"] == "true"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        allowed_headers = allowed.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed_headers
        assert "content-type" in allowed_headers

        answered = await _post(nb, FRONT_END)
        assert answered.status_code == 200
        assert answered.json() == {"data": {"__typename": "Query"}}
        assert answered.headers["access-control-allow-origin"] == FRONT_END
        assert await nb.handshake(origin=FRONT_END) == "connection_ack"

        refused = await _preflight(nb, OTHER)
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        # Nothing runs for another origin: not even a mutation whose answer
        # it could not read.
        before = await _executions(nb)
        posted = await _post(nb, OTHER, MUTATION, input={"notebook": notebook("1")})
        assert posted.status_code == 403
        assert "access-control-allow-origin" not in posted.headers
        [error] = posted.json()["errors"]
        assert error["extensions"] == {"code": "origin_not_allowed"}
        assert await _executions(nb) == before
        assert await nb.handshake(origin=OTHER) == 403

        # Not a browser, or the API's own page: as before.
        assert (await _post(nb, None)).status_code == 200
        assert (await _post(nb, nb.url)).status_code == 200
        assert await nb.handshake(origin=None) == "connection_ack"
        assert await nb.handshake(origin=nb.url) == "connection_ack"


@pytest.mark.asyncio
async def test_by_default_only_the_api_s_own_origin_is_served(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(tmp_path, jupyter_server)
    assert config.cors_origins == []
    async with asyncio.timeout(TIMEOUT), running(config, run_worker=False) as nb:
        for origin in (FRONT_END, OTHER):
            assert (await _preflight(nb, origin)).status_code == 403
            assert (await _post(nb, origin)).status_code == 403
            assert await nb.handshake(origin=origin) == 403
        assert (await _post(nb, nb.url)).status_code == 200
        assert (await _post(nb, None)).status_code == 200


def test_only_origins_can_be_listed() -> None:
    assert Config(cors_origins=["HTTPS://App.Example.org:443"]).cors_origins == [
        "https://app.example.org"
    ]
    for entry in ("*", "https://x.example/path", "x.example", "ftp://x.example"):
        with pytest.raises(ValueError, match="origin"):
            Config(cors_origins=[entry])
