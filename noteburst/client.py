"""A small Noteburst GraphQL client, used by ``noteburst run``.

It speaks plain GraphQL over HTTP (httpx) and the graphql-transport-ws
protocol over websockets.  It is written here rather than taken from ``gql``
because the CLI needs only two operations and ``gql`` would pull aiohttp and
its transports into every installation; the tests, in turn, use ``gql``
against the server so that the server is checked by a client nobody here
wrote.

Like the HTTP connection, one websocket serves every :meth:`NoteburstClient.watch`
of a client, each watch one operation on it (graphql-transport-ws multiplexes
them by id): a dashboard backend watching an execution per page view then
pays the websocket handshake and ``connection_init`` once, not per page view
(each is a round trip on the page view's path).  The connection is
opened on first use and again after it is lost; a watch that was running
when it was lost raises :class:`NoteburstClientError` (resume it with
``after_sequence``).

Errors say whether trying again may help (``retryable``): a lost
connection, HTTP 503, or the server's ``service_unavailable`` errors while
its database is down.  :meth:`NoteburstClient.follow` is the watch that
does so by itself, resuming after the last event it yielded, so a caller
sees every event once across API restarts and database outages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Self

import httpx
from websockets.asyncio.client import ClientConnection, connect
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
subscription Watch($id: ID!, $after: Int, $kinds: [EventKind!]) {
  executionStatus(id: $id, afterSequence: $after, kinds: $kinds) {
    sequence kind status cellIndex cellsDone message
    execution { EXECUTION_FIELDS }
  }
}
""".replace("EXECUTION_FIELDS", EXECUTION_FIELDS)

RESULT = """
query Result($id: ID!) { execution(id: $id) { status notebook } }
"""


