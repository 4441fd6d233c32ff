"""An execution's live page in a real headless Chromium (noteburst/api/live.py).

A real Noteburst (embedded default) on the session's jupyter_server runs
notebooks whose cells wait for files the test creates, so the test decides
when each output happens and checks the DOM in between: outputs appearing
while a cell still runs, cell states and progress, a websocket dropped and
restored in the middle (Playwright's websocket routing proxies the page's
socket to Noteburst, and the test closes both ends and refuses reconnections
while "offline"), and a final page that equals the executed notebook as
GraphQL returns it.  No test may leave an error in the browser's console.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, WebSocketRoute, expect

from noteburst.constants import USER_SCOPE
from noteburst.services.auth import TokenService
from noteburst.storage.database import Database
from tests.support.app import Noteburst, make_config, running
from tests.support.browser import chromium, open_page
from tests.support.notebooks import held_until, notebook
from tests.support.outputs import OUTPUT_CASES, notebook_outputs
from tests.support.waiting import wait_until

WAIT = 60
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
SUBMIT_ID = """
mutation Submit($nb: JSON!) {
  submitExecution(input: {notebook: $nb}) { ... on Execution { id } }
}
"""


class Sockets:
    """The page's websockets, proxied to Noteburst, that the test can cut.

    ``sent`` keeps every graphql-transport-ws message the page sent, so the
    test sees the ``afterSequence`` of each subscription on the wire.
    """

    def __init__(self) -> None:
        self.online = True
        self.open: list[tuple[WebSocketRoute, WebSocketRoute]] = []
        self.sent: list[dict[str, Any]] = []
        self.refused = 0

    async def handle(self, page_side: WebSocketRoute) -> None:
        if not self.online:
            self.refused += 1
            await page_side.close(code=1011, reason="offline")
            return
        server_side = page_side.connect_to_server()

        def forward(message: str | bytes) -> None:
            if isinstance(message, str):
                self.sent.append(json.loads(message))
            server_side.send(message)

        page_side.on_message(forward)
        self.open.append((page_side, server_side))

    async def drop(self) -> None:
        """Close every open socket at both ends; refuse new ones."""
        self.online = False
        while self.open:
            page_side, server_side = self.open.pop()
            await server_side.close()
            await page_side.close(code=1011, reason="network dropped")

    def subscriptions(self) -> list[int | None]:
        """The ``afterSequence`` of every subscription the page started."""
        return [
            message["payload"]["variables"]["after"]
            for message in self.sent
            if message.get("type") == "subscribe"
        ]


async def _page_outputs(page: Page, expression: str) -> dict[int, list[Any]]:
    raw: dict[str, list[Any]] = await page.evaluate(expression)
    return {int(index): outputs for index, outputs in raw.items()}


async def _assert_dom_matches(page: Page, executed: dict[str, Any]) -> None:
    """Every code cell shows exactly the executed notebook's outputs."""
    for index, cell in enumerate(executed["cells"]):
        section = page.locator(f"#cell-{index}")
        if cell["cell_type"] != "code":
            continue
        outputs = section.locator(".outputs > .output")
        await expect(outputs).to_have_count(len(cell["outputs"]))
        for position, output in enumerate(cell["outputs"]):
            shown = outputs.nth(position)
            assert (
                await shown.get_attribute("data-output-type") == (output["output_type"])
            )
            if output["output_type"] == "stream":
                text = output["text"]
                expected = "".join(text) if isinstance(text, list) else text
                assert await shown.text_content() == ANSI_ESCAPE.sub("", expected)


