"""RenderingService: render once per variant, then serve the stored page."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from noteburst.domain import rendering
from noteburst.domain.execution import ExecutionStatus
from noteburst.domain.rendering import HtmlVariant
from noteburst.services import rendering as rendering_service
from noteburst.services.rendering import RenderingService
from noteburst.storage.database import Database
from tests.domain.rendering_test import executed_notebook


async def finished_execution(database: Database, result: dict[str, Any] | None) -> str:
    now = datetime.now(UTC)
    async with database.transaction() as tx:
        await tx.executions.add(
            execution_id="e1",
            kernel_name="python3",
            timeout_seconds=60,
            source_text=json.dumps(executed_notebook()),
            cells_total=1,
            now=now,
        )
    if result is not None:
        async with database.transaction() as tx:
            await tx.claims.claim(
                "e1", now=now, lease_until=now + timedelta(minutes=1), max_attempts=1
            )
            await tx.claims.finish(
                "e1",
                status=ExecutionStatus.SUCCEEDED,
                result_text=json.dumps(result),
                error=None,
                now=now,
            )
    return "e1"


class CountingRenderer:
    """The real renderer, counting its calls and held until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, notebook: Any, variant: HtmlVariant) -> str:
        self.calls += 1
        assert self.release.wait(30)
        return rendering.render_html(notebook, variant)


@pytest.mark.asyncio
async def test_concurrent_requests_render_once_then_the_page_is_stored(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution_id = await finished_execution(database, executed_notebook())
    renderer = CountingRenderer()
    monkeypatch.setattr(rendering_service, "render_html", renderer)
    service = RenderingService(database=database, in_flight={})
    requests = [
        asyncio.create_task(service.html(execution_id, hide_code=False))
        for _ in range(5)
    ]
    async with asyncio.timeout(30):
        while renderer.calls == 0:
            await asyncio.sleep(0.01)
        renderer.release.set()
        pages = await asyncio.gather(*requests)
    assert renderer.calls == 1
    assert len(set(pages)) == 1
    assert pages[0] is not None
    assert "sum_of_squares = 5" in pages[0]

    # Another process (a fresh service with its own in-flight map) reads
    # the stored page; the other variant is rendered on its own.
    other = RenderingService(database=database, in_flight={})
    assert await other.html(execution_id, hide_code=False) == pages[0]
    assert renderer.calls == 1
    without_code = await other.html(execution_id, hide_code=True)
    assert renderer.calls == 2
    assert without_code is not None
    assert "squares_total" not in without_code
    async with database.transaction() as tx:
        assert await tx.renderings.get(execution_id, "html") == pages[0]
        assert await tx.renderings.get(execution_id, "html-no-code") == without_code


@pytest.mark.asyncio
async def test_no_page_before_there_is_a_result(database: Database) -> None:
    execution_id = await finished_execution(database, None)
    service = RenderingService(database=database, in_flight={})
    assert await service.html(execution_id, hide_code=False) is None
    assert await service.html("no-such-execution", hide_code=True) is None


@pytest.mark.asyncio
async def test_a_second_store_of_the_same_variant_is_ignored(
    database: Database,
) -> None:
    execution_id = await finished_execution(database, executed_notebook())
    now = datetime.now(UTC)
    async with database.transaction() as tx:
        await tx.renderings.put(execution_id, "html", "first", now=now)
    async with database.transaction() as tx:
        await tx.renderings.put(execution_id, "html", "second", now=now)
    async with database.transaction() as tx:
        assert await tx.renderings.get(execution_id, "html") == "first"
