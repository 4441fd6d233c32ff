"""HTML of executed notebooks: rendered once per variant, then served stored.

The first request for a variant renders it (on a worker thread, since
nbconvert is CPU-bound and would stall every websocket on this loop) and
stores it; later requests, from any API process, read the stored page.
Concurrent requests in one process share one load (and at most one render).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog

from ..domain.rendering import HtmlVariant, render_html
from ..storage.database import Database

__all__ = ["RenderingService"]

_logger = structlog.get_logger("noteburst.rendering")


class RenderingService:
    """Serve HTML renderings of executed notebooks.

    Parameters
    ----------
    database
        Where executions and renderings live.
    in_flight
        Renders running in this process, shared by every service instance
        of the process so that concurrent requests render once.
    """

    def __init__(
        self,
        *,
        database: Database,
        in_flight: dict[tuple[str, HtmlVariant], asyncio.Future[str | None]],
    ) -> None:
        self._db = database
        self._in_flight = in_flight

    async def html(self, execution_id: str, *, hide_code: bool) -> str | None:
        """Return the executed notebook as HTML.

        Returns
        -------
        str or None
            The page, or `None` if there is no executed notebook (yet): the
            execution is unknown, queued or running.
        """
        variant = HtmlVariant.of(hide_code=hide_code)
        key = (execution_id, variant)
        pending = self._in_flight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load_or_render(execution_id, variant))
            self._in_flight[key] = pending
            pending.add_done_callback(lambda _done: self._in_flight.pop(key, None))
        # A caller that goes away must not cancel the load others wait for.
        return await asyncio.shield(pending)

    async def _load_or_render(
        self, execution_id: str, variant: HtmlVariant
    ) -> str | None:
        async with self._db.transaction() as tx:
            stored = await tx.renderings.get(execution_id, variant.value)
        if stored is not None:
            return stored
        return await self._render(execution_id, variant)

    async def _render(self, execution_id: str, variant: HtmlVariant) -> str | None:
        async with self._db.transaction() as tx:
            notebook = await tx.executions.get_result_notebook(execution_id)
        if notebook is None:
            return None
        started = asyncio.get_running_loop().time()
        page = await asyncio.to_thread(render_html, notebook, variant)
        _logger.info(
            "Rendered execution",
            execution_id=execution_id,
            variant=variant.value,
            seconds=round(asyncio.get_running_loop().time() - started, 3),
            bytes=len(page),
        )
        async with self._db.transaction() as tx:
            await tx.renderings.put(
                execution_id, variant.value, page, now=datetime.now(UTC)
            )
        return page