@pytest.mark.asyncio
async def test_outputs_arrive_live_and_survive_a_dropped_socket(
    tmp_path: Path, jupyter_server: Any
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    source = notebook(
        "# md:## A *live* page",
        "print('one\\n', end='', flush=True)\n" + held_until(first) + "\n"
        "print('two\\n', end='')",
        held_until(second) + "\nprint('three\\n', end='')",
        "print('four\\n', end='')",
    )
    sockets = Sockets()
    async with (
        running(make_config(tmp_path, jupyter_server)) as nb,
        chromium() as browser,
        open_page(browser, tmp_path, "live") as watched,
    ):
        page = watched.page
        await page.route_web_socket("**/graphql", sockets.handle)
        submitted = await nb.submit(source)
        execution_id = submitted["id"]
        await page.goto(f"{nb.url}/executions/{execution_id}")

        # The markdown cell is rendered; the first code cell prints and waits.
        await expect(page.locator("#cell-0 h2 em")).to_have_text("live")
        cell1, cell2 = page.locator("#cell-1"), page.locator("#cell-2")
        await expect(cell1.locator(".output")).to_have_text(["one"])
        await expect(cell1).to_have_attribute("data-state", "running")
        await expect(cell2).to_have_attribute("data-state", "queued")
        await expect(page.locator(".progress-text")).to_have_text("0 / 3 cells")
        await expect(page.locator(".execution")).to_have_attribute(
            "data-connection", "live"
        )
        applied = int(
            await page.locator(".execution").get_attribute("data-sequence") or 0
        )
        assert applied > 0

        # The network drops; meanwhile the first cell ends and the second starts.
        await sockets.drop()
        await expect(page.locator(".execution")).to_have_attribute(
            "data-connection", "reconnecting"
        )
        first.touch()
        await wait_until(
            lambda: _cells_done(nb, execution_id, 1),
            "the first cell ends",
            timeout=WAIT,
        )
        await wait_until(
            lambda: _refused(sockets), "the page tries to reconnect", timeout=WAIT
        )
        # Nothing reached the page while it was cut off.
        await expect(cell1.locator(".output")).to_have_text(["one"])

        # Back online: it resumes after the last sequence it applied.
        sockets.online = True
        await expect(cell1.locator(".output")).to_have_text(["one", "two"])
        await expect(cell1).to_have_attribute("data-state", "done")
        await expect(cell2).to_have_attribute("data-state", "running")
        await expect(page.locator(".progress-text")).to_have_text("1 / 3 cells")
        after = sockets.subscriptions()
        assert after[0] == 0
        assert len(after) >= 2
        assert after[-1] is not None
        assert after[-1] >= applied

        second.touch()
        await expect(page.locator(".execution")).to_have_attribute(
            "data-phase", "final", timeout=WAIT * 1000
        )
        fetched = await nb.get(execution_id)
        assert fetched is not None
        assert fetched["status"] == "SUCCEEDED"
        executed = fetched["notebook"]
        # What the events built is the executed notebook: nothing lost,
        # nothing applied twice, across the drop.
        live = await _page_outputs(page, "noteburstLive.liveOutputsAtFinish")
        assert live == notebook_outputs(executed)
        await _assert_dom_matches(page, executed)
        await expect(page.locator(".progress-text")).to_have_text("3 / 3 cells")
        await expect(page.locator(".cell.code")).to_have_count(3)
        for index in (1, 2, 3):
            await expect(page.locator(f"#cell-{index}")).to_have_attribute(
                "data-state", "done"
            )
        await expect(page.locator(".status")).to_have_text("succeeded")
        watched.assert_no_errors()


async def _cells_done(nb: Noteburst, execution_id: str, count: int) -> bool:
    found = await nb.get(execution_id)
    return found is not None and found["progress"]["cellsDone"] >= count


async def _refused(sockets: Sockets) -> bool:
    return sockets.refused > 0


RICH_CELLS = (
    "from IPython.display import HTML, SVG, Image, Markdown, display\n"
    'display(HTML(\'<table><tr><td class="cell-html">html <b>bold</b></td></tr>'
    '</table><script>document.title = "changed by output"</script>\'))',
    # A 1x1 red PNG.
    "import base64\n"
    "display(Image(data=base64.b64decode("
    "'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==')))",
    'display(SVG(\'<svg xmlns="http://www.w3.org/2000/svg" width="20" '
    'height="10"><rect width="20" height="10" fill="blue"/></svg>\'))',
    "display(Markdown('## Heading from *markdown*'))",
    "print('\\x1b[31mred text\\x1b[0m <b>not html</b>')",
    "'<i>a plain string, not HTML</i>'",
)


@pytest.mark.asyncio
async def test_rich_outputs_and_an_error_render(
    tmp_path: Path, jupyter_server: Any
) -> None:
    cells = (*RICH_CELLS, *OUTPUT_CASES)
    source = notebook(*cells)
    clear_cell = len(RICH_CELLS) + 3  # OUTPUT_CASES' animation
    updated_cell = len(RICH_CELLS) + 4  # its display updated later
    cleared_cell = len(RICH_CELLS) + 6
    failing_cell = len(RICH_CELLS) + 7
    async with (
        running(make_config(tmp_path, jupyter_server)) as nb,
        chromium() as browser,
        open_page(browser, tmp_path, "rich") as watched,
    ):
        page = watched.page
        submitted = await nb.submit(source)
        execution_id = submitted["id"]
        await page.goto(f"{nb.url}/executions/{execution_id}")
        await expect(page.locator(".execution")).to_have_attribute(
            "data-phase", "final", timeout=WAIT * 1000
        )
        fetched = await nb.get(execution_id)
        assert fetched is not None
        assert fetched["status"] == "FAILED"
        executed = fetched["notebook"]
        live = await _page_outputs(page, "noteburstLive.liveOutputsAtFinish")
        assert live == notebook_outputs(executed)
        await _check_rich_page(
            page,
            clear_cell=clear_cell,
            updated_cell=updated_cell,
            cleared_cell=cleared_cell,
            failing_cell=failing_cell,
        )
        await _assert_dom_matches(page, executed)
        watched.assert_no_errors()

    # Opened once terminal, the page draws the stored notebook with no socket.
    async with (
        running(make_config(tmp_path, jupyter_server)) as nb,
        chromium() as browser,
        open_page(browser, tmp_path, "rich-final") as watched,
    ):
        page = watched.page
        sockets: list[str] = []
        page.on("websocket", lambda socket: sockets.append(socket.url))
        await page.goto(f"{nb.url}/executions/{execution_id}")
        await expect(page.locator(".execution")).to_have_attribute(
            "data-phase", "final"
        )
        await _check_rich_page(
            page,
            clear_cell=clear_cell,
            updated_cell=updated_cell,
            cleared_cell=cleared_cell,
            failing_cell=failing_cell,
        )
        await _assert_dom_matches(page, executed)
        assert sockets == []
        watched.assert_no_errors()


async def _check_rich_page(
    page: Page,
    *,
    clear_cell: int,
    updated_cell: int,
    cleared_cell: int,
    failing_cell: int,
) -> None:
    # HTML output is HTML; its script did not run.
    await expect(page.locator("#cell-0 td.cell-html b")).to_have_text("bold")
    assert await page.title() != "changed by output"
    # Images are decoded.
    for index, mime, size in ((1, "image/png", 1), (2, "image/svg+xml", 20)):
        image = page.locator(f'#cell-{index} img[data-mime="{mime}"]')
        await expect(image).to_have_count(1)
        width = await image.evaluate("(img) => img.complete && img.naturalWidth")
        assert width == size, (mime, width)
    # Markdown is rendered.
    await expect(page.locator("#cell-3 .markdown h2 em")).to_have_text("markdown")
    # ANSI colours become classes; plain text is never HTML.
    stream = page.locator("#cell-4 .output pre.stream")
    await expect(stream.locator("span.ansi-red-fg")).to_have_text("red text")
    await expect(stream).to_contain_text("<b>not html</b>")
    await expect(stream.locator("b")).to_have_count(0)
    plain = page.locator('#cell-5 [data-mime="text/plain"]')
    await expect(plain).to_have_text("'<i>a plain string, not HTML</i>'")
    await expect(plain.locator("i")).to_have_count(0)
    # clear_output(wait=True) left the last frame; a later update changed a display.
    await expect(page.locator(f"#cell-{clear_cell} .output")).to_have_text(
        ["frame 4", "frame 4"]
    )
    await expect(page.locator(f"#cell-{updated_cell} .output")).to_have_text(
        ["'third'", "between"]
    )
    await expect(page.locator(f"#cell-{cleared_cell} .output")).to_have_text(["stays"])
    # The error: its cell is marked, the traceback is coloured, cells after
    # it did not run.
    failing = page.locator(f"#cell-{failing_cell}")
    await expect(failing).to_have_attribute("data-state", "error")
    await expect(failing.locator('.output[data-output-type="error"]')).to_contain_text(
        "ZeroDivisionError"
    )
    error = page.locator(".execution-error")
    await expect(error).to_be_visible()
    await expect(error.locator("h2")).to_contain_text("cell error")
    await expect(error.locator("a.error-cell")).to_have_attribute(
        "href", f"#cell-{failing_cell}"
    )
    await expect(
        error.locator("pre.traceback span[class^='ansi-']").first
    ).to_be_visible()
    await expect(page.locator(f"#cell-{failing_cell + 1}")).to_have_attribute(
        "data-state", "skipped"
    )
    await expect(page.locator(".status")).to_have_text("failed")


@pytest.mark.asyncio
async def test_unknown_execution_is_a_404_page(
    tmp_path: Path, jupyter_server: Any
) -> None:
    async with (
        running(make_config(tmp_path, jupyter_server)) as nb,
        chromium() as browser,
        open_page(browser, tmp_path, "not-found") as watched,
    ):
        page = watched.page
        response = await page.goto(f"{nb.url}/executions/no-such-id")
        assert response is not None
        assert response.status == 404
        await expect(page.locator("h1")).to_have_text("Execution not found")
        await expect(page.locator(".problem p")).to_contain_text("no-such-id")
        # Chromium logs the document's own 404 as a failed load; nothing else.
        assert len(watched.errors) <= 1, watched.errors
        assert all("404" in error for error in watched.errors), watched.errors


@pytest.mark.asyncio
async def test_tokens_mode_asks_for_the_token_and_keeps_it_out_of_urls(
    tmp_path: Path, jupyter_server: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    release = tmp_path / "release"
    source = notebook(
        "print('one\\n', end='', flush=True)\n" + held_until(release),
        "print('two\\n', end='')",
    )
    config = make_config(tmp_path, jupyter_server, auth_mode="tokens")
    sockets = Sockets()
    async with (
        running(config) as nb,
        chromium() as browser,
        open_page(browser, tmp_path, "tokens") as watched,
    ):
        database = Database.from_url(config.effective_database_url)
        try:
            token, _ = await TokenService(database=database).create(
                user="alice", scopes=[USER_SCOPE]
            )
        finally:
            await database.aclose()
        async with httpx.AsyncClient(timeout=60) as http:
            response = await http.post(
                nb.url + "/graphql",
                json={"query": SUBMIT_ID, "variables": {"nb": source}},
                headers={"Authorization": f"Bearer {token}"},
            )
        execution_id = response.json()["data"]["submitExecution"]["id"]

        page = watched.page
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        page.on("websocket", lambda socket: urls.append(socket.url))
        await page.route_web_socket("**/graphql", sockets.handle)
        navigation = await page.goto(f"{nb.url}/executions/{execution_id}")
        assert navigation is not None
        assert navigation.status == 401
        await page.locator("#token").fill(token)
        await page.locator("#token-form button").click()
        cell = page.locator("#cell-0")
        await expect(cell.locator(".output")).to_have_text(["one"])
        await expect(cell).to_have_attribute("data-state", "running")
        release.touch()
        await expect(page.locator(".execution")).to_have_attribute(
            "data-phase", "final", timeout=WAIT * 1000
        )
        await expect(page.locator("#cell-1 .output")).to_have_text(["two"])
        # Reloading this tab needs no second typing (sessionStorage).
        await page.reload()
        await expect(page.locator(".execution")).to_have_attribute(
            "data-phase", "final"
        )
        await expect(page.locator("#cell-1 .output")).to_have_text(["two"])
        # The websocket got the token in connection_init, not in its URL.
        inits = [m for m in sockets.sent if m["type"] == "connection_init"]
        assert inits
        assert inits[0]["payload"] == {"Authorization": f"Bearer {token}"}
        # Chromium logs each 401 navigation as a failed load; nothing else.
        assert all("401" in error for error in watched.errors), watched.errors
    assert urls
    assert not [url for url in urls if token in url or "nbt_" in url]
    out, err = capfd.readouterr()
    assert token not in out + err


@pytest.mark.asyncio
async def test_behind_an_ingress_the_user_header_is_enough(
    tmp_path: Path, jupyter_server: Any
) -> None:
    release = tmp_path / "release"
    source = notebook(
        "print('one\\n', end='', flush=True)\n" + held_until(release),
        "print('two\\n', end='')",
    )
    config = make_config(
        tmp_path, jupyter_server, auth_mode="proxy", trusted_proxies=["127.0.0.0/8"]
    )
    ingress = {"X-Auth-Request-User": "alice"}
    async with (
        running(config) as nb,
        chromium() as browser,
        open_page(browser, tmp_path, "proxy") as watched,
    ):
        async with httpx.AsyncClient(timeout=60) as http:
            response = await http.post(
                nb.url + "/graphql",
                json={"query": SUBMIT_ID, "variables": {"nb": source}},
                headers=ingress,
            )
        execution_id = response.json()["data"]["submitExecution"]["id"]
        page = watched.page
        # What the ingress adds to every request, the websocket's included.
        await page.set_extra_http_headers(ingress)
        await page.goto(f"{nb.url}/executions/{execution_id}")
        await expect(page.locator("#cell-0 .output")).to_have_text(["one"])
        await expect(page.locator(".execution")).to_have_attribute(
            "data-connection", "live"
        )
        release.touch()
        await expect(page.locator(".execution")).to_have_attribute(
            "data-phase", "final", timeout=WAIT * 1000
        )
        await expect(page.locator("#cell-1 .output")).to_have_text(["two"])
        watched.assert_no_errors()


@pytest.mark.asyncio
async def test_the_form_submits_a_file_and_opens_its_live_page(
    tmp_path: Path, jupyter_server: Any
) -> None:
    path = tmp_path / "hello.ipynb"
    path.write_text(json.dumps(notebook("print('hello from a file')")))
    async with (
        running(make_config(tmp_path, jupyter_server)) as nb,
        chromium() as browser,
        open_page(browser, tmp_path, "form") as watched,
    ):
        page = watched.page
        await page.goto(f"{nb.url}/executions")
        await page.locator("#notebook-file").set_input_files(path)
        await page.locator("#submit-form button").click()
        await page.wait_for_url(re.compile(r"/executions/[^/]+$"))
        execution_id = page.url.rsplit("/", 1)[1]
        await expect(page.locator(".execution")).to_have_attribute(
            "data-phase", "final", timeout=WAIT * 1000
        )
        await expect(page.locator("#cell-0 .output")).to_have_text(
            ["hello from a file"]
        )
        fetched = await nb.get(execution_id)
        assert fetched is not None
        assert fetched["status"] == "SUCCEEDED"

        # Not a notebook: the refusal is shown, nothing is opened.
        await page.goto(f"{nb.url}/executions")
        bad = tmp_path / "bad.ipynb"
        bad.write_text('{"cells": "no"}')
        await page.locator("#notebook-file").set_input_files(bad)
        await page.locator("#submit-form button").click()
        await expect(page.locator(".form-message")).not_to_have_text(
            re.compile(r"^(|Submitting…)$")
        )
        assert page.url == f"{nb.url}/executions"
        watched.assert_no_errors()
