"""GraphiQL share links over real HTTP: a browser gets the page, API clients JSON.

``/graphql?query=...`` is how GraphiQL links are shared.  A browser
(``Accept: text/html``) gets the page (public, like the bare page, even
with token authentication), whatever the query, a mutation included; a
client that does not ask for HTML still gets GraphQL over GET, authenticated
as before.  Opening such a link in Chromium is in
``tests/app_browser_graphiql_test.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.app import make_config, running

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
MUTATION = 'mutation Cancel { cancelExecution(id: "x") { __typename } }'


@pytest.mark.asyncio
async def test_share_links_open_the_page_and_json_gets_stay(
    tmp_path: Path, jupyter_server: Any
) -> None:
    async with (
        running(make_config(tmp_path, jupyter_server)) as nb,
        httpx.AsyncClient(base_url=nb.url, timeout=60) as http,
    ):
        shared = await http.get(
            "/graphql",
            params={"query": MUTATION, "operationName": "Cancel"},
            headers={"Accept": BROWSER},
        )
        mutation_as_json = await http.get(
            "/graphql",
            params={"query": MUTATION},
            headers={"Accept": "application/json"},
        )
        query_as_json = await http.get(
            "/graphql",
            params={"query": "{ __typename }"},
            headers={"Accept": "application/json"},
        )
        query_as_anything = await http.get(
            "/graphql", params={"query": "{ __typename }"}, headers={"Accept": "*/*"}
        )
    assert shared.status_code == 200
    assert shared.headers["content-type"].startswith("text/html")
    assert "GraphiQL.createFetcher(" in shared.text
    assert "new URLSearchParams(window.location.search)" in shared.text
    # GET may not run a mutation: refused as before, not turned into a page.
    assert mutation_as_json.status_code == 400
    assert "<html" not in mutation_as_json.text
    for answer in (query_as_json, query_as_anything):
        assert answer.status_code == 200
        assert answer.json() == {"data": {"__typename": "Query"}}


@pytest.mark.asyncio
async def test_share_link_page_is_public_but_json_get_is_not(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(tmp_path, jupyter_server, auth_mode="tokens")
    async with (
        running(config) as nb,
        httpx.AsyncClient(base_url=nb.url, timeout=60) as http,
    ):
        page = await http.get(
            "/graphql", params={"query": MUTATION}, headers={"Accept": "text/html"}
        )
        api = await http.get(
            "/graphql",
            params={"query": "{ __typename }"},
            headers={"Accept": "application/json"},
        )
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert api.status_code == 401
    assert api.json()["errors"][0]["extensions"]["code"] == "unauthenticated"
