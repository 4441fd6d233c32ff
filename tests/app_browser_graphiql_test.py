"""GraphiQL in a real headless Chromium: it loads with no network but Noteburst's.

The page's assets are vendored (noteburst/api/graphiql.py); this checks what
an air-gapped user sees: every request the page makes goes to Noteburst
itself, the editor renders, nothing is logged as an error, and a query typed
into it gets its answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Route, expect

from noteburst.api.graphiql_example import EXAMPLE
from tests.support.app import make_config, running
from tests.support.browser import chromium, open_page


@pytest.mark.asyncio
async def test_graphiql_loads_offline_and_answers(
    tmp_path: Path, jupyter_server: Any
) -> None:
    elsewhere: list[str] = []

    async def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    async with (
        running(make_config(tmp_path, jupyter_server)) as nb,
        chromium() as browser,
        open_page(browser, tmp_path, "graphiql") as watched,
    ):
        page = watched.page
        await page.route("**/*", only_loopback)
        await page.goto(nb.url + "/graphql")
        await expect(page.get_by_test_id("graphiql-container")).to_be_visible()
        editor = page.locator(".graphiql-query-editor .CodeMirror")
        await editor.click()
        await page.evaluate(
            "document.querySelector('.graphiql-query-editor .CodeMirror')"
            ".CodeMirror.setValue('{ __typename }')"
        )
        await page.locator(".graphiql-execute-button").click()
        await expect(page.locator(".result-window")).to_contain_text('"Query"')
        watched.assert_no_errors()
    assert elsewhere == []


@pytest.mark.asyncio
async def test_graphiql_opens_on_an_example_that_runs_in_one_click(
    tmp_path: Path, jupyter_server: Any
) -> None:
    async with (
        running(make_config(tmp_path, jupyter_server)) as nb,
        chromium() as browser,
        open_page(browser, tmp_path, "graphiql-example") as watched,
    ):
        page = watched.page
        await page.goto(nb.url + "/graphql")
        query = page.locator(".graphiql-query-editor .CodeMirror")
        await expect(query).to_contain_text("mutation Submit($notebook: JSON!)")
        await expect(query).to_contain_text("subscription Watch($id: ID!)")
        variables = await page.evaluate(
            "document.querySelector('.graphiql-editor-tool .CodeMirror')"
            ".CodeMirror.getValue()"
        )
        assert json.loads(variables) == json.loads(EXAMPLE.variables)
        await page.locator(".graphiql-execute-button").click()
        result = page.locator(".result-window")
        await expect(result).to_contain_text('"__typename": "Execution"')
        await expect(result).to_contain_text('"kernelName": "python3"')
        watched.assert_no_errors()
