"""A small Noteburst GraphQL client, used by ``noteburst run``.

It speaks plain GraphQL over HTTP (httpx) and the graphql-transport-ws
protocol over websockets.  It is written here rather than taken from ``gql``
because the CLI needs only two operations and ``gql`` would pull aiohttp and
its transports into every installation; the tests, in turn, use ``gql``
against the server so that the server is checked by a client nobody here
wrote.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Self

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

__all__ = ["NoteburstClient", "NoteburstClientError"]

EXECUTION_FIELDS = """
  id status kernelName createdAt startedAt finishedAt attempts
  queue cacheHit cachedFrom sharesRunOf
  progress { cellsTotal cellsDone }
  error { code message cellIndex ename evalue traceback }
"""

SUBMIT = """
mutation Submit($input: SubmitExecutionInput!) {
  submitExecution(input: $input) {
    __typename
    ... on Execution { EXECUTION_FIELDS }
    ... on InvalidNotebook { message }
    ... on UnknownKernel { message }
    ... on InvalidInput { message }
    ... on InvalidParameters { message }
  }
}
""".replace("EXECUTION_FIELDS", EXECUTION_FIELDS)

WATCH = """
subscription Watch($id: ID!, $after: Int) {
  executionStatus(id: $id, afterSequence: $after) {
    sequence kind status cellIndex cellsDone message
    execution { EXECUTION_FIELDS }
  }
}
""".replace("EXECUTION_FIELDS", EXECUTION_FIELDS)

RESULT = """
query Result($id: ID!) { execution(id: $id) { status notebook } }
"""


class NoteburstClientError(Exception):
    """The server refused a request or answered with errors."""


class NoteburstClient:
    """Talk to one Noteburst server.

    Parameters
    ----------
    url
        Base URL of the server, e.g. ``http://127.0.0.1:8000``.
    timeout
        Seconds for each HTTP request and for the websocket handshake.
    token
        API token, sent as ``Authorization: Bearer`` on HTTP and in the
        websocket's connection_init payload; None for a server without
        authentication.
    """

    def __init__(
        self, url: str, *, timeout: float = 30.0, token: str | None = None
    ) -> None:
        self._url = url.rstrip("/") + "/graphql"
        self._timeout = timeout
        self._auth = {} if token is None else {"Authorization": f"Bearer {token}"}
        # One HTTP client for every request: building one (SSL context,
        # connection pool) costs 20-40 ms, a fifth of a warm execution.
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections (the client can be used again after)."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def _post(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout, headers=self._auth)
        response = await self._http.post(
            self._url, json={"query": query, "variables": variables}
        )
        if response.status_code != httpx.codes.OK:
            msg = f"HTTP {response.status_code}: {response.text[:500]}"
            raise NoteburstClientError(msg)
        body: dict[str, Any] = response.json()
        if body.get("errors"):
            raise NoteburstClientError(
                "; ".join(e.get("message", "?") for e in body["errors"])
            )
        data: dict[str, Any] = body["data"]
        return data

    async def submit(
        self,
        notebook: dict[str, Any],
        *,
        kernel_name: str | None = None,
        timeout_seconds: float | None = None,
        parameters: dict[str, Any] | None = None,
        queue: str | None = None,
        cache_mode: str | None = None,
        max_age_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Submit a notebook; return the queued execution's fields.

        ``queue`` (``INTERACTIVE``/``BATCH``) and ``cache_mode``
        (``USE``/``REFRESH``/``BYPASS``, with ``max_age_seconds``) are sent
        only when given, so the server's defaults apply otherwise.

        Raises
        ------
        NoteburstClientError
            Raised if the submission was refused, with the server's reason.
        """
        payload: dict[str, Any] = {"notebook": notebook}
        if kernel_name:
            payload["kernelName"] = kernel_name
        if timeout_seconds is not None:
            payload["timeoutSeconds"] = timeout_seconds
        if parameters:
            payload["parameters"] = parameters
        if queue is not None:
            payload["queue"] = queue.upper()
        if cache_mode is not None:
            payload["cache"] = {
                "mode": cache_mode.upper(),
                "maxAgeSeconds": max_age_seconds,
            }
        data = await self._post(SUBMIT, {"input": payload})
        result: dict[str, Any] = data["submitExecution"]
        if result["__typename"] != "Execution":
            msg = f"{result['__typename']}: {result['message']}"
            raise NoteburstClientError(msg)
        return result

    async def watch(
        self, execution_id: str, *, after_sequence: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the execution's events until it ends (graphql-transport-ws)."""
        ws_url = "ws" + self._url.removeprefix("http")
        async with connect(
            ws_url,
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            open_timeout=self._timeout,
            max_size=None,
        ) as ws:
            await ws.send(
                json.dumps({"type": "connection_init", "payload": self._auth})
            )
            try:
                ack = json.loads(await asyncio.wait_for(ws.recv(), self._timeout))
            except ConnectionClosed as exc:
                msg = f"server refused the subscription connection: {exc}"
                raise NoteburstClientError(msg) from exc
            if ack.get("type") != "connection_ack":
                msg = f"server refused the subscription connection: {ack}"
                raise NoteburstClientError(msg)
            op_id = str(uuid.uuid4())
            await ws.send(
                json.dumps(
                    {
                        "id": op_id,
                        "type": "subscribe",
                        "payload": {
                            "query": WATCH,
                            "variables": {"id": execution_id, "after": after_sequence},
                        },
                    }
                )
            )
            async for raw in ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                elif kind == "next":
                    payload = message["payload"]
                    if payload.get("errors"):
                        raise NoteburstClientError(
                            "; ".join(e["message"] for e in payload["errors"])
                        )
                    yield payload["data"]["executionStatus"]
                elif kind == "error":
                    raise NoteburstClientError(
                        "; ".join(e.get("message", "?") for e in message["payload"])
                    )
                elif kind == "complete":
                    return

    async def result_notebook(self, execution_id: str) -> dict[str, Any] | None:
        """Return the executed notebook, once the execution is terminal."""
        data = await self._post(RESULT, {"id": execution_id})
        execution = data["execution"]
        if execution is None:
            return None
        notebook: dict[str, Any] | None = execution["notebook"]
        return notebook
