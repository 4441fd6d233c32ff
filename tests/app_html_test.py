"""``Execution.html`` end to end: the executed notebook as a page, two variants."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import make_config, running
from tests.support.notebooks import notebook

HTML = """
query Html($id: ID!) {
  execution(id: $id) {
    status
    withCode: html
    withoutCode: html(hideCode: true)
  }
}
"""


@pytest.mark.asyncio
async def test_html_of_an_executed_notebook(
    tmp_path: Path, jupyter_server: Any
) -> None:
    async with running(make_config(tmp_path, jupyter_server)) as nb:
        submitted = await nb.submit(
            notebook("# md:# Weekly *report*", "squares_total = 1 + 4\nsquares_total")
        )
        early = await nb.execute(HTML, id=submitted["id"])
        if early["execution"]["status"] in {"QUEUED", "RUNNING"}:
            assert early["execution"]["withCode"] is None  # nothing executed yet
        events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), 60)
        assert events[-1]["status"] == "SUCCEEDED"
        pages = (await nb.execute(HTML, id=submitted["id"]))["execution"]
        again = (await nb.execute(HTML, id=submitted["id"]))["execution"]
    with_code, without_code = pages["withCode"], pages["withoutCode"]
    assert with_code.lstrip().lower().startswith("<!doctype html>")
    for page in (with_code, without_code):
        assert "<em>report</em>" in page
        assert "<pre>5</pre>" in page  # the output of the executed cell
    assert "squares_total" in with_code
    assert "squares_total" not in without_code
    assert again == pages  # served as stored
