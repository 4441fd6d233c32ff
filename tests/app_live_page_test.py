"""Who sees an execution's live page, over real HTTP (noteburst/api/live.py).

The page is authenticated like GraphQL and reads through the same
service: in tokens mode an anonymous visitor gets a 401 page with the token
form and no data; a user sees their own execution, and another user's id
gets the very page an unknown id gets; an administrator sees everyone's.
Behind an ingress (proxy mode) the user header decides.  Every answer
carries the page's Content-Security-Policy and is not cached.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from noteburst.api.live import CONTENT_SECURITY_POLICY
from noteburst.constants import ADMIN_SCOPE, USER_SCOPE
from noteburst.services.auth import TokenService
from noteburst.storage.database import Database
from tests.support.app import make_config, running
from tests.support.notebooks import notebook

NOTEBOOK = notebook("# md:a </script><script>alert(1)</script>", "x = 6 * 7")
DATA_RE = re.compile(
    r'<script type="application/json" id="noteburst-data">(.*?)</script>', re.S
)


def _data(page: str) -> dict[str, Any]:
    match = DATA_RE.search(page)
    assert match is not None, page
    data: dict[str, Any] = json.loads(match[1])
    return data


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_page_headers(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.asyncio
async def test_tokens_mode_tenancy(tmp_path: Path, jupyter_server: Any) -> None:
    config = make_config(tmp_path, jupyter_server, auth_mode="tokens")
    async with (
        running(config) as nb,
        httpx.AsyncClient(base_url=nb.url, timeout=60) as http,
    ):
        database = Database.from_url(config.effective_database_url)
        try:
            tokens = TokenService(database=database)
            alice, _ = await tokens.create(user="alice", scopes=[USER_SCOPE])
            bob, _ = await tokens.create(user="bob", scopes=[USER_SCOPE])
            admin, _ = await tokens.create(user="root", scopes=[ADMIN_SCOPE])
        finally:
            await database.aclose()
        submitted = await http.post(
            "/graphql",
            json={
                "query": "mutation S($nb: JSON!) { submitExecution(input: "
                "{notebook: $nb}) { ... on Execution { id } } }",
                "variables": {"nb": NOTEBOOK},
            },
            headers=_bearer(alice),
        )
        execution_id = submitted.json()["data"]["submitExecution"]["id"]
        path = f"/executions/{execution_id}"

        # Anonymous (a browser navigating): the token form, nothing else.
        anonymous = await http.get(path)
        assert anonymous.status_code == 401
        _assert_page_headers(anonymous)
        assert 'id="token-form"' in anonymous.text
        form = re.search(r"<form.*?</form>", anonymous.text, re.S)
        assert form is not None
        # No name and no action: nothing the form could submit without the
        # script, so a token cannot land in a URL.
        assert "name=" not in form[0]
        assert "action=" not in form[0]
        assert execution_id not in anonymous.text
        assert _data(anonymous.text)["problem"]["tokenForm"] is True
        refused = await http.get(path, headers=_bearer("nbt_not.a-token"))
        assert refused.status_code == 401

        # The owner and an administrator see it, with its notebook.
        for token in (alice, admin):
            own = await http.get(path, headers=_bearer(token))
            assert own.status_code == 200, own.text
            _assert_page_headers(own)
            data = _data(own.text)
            assert data["execution"]["id"] == execution_id
            assert (
                data["notebook"]["cells"][0]["source"] == NOTEBOOK["cells"][0]["source"]
            )
            # The markdown's "</script>" did not end the data block early.
            assert own.text.count("</script>") == own.text.count("<script")

        # Another user's id is exactly an unknown one.
        others = await http.get(path, headers=_bearer(bob))
        unknown = await http.get("/executions/no-such-id", headers=_bearer(bob))
        assert others.status_code == unknown.status_code == 404
        _assert_page_headers(others)
        assert others.text.replace(execution_id, "ID") == unknown.text.replace(
            "no-such-id", "ID"
        )


@pytest.mark.asyncio
async def test_proxy_mode_uses_the_ingress_user(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(
        tmp_path,
        jupyter_server,
        auth_mode="proxy",
        trusted_proxies=["127.0.0.0/8"],
        proxy_scopes_header="X-Auth-Request-Token-Scopes",
    )
    alice = {"X-Auth-Request-User": "alice"}
    async with (
        running(config) as nb,
        httpx.AsyncClient(base_url=nb.url, timeout=60) as http,
    ):
        submitted = await nb_submit(http, alice)
        path = f"/executions/{submitted}"
        assert (await http.get(path, headers=alice)).status_code == 200
        bob = await http.get(path, headers={"X-Auth-Request-User": "bob"})
        assert bob.status_code == 404
        anonymous = await http.get(path)
        assert anonymous.status_code == 401
        assert 'id="token-form"' not in anonymous.text  # sign in at the ingress
        no_scope = await http.get(
            path,
            headers={**alice, "X-Auth-Request-Token-Scopes": "read:all"},
        )
        assert no_scope.status_code == 403


async def nb_submit(http: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await http.post(
        "/graphql",
        json={
            "query": "mutation S($nb: JSON!) { submitExecution(input: "
            "{notebook: $nb}) { ... on Execution { id } } }",
            "variables": {"nb": NOTEBOOK},
        },
        headers=headers,
    )
    assert response.status_code == 200, response.text
    execution_id: str = response.json()["data"]["submitExecution"]["id"]
    return execution_id
