"""The one place that builds clients, stores and services.

Two lifetimes, two objects (after Gafaelfawr's factory):
:class:`ProcessContext` holds what lives as long as a process (or, in the
embedded default, as long as one event loop): the database engine, the event
bus, the task queue, the HTTP client and the lab backend.  :class:`Factory`
is cheap and made per request, websocket operation or message; it hands out
services wired to that context.  Entry points (app, worker, CLI) build a
context and ask a factory for services; nothing else calls a constructor of
a store, client or service.

Async resources are bound to the event loop that created them, so the
embedded default, whose worker runs on its own loop thread, builds a second
context there with :meth:`ProcessContext.for_worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import dramatiq
import httpx
import structlog
from jupyter_client.kernelspec import KernelSpecManager

from .config import Config, JupyterSettings, WebhookSettings
from .constants import CANCELS_CHANNEL
from .domain.addresses import AddressPolicy, parse_networks
from .domain.auth import Caller
from .domain.rendering import HtmlVariant
from .jupyter.backend import LabBackend, LocalLabBackend
from .jupyter.exceptions import JupyterError
from .jupyter.hub import HubLabBackend
from .jupyter.pool import KernelPool
from .jupyter.protocol import OutputLimits
from .jupyter.rest import JupyterRestClient
from .services.auth import Authenticator, TokenCache, TokenService
from .services.execution import ExecutionService, SubmissionLimits
from .services.identity import IdentityLease, NoIdentityAvailableError
from .services.rendering import RenderingService
from .services.runner import ExecutionRunner, OutputFlush
from .services.webhook import WebhookService
from .storage.database import Database
from .storage.events import EventBus, LocalEventBus, PostgresEventBus
from .storage.secrets import SecretBox
from .storage.taskqueue import TaskQueue, build_broker
from .storage.webhook_client import WebhookGuard, WebhookSender

__all__ = [
    "Factory",
    "ProcessContext",
    "create_broker",
    "create_token_service",
    "discover_kernel_names",
]


_logger = structlog.get_logger("noteburst.factory")

IDENTITY_RETRY_SECONDS = 5.0
"""Pause before trying again to lease an identity when none was free."""


def create_token_service(database: Database) -> TokenService:
    """Token management for the CLI, on a database it opened."""
    return TokenService(database=database)


def create_broker(config: Config) -> dramatiq.Broker:
    """Create this process's Dramatiq broker (Redis, or in-process)."""
    return build_broker(redis_url=config.redis_url, namespace=config.redis_namespace)


async def discover_kernel_names(
    config: JupyterSettings, http: httpx.AsyncClient
) -> list[str]:
    """Return the kernels submissions may name.

    Configured names win; else the configured Jupyter server is asked; else
    the kernelspecs installed beside Noteburst are listed, which is what the
    local server that Noteburst starts will offer.
    """
    if config.kernel_names is not None:
        return list(config.kernel_names)
    if config.url is not None:
        client = _rest_client(config, http, config.url)
        return await client.kernelspecs()
    return sorted(KernelSpecManager().find_kernel_specs())


def _rest_client(
    config: JupyterSettings, http: httpx.AsyncClient, url: str
) -> JupyterRestClient:
    token = config.token.get_secret_value() if config.token else None
    return JupyterRestClient(
        http=http, base_url=url, token=token, timeout=config.http_timeout
    )


