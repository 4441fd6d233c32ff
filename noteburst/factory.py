"""The one place that builds clients, stores and services.

Two lifetimes, two kinds of object (after Gafaelfawr's factory).  A
context holds what lives as long as a process (or, in the embedded
default, as long as one event loop), and there is one frozen context per
kind of process, holding exactly what that kind needs:
:class:`ApiContext` (the database, the event bus it pushes from, the task
queue, the kernels submissions may name, the token cache, the renders in
flight), :class:`WorkerContext` (the same stores, the lab backend, the
cancellation bus, the webhook client) and :class:`CliContext` (the
configuration and a database).  A factory (:class:`ApiFactory`, :class:`WorkerFactory`,
:class:`CliFactory`) is cheap and made per request, websocket operation or
message; it hands out services wired to its context, so a service only
one kind of process has (the runner, say) is only offered where it can be
built.  Entry points (app, worker, CLI) build a context and ask a factory
for services; nothing else calls a constructor of a store, client or
service.  This module only builds: what runs for the life of a process
(identity following, kernel discovery) lives with the services and
adapters it belongs to.

Async resources are bound to the event loop that created them, so the
embedded default, whose worker runs on its own loop thread, builds its
worker context there.
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
from pydantic import SecretStr

from .config import Config, WebhookSettings
from .constants import CANCELS_CHANNEL
from .domain.addresses import AddressPolicy, parse_networks
from .domain.auth import Caller
from .domain.rendering import HtmlVariant
from .jupyter.backend import LabBackend, LocalLabBackend
from .jupyter.exceptions import JupyterError
from .jupyter.hub import HubLabBackend
from .jupyter.kernelspecs import discover_kernel_names
from .jupyter.pool import KernelPool
from .jupyter.protocol import OutputLimits
from .services.auth import Authenticator, TokenCache, TokenService
from .services.drain import WorkerDrain
from .services.execution import ExecutionService
from .services.feeds import EventFeeds
from .services.health import HealthService
from .services.identity import IdentityFollower, IdentityLease
from .services.recovery import RecoverySweep
from .services.rendering import RenderingService
from .services.retention import RetentionService
from .services.runner import ExecutionRunner
from .services.submission import SubmissionService
from .services.watch import ExecutionWatcher
from .services.webhook import WebhookService
from .storage.database import Database
from .storage.events import EventBus, LocalEventBus, PostgresEventBus
from .storage.secrets import SecretBox
from .storage.taskqueue import TaskQueue, build_broker
from .storage.webhook_client import WebhookGuard, WebhookSender

__all__ = [
    "ApiContext",
    "ApiFactory",
    "CliContext",
    "CliFactory",
    "LazySecretBox",
    "WorkerContext",
    "WorkerFactory",
    "create_broker",
    "webhook_guard",
]


_logger = structlog.get_logger("noteburst.factory")


def create_broker(config: Config) -> dramatiq.Broker:
    """Create this process's Dramatiq broker (Redis, or in-process)."""
    return build_broker(redis_url=config.redis_url, namespace=config.redis_namespace)


class LazySecretBox:
    """The server key box for secrets, loaded (or created) on first call.

    Lazily, so a deployment that never sees a webhook never needs a key
    (nor writes a key file).

    Parameters
    ----------
    key
        ``secret_key``; None to use (or create) the key file in ``data_dir``.
    data_dir
        Where the key file is.
    """

    def __init__(self, key: SecretStr | None, data_dir: Path) -> None:
        self._key = key
        self._data_dir = data_dir
        self._box: SecretBox | None = None

    def __call__(self) -> SecretBox:
        """Return the box, loading it the first time."""
        if self._box is None:
            key = self._key
            self._box = SecretBox.from_settings(
                None if key is None else key.get_secret_value(), self._data_dir
            )
        return self._box


def _secret_box(config: Config) -> LazySecretBox:
    return LazySecretBox(config.secret_key, Path(config.data_dir))


