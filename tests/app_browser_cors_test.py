"""The example front end (examples/browser/) in headless Chromium, on two origins.

Noteburst runs with API tokens and lists one origin in ``cors_origins``: the
example's own server (examples/browser/serve.py, in a thread on its own
loopback port) reached as ``http://127.0.0.1:<port>``.  The same page
reached as ``http://localhost:<port>`` is another origin, not listed.

- On the listed origin the page submits a notebook (fetch, with the token
  in ``Authorization``) and watches it with the ``graphql-ws`` client (the
  token in ``connection_init``): the outputs it draws from ``CELL_OUTPUTS``
  events, ``clear_output`` and a display update included, end as the
  executed notebook's, and nothing is logged as an error.  With its
  websocket dropped after three events (Playwright's websocket routing), it
  subscribes again with ``afterSequence: 3`` and ends with the same outputs.
- On the other origin the browser refuses the mutation's preflight (the
  page sees a ``TypeError``) and the subscription's handshake (closed with
  1006), the only console errors are the browser's CORS and websocket
  refusals, and nothing was executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import runpy
import threading
from collections.abc import Awaitable, Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.async_api import Page, WebSocket, WebSocketRoute, expect

from noteburst.config import Config
from noteburst.constants import ADMIN_SCOPE, USER_SCOPE
from noteburst.services.auth import TokenService
from noteburst.storage.database import Database
from tests.support.app import Noteburst, make_config, running
from tests.support.browser import BrowserPage, chromium, open_page
from tests.support.notebooks import notebook
from tests.support.waiting import free_port

SERVE = Path(__file__).resolve().parent.parent / "examples" / "browser" / "serve.py"
TIMEOUT = 150.0

NOTEBOOK = notebook(
    "print('hello from the browser')",
    "# md:Markdown cells have no outputs.",
    "from IPython.display import clear_output\n"
    "print('gone')\n"
    "clear_output()\n"
    "print('kept')",
    "handle = display('first', display_id=True)\nhandle.update('second')",
    "6 * 7",
    "import sys\nprint('to stderr', file=sys.stderr)",
)
EXPECTED = {
    0: [("stream", "hello from the browser\n")],
    2: [("stream", "kept\n")],
    3: [("display_data", "'second'")],
    4: [("execute_result", "42")],
    5: [("stream", "to stderr\n")],
}


@contextlib.contextmanager
def _front_end() -> Iterator[int]:
    """The example's own static server on a free loopback port, stopped after."""
    make_server = runpy.run_path(str(SERVE))["make_server"]
    server: ThreadingHTTPServer = make_server("127.0.0.1", free_port())
    server.daemon_threads = False  # server_close() joins the request threads
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="example-front-end",
    )
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the front end's server did not stop"


async def _token(config: Config, user: str, scopes: list[str]) -> str:
    database = Database.from_url(config.effective_database_url)
    try:
        token, _ = await TokenService(database=database).create(
            user=user, scopes=scopes
        )
    finally:
        await database.aclose()
    return token