@dataclass
class ProcessContext:
    """Resources shared by every unit of work on one event loop."""

    config: Config
    database: Database
    bus: EventBus
    queue: TaskQueue
    http: httpx.AsyncClient
    kernel_names: list[str] = field(default_factory=list)
    backend: LabBackend | None = None
    cancels: EventBus | None = None
    """A worker's source of cancellation requests (see ``for_worker``)."""
    renders: dict[tuple[str, HtmlVariant], asyncio.Future[str | None]] = field(
        default_factory=dict
    )
    """HTML renders in progress in this process (one per execution and variant)."""
    token_cache: TokenCache = field(default_factory=lambda: TokenCache(ttl=0))
    """API tokens checked recently in this process."""
    webhook_http: httpx.AsyncClient | None = None
    """A worker's client for webhook deliveries (see ``_webhook_client``)."""
    _secret_box: SecretBox | None = None
    _closers: contextlib.AsyncExitStack = field(
        default_factory=contextlib.AsyncExitStack
    )

    @classmethod
    async def for_api(
        cls,
        config: Config,
        *,
        broker: dramatiq.Broker,
        local_bus: LocalEventBus | None = None,
    ) -> ProcessContext:
        """Build the API process's context.

        Parameters
        ----------
        config
            The configuration.
        broker
            The process's broker.
        local_bus
            The in-process bus shared with an embedded worker; when `None`,
            a Postgres LISTEN bus is used on Postgres and a private local
            bus on SQLite.
        """
        stack = contextlib.AsyncExitStack()
        try:
            http = await stack.enter_async_context(_http_client(config))
            database = Database.from_url(config.effective_database_url)
            stack.push_async_callback(database.aclose)
            bus: EventBus
            if local_bus is not None:
                bus = local_bus
            elif database.is_postgres:
                bus = PostgresEventBus(config.effective_database_url)
            else:
                bus = LocalEventBus()
            await bus.start()
            stack.push_async_callback(bus.aclose)
            kernel_names = await discover_kernel_names(config.jupyter, http)
        except BaseException:
            await stack.aclose()
            raise
        return cls(
            config=config,
            database=database,
            bus=bus,
            queue=TaskQueue(broker),
            http=http,
            kernel_names=kernel_names,
            token_cache=TokenCache(ttl=config.auth.token_cache_seconds),
            _closers=stack,
        )

    @classmethod
    async def for_worker(
        cls,
        config: Config,
        *,
        broker: dramatiq.Broker,
        bus: EventBus,
    ) -> ProcessContext:
        """Build a worker's context, on the worker's event loop.

        Parameters
        ----------
        config
            The configuration.
        broker
            The process's broker (the recovery sweep sends on it).
        bus
            Where committed events are announced: the embedded default's
            shared local bus, or a Postgres bus (whose announce is a no-op,
            since events are NOTIFYed in their transaction).
        """
        stack = contextlib.AsyncExitStack()
        try:
            http = await stack.enter_async_context(_http_client(config))
            database = Database.from_url(config.effective_database_url)
            stack.push_async_callback(database.aclose)
            jupyter = config.jupyter
            token = jupyter.token.get_secret_value() if jupyter.token else None
            backend: LocalLabBackend | HubLabBackend
            if jupyter.lab_backend == "jupyterhub":
                backend = await _hub_backend(config, http, database, stack)
            else:
                backend = LocalLabBackend(
                    http=http,
                    root_dir=Path(config.data_dir) / "jupyter",
                    url=jupyter.url,
                    token=token,
                    start_timeout=jupyter.start_timeout,
                    kernel_start_timeout=jupyter.kernel_start_timeout,
                    request_timeout=jupyter.http_timeout,
                    warm_kernels=jupyter.warm_kernels,
                    warm_up_code=jupyter.warm_up_code,
                    retire_delay=jupyter.kernel_retire_delay,
                )
            stack.push_async_callback(backend.aclose)
            cancels = await _cancellation_bus(config, database, bus, stack)
            webhook_http = await stack.enter_async_context(_webhook_client(config))
            await _start_backend(backend, config)
        except BaseException:
            await stack.aclose()
            raise
        return cls(
            config=config,
            database=database,
            bus=bus,
            queue=TaskQueue(broker),
            http=http,
            backend=backend,
            cancels=cancels,
            webhook_http=webhook_http,
            _closers=stack,
        )

    def secret_box(self) -> SecretBox:
        """Return the server key box for secrets, loaded (or created) on first use.

        Lazily, so a deployment that never sees a webhook never needs a key
        (nor writes a key file).
        """
        if self._secret_box is None:
            key = self.config.secret_key
            self._secret_box = SecretBox.from_settings(
                None if key is None else key.get_secret_value(),
                Path(self.config.data_dir),
            )
        return self._secret_box

    async def aclose(self) -> None:
        """Release every resource, in reverse order of creation."""
        await self._closers.aclose()


