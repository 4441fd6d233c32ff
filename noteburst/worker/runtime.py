"""Build a worker's resources on the worker's own event loop, and sweep.

Dramatiq's ``AsyncIO`` middleware runs every async actor of a process on one
event-loop thread; engines, HTTP clients and websockets must be created on
that loop, not on the loop (or thread) that built the broker.  This
middleware does so at worker boot, closes them at shutdown, and runs the
recovery sweep that re-queues executions left behind by a lost worker or a
lost message, and resends webhook deliveries whose wake-up was lost.  It
also runs webhook delivery attempts as tasks on that loop, so that a slow
receiver holds no worker thread, and the retention purge, on an interval
of its own (:data:`PURGE_INTERVAL_SECONDS`): the recovery sweep runs every
half lease because a lost execution is someone waiting, while old
executions can wait minutes, and a purge after a long pause may have many
batches to go through.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Coroutine
from typing import Any

import dramatiq
import structlog
import uvicorn
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware, MiddlewareError
from starlette.applications import Starlette
from starlette.requests import Request

from ..api.listen import listening_socket
from ..api.ops import ops_routes
from ..config import Config
from ..exceptions import ServiceUnavailableError
from ..factory import WorkerContext, WorkerFactory
from ..services.drain import HAND_BACK_SECONDS
from ..services.health import HealthService
from ..storage.events import EventBus

__all__ = [
    "GIL_SWITCH_INTERVAL_SECONDS",
    "PURGE_INTERVAL_SECONDS",
    "WorkerRuntime",
    "WorkerStartupError",
    "boot_timeout",
]

_logger = structlog.get_logger("noteburst.worker")

MAX_CONCURRENT_DELIVERIES = 32
"""Webhook attempts one worker process makes at once; more wait their turn."""

GIL_SWITCH_INTERVAL_SECONDS = 0.0005
"""Longest time a thread holds the interpreter lock while another waits.

A worker process runs several threads that hand work to each other: the
Dramatiq consumer and worker threads, the event-loop thread running the
actors, aiosqlite's connection threads and, embedded, the web server's
loop.  Each hand-off that finds the lock held waits up to the switch
interval, 5 ms by default, and a few such waits per execution add up to
as much as running a small notebook.  Switching more often costs a little
throughput, which a latency-bound service does not miss.
"""


PURGE_INTERVAL_SECONDS = 300.0
"""Seconds between two retention purges of one worker process.

The first runs once the worker has started (in the background: a backlog
of months must not hold up the start).  Every worker process purges; on
PostgreSQL concurrent purges take different batches (``SKIP LOCKED``).
"""


def boot_timeout(config: Config) -> float:
    """Seconds a worker's start (or stop) may take before it is abandoned.

    Covers the slowest configured start: on JupyterHub, the wait for a free
    bot identity and then the lab's spawn; locally, the Jupyter server's
    start.  A minute on top covers the rest (database, warm kernels).
    """
    if config.jupyter.lab_backend == "jupyterhub":
        return config.hub.identity_wait_seconds + config.hub.spawn_timeout + 60
    return config.jupyter.start_timeout + 60


_DRAIN_MARGIN_SECONDS = 5.0
"""Slack on the drain's own bounds before the stopping thread gives up on it."""

HTTP_STOP_SECONDS = 5.0
"""Bound on stopping the worker's HTTP server (probes and scrapes are short)."""


class WorkerStartupError(MiddlewareError):
    """The worker could not build its context (Dramatiq stops on this type)."""