async def _graphql(nb: Noteburst, token: str, query: str, **variables: Any) -> Any:
    """An answer over HTTP as a server-side client gets it (no Origin)."""
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        response = await client.post(
            nb.url + "/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


async def _all_executions(nb: Noteburst, admin: str) -> list[dict[str, Any]]:
    data = await _graphql(
        nb, admin, "{ executions(first: 100) { edges { node { id owner } } } }"
    )
    return [edge["node"] for edge in data["executions"]["edges"]]


class _Sockets:
    """The websockets a page opens, and the graphql-transport-ws frames."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        page.on("websocket", self._opened)

    def _opened(self, ws: WebSocket) -> None:
        self.urls.append(ws.url)
        ws.on("framesent", lambda frame: self.sent.append(_frame(frame)))
        ws.on("framereceived", lambda frame: self.received.append(_frame(frame)))


def _frame(payload: str | bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(payload)
    return message


def _drop_after_three_events(
    connections: list[list[dict[str, Any]]],
) -> Callable[[WebSocketRoute], Awaitable[None]]:
    """A websocket route: forward, but close the first socket after 3 events.

    ``connections`` gets, per socket, the frames the page sent.  The page
    sees its socket close with 1001 (going away), as when a server restarts.
    """

    async def route(ws: WebSocketRoute) -> None:
        sent: list[dict[str, Any]] = []
        connections.append(sent)
        dropping = len(connections) == 1
        server = ws.connect_to_server()
        events = 0

        def to_server(message: str | bytes) -> None:
            sent.append(_frame(message))
            server.send(message)

        async def to_page(message: str | bytes) -> None:
            nonlocal events
            if dropping and events >= 3:
                return  # dropped
            ws.send(message)
            if dropping and _frame(message)["type"] == "next":
                events += 1
                if events == 3:
                    await ws.close(code=1001, reason="dropped by the test")
                    await server.close()

        ws.on_message(to_server)
        server.on_message(to_page)

    return route


async def _open_front_end(
    watched: BrowserPage, origin: str, nb: Noteburst, token: str
) -> Page:
    page = watched.page
    await page.goto(f"{origin}/?noteburst={quote(nb.url, safe='')}")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await expect(page.locator("#noteburst-url")).to_have_value(nb.url)
    await page.locator("#token").fill(token)
    return page


async def _cell_outputs(page: Page, index: int) -> list[tuple[str, str]]:
    outputs = page.locator(f'.cell[data-index="{index}"] .output')
    found: list[tuple[str, str]] = []
    for i in range(await outputs.count()):
        output = outputs.nth(i)
        kind = await output.get_attribute("data-output-type")
        found.append((kind or "", await output.text_content() or ""))
    return found


def _text(output: dict[str, Any]) -> str:
    if output["output_type"] == "stream":
        return str(output["text"])
    return str(output["data"]["text/plain"])


@pytest.mark.asyncio
async def test_a_listed_origin_submits_and_watches_with_graphql_ws(
    tmp_path: Path, jupyter_server: Any
) -> None:
    with _front_end() as port:
        origin = f"http://127.0.0.1:{port}"
        config = make_config(
            tmp_path, jupyter_server, auth_mode="tokens", cors_origins=[origin]
        )
        async with (
            asyncio.timeout(TIMEOUT),
            running(config) as nb,
            chromium() as browser,
            open_page(browser, tmp_path, "listed-origin") as watched,
        ):
            token = await _token(config, "alice", [USER_SCOPE])
            admin = await _token(config, "root", [ADMIN_SCOPE])
            sockets = _Sockets(watched.page)
            requested: list[str] = []
            watched.page.on("request", lambda request: requested.append(request.url))
            page = await _open_front_end(watched, origin, nb, token)
            await page.locator("#notebook").fill(json.dumps(NOTEBOOK))
            await page.locator("#submit").click()

            await expect(page.locator("#status")).to_have_text("SUCCEEDED")
            await expect(page.locator("#log")).to_contain_text("subscription complete")
            await expect(page.locator("#progress")).to_have_text("5/5 cells")
            await expect(page.locator("#problem")).to_have_text("")
            execution_id = await page.locator("#execution-id").input_value()

            # What the page drew from the events is the executed notebook.
            drawn = {i: await _cell_outputs(page, i) for i in EXPECTED}
            assert drawn == EXPECTED
            assert await page.locator('.cell[data-index="1"]').count() == 0
            assert await page.locator(".cell[data-state=done]").count() == 5
            found = await _graphql(
                nb,
                token,
                "query ($id: ID!) { execution(id: $id) { owner notebook } }",
                id=execution_id,
            )
            assert found["execution"]["owner"] == "alice"
            cells = found["execution"]["notebook"]["cells"]
            assert {
                i: [(o["output_type"], _text(o)) for o in cells[i]["outputs"]]
                for i in EXPECTED
            } == EXPECTED

            # graphql-ws spoke graphql-transport-ws, the token in its
            # connection_init payload; the token never went into a URL.
            assert sockets.urls == [nb.ws_url]
            sent = [message["type"] for message in sockets.sent]
            assert sent[:2] == ["connection_init", "subscribe"]
            assert sockets.sent[0]["payload"] == {"Authorization": f"Bearer {token}"}
            assert sockets.sent[1]["payload"]["variables"] == {
                "id": execution_id,
                "after": 0,
            }
            received = [message["type"] for message in sockets.received]
            assert received[0] == "connection_ack"
            assert received[-1] == "complete"
            assert "next" in received
            assert not [url for url in requested if token in url]

            # A websocket dropped in the middle of the events: the page
            # subscribes again after the last event it applied, and ends
            # with the same outputs.
            connections: list[list[dict[str, Any]]] = []
            await page.route_web_socket(
                nb.ws_url, _drop_after_three_events(connections)
            )
            page = await _open_front_end(watched, origin, nb, token)
            await page.locator("#notebook").fill(json.dumps(NOTEBOOK))
            await page.locator("#submit").click()
            await expect(page.locator("#status")).to_have_text("SUCCEEDED")
            await expect(page.locator("#log")).to_contain_text("subscription complete")
            await expect(page.locator("#log")).to_contain_text(
                "reconnecting (1/3) after event 3"
            )
            resumed_id = await page.locator("#execution-id").input_value()
            assert resumed_id != execution_id
            subscribed = [
                [
                    frame["payload"]["variables"]
                    for frame in frames
                    if frame["type"] == "subscribe"
                ]
                for frames in connections
            ]
            assert subscribed == [
                [{"id": resumed_id, "after": 0}],
                [{"id": resumed_id, "after": 3}],
            ]
            assert {i: await _cell_outputs(page, i) for i in EXPECTED} == EXPECTED
            watched.assert_no_errors()

            # Refusals are readable from a listed origin: a wrong token gets
            # 401 over HTTP (with CORS headers, so the page reads why) and
            # the subscription closed with 4403.
            async with open_page(browser, tmp_path, "listed-bad-token") as refused:
                page = await _open_front_end(refused, origin, nb, "nbt_not-a-token")
                await page.locator("#submit").click()
                await expect(page.locator("#problem")).to_contain_text(
                    "HTTP 401: authentication required"
                )
                await page.locator("#execution-id").fill(execution_id)
                await page.locator("#watch").click()
                await expect(page.locator("#problem")).to_contain_text(
                    "the subscription was closed (code 4403"
                )
                await expect(page.locator(".cell")).to_have_count(0)
            [unauthorized] = refused.errors
            assert "status of 401" in unauthorized
            executions = await _all_executions(nb, admin)
            assert sorted(e["id"] for e in executions) == sorted(
                [resumed_id, execution_id]
            )


# What Chromium logs, by design, when Noteburst refuses a page's origin: the
# CORS refusal of the preflight, the failed fetch behind it, and the refused
# websocket handshake.
REFUSALS = {
    "cors": re.compile(
        r"Access to fetch at 'http://127\.0\.0\.1:\d+/graphql' from origin "
        r"'http://localhost:\d+' has been blocked by CORS policy"
    ),
    "fetch": re.compile(r"Failed to load resource: net::ERR_FAILED"),
    "websocket": re.compile(
        r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/graphql' failed"
    ),
}


@pytest.mark.asyncio
async def test_another_origin_can_neither_read_nor_subscribe_nor_run(
    tmp_path: Path, jupyter_server: Any
) -> None:
    with _front_end() as port:
        listed = f"http://127.0.0.1:{port}"
        other = f"http://localhost:{port}"  # the same page, another origin
        config = make_config(
            tmp_path, jupyter_server, auth_mode="tokens", cors_origins=[listed]
        )
        async with (
            asyncio.timeout(TIMEOUT),
            running(config) as nb,
            chromium() as browser,
            open_page(browser, tmp_path, "other-origin") as watched,
        ):
            token = await _token(config, "alice", [USER_SCOPE])
            admin = await _token(config, "root", [ADMIN_SCOPE])
            sockets = _Sockets(watched.page)
            page = await _open_front_end(watched, other, nb, token)
            assert await page.evaluate("location.origin") == other

            # The mutation: the browser hides the answer from the page, and
            # Noteburst ran nothing (the preflight was refused first).
            await page.locator("#submit").click()
            await expect(page.locator("#status")).to_have_text("error")
            await expect(page.locator("#problem")).to_contain_text(
                "did not allow this origin (TypeError: Failed to fetch)"
            )
            assert await _all_executions(nb, admin) == []

            # The subscription, to an execution that exists (submitted by a
            # server-side client): the handshake is refused.
            submitted = await _graphql(
                nb,
                token,
                "mutation ($input: SubmitExecutionInput!) { submitExecution("
                "input: $input) { ... on Execution { id } } }",
                input={"notebook": notebook("1 + 1")},
            )
            execution_id = submitted["submitExecution"]["id"]
            await page.locator("#execution-id").fill(execution_id)
            await page.locator("#watch").click()
            await expect(page.locator("#status")).to_have_text("disconnected")
            await expect(page.locator("#problem")).to_contain_text(
                "the websocket could not be opened or broke (code 1006"
            )
            # It tried again (a dropped connection looks the same), then gave up.
            await expect(page.locator("#log")).to_contain_text("reconnecting (3/3)")
            await expect(page.locator("#log")).to_contain_text("closed (code 1006)")
            await expect(page.locator(".cell")).to_have_count(0)
            assert "websocket: connected" not in (
                await page.locator("#log").text_content() or ""
            )
            assert set(sockets.urls) == {nb.ws_url}
            assert sockets.received == []
            assert [e["id"] for e in await _all_executions(nb, admin)] == [execution_id]

        kinds = set()
        for error in watched.errors:
            matching = [k for k, pattern in REFUSALS.items() if pattern.search(error)]
            assert matching, f"an error other than the origin's refusal: {error}"
            kinds.update(matching)
        assert kinds == set(REFUSALS)