async def _cancellation_bus(
    config: Config,
    database: Database,
    bus: EventBus,
    stack: contextlib.AsyncExitStack,
) -> EventBus:
    """Where a worker hears that an execution it runs was cancelled.

    On Postgres the API process that takes the request may be any process,
    so the worker LISTENs on its own channel (one connection per worker
    process, hearing only cancellations); otherwise the API shares this
    process and announces on the in-process bus.
    """
    if not database.is_postgres:
        return bus
    cancels = PostgresEventBus(config.effective_database_url, channel=CANCELS_CHANNEL)
    await cancels.start()
    stack.push_async_callback(cancels.aclose)
    return cancels


async def _start_backend(
    backend: LocalLabBackend | HubLabBackend, config: Config
) -> None:
    """Start the lab ahead of the first execution, and let its pool fill.

    A local server that does not start is fatal (nothing could run).  A hub
    lab that does not spawn is not: the worker still serves, and each
    execution tries to spawn the lab again and, failing, ends with the
    hub's reason, which is where a user sees it.
    """
    try:
        await backend.start()
    except JupyterError as exc:
        if isinstance(backend, LocalLabBackend):
            raise
        _logger.error(
            "Lab not started; executions will try again",
            identity=backend.username,
            error=str(exc),
        )
        return
    await _wait_for_warm_kernels(backend.pool, config.jupyter.kernel_start_timeout)


async def _wait_for_warm_kernels(pool: KernelPool | None, limit: float) -> None:
    """Let the first executions find warm kernels; never fail start over it."""
    if pool is None:
        return
    try:
        async with asyncio.timeout(limit):
            await pool.wait_full()
    except (TimeoutError, JupyterError) as exc:
        _logger.warning("Warm kernel pool not ready; starting anyway", error=str(exc))


async def _hub_backend(
    config: Config,
    http: httpx.AsyncClient,
    database: Database,
    stack: contextlib.AsyncExitStack,
) -> HubLabBackend:
    """Lease a bot identity for this worker and drive its lab.

    The lease is released after the lab is stopped (the exit stack unwinds
    in reverse), so no other worker can pick the identity up while this one
    still drives it.  If another worker takes the identity over (this one
    stalled past its lease), the backend surrenders the lab at once and
    drives the lab of a newly leased identity.
    """
    hub, jupyter = config.hub, config.jupyter
    assert hub.url is not None
    assert hub.token is not None
    lease = IdentityLease(
        database=database,
        pool=hub.identities,
        holder=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        lease_seconds=config.workers.lease_seconds,
    )
    username = await lease.acquire(wait_seconds=hub.identity_wait_seconds)
    stack.push_async_callback(lease.release)
    backend = HubLabBackend(
        http=http,
        hub_url=hub.url,
        token=hub.token.get_secret_value(),
        username=username,
        spawn_timeout=hub.spawn_timeout,
        kernel_start_timeout=jupyter.kernel_start_timeout,
        request_timeout=jupyter.http_timeout,
        user_options=hub.user_options,
        warm_kernels=jupyter.warm_kernels,
        warm_up_code=jupyter.warm_up_code,
        idle_timeout=hub.lab_idle_seconds,
        retire_delay=jupyter.kernel_retire_delay,
    )
    follower = asyncio.create_task(
        _follow_identity(lease, backend, hub.identity_wait_seconds),
        name="identity-follower",
    )
    stack.push_async_callback(_cancel, follower)
    return backend