@dataclass(frozen=True, kw_only=True)
class ApiContext:
    """What an API process's requests share (on the API's event loop)."""

    config: Config
    database: Database
    bus: EventBus
    """Where the events subscriptions wait for are announced."""
    feeds: EventFeeds
    """The shared readers of the executions watched in this process."""
    task_queue: TaskQueue
    """Sends wake-ups to workers (Dramatiq)."""
    kernel_names: tuple[str, ...]
    """Kernels submissions may name (discovered once, at start)."""
    token_cache: TokenCache
    """API tokens checked recently in this process."""
    secret_box: LazySecretBox
    renders: dict[tuple[str, HtmlVariant], asyncio.Future[str | None]] = field(
        default_factory=dict
    )
    """HTML renders in progress in this process (one per execution and variant)."""
    _closers: contextlib.AsyncExitStack = field(repr=False)

    @classmethod
    async def build(
        cls,
        config: Config,
        *,
        broker: dramatiq.Broker,
        local_bus: LocalEventBus | None = None,
    ) -> ApiContext:
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
            feeds = EventFeeds(database=database, bus=bus)
            stack.push_async_callback(feeds.aclose)
            jupyter = config.jupyter
            async with _http_client(config) as http:
                kernel_names = await discover_kernel_names(
                    configured=jupyter.kernel_names,
                    url=jupyter.url,
                    token=_secret(jupyter.token),
                    http=http,
                    request_timeout=jupyter.http_timeout,
                )
        except BaseException:
            await stack.aclose()
            raise
        return cls(
            config=config,
            database=database,
            bus=bus,
            feeds=feeds,
            task_queue=TaskQueue(broker),
            kernel_names=tuple(kernel_names),
            token_cache=TokenCache(ttl=config.auth.token_cache_seconds),
            secret_box=_secret_box(config),
            _closers=stack,
        )

    async def aclose(self) -> None:
        """Release every resource, in reverse order of creation."""
        await self._closers.aclose()


@dataclass(frozen=True, kw_only=True)
class WorkerContext:
    """What a worker process's messages share (on the worker's event loop)."""

    config: Config
    database: Database
    bus: EventBus
    """Where committed events are announced."""
    task_queue: TaskQueue
    """Sends retries' and the recovery sweep's wake-ups (Dramatiq)."""
    backend: LabBackend
    """Where kernels come from (a local server, or a hub lab)."""
    cancels: EventBus
    """Where this worker hears that an execution it runs was cancelled."""
    webhook_http: httpx.AsyncClient
    """The client webhook deliveries go out with (see ``_webhook_client``)."""
    secret_box: LazySecretBox
    drain: WorkerDrain = field(default_factory=WorkerDrain)
    """The worker's graceful stop, shared by its runners."""
    _closers: contextlib.AsyncExitStack = field(repr=False)

    @classmethod
    async def build(
        cls,
        config: Config,
        *,
        broker: dramatiq.Broker,
        bus: EventBus,
    ) -> WorkerContext:
        """Build a worker's context, on the worker's event loop.

        The lab is started, and its warm kernels given time to start, before
        this returns.

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
            backend: LocalLabBackend | HubLabBackend
            if config.jupyter.lab_backend == "jupyterhub":
                backend = await _hub_backend(config, http, database, stack)
            else:
                backend = _local_backend(config, http)
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
            task_queue=TaskQueue(broker),
            backend=backend,
            cancels=cancels,
            webhook_http=webhook_http,
            secret_box=_secret_box(config),
            _closers=stack,
        )

    async def aclose(self) -> None:
        """Release every resource, in reverse order of creation."""
        await self._closers.aclose()


@dataclass(frozen=True, kw_only=True)
class CliContext:
    """What a command that works on the database directly needs."""

    config: Config
    database: Database

    @classmethod
    async def build(cls, config: Config) -> CliContext:
        """Open the configured database (nothing is connected until used)."""
        return cls(
            config=config, database=Database.from_url(config.effective_database_url)
        )

    async def aclose(self) -> None:
        """Close the database."""
        await self.database.aclose()


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _local_backend(config: Config, http: httpx.AsyncClient) -> LocalLabBackend:
    jupyter = config.jupyter
    return LocalLabBackend(
        http=http,
        root_dir=Path(config.data_dir) / "jupyter",
        url=jupyter.url,
        token=_secret(jupyter.token),
        start_timeout=jupyter.start_timeout,
        kernel_start_timeout=jupyter.kernel_start_timeout,
        request_timeout=jupyter.http_timeout,
        warm_kernels=jupyter.warm_kernels,
        warm_kernels_max=jupyter.warm_kernels_max,
        warm_up_code=jupyter.warm_up_code,
        retire_delay=jupyter.kernel_retire_delay,
        fork_kernels=jupyter.fork_kernels,
    )


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
    stalled past its lease), the :class:`IdentityFollower` has the backend
    surrender the lab at once and drive the lab of a newly leased identity.
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
        warm_kernels_max=jupyter.warm_kernels_max,
        warm_up_code=jupyter.warm_up_code,
        idle_timeout=hub.lab_idle_seconds,
        retire_delay=jupyter.kernel_retire_delay,
    )
    follower = IdentityFollower(lease, backend, wait_seconds=hub.identity_wait_seconds)
    follower.start()
    stack.push_async_callback(follower.aclose)
    return backend


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


def _webhook_service(
    config: Config,
    *,
    database: Database,
    task_queue: TaskQueue,
    secret_box: LazySecretBox,
    http: httpx.AsyncClient | None,
) -> WebhookService:
    """Build the webhook service; it can deliver only if given a client."""
    guard = webhook_guard(config.webhooks)
    return WebhookService(
        database=database,
        task_queue=task_queue,
        guard=guard,
        secrets=secret_box,
        settings=config.webhooks,
        public_url=config.effective_public_url,
        sender=None if http is None else WebhookSender(http=http, guard=guard),
    )


class ApiFactory:
    """Hands out the API's services, wired to one :class:`ApiContext`."""

    def __init__(self, context: ApiContext) -> None:
        self._context = context

    @property
    def public_url(self) -> str | None:
        """The configured public base URL (``public_url``), if any."""
        return self._context.config.public_url

    def create_authenticator(self) -> Authenticator:
        """Return what identifies the caller of each request (``auth.mode``)."""
        return Authenticator(
            settings=self._context.config.auth,
            database=self._context.database,
            cache=self._context.token_cache,
        )

    def create_submission_service(self, caller: Caller) -> SubmissionService:
        """Service behind ``submitExecution``, acting for ``caller``."""
        context = self._context
        return SubmissionService(
            caller=caller,
            database=context.database,
            bus=context.bus,
            task_queue=context.task_queue,
            limits=context.config.limits,
            default_kernel_name=context.config.jupyter.default_kernel_name,
            kernel_names=context.kernel_names,
            webhooks=self.create_webhook_service(),
        )

    def create_execution_service(self, caller: Caller) -> ExecutionService:
        """Service reading and cancelling executions, acting for ``caller``."""
        return ExecutionService(
            caller=caller,
            database=self._context.database,
            bus=self._context.bus,
            webhooks=self.create_webhook_service(),
        )

    def create_watcher(self, caller: Caller) -> ExecutionWatcher:
        """Service behind the ``executionStatus`` subscription."""
        context = self._context
        return ExecutionWatcher(
            caller=caller,
            database=context.database,
            bus=context.bus,
            feeds=context.feeds,
        )

    def create_webhook_service(self) -> WebhookService:
        """Service that registers webhooks and wakes their delivery up.

        It cannot deliver: only workers send webhooks.
        """
        context = self._context
        return _webhook_service(
            context.config,
            database=context.database,
            task_queue=context.task_queue,
            secret_box=context.secret_box,
            http=None,
        )

    def create_health_service(self) -> HealthService:
        """Readiness of the API's database and queue (``/readyz``, ``/metrics``)."""
        return HealthService(
            database=self._context.database, task_queue=self._context.task_queue
        )

    def create_rendering_service(self) -> RenderingService:
        """Service behind ``Execution.html``."""
        return RenderingService(
            database=self._context.database, in_flight=self._context.renders
        )


