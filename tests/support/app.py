"""Run Noteburst for a test and talk to it with ``gql``, a client we did not write.

``gql`` is told to speak graphql-transport-ws explicitly: it offers the
legacy graphql-ws protocol first otherwise, and Strawberry would pick that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gql import Client
from gql.graphql_request import GraphQLRequest
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol

from noteburst.app import serve_in_background
from noteburst.config import Config
from noteburst.storage.database import Database

EXECUTION_FIELDS = """
  id status kernelName attempts createdAt startedAt finishedAt
  progress { cellsTotal cellsDone }
  error { code message cellIndex ename evalue traceback }
  cellTimeoutSeconds noOutputTimeoutSeconds outputsTruncated cancelRequested
"""

CANCEL = f"""
mutation Cancel($id: ID!) {{
  cancelExecution(id: $id) {{
    __typename
    ... on Execution {{ {EXECUTION_FIELDS} }}
    ... on ExecutionNotFound {{ message id }}
  }}
}}
"""

SUBMIT = f"""
mutation Submit($input: SubmitExecutionInput!) {{
  submitExecution(input: $input) {{
    __typename
    ... on Execution {{ {EXECUTION_FIELDS} }}
    ... on InvalidNotebook {{ message }}
    ... on UnknownKernel {{ message kernelName availableKernels }}
    ... on InvalidInput {{ message field }}
    ... on InvalidParameters {{ message name }}
  }}
}}
"""

WATCH = f"""
subscription Watch($id: ID!, $after: Int, $kinds: [EventKind!]) {{
  executionStatus(id: $id, afterSequence: $after, kinds: $kinds) {{
    sequence kind status cellIndex cellsDone message outputStart outputs
    execution {{ {EXECUTION_FIELDS} }}
  }}
}}
"""

GET = f"""
query Get($id: ID!) {{ execution(id: $id) {{ {EXECUTION_FIELDS} notebook }} }}
"""

LIST = """
query List($first: Int, $after: String, $status: ExecutionStatus) {
  executions(first: $first, after: $after, status: $status) {
    edges { cursor node { id status } }
    pageInfo { hasNextPage endCursor }
  }
}
"""


@dataclass
class Noteburst:
    """A running Noteburst and clients for it."""

    url: str

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/graphql"

    async def execute(self, query: str, **variables: Any) -> dict[str, Any]:
        transport = HTTPXAsyncTransport(url=self.url + "/graphql", timeout=60)
        async with Client(transport=transport, execute_timeout=60) as session:
            result: dict[str, Any] = await session.execute(
                GraphQLRequest(query, variable_values=variables)
            )
            return result

    async def submit(self, notebook: Any, **fields: Any) -> dict[str, Any]:
        data = await self.execute(SUBMIT, input={"notebook": notebook, **fields})
        payload: dict[str, Any] = data["submitExecution"]
        return payload

    async def watch(
        self,
        execution_id: str,
        after: int | None = None,
        *,
        limit: int | None = None,
        on_event: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        kinds: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Subscribe and collect events until the server completes the stream.

        ``on_event`` is awaited with each event as it arrives (to act while
        the execution runs).
        """
        transport = WebsocketsTransport(
            url=self.ws_url,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            connect_timeout=30,
            ack_timeout=30,
        )
        events: list[dict[str, Any]] = []
        async with Client(transport=transport, execute_timeout=120) as session:
            request = GraphQLRequest(
                WATCH,
                variable_values={"id": execution_id, "after": after, "kinds": kinds},
            )
            async for result in session.subscribe(request):
                events.append(result["executionStatus"])
                if on_event is not None:
                    await on_event(result["executionStatus"])
                if limit is not None and len(events) >= limit:
                    break
        return events

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    async def handshake(
        self, *, origin: str | None = None, host: str | None = None
    ) -> str | int:
        """Open a graphql-transport-ws socket as a browser would.

        Returns the server's answer to ``connection_init`` once the handshake
        is accepted, else the handshake's HTTP status.  ``host`` addresses
        the request to that name while the TCP connection still goes to this
        instance (as a rebound DNS name would).
        """
        url = self.ws_url if host is None else f"ws://{host}/graphql"
        try:
            async with connect(
                url,
                host="127.0.0.1",
                port=self.port,
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

    async def get(self, execution_id: str) -> dict[str, Any] | None:
        data = await self.execute(GET, id=execution_id)
        found: dict[str, Any] | None = data["execution"]
        return found


def redis_namespace(tmp_path: Path) -> str:
    """A Redis key prefix of this test's own.

    ``tmp_path``'s name is unique within one pytest process only; under
    pytest-xdist two workers can give the same name to two tests, so the
    worker's id goes in too.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"nbtest-{worker}-{tmp_path.name}"


def make_config(
    tmp_path: Path,
    jupyter: Any,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    **overrides: Any,
) -> Config:
    """Config for a test instance on the session's jupyter_server."""
    return Config(
        data_dir=tmp_path / "data",
        database_url=database_url,
        redis_url=redis_url,
        jupyter_url=jupyter.url,
        jupyter_token=jupyter.token,
        redis_namespace=redis_namespace(tmp_path),
        **overrides,
    )


@contextlib.asynccontextmanager
async def running(
    config: Config, *, run_worker: bool = True
) -> AsyncIterator[Noteburst]:
    """Migrate the database and serve Noteburst (with an in-process worker)."""
    database = Database.from_url(config.effective_database_url)
    try:
        await database.upgrade()
    finally:
        await database.aclose()
    async with serve_in_background(config, run_worker=run_worker) as (url, task):
        instance = Noteburst(url)
        yield instance
        assert not task.done(), "the server stopped during the test"
