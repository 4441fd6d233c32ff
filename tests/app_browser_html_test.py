"""``Execution.html`` in a real headless Chromium with no network: math renders.

The stored page inlines what it needs (noteburst/domain/rendering.py): an
air-gapped reader's browser, or an application embedding the page on its own
origin, loads nothing from elsewhere.  Every request but loopback and
``data:`` is blocked and recorded; MathJax must still typeset the notebook's
math (its ``mjx-container`` elements), the inlined require.js must be there
for JavaScript outputs, and nothing may be logged as an error.  A notebook
without math or JavaScript carries neither script.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Route, expect

from tests.support.app import Noteburst, make_config, running
from tests.support.browser import chromium, open_page
from tests.support.notebooks import notebook

HTML = "query Html($id: ID!) { execution(id: $id) { status html } }"

WITH_MATH = notebook(
    r"# md:Euler: $e^{i\pi} + 1 = 0$, and $$\int_0^1 x\,dx = \tfrac{1}{2}$$",
    "from IPython.display import Javascript, Math, display\n"
    r"display(Math(r'\frac{a}{b} \cancel{c}'))"
    "\n"
    "display(Javascript(\"element.textContent = 'amd: ' + typeof requirejs\"))",
)
WITHOUT_MATH = notebook("# md:Just *words*, $5 is not math", "print(6 * 7)")


async def executed_html(nb: Noteburst, source: dict[str, Any]) -> str:
    submitted = await nb.submit(source)
    events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), 120)
    assert events[-1]["status"] == "SUCCEEDED", events[-1]
    html: str = (await nb.execute(HTML, id=submitted["id"]))["execution"]["html"]
    return html


@pytest.mark.asyncio
async def test_math_renders_offline_and_plain_pages_stay_small(
    tmp_path: Path, jupyter_server: Any
) -> None:
    async with running(make_config(tmp_path, jupyter_server)) as nb:
        with_math = await executed_html(nb, WITH_MATH)
        without_math = await executed_html(nb, WITHOUT_MATH)
    print(  # sizes for the record, in -s runs and CI logs
        f"Execution.html: {len(with_math.encode()):,} bytes with math and "
        f"JavaScript, {len(without_math.encode()):,} bytes without"
    )
    assert "MathJax" not in without_math
    assert "requirejs" not in without_math
    assert len(without_math.encode()) < 300_000

    elsewhere: list[str] = []

    async def only_local(route: Route) -> None:
        url = urlsplit(route.request.url)
        if url.scheme == "data" or url.hostname == "127.0.0.1":
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    async with (
        chromium() as browser,
        open_page(browser, tmp_path, "execution-html-math") as watched,
    ):
        page = watched.page
        await page.route("**/*", only_local)
        await page.set_content(with_math)
        # Inline $...$ and display $$...$$ in markdown, and the Math output.
        await expect(page.locator("mjx-container")).to_have_count(3)
        await expect(page.locator("mjx-container[display='true']")).to_have_count(1)
        assert await page.locator("mjx-container svg").count() == 3
        await expect(page.get_by_text("amd: function")).to_be_visible()
        watched.assert_no_errors()
    assert elsewhere == []
