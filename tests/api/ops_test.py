"""The operator routes alone: what each answers, before and after a process is up.

With the whole service behind them in ``tests/app_ops_test.py`` (the API)
and ``tests/worker/shutdown_test.py`` (a worker process); here the answer
of a process still starting, which those cannot catch in time: a worker
answers liveness at once, and readiness 503 until its lab is up.
"""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from noteburst import __version__
from noteburst.api.ops import ops_routes
from noteburst.services.health import HealthService


def _starting(request: Request) -> HealthService | None:
    return None


@pytest.mark.asyncio
async def test_a_starting_process_is_alive_but_not_ready() -> None:
    app = Starlette(routes=ops_routes(_starting, queue_depths=True))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as http:
        alive = await http.get("/healthz")
        ready = await http.get("/readyz")
        metrics = await http.get("/metrics")
    assert (alive.status_code, alive.json()) == (
        200,
        {"status": "ok", "version": __version__},
    )
    assert (ready.status_code, ready.json()) == (
        503,
        {"ready": False, "checks": {"process": "starting"}},
    )
    # Metrics answer while starting (without queue depths, which need it up).
    assert metrics.status_code == 200
    assert "noteburst_executions_finished_total" in metrics.text