class WorkerRuntime(Middleware):
    """Owns a worker process's :class:`WorkerContext` and recovery sweep.

    Add it to the broker *after* ``AsyncIO``, so that its boot hook runs once
    the loop thread exists and its shutdown hook runs before the loop stops.

    Parameters
    ----------
    config
        The configuration.
    bus
        Where the worker announces committed events.
    recover_everything_at_start
        Treat every running execution as lost at boot (the embedded default,
        where this is the only worker).
    sweep_interval
        Seconds between recovery sweeps; `None` for no periodic sweep.
    purge_interval
        Seconds between retention purges (the first runs at boot); `None`
        for none.  None run either while ``retention_days`` is 0.
    """

    def __init__(
        self,
        config: Config,
        *,
        bus: EventBus,
        recover_everything_at_start: bool,
        sweep_interval: float | None,
        purge_interval: float | None = None,
    ) -> None:
        self._config = config
        self._bus = bus
        self._recover_all = recover_everything_at_start
        self._sweep_interval = sweep_interval
        self._purge_interval = purge_interval
        self._context: WorkerContext | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._purger: asyncio.Task[None] | None = None
        self._broker: dramatiq.Broker | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._delivery_slots: asyncio.Semaphore | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_port: int | None = None

    @property
    def http_port(self) -> int | None:
        """The port the worker's HTTP server listens on (None: none runs)."""
        return self._http_port if self._http is not None else None

    def factory(self) -> WorkerFactory:
        """Return a factory for one message; only valid after boot."""
        if self._context is None:
            msg = "worker context used before worker boot"
            raise RuntimeError(msg)
        return WorkerFactory(self._context)

    def start_delivery(self, execution_id: str) -> None:
        """Start a webhook attempt on this loop and return at once.

        Called by the webhook actor on the worker's loop.  The attempt is
        claimed in the database, so a crash or a shutdown mid-attempt loses
        nothing: its lease lapses and the sweep sends it again.
        """
        task = asyncio.get_running_loop().create_task(self._deliver(execution_id))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, execution_id: str) -> None:
        if self._delivery_slots is None:
            self._delivery_slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)
        async with self._delivery_slots:
            try:
                await self.factory().create_webhook_service().deliver(execution_id)
            except Exception:
                _logger.exception("Webhook delivery failed", execution_id=execution_id)

    def before_worker_boot(
        self, broker: dramatiq.Broker, worker: dramatiq.Worker
    ) -> None:
        """Build the context on the loop thread and recover lost work."""
        self._broker = broker
        if sys.getswitchinterval() > GIL_SWITCH_INTERVAL_SECONDS:
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
        try:
            if self._config.workers.http_port is not None:
                # Before the context: liveness must answer while a lab spawns.
                self._run(self._start_http(self._config.workers.http_port))
            self._run(self._boot(broker))
        except Exception as exc:
            _logger.exception("Worker failed to start")
            raise WorkerStartupError(str(exc)) from exc

    def drain(self, grace_seconds: float) -> None:
        """Let running executions finish, then hand the rest back; blocks.

        Called by :meth:`~.process.RunningWorker.stop` from the stopping
        thread, after the threads are paused (see :mod:`..services.drain`).
        """
        if self._context is None:
            return
        drain = self._context.drain
        self._run(
            drain.drain(grace_seconds),
            timeout=grace_seconds + HAND_BACK_SECONDS + _DRAIN_MARGIN_SECONDS,
        )

    def after_worker_shutdown(
        self, broker: dramatiq.Broker, worker: dramatiq.Worker
    ) -> None:
        """Stop the sweep and release the context."""
        self._run(self._shutdown())

    async def _boot(self, broker: dramatiq.Broker) -> None:
        self._context = await WorkerContext.build(
            self._config, broker=broker, bus=self._bus
        )
        await (
            self.factory()
            .create_recovery_sweep()
            .sweep(everything_running=self._recover_all)
        )
        await self.factory().create_webhook_service().sweep()
        if self._sweep_interval is not None:
            self._sweeper = asyncio.create_task(self._sweep(self._sweep_interval))
        if self._purge_interval is not None and self._config.retention.days > 0:
            self._purger = asyncio.create_task(self._purge(self._purge_interval))

    async def _start_http(self, port: int) -> None:
        """Serve ``/healthz``, ``/readyz`` and ``/metrics`` on this loop."""

        def health(request: Request) -> HealthService | None:
            if self._context is None:
                return None
            return self.factory().create_health_service()

        # Bound here, so a taken port fails the worker's start, and the
        # port is known at once (0 picks a free one, for tests).
        sock = listening_socket(self._config.host, port, backlog=128)
        self._http_port = sock.getsockname()[1]
        app = Starlette(routes=ops_routes(health, queue_depths=False))
        server = uvicorn.Server(
            uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        )
        self._http = server
        self._http_task = asyncio.create_task(
            server.serve(sockets=[sock]), name="worker-http"
        )

    async def _stop_http(self) -> None:
        if self._http is None or self._http_task is None:
            return
        self._http.should_exit = True
        try:
            async with asyncio.timeout(HTTP_STOP_SECONDS):
                await asyncio.gather(self._http_task, return_exceptions=True)
        except TimeoutError:
            self._http_task.cancel()
        self._http = self._http_task = None

    async def _shutdown(self) -> None:
        await self._stop_http()
        # A purge cut short rolls its batch back; the next one goes on.
        for task in (self._sweeper, self._purger):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        deliveries = list(self._deliveries)
        for task in deliveries:
            task.cancel()
        await asyncio.gather(*deliveries, return_exceptions=True)
        if self._context is not None:
            await self._context.aclose()
            self._context = None

    async def _sweep(self, interval: float) -> None:
        after_outage = False
        while True:
            await asyncio.sleep(interval)
            try:
                await (
                    self.factory()
                    .create_recovery_sweep()
                    .sweep(after_outage=after_outage)
                )
            except ServiceUnavailableError as exc:
                _logger.warning("Recovery sweep skipped", error=str(exc))
                after_outage = True
            except Exception:
                _logger.exception("Recovery sweep failed")
            else:
                after_outage = False
            try:
                await self.factory().create_webhook_service().sweep()
            except ServiceUnavailableError as exc:
                _logger.warning("Webhook sweep skipped", error=str(exc))
            except Exception:
                _logger.exception("Webhook sweep failed")

    async def _purge(self, interval: float) -> None:
        while True:
            try:
                await self.factory().create_retention_service().purge()
            except ServiceUnavailableError as exc:
                _logger.warning("Retention purge skipped", error=str(exc))
            except Exception:
                _logger.exception("Retention purge failed")
            await asyncio.sleep(interval)

    def _run(
        self, coro: Coroutine[Any, Any, object], *, timeout: float | None = None
    ) -> None:
        thread = get_event_loop_thread()
        if thread is None:
            msg = "the AsyncIO middleware must come before WorkerRuntime"
            raise WorkerStartupError(msg)
        future = asyncio.run_coroutine_threadsafe(coro, thread.loop)
        try:
            future.result(
                timeout=boot_timeout(self._config) if timeout is None else timeout
            )
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            msg = "worker start or stop timed out"
            raise WorkerStartupError(msg) from exc
