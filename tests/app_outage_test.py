"""The API through a database outage: typed, retryable answers, then recovery.

A real Noteburst (API with its worker, on a PostgreSQL of this module's own
and the test's Redis) while its database is stopped and started again:

* every GraphQL operation answers with a typed error
  (``extensions.code == "service_unavailable"``, ``retryable``,
  ``retryAfterSeconds``), never the masked "Unexpected error.", and the
  message names no host;
* a request whose credentials cannot be checked (``auth_mode=tokens``) is
  refused with HTTP 503 and ``Retry-After`` before any GraphQL runs
  (Rubin's REST API answers 503 with ``Retry-After`` too);
* :meth:`NoteburstClient.follow` rides out a refused subscription and
  yields every event once;
* once the database is back, everything works again unaided: the
  execution that ran during the outage SUCCEEDED once, and a subscriber
  that stayed connected throughout got every event exactly once, ending
  with FINISHED (the LISTEN connection came back and resynced).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from noteburst.client import NoteburstClient, _errors_error
from noteburst.constants import USER_SCOPE
from noteburst.services.auth import TokenService
from noteburst.storage.database import Database
from tests.support.app import GET, make_config, running
from tests.support.notebooks import held_until, notebook
from tests.support.servers import PrivatePostgres, private_postgres
from tests.support.waiting import wait_until

TIMEOUT = 180.0

UNAVAILABLE = {"code": "service_unavailable", "retryable": True, "retryAfterSeconds": 5}


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL of this module's own, to stop and start."""
    with private_postgres() as server:
        yield server


async def _post(
    http: httpx.AsyncClient,
    url: str,
    query: str,
    *,
    token: str | None = None,
    **variables: Any,
) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return await http.post(
        url + "/graphql",
        json={"query": query, "variables": variables},
        headers=headers,
        timeout=60,
    )


SUBMIT = """
mutation Submit($input: SubmitExecutionInput!) {
  submitExecution(input: $input) { __typename ... on Execution { id } }
}
"""


@pytest.mark.asyncio
async def test_an_outage_gets_typed_answers_and_is_recovered_from(
    tmp_path: Path,
    jupyter_server: Any,
    own_postgres: PrivatePostgres,
    redis_url: str,
) -> None:
    database_url = await asyncio.to_thread(own_postgres.create_database)
    config = make_config(
        tmp_path,
        jupyter_server,
        database_url=database_url,
        redis_url=redis_url,
        progress_flush_seconds=0,
    )
    release = tmp_path / "release"
    try:
        async with (
            asyncio.timeout(TIMEOUT),
            running(config) as nb,
            httpx.AsyncClient(timeout=60) as http,
        ):
            submitted = await nb.submit(notebook(held_until(release), "'done'"))
            execution_id = submitted["id"]
            cell_started = asyncio.Event()

            async def on_event(event: dict[str, Any]) -> None:
                if event["kind"] == "CELL_STARTED":
                    cell_started.set()

            watching = asyncio.create_task(nb.watch(execution_id, on_event=on_event))
            await cell_started.wait()

            await asyncio.to_thread(own_postgres.stop, "fast")
            for query, variables in (
                (GET, {"id": execution_id}),
                (SUBMIT, {"input": {"notebook": notebook("1")}}),
            ):
                response = await _post(http, nb.url, query, **variables)
                assert response.status_code == 200, response.text
                [error] = response.json()["errors"]
                assert error["extensions"] == UNAVAILABLE, error
                assert "127.0.0.1" not in error["message"]
            # Rubin's REST API in the same outage: 503 with Retry-After.
            job_url = f"{nb.url}/noteburst/v1/notebooks/{execution_id}"
            for response in (
                await http.get(job_url, timeout=30),
                await http.post(
                    nb.url + "/noteburst/v1/notebooks/",
                    json={"ipynb": notebook("1")},
                    timeout=30,
                ),
            ):
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "5"
                [detail] = response.json()["detail"]
                assert detail["type"] == "service_unavailable"
                assert "127.0.0.1" not in detail["msg"]
            # The notebook ends during the outage; its worker keeps it.
            release.touch()
            await asyncio.to_thread(own_postgres.start)

            events = await watching
            found = await nb.get(execution_id)
    finally:
        if not own_postgres.is_running():
            await asyncio.to_thread(own_postgres.start)
    sequences = [event["sequence"] for event in events]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    kinds = [event["kind"] for event in events]
    assert kinds.count("FINISHED") == 1
    assert kinds[-1] == "FINISHED"
    assert events[-1]["status"] == "SUCCEEDED"
    assert found is not None
    assert found["status"] == "SUCCEEDED"
    assert found["attempts"] == 1