class NoteburstClientError(Exception):
    """The server refused a request or answered with errors.

    Attributes
    ----------
    retryable
        Whether the same request may succeed later: the connection was
        lost, or the server said so (HTTP 503, ``retryable`` errors).
    retry_after_seconds
        How long the server asked to wait, if it did.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_seconds = retry_after_seconds


def _errors_error(errors: list[dict[str, Any]]) -> NoteburstClientError:
    """Build the exception for a GraphQL ``errors`` list (retryable if all are)."""
    extensions = [error.get("extensions") or {} for error in errors]
    retryable = bool(errors) and all(ext.get("retryable") for ext in extensions)
    waits = [
        ext["retryAfterSeconds"] for ext in extensions if ext.get("retryAfterSeconds")
    ]
    return NoteburstClientError(
        "; ".join(error.get("message", "?") for error in errors),
        retryable=retryable,
        retry_after_seconds=max(waits) if retryable and waits else None,
    )


RETRY_FIRST_SECONDS = 0.5
"""First pause of :meth:`NoteburstClient.follow` after a retryable error."""
RETRY_MAX_SECONDS = 5.0
"""Longest pause between two attempts of :meth:`NoteburstClient.follow`."""


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
        # One HTTP client for every request: building one loads an SSL
        # context and starts an empty connection pool, work that a client
        # making many small requests should do once, not per request.
        self._http: httpx.AsyncClient | None = None
        self._socket: _SharedSocket | None = None
        self._socket_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (the client can be used again after)."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.aclose()

    async def _shared_socket(self) -> _SharedSocket:
        """Return the open websocket, opening one if there is none."""
        async with self._socket_lock:
            if self._socket is None or self._socket.closed:
                ws_url = "ws" + self._url.removeprefix("http")
                self._socket = await _SharedSocket.open(
                    ws_url, self._timeout, self._auth
                )
            return self._socket

    async def _post(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout, headers=self._auth)
        response = await self._http.post(
            self._url, json={"query": query, "variables": variables}
        )
        if response.status_code != httpx.codes.OK:
            msg = f"HTTP {response.status_code}: {response.text[:500]}"
            retry_after = response.headers.get("retry-after", "")
            raise NoteburstClientError(
                msg,
                retryable=response.status_code == httpx.codes.SERVICE_UNAVAILABLE,
                retry_after_seconds=float(retry_after)
                if retry_after.isdigit()
                else None,
            )
        body: dict[str, Any] = response.json()
        if body.get("errors"):
            raise _errors_error(body["errors"])
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
        self,
        execution_id: str,
        *,
        after_sequence: int | None = None,
        kinds: Sequence[str] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield the execution's events until it ends (graphql-transport-ws).

        ``kinds`` (names of ``EventKind`` values) keeps only those events
        and the terminal one; `None` yields every event.
        """
        socket = await self._shared_socket()
        variables: dict[str, Any] = {"id": execution_id, "after": after_sequence}
        if kinds is not None:
            variables["kinds"] = [kind.upper() for kind in kinds]
        async with socket.operation(WATCH, variables) as results:
            while True:
                message = await results.get()
                kind = message.get("type")
                if kind == "next":
                    payload = message["payload"]
                    if payload.get("errors"):
                        raise _errors_error(payload["errors"])
                    yield payload["data"]["executionStatus"]
                elif kind == "error":
                    raise _errors_error(message["payload"])
                elif kind == "complete":
                    return
                else:  # the connection was lost
                    msg = f"the subscription connection was lost: {message['reason']}"
                    raise NoteburstClientError(msg, retryable=True)

    async def follow(
        self,
        execution_id: str,
        *,
        after_sequence: int | None = None,
        kinds: Sequence[str] | None = None,
        give_up_after: float = 300.0,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Like :meth:`watch`, but resumes after retryable errors.

        After a lost connection or a ``retryable`` error, waits (the
        server's ``retryAfterSeconds`` when given, else a backoff from
        ``RETRY_FIRST_SECONDS`` doubling to ``RETRY_MAX_SECONDS``) and
        subscribes again after the last sequence yielded, so each event is
        yielded once.

        Parameters
        ----------
        after_sequence, kinds
            As for :meth:`watch` (the first subscription's resume point).
        give_up_after
            Seconds of consecutive failures after which the last error is
            raised.

        Raises
        ------
        NoteburstClientError
            A non-retryable error, or retryable ones for ``give_up_after``.
        """
        loop = asyncio.get_running_loop()
        after = after_sequence
        failing_since: float | None = None
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                async for event in self.watch(
                    execution_id, after_sequence=after, kinds=kinds
                ):
                    failing_since, delay = None, RETRY_FIRST_SECONDS
                    after = event["sequence"]
                    yield event
                return
            except NoteburstClientError as exc:
                now = loop.time()
                failing_since = now if failing_since is None else failing_since
                if not exc.retryable or now - failing_since >= give_up_after:
                    raise
                pause = exc.retry_after_seconds or delay
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            except OSError as exc:  # the server is not answering at all
                now = loop.time()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= give_up_after:
                    msg = f"the server cannot be reached: {exc}"
                    raise NoteburstClientError(msg, retryable=True) from exc
                pause = delay
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            await asyncio.sleep(pause)

    async def result_notebook(self, execution_id: str) -> dict[str, Any] | None:
        """Return the executed notebook, once the execution is terminal."""
        data = await self._post(RESULT, {"id": execution_id})
        execution = data["execution"]
        if execution is None:
            return None
        notebook: dict[str, Any] | None = execution["notebook"]
        return notebook


class _SharedSocket:
    """One graphql-transport-ws connection carrying many operations.

    A reader task routes each ``next``/``error``/``complete`` message to
    its operation's queue by id, and answers pings.  When the connection
    ends, every open operation gets a ``{"type": "lost", "reason": ...}``
    item and the socket is marked closed.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._operations: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._lost: str | None = None
        self._reader = asyncio.create_task(self._read(), name="noteburst-client-ws")

    @classmethod
    async def open(
        cls, url: str, open_timeout: float, init_payload: dict[str, Any]
    ) -> _SharedSocket:
        ws = await connect(
            url,
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            open_timeout=open_timeout,
            max_size=None,
            # Events are small and the server is near: deflating each frame
            # costs both sides CPU for nothing on the latency path.
            compression=None,
        )
        try:
            await ws.send(
                json.dumps({"type": "connection_init", "payload": init_payload})
            )
            ack = json.loads(await asyncio.wait_for(ws.recv(), open_timeout))
        except ConnectionClosed as exc:
            msg = f"server refused the subscription connection: {exc}"
            raise NoteburstClientError(msg) from exc
        except BaseException:
            await ws.close()
            raise
        if ack.get("type") != "connection_ack":
            await ws.close()
            msg = f"server refused the subscription connection: {ack}"
            raise NoteburstClientError(msg)
        return cls(ws)

    @property
    def closed(self) -> bool:
        """Whether the connection has ended (a new one is needed)."""
        return self._lost is not None

    @contextlib.asynccontextmanager
    async def operation(
        self, query: str, variables: dict[str, Any]
    ) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """Start an operation; yield the queue of its messages.

        Leaving early (the caller stopped iterating) sends ``complete`` so
        the server stops the subscription.
        """
        if self._lost is not None:
            msg = f"the subscription connection was lost: {self._lost}"
            raise NoteburstClientError(msg)
        op_id = str(uuid.uuid4())
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._operations[op_id] = queue
        finished = False
        try:
            await self._ws.send(
                json.dumps(
                    {
                        "id": op_id,
                        "type": "subscribe",
                        "payload": {"query": query, "variables": variables},
                    }
                )
            )
            yield queue
            finished = True
        finally:
            self._operations.pop(op_id, None)
            if not finished and self._lost is None:
                with contextlib.suppress(ConnectionClosed):
                    await self._ws.send(json.dumps({"id": op_id, "type": "complete"}))

    async def _read(self) -> None:
        reason = "closed"
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "ping":
                    await self._ws.send(json.dumps({"type": "pong"}))
                    continue
                queue = self._operations.get(message.get("id", ""))
                if queue is not None:
                    queue.put_nowait(message)
                    if kind in {"error", "complete"}:
                        self._operations.pop(message["id"], None)
        except ConnectionClosed as exc:
            reason = str(exc)
        except Exception as exc:  # every watcher must hear of it
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self._lost = reason
            for queue in self._operations.values():
                queue.put_nowait({"type": "lost", "reason": reason})
            self._operations.clear()

    async def aclose(self) -> None:
        """Close the connection and stop the reader."""
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
