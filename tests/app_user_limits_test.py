"""Per-user limits over the wire: each refusal, and no overshoot under concurrency.

Users are told apart by a trusted proxy's header (``auth_mode=proxy`` with
loopback trusted), the cheapest way to be several users at once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.app import make_config, running
from tests.support.notebooks import notebook
from tests.support.waiting import wait_until

QUICK = notebook("1 + 1")
SLOW = notebook("import time; time.sleep(120)")

SUBMIT = """
mutation Submit($input: SubmitExecutionInput!) {
  submitExecution(input: $input) {
    __typename
    ... on Execution { id status }
    ... on LimitExceeded { message limit maximum }
  }
}
"""
CANCEL = """
mutation Cancel($id: ID!) {
  cancelExecution(id: $id) { __typename ... on Execution { status } }
}
"""
GET = "query Get($id: ID!) { execution(id: $id) { status } }"


class _Users:
    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self._url = url + "/graphql"
        self._http = http

    async def call(self, user: str, query: str, **variables: Any) -> Any:
        response = await self._http.post(
            self._url,
            json={"query": query, "variables": variables},
            headers={"X-Auth-Request-User": user},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    async def submit(self, user: str, nb: dict[str, Any] = QUICK) -> dict[str, Any]:
        data = await self.call(user, SUBMIT, input={"notebook": nb})
        payload: dict[str, Any] = data["submitExecution"]
        return payload


def _config(
    tmp_path: Path, jupyter: Any, urls: dict[str, str | None], **limits: Any
) -> Any:
    return make_config(
        tmp_path,
        jupyter,
        **urls,
        auth_mode="proxy",
        trusted_proxies=["127.0.0.0/8"],
        **{
            "max_queued_per_user": None,
            "max_running_per_user": None,
            "max_submissions_per_minute": None,
            **limits,
        },
    )


@pytest.mark.asyncio
async def test_queued_limit_holds_under_concurrent_submissions(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = _config(tmp_path, jupyter_server, backend_urls, max_queued_per_user=3)
    # No worker: everything submitted stays queued.
    async with (
        running(config, run_worker=False) as nb,
        httpx.AsyncClient(timeout=60) as http,
    ):
        users = _Users(nb.url, http)
        results = await asyncio.gather(*(users.submit("alice") for _ in range(10)))
        kinds = sorted(r["__typename"] for r in results)
        assert kinds == ["Execution"] * 3 + ["LimitExceeded"] * 7
        refusal = next(r for r in results if r["__typename"] == "LimitExceeded")
        assert refusal["limit"] == "QUEUED_EXECUTIONS"
        assert refusal["maximum"] == 3
        assert "queued executions" in refusal["message"]
        # The limit is per user.
        assert (await users.submit("bob"))["__typename"] == "Execution"
        # A cancelled execution no longer counts.
        first = next(r for r in results if r["__typename"] == "Execution")
        await users.call("alice", CANCEL, id=first["id"])
        assert (await users.submit("alice"))["__typename"] == "Execution"


@pytest.mark.asyncio
async def test_submissions_per_minute(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = _config(
        tmp_path, jupyter_server, backend_urls, max_submissions_per_minute=2
    )
    async with (
        running(config, run_worker=False) as nb,
        httpx.AsyncClient(timeout=60) as http,
    ):
        users = _Users(nb.url, http)
        for _ in range(2):
            done = await users.submit("alice")
            assert done["__typename"] == "Execution"
            # Cancelling does not give a submission back.
            await users.call("alice", CANCEL, id=done["id"])
        refused = await users.submit("alice")
        assert refused == {
            "__typename": "LimitExceeded",
            "message": refused["message"],
            "limit": "SUBMISSIONS_PER_MINUTE",
            "maximum": 2,
        }
        assert "submissions in the last minute" in refused["message"]
        assert (await users.submit("bob"))["__typename"] == "Execution"


@pytest.mark.asyncio
async def test_running_limit(tmp_path: Path, jupyter_server: Any) -> None:
    config = _config(tmp_path, jupyter_server, {}, max_running_per_user=1)
    async with running(config) as nb, httpx.AsyncClient(timeout=60) as http:
        users = _Users(nb.url, http)
        slow = await users.submit("alice", SLOW)
        assert slow["__typename"] == "Execution"

        async def status_is(wanted: str) -> bool:
            data = await users.call("alice", GET, id=slow["id"])
            return bool(data["execution"]["status"] == wanted)

        await wait_until(lambda: status_is("RUNNING"), "the slow notebook runs")
        refused = await users.submit("alice")
        assert refused["__typename"] == "LimitExceeded"
        assert refused["limit"] == "RUNNING_EXECUTIONS"
        assert refused["maximum"] == 1
        assert (await users.submit("bob"))["__typename"] == "Execution"
        await users.call("alice", CANCEL, id=slow["id"])
        await wait_until(lambda: status_is("CANCELLED"), "the slow notebook ends")
        assert (await users.submit("alice"))["__typename"] == "Execution"
