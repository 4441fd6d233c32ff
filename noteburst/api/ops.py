"""The operator's endpoints: ``/healthz``, ``/readyz`` and ``/metrics``.

Served by the API beside ``/graphql``, and by a separate worker process on
its own port (``NOTEBURST_WORKER_HTTP_PORT``), so both have the same probes
and metrics.  None needs credentials: they carry no execution, user or
notebook, only counts; keep them off the public ingress (the Helm chart
routes only the API's own paths there).

- ``/healthz``: liveness.  Answers whenever the process can answer.
- ``/readyz``: readiness (:class:`~noteburst.services.health.HealthService`):
  200 when the database and the queue answer, else 503 naming the one that
  does not; 503 ``starting`` while a worker is still booting (its lab may
  take minutes to spawn, which liveness must not mistake for a hang).
- ``/metrics``: Prometheus' text format, from prometheus_client's default
  registry (see :mod:`noteburst.metrics`).  The API also reads the queue
  depths from the database on each scrape.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .. import __version__
from ..exceptions import ServiceUnavailableError
from ..services.health import HealthService

__all__ = ["HealthProvider", "ops_routes"]

_logger = structlog.get_logger("noteburst.ops")

HealthProvider = Callable[[Request], HealthService | None]
"""Returns the process's health service, or None while it is starting."""


def ops_routes(health: HealthProvider, *, queue_depths: bool) -> list[BaseRoute]:
    """Return the three routes, bound to ``health``.

    Parameters
    ----------
    health
        Gives the health service for a request (None: still starting).
    queue_depths
        Whether ``/metrics`` reads the queue depths first (the API does; a
        worker leaves it to the API, so each depth is reported once).
    """

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> JSONResponse:
        service = health(request)
        if service is None:
            starting = {"ready": False, "checks": {"process": "starting"}}
            return JSONResponse(starting, status_code=503)
        readiness = await service.readiness()
        return JSONResponse(
            {"ready": readiness.ready, "checks": readiness.checks},
            status_code=200 if readiness.ready else 503,
        )

    async def metrics(request: Request) -> Response:
        service = health(request)
        if queue_depths and service is not None:
            try:
                await service.update_queue_depths()
            except ServiceUnavailableError as exc:
                # The scrape still answers, with the depths last read.
                _logger.warning("Queue depths not read for /metrics", error=exc.detail)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