class WorkerFactory:
    """Hands out a worker's services, wired to one :class:`WorkerContext`."""

    def __init__(self, context: WorkerContext) -> None:
        self._context = context

    def create_runner(self) -> ExecutionRunner:
        """Service behind the worker's execute actor."""
        context = self._context
        config = context.config
        outputs = config.outputs
        return ExecutionRunner(
            database=context.database,
            bus=context.bus,
            backend=context.backend,
            task_queue=context.task_queue,
            workers=config.workers,
            # OutputLimits stays in jupyter/, which may not import the
            # configuration: built here from the outputs group.
            outputs=outputs,
            cancels=context.cancels,
            output_limits=OutputLimits(
                max_output_bytes=outputs.max_output_bytes,
                max_total_bytes=outputs.max_notebook_output_bytes,
            ),
            webhooks=self.create_webhook_service(),
            drain=context.drain,
        )

    def create_health_service(self) -> HealthService:
        """Readiness of the worker's database and queue (its ``/readyz``)."""
        return HealthService(
            database=self._context.database, task_queue=self._context.task_queue
        )

    def create_recovery_sweep(self) -> RecoverySweep:
        """Service that requeues what lost workers and messages left behind."""
        context = self._context
        return RecoverySweep(
            database=context.database,
            bus=context.bus,
            task_queue=context.task_queue,
            workers=context.config.workers,
            webhooks=self.create_webhook_service(),
        )

    def create_retention_service(self) -> RetentionService:
        """Service that purges old finished executions (the periodic purge)."""
        return RetentionService(
            database=self._context.database,
            settings=self._context.config.retention,
        )

    def create_webhook_service(self) -> WebhookService:
        """Service that delivers webhooks (and sweeps for lost wake-ups)."""
        context = self._context
        return _webhook_service(
            context.config,
            database=context.database,
            task_queue=context.task_queue,
            secret_box=context.secret_box,
            http=context.webhook_http,
        )


class CliFactory:
    """Hands out what the ``noteburst`` commands use directly."""

    def __init__(self, context: CliContext) -> None:
        self._context = context

    def create_token_service(self) -> TokenService:
        """Token management (``noteburst token``)."""
        return TokenService(database=self._context.database)

    def create_retention_service(self) -> RetentionService:
        """Service that purges old finished executions (``noteburst db purge``)."""
        return RetentionService(
            database=self._context.database,
            settings=self._context.config.retention,
        )