async def _follow_identity(
    lease: IdentityLease, backend: HubLabBackend, wait_seconds: float
) -> None:
    """Surrender a lab whose identity was taken over; lease another one."""
    while True:
        await lease.lost.wait()
        backend.surrender_identity(
            f"another worker took over the lease on {backend.username}"
        )
        while True:
            try:
                name = await lease.acquire(wait_seconds=wait_seconds)
            except NoIdentityAvailableError as exc:
                # Executions meanwhile fail over (LAB_UNAVAILABLE is retried
                # elsewhere); keep trying, acquire() bounds each wait.
                _logger.error("No bot identity to drive labs as", error=str(exc))
                await asyncio.sleep(IDENTITY_RETRY_SECONDS)
                continue
            backend.assume_identity(name)
            break


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def _http_client(config: Config) -> AsyncIterator[httpx.AsyncClient]:
    # One client per context: connection pooling to the lab, and one place
    # that sets the timeout every Jupyter call gets.
    async with httpx.AsyncClient(
        timeout=config.jupyter.http_timeout, follow_redirects=False
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def _webhook_client(config: Config) -> AsyncIterator[httpx.AsyncClient]:
    # Its own client: never follow redirects, never use proxies from the
    # environment (a proxy would resolve the name again, past the SSRF
    # check), no connections kept to receivers, one timeout per attempt.
    async with httpx.AsyncClient(
        timeout=config.webhooks.timeout_seconds,
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:
        yield client


def webhook_guard(settings: WebhookSettings) -> WebhookGuard:
    """Build the SSRF guard as configured (with the system resolver)."""
    return WebhookGuard(
        policy=AddressPolicy(
            allowed_networks=parse_networks(settings.allowed_networks)
        ),
        resolve_timeout=settings.resolve_timeout_seconds,
    )


class Factory:
    """Hands out services wired to one :class:`ProcessContext`."""

    def __init__(self, context: ProcessContext) -> None:
        self._context = context

    def create_authenticator(self) -> Authenticator:
        """Return what identifies the caller of each request (``auth_mode``)."""
        return Authenticator(
            settings=self._context.config.auth,
            database=self._context.database,
            cache=self._context.token_cache,
        )

    def create_execution_service(self, caller: Caller) -> ExecutionService:
        """Service behind the GraphQL API, acting for ``caller``."""
        config = self._context.config
        limits = config.limits
        # ExecutionService keeps its own SubmissionLimits for now: all of it
        # is config.limits, plus the default kernel (config.jupyter) and the
        # kernel names this process discovered.
        return ExecutionService(
            caller=caller,
            database=self._context.database,
            bus=self._context.bus,
            queue=self._context.queue,
            limits=SubmissionLimits(
                max_notebook_bytes=limits.max_notebook_bytes,
                default_timeout_seconds=limits.default_timeout_seconds,
                max_timeout_seconds=limits.max_timeout_seconds,
                default_kernel_name=config.jupyter.default_kernel_name,
                kernel_names=self._context.kernel_names,
                cache_environment_tag=limits.cache_environment_tag,
                default_cell_timeout_seconds=limits.default_cell_timeout_seconds,
                default_no_output_timeout_seconds=(
                    limits.default_no_output_timeout_seconds
                ),
                max_queued_per_user=limits.max_queued_per_user,
                max_running_per_user=limits.max_running_per_user,
                max_submissions_per_minute=limits.max_submissions_per_minute,
            ),
            webhooks=self.create_webhook_service(),
        )

    def create_webhook_service(self) -> WebhookService:
        """Service that registers webhooks (API) and delivers them (workers)."""
        context = self._context
        config = context.config
        guard = webhook_guard(config.webhooks)
        sender = (
            None
            if context.webhook_http is None
            else WebhookSender(http=context.webhook_http, guard=guard)
        )
        return WebhookService(
            database=context.database,
            queue=context.queue,
            guard=guard,
            secrets=context.secret_box,
            settings=config.webhooks,
            public_url=config.effective_public_url,
            sender=sender,
        )

    def create_rendering_service(self) -> RenderingService:
        """Service behind ``Execution.html``."""
        return RenderingService(
            database=self._context.database, in_flight=self._context.renders
        )

    def create_runner(self) -> ExecutionRunner:
        """Service behind the worker's actor."""
        backend = self._context.backend
        if backend is None:
            msg = "this process context has no lab backend (not a worker)"
            raise RuntimeError(msg)
        config = self._context.config
        outputs = config.outputs
        return ExecutionRunner(
            database=self._context.database,
            bus=self._context.bus,
            backend=backend,
            queue=self._context.queue,
            lease_seconds=config.workers.lease_seconds,
            max_attempts=config.workers.max_attempts,
            # ExecutionRunner keeps its own OutputFlush for now (all of it is
            # config.outputs); OutputLimits stays in jupyter/, which may not
            # import the configuration.
            output_flush=OutputFlush(
                seconds=outputs.flush_seconds,
                max_bytes=outputs.flush_bytes,
                max_resent_bytes=outputs.max_resent_bytes,
                progress_seconds=outputs.progress_flush_seconds,
            ),
            cancels=self._context.cancels,
            output_limits=OutputLimits(
                max_output_bytes=outputs.max_output_bytes,
                max_total_bytes=outputs.max_notebook_output_bytes,
            ),
            webhooks=self.create_webhook_service(),
        )