@pytest.mark.asyncio
async def test_credentials_that_cannot_be_checked_get_a_503(
    tmp_path: Path,
    jupyter_server: Any,
    own_postgres: PrivatePostgres,
    redis_url: str,
) -> None:
    database_url = await asyncio.to_thread(own_postgres.create_database)
    config = make_config(
        tmp_path,
        jupyter_server,
        database_url=database_url,
        redis_url=redis_url,
        auth_mode="tokens",
        token_cache_seconds=0,
    )
    try:
        async with (
            asyncio.timeout(TIMEOUT),
            running(config, run_worker=False) as nb,
            httpx.AsyncClient(timeout=60) as http,
        ):
            database = Database.from_url(database_url)
            try:
                token, _ = await TokenService(database=database).create(
                    user="alice", scopes=[USER_SCOPE]
                )
            finally:
                await database.aclose()
            query = "query { executions(first: 1) { edges { cursor } } }"
            ok = await _post(http, nb.url, query, token=token)
            assert ok.status_code == 200, ok.text

            await asyncio.to_thread(own_postgres.stop, "fast")
            refused = await _post(http, nb.url, query, token=token)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "5"
            [error] = refused.json()["errors"]
            assert error["extensions"] == UNAVAILABLE

            await asyncio.to_thread(own_postgres.start)
            again = await _post(http, nb.url, query, token=token)
            assert again.status_code == 200, again.text
            assert "errors" not in again.json()
    finally:
        if not own_postgres.is_running():
            await asyncio.to_thread(own_postgres.start)


@pytest.mark.asyncio
async def test_the_client_follows_an_execution_across_an_outage(
    tmp_path: Path,
    jupyter_server: Any,
    own_postgres: PrivatePostgres,
    redis_url: str,
) -> None:
    database_url = await asyncio.to_thread(own_postgres.create_database)
    config = make_config(
        tmp_path, jupyter_server, database_url=database_url, redis_url=redis_url
    )
    try:
        async with (
            asyncio.timeout(TIMEOUT),
            running(config) as nb,
            NoteburstClient(nb.url, timeout=30) as client,
        ):
            execution = await client.submit(notebook("1 + 1"))
            await nb.watch(execution["id"])  # it has finished
            with capture_logs() as logs:
                await asyncio.to_thread(own_postgres.stop, "fast")
                following = asyncio.create_task(
                    _collect(client.follow(execution["id"], after_sequence=0))
                )

                async def refused() -> bool:
                    return any("service unavailable" in e["event"] for e in logs)

                await wait_until(refused, "the subscription is refused")
                await asyncio.to_thread(own_postgres.start)
            events = await following
    finally:
        if not own_postgres.is_running():
            await asyncio.to_thread(own_postgres.start)
    sequences = [event["sequence"] for event in events]
    assert sequences == list(range(1, len(sequences) + 1))
    assert [event["kind"] for event in events].count("FINISHED") == 1
    assert events[-1]["status"] == "SUCCEEDED"


async def _collect(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event async for event in events]


def test_client_errors_say_whether_to_retry() -> None:
    outage = _errors_error(
        [
            {
                "message": "The database is unavailable right now; retry shortly.",
                "extensions": UNAVAILABLE,
            }
        ]
    )
    assert (outage.retryable, outage.retry_after_seconds) == (True, 5)
    mixed = _errors_error(
        [{"message": "x", "extensions": UNAVAILABLE}, {"message": "Unexpected error."}]
    )
    assert not mixed.retryable
