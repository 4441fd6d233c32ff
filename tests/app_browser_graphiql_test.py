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
from urllib.parse import urlencode, urlsplit

import pytest
from playwright.async_api import Route, expect

from noteburst.api.graphiql_example import EXAMPLE, ID_PLACEHOLDER
from tests.support.app import make_config, running
from tests.support.browser import chromium, open_page
from tests.support.notebooks import notebook


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
        # CodeMirror draws only the lines in view: compare what it holds.
        query_text, variables, _headers = await page.evaluate(EDITOR_VALUES)
        assert query_text == EXAMPLE.query
        assert json.loads(variables) == json.loads(EXAMPLE.variables)
        run = page.locator(".graphiql-execute-button")
        await run.click()  # one click: Submit, though the document has two
        result = page.locator(".result-window")
        await expect(result).to_contain_text('"__typename": "Execution"')
        await expect(result).to_contain_text('"kernelName": "python3"')
        answer = json.loads(await page.evaluate(RESULT_VALUE))
        execution_id = answer["data"]["submitExecution"]["id"]

        # Step 2 as the comment says: paste the id, run Watch from the menu.
        pasted = variables.replace(ID_PLACEHOLDER, execution_id)
        await page.evaluate(
            "(text) => document.querySelector('.graphiql-editor-tool .CodeMirror')"
            ".CodeMirror.setValue(text)",
            pasted,
        )
        # Edited: GraphiQL asks which operation again (once it has the edit).
        await expect(run).to_have_attribute("aria-haspopup", "menu")
        await run.click()
        await page.get_by_role("menuitem", name="Watch").click()
        await expect(result).to_contain_text('"kind": "FINISHED"')
        await expect(result).to_contain_text('"status": "SUCCEEDED"')
        watched.assert_no_errors()


EDITOR_VALUES = (
    "[...document.querySelectorAll('.graphiql-editor .CodeMirror')]"
    ".map((e) => e.CodeMirror.getValue())"
)
RESULT_VALUE = (
    "document.querySelector('.result-window .CodeMirror').CodeMirror.getValue()"
)

SHARED_QUERY = """mutation Shared($notebook: JSON!) {
  submitExecution(input: {notebook: $notebook}) {
    __typename
    ... on Execution { id kernelName }
  }
}

query Other { __typename }
"""


@pytest.mark.asyncio
async def test_share_link_opens_graphiql_prefilled_and_runs(
    tmp_path: Path, jupyter_server: Any
) -> None:
    """A link with "+" for spaces (as forms and urlencode write) opens prefilled."""
    shared_notebook = notebook("total = 1 + 1\nprint(total)")
    variables = json.dumps({"notebook": shared_notebook})
    link = "/graphql?" + urlencode(
        {"query": SHARED_QUERY, "variables": variables, "operationName": "Shared"}
    )
    assert "+" in link
    assert "%20" not in link
    assert "%2B" in link  # the notebook's own "+" stays a "+"
    async with (
        running(make_config(tmp_path, jupyter_server)) as nb,
        chromium() as browser,
        open_page(browser, tmp_path, "graphiql-share-link") as watched,
    ):
        page = watched.page
        await page.goto(nb.url + link)
        query = page.locator(".graphiql-query-editor .CodeMirror")
        await expect(query).to_contain_text("mutation Shared($notebook: JSON!)")
        editors = await page.evaluate(EDITOR_VALUES)
        assert editors[0] == SHARED_QUERY
        assert json.loads(editors[1]) == {"notebook": shared_notebook}
        # Two operations, and the link names one: the run button runs it.
        await page.locator(".graphiql-execute-button").click()
        result = page.locator(".result-window")
        await expect(result).to_contain_text('"__typename": "Execution"')
        await expect(result).to_contain_text('"kernelName": "python3"')
        watched.assert_no_errors()
