"""Tenancy end to end: who may see and touch which execution, over the wire.

A real Noteburst with ``auth_mode=tokens`` (on Postgres + Redis and on the
embedded default) is asked every query, mutation and the subscription by
anonymous callers, bad tokens (unknown, malformed, expired, revoked), two
users and an administrator.  Another user's execution must look exactly
like an unknown id: each answer about it is compared, with the ids swapped,
to the answer about an id that never existed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from noteburst.constants import ADMIN_SCOPE, USER_SCOPE
from noteburst.domain.auth import new_token
from noteburst.services.auth import TokenService
from noteburst.storage.database import Database
from tests.support.app import make_config, running
from tests.support.notebooks import notebook

NOTEBOOK = notebook("x = 6 * 7", "print(x)")

FIELDS = """
  id status kernelName timeoutSeconds createdAt startedAt finishedAt attempts
  progress { cellsTotal cellsDone }
  error { code message cellIndex ename evalue traceback }
  queue cacheHit cachedFrom sharesRunOf queuePosition cellTimeoutSeconds
  noOutputTimeoutSeconds outputsTruncated cancelRequested owner notebook
  html(hideCode: true)
"""

GET = f"query Get($id: ID!) {{ execution(id: $id) {{ {FIELDS} }} }}"
LIST = """
query List($status: ExecutionStatus) {
  executions(first: 100, status: $status) {
    edges { cursor node { id owner } } pageInfo { hasNextPage endCursor }
  }
}
"""
CANCEL = f"""
mutation Cancel($id: ID!) {{
  cancelExecution(id: $id) {{
    __typename
    ... on Execution {{ {FIELDS} }}
    ... on ExecutionNotFound {{ message id }}
  }}
}}
"""
SUBMIT = """
mutation Submit($input: SubmitExecutionInput!) {
  submitExecution(input: $input) {
    __typename
    ... on Execution { id owner cacheHit cachedFrom sharesRunOf }
    ... on LimitExceeded { message limit maximum }
  }
}
"""
WATCH = f"""
subscription Watch($id: ID!, $after: Int) {{
  executionStatus(id: $id, afterSequence: $after) {{
    sequence kind status execution {{ {FIELDS} }}
  }}
}}
"""


async def _make_tokens(url: str) -> dict[str, str]:
    """Tokens for each kind of caller (expired and revoked ones included)."""
    database = Database.from_url(url)
    try:
        service = TokenService(database=database)
        alice, _ = await service.create(user="alice", scopes=[USER_SCOPE])
        bob, _ = await service.create(user="bob", scopes=[USER_SCOPE])
        admin, _ = await service.create(user="root", scopes=[ADMIN_SCOPE])
        revoked, info = await service.create(user="alice", scopes=[USER_SCOPE])
        await service.revoke(info.key)
        # Expired an hour ago (the service refuses to create such a token).
        expired = new_token()
        async with database.transaction() as tx:
            now = datetime.now(UTC)
            await tx.tokens.add(
                key=expired.key,
                secret_hash=expired.secret_hash,
                user="alice",
                scopes=[USER_SCOPE],
                now=now - timedelta(hours=2),
                expires_at=now - timedelta(hours=1),
            )
    finally:
        await database.aclose()
    unknown = new_token().token  # well-formed, never stored
    return {
        "alice": alice,
        "bob": bob,
        "admin": admin,
        "revoked": revoked,
        "expired": expired.token,
        "unknown": unknown,
        "wrong-secret": alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB"),
        "malformed": "definitely-not-a-token",
    }


class _Client:
    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url + "/graphql"
        self.ws_url = "ws" + self.url.removeprefix("http")
        self.http = http

    async def post(
        self, query: str, token: str | None, **variables: Any
    ) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return await self.http.post(
            self.url,
            json={"query": query, "variables": variables},
            headers=headers,
            timeout=60,
        )

    async def data(self, query: str, token: str | None, **variables: Any) -> Any:
        response = await self.post(query, token, **variables)
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    async def subscribe(
        self,
        variables: dict[str, Any],
        *,
        token: str | None = None,
        header_token: str | None = None,
    ) -> tuple[int | None, list[dict[str, Any]]]:
        """Subscribe to WATCH; return (close code if refused, messages)."""
        headers = (
            None
            if header_token is None
            else {"Authorization": f"Bearer {header_token}"}
        )
        payload = {} if token is None else {"Authorization": f"Bearer {token}"}
        messages: list[dict[str, Any]] = []
        async with asyncio.timeout(120):
            async with connect(
                self.ws_url,
                subprotocols=[Subprotocol("graphql-transport-ws")],
                additional_headers=headers,
                max_size=None,
            ) as ws:
                await ws.send(
                    json.dumps({"type": "connection_init", "payload": payload})
                )
                try:
                    ack = json.loads(await ws.recv())
                except ConnectionClosed as exc:
                    return (None if exc.rcvd is None else exc.rcvd.code), []
                assert ack["type"] == "connection_ack"
                await ws.send(
                    json.dumps(
                        {
                            "id": "1",
                            "type": "subscribe",
                            "payload": {"query": WATCH, "variables": variables},
                        }
                    )
                )
                async for raw in ws:
                    message = json.loads(raw)
                    if message["type"] in {"next", "error"}:
                        messages.append(message)
                    if message["type"] in {"complete", "error"}:
                        break
        return None, messages


def _swap(value: Any, old: str, new: str) -> Any:
    """The JSON value with every occurrence of one id replaced by another."""
    return json.loads(json.dumps(value).replace(old, new))


async def _finished(client: _Client, token: str, execution_id: str) -> None:
    code, messages = await client.subscribe(
        {"id": execution_id, "after": 0}, token=token
    )
    assert code is None
    last = messages[-1]["payload"]["data"]["executionStatus"]
    assert last["kind"] == "FINISHED"
    assert last["status"] == "SUCCEEDED"


@pytest.mark.asyncio
async def test_tenancy_matrix(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = make_config(
        tmp_path,
        jupyter_server,
        **backend_urls,
        auth_mode="tokens",
        token_cache_seconds=0,
    )
    async with running(config) as nb, httpx.AsyncClient(timeout=60) as http:
        tokens = await _make_tokens(config.effective_database_url)
        client = _Client(nb.url, http)
        cached = {"notebook": NOTEBOOK, "cache": {"mode": "USE"}}

        # Alice runs a notebook (caching its result); the subscription
        # authenticates with the connection_init payload.
        mine = (await client.data(SUBMIT, tokens["alice"], input=cached))[
            "submitExecution"
        ]
        assert mine["__typename"] == "Execution"
        assert mine["owner"] == "alice"
        alice_id = mine["id"]
        await _finished(client, tokens["alice"], alice_id)

        # Bob submits the same notebook asking for the cache: Alice's result
        # is not his, so it runs for him (and nothing points at Alice's).
        his = (await client.data(SUBMIT, tokens["bob"], input=cached))[
            "submitExecution"
        ]
        assert his["owner"] == "bob"
        assert his["cacheHit"] is False
        assert his["cachedFrom"] is None
        assert his["sharesRunOf"] is None
        bob_id = his["id"]
        # The handshake header authenticates a websocket too.
        code, messages = await client.subscribe(
            {"id": bob_id, "after": 0}, header_token=tokens["bob"]
        )
        assert code is None
        assert messages[-1]["payload"]["data"]["executionStatus"]["kind"] == "FINISHED"
        # Alice asking again does hit her own cache.
        again = (await client.data(SUBMIT, tokens["alice"], input=cached))[
            "submitExecution"
        ]
        assert again["cacheHit"] is True
        assert again["cachedFrom"] == alice_id

        unknown_id = str(uuid.uuid4())
        owners = {alice_id: "alice", bob_id: "bob"}
        for who in ("alice", "bob", "admin"):
            token = tokens[who]
            listed = await client.data(LIST, token)
            ids = {e["node"]["id"] for e in listed["executions"]["edges"]}
            for execution_id, owner in owners.items():
                visible = who in {owner, "admin"}
                assert (execution_id in ids) is visible, (who, owner)
                if not visible:
                    assert execution_id not in json.dumps(listed)

                get = await client.data(GET, token, id=execution_id)
                cancel = await client.data(CANCEL, token, id=execution_id)
                code, watched = await client.subscribe(
                    {"id": execution_id, "after": None}, token=token
                )
                assert code is None
                if visible:
                    assert get["execution"]["id"] == execution_id
                    assert get["execution"]["owner"] == owner
                    assert get["execution"]["notebook"] is not None
                    assert get["execution"]["html"]
                    assert cancel["cancelExecution"]["__typename"] == "Execution"
                    event = watched[0]["payload"]["data"]["executionStatus"]
                    assert event["execution"]["id"] == execution_id
                    continue
                # Someone else's execution: every answer is the one about an
                # id that never existed, with the id swapped.
                assert get == {"execution": None}
                unknown_cancel = await client.data(CANCEL, token, id=unknown_id)
                assert cancel == _swap(unknown_cancel, unknown_id, execution_id)
                assert cancel["cancelExecution"]["__typename"] == "ExecutionNotFound"
                _, unknown_watch = await client.subscribe(
                    {"id": unknown_id, "after": None}, token=token
                )
                assert watched == _swap(unknown_watch, unknown_id, execution_id)
                assert "errors" in watched[0]["payload"] or (
                    watched[0]["type"] == "error"
                )

        # Credentials that are missing or not (or no longer) valid: every
        # operation is refused the same way, before GraphQL runs.
        refusals = []
        for who in (
            "anonymous",
            "unknown",
            "wrong-secret",
            "malformed",
            "expired",
            "revoked",
        ):
            bad: str | None = None if who == "anonymous" else tokens[who]
            for query, variables in (
                (GET, {"id": alice_id}),
                (LIST, {}),
                (CANCEL, {"id": alice_id}),
                (SUBMIT, {"input": {"notebook": NOTEBOOK}}),
            ):
                response = await client.post(query, bad, **variables)
                assert response.status_code == 401, (who, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                refusals.append(response.json())
                assert alice_id not in response.text
            code, messages = await client.subscribe({"id": alice_id}, token=bad)
            assert (code, messages) == (4403, []), who
            # A query sent with GET is authenticated like a POST.
            get = await http.get(
                client.url,
                params={"query": "{ executions { edges { cursor } } }"},
                headers={} if bad is None else {"Authorization": f"Bearer {bad}"},
            )
            assert get.status_code == 401
        assert all(r == refusals[0] for r in refusals)
        assert refusals[0]["errors"][0]["extensions"]["code"] == "unauthenticated"
        # Nothing was submitted by the refused requests.
        listed = await client.data(LIST, tokens["admin"])
        assert len(listed["executions"]["edges"]) == 3

        # GraphiQL's page holds no data and stays public.
        page = await http.get(client.url, headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert "graphiql" in page.text.lower()


def _as(user: str, **extra: str) -> dict[str, str]:
    return {"X-Auth-Request-User": user, **extra}


@pytest.mark.asyncio
async def test_proxy_headers_are_believed_only_from_trusted_proxies(
    tmp_path: Path, jupyter_server: Any
) -> None:
    # The ingress is elsewhere: a client on loopback reaching Noteburst
    # directly is anonymous whatever it claims, X-Forwarded-For included.
    config = make_config(
        tmp_path,
        jupyter_server,
        auth_mode="proxy",
        trusted_proxies=["192.0.2.0/24"],
        proxy_scopes_header="X-Auth-Request-Token-Scopes",
    )
    spoofed = _as(
        "alice",
        **{
            "X-Auth-Request-Token-Scopes": "exec:admin",
            "X-Forwarded-For": "192.0.2.1",
            "X-Real-IP": "192.0.2.1",
            "Forwarded": "for=192.0.2.1",
        },
    )
    async with running(config) as nb, httpx.AsyncClient(timeout=60) as http:
        response = await http.post(
            nb.url + "/graphql", json={"query": LIST}, headers=spoofed
        )
        assert response.status_code == 401
        assert response.json()["errors"][0]["extensions"]["code"] == "unauthenticated"
        async with connect(
            nb.ws_url,
            subprotocols=[Subprotocol("graphql-transport-ws")],
            additional_headers=spoofed,
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4403


@pytest.mark.asyncio
async def test_proxy_users_and_scopes(tmp_path: Path, jupyter_server: Any) -> None:
    config = make_config(
        tmp_path,
        jupyter_server,
        auth_mode="proxy",
        trusted_proxies=["127.0.0.0/8"],
        proxy_scopes_header="X-Auth-Request-Token-Scopes",
    )
    async with running(config) as nb, httpx.AsyncClient(timeout=60) as http:
        url = nb.url + "/graphql"

        async def post(query: str, headers: dict[str, str], **variables: Any) -> Any:
            response = await http.post(
                url, json={"query": query, "variables": variables}, headers=headers
            )
            return response

        submitted = await post(SUBMIT, _as("alice"), input={"notebook": NOTEBOOK})
        assert submitted.status_code == 200, submitted.text
        execution = submitted.json()["data"]["submitExecution"]
        assert execution["owner"] == "alice"

        async def ids(headers: dict[str, str]) -> set[str]:
            body = (await post(LIST, headers)).json()
            return {e["node"]["id"] for e in body["data"]["executions"]["edges"]}

        # Without a scopes header the default scope applies (exec:notebook).
        assert await ids(_as("alice")) == {execution["id"]}
        assert await ids(_as("bob")) == set()
        admin = _as("carol", **{"X-Auth-Request-Token-Scopes": "read:all exec:admin"})
        assert await ids(admin) == {execution["id"]}
        # Known, but without a Noteburst scope: 403, not 401.
        forbidden = await post(
            LIST, _as("dave", **{"X-Auth-Request-Token-Scopes": "read:all"})
        )
        assert forbidden.status_code == 403
        assert forbidden.json()["errors"][0]["extensions"]["code"] == "forbidden"
        # No user header: anonymous.
        assert (await post(LIST, {})).status_code == 401
        # The subscription authenticates from the handshake headers.
        async with connect(
            nb.ws_url,
            subprotocols=[Subprotocol("graphql-transport-ws")],
            additional_headers=_as("alice"),
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            ack = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert ack["type"] == "connection_ack"


@pytest.mark.asyncio
async def test_unexpected_errors_are_masked_and_logged_with_context(
    tmp_path: Path, jupyter_server: Any
) -> None:
    # A real fault: a stored notebook that is not JSON any more (a damaged
    # database), read by the notebook field.
    config = make_config(
        tmp_path, jupyter_server, auth_mode="tokens", token_cache_seconds=0
    )
    async with running(config) as nb, httpx.AsyncClient(timeout=60) as http:
        tokens = await _make_tokens(config.effective_database_url)
        client = _Client(nb.url, http)
        submitted = await client.data(
            SUBMIT, tokens["alice"], input={"notebook": NOTEBOOK}
        )
        execution_id = submitted["submitExecution"]["id"]
        await _finished(client, tokens["alice"], execution_id)
        with sqlite3.connect(config.data_dir / "noteburst.sqlite3") as db:
            db.execute(
                "UPDATE executions SET result_notebook = ? WHERE id = ?",
                ('{"secret": "hunter2", broken', execution_id),
            )
        with structlog.testing.capture_logs() as logs:
            response = await client.post(
                "query Damaged($id: ID!) { execution(id: $id) { id notebook } }",
                tokens["alice"],
                id=execution_id,
            )
        body = response.json()
        assert response.status_code == 200
        assert body["data"] == {"execution": {"id": execution_id, "notebook": None}}
        assert [e["message"] for e in body["errors"]] == ["Unexpected error."]
        assert "hunter2" not in response.text
        assert "JSONDecodeError" not in response.text
        (entry,) = [e for e in logs if e["log_level"] == "error"]
        assert entry["event"] == "Unexpected error in a GraphQL operation"
        assert entry["user"] == "alice"
        assert entry["operation"] == "Damaged"
        assert entry["path"] == "execution.notebook"
        assert entry["error_type"] == "JSONDecodeError"
