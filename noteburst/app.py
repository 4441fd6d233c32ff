"""The ASGI application: GraphQL over HTTP and websockets, GraphiQL, health.

Beside GraphQL it serves Rubin's Noteburst REST API v1 under ``/noteburst``
(:mod:`noteburst.api.rest_v1`), for clients written against that service,
and each execution's live page at ``/executions/{id}``
(:mod:`noteburst.api.live`).

``create_app`` is the web entry point's factory.  Its lifespan builds the
process context and, when this process runs a worker (the embedded default,
or ``serve --with-worker``), starts the Dramatiq worker beside the API on
its own loop thread, sharing an in-process event bus with it.  Every
request and websocket handshake addressed to a name outside
``Config.effective_allowed_hosts`` is refused first, so that a web page
on a name rebound to this address (DNS rebinding) cannot run code here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.base import BaseRequestProtocol
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UnsetType

from .api.auth import authenticate, error_response, wants_graphiql_page
from .api.context import GraphQLContext
from .api.errors import unavailable_extensions, unavailable_response
from .api.graphiql import render_graphiql, static_routes
from .api.graphiql_example import EXAMPLE
from .api.listen import listening_socket
from .api.live import live_routes
from .api.ops import ops_routes
from .api.origins import OriginGuard
from .api.rest_v1 import rest_v1_routes
from .api.rest_v1_openapi import openapi_routes
from .api.schema import create_schema
from .api.shared_subscriptions import SharingTransportWSHandler, SubscriptionGroups
from .config import Config, web_origin
from .exceptions import ClientError, ConfigurationError, ServiceUnavailableError
from .factory import ApiContext, ApiFactory, create_broker
from .services.health import HealthService
from .storage.database import Database
from .storage.events import LocalEventBus
from .worker.process import RunningWorker, start_worker

__all__ = [
    "FULL_COLLECTION_SPACING",
    "check_config",
    "create_app",
    "listening_socket",
    "request_body_limit",
    "serve_in_background",
    "server_options",
    "tune_garbage_collector",
]

_logger = structlog.get_logger("noteburst.app")

_STATIC_PREFIX = "/graphiql-static"


class _State(TypedDict):
    context: ApiContext


def request_body_limit(config: Config) -> int:
    """Largest HTTP or websocket message accepted, in bytes.

    Twice the notebook limit (a notebook sent as a JSON string is escaped)
    plus room for the rest of the request, so that an oversized notebook
    still reaches validation and gets its typed "too large" error.
    """
    return 2 * config.limits.max_notebook_bytes + 1024 * 1024


class _GraphQLApp(GraphQL[GraphQLContext, None]):
    """Strawberry's ASGI app, with every HTTP request authenticated first.

    See :mod:`noteburst.api.auth` for what is accepted and how a refusal
    looks; websockets authenticate in :meth:`on_ws_connect`.  Subscriptions
    asking the same thing share one execution (see
    :mod:`noteburst.api.shared_subscriptions`).
    """

    graphql_transport_ws_handler_class = SharingTransportWSHandler

    def __init__(
        self,
        *args: Any,
        mode: str,
        subscription_groups: SubscriptionGroups,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._mode = mode
        self.subscription_groups = subscription_groups

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope, receive)
            if not wants_graphiql_page(
                request.method, request.headers, request.query_params
            ):
                state: Any = request.state
                try:
                    caller = await authenticate(
                        ApiFactory(state.context), request, mode=self._mode
                    )
                except ClientError as exc:
                    await error_response(exc)(scope, receive, send)
                    return
                except ServiceUnavailableError as exc:
                    # Credentials could not be checked: nothing ran.
                    _logger.warning("Request refused", error=str(exc))
                    await unavailable_response(exc)(scope, receive, send)
                    return
                scope.setdefault("state", {})["caller"] = caller
        await super().__call__(scope, receive, send)

    def decode_json(self, data: str | bytes) -> object:
        """Decode a request; one nested past the decoder's reach is not JSON to us.

        ``json.loads`` recurses, and raises RecursionError on arrays or
        objects nested about a thousand deep.  Reported as a decoding error,
        the request is refused like any malformed body (HTTP 400; on a
        websocket, the close for a non-JSON message) instead of failing
        with a 500.  Shallower notebooks reach validation, which refuses
        them by name (:data:`noteburst.domain.notebook.MAX_NESTING`).
        """
        try:
            return json.loads(data)
        except RecursionError as exc:
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            raise json.JSONDecodeError("nested too deeply", text, 0) from exc

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> GraphQLContext:
        state: Any = request.state
        return GraphQLContext(
            request=request,
            factory=ApiFactory(state.context),
            caller=getattr(state, "caller", None),
        )

    async def on_ws_connect(
        self, context: GraphQLContext
    ) -> UnsetType | dict[str, object] | None:
        try:
            context.caller = await authenticate(
                context.factory,
                context.request,
                mode=self._mode,
                params=context.connection_params
                if isinstance(context.connection_params, dict)
                else None,
            )
        except ClientError as exc:
            _logger.info(
                "Websocket refused", reason=exc.code, peer=_peer(context.request)
            )
            raise ConnectionRejectionError({"message": exc.message}) from exc
        except ServiceUnavailableError as exc:
            _logger.warning("Websocket refused", error=str(exc))
            raise ConnectionRejectionError(
                {"message": exc.message, **unavailable_extensions(exc)}
            ) from exc
        return None

    def should_render_graphql_ide(self, request: BaseRequestProtocol) -> bool:
        """Serve GraphiQL by the same rule that let the request skip auth.

        A browser's share link ``/graphql?query=...`` gets the page with the
        query prefilled (see `~noteburst.api.auth.wants_graphiql_page`).
        """
        return wants_graphiql_page(
            request.method, request.headers, request.query_params
        )

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        return HTMLResponse(render_graphiql(_STATIC_PREFIX, EXAMPLE))


def server_options(config: Config) -> dict[str, Any]:
    """Return the uvicorn settings every way of serving Noteburst shares.

    * ``ws_max_size``: see :func:`request_body_limit`.
    * ``proxy_headers`` off: the peer must be the TCP peer;
      ``trusted_proxies`` decides whom to believe, not uvicorn's
      X-Forwarded-For rewriting.
    * ``ws_per_message_deflate`` off: a browser offers permessage-deflate,
      and accepting it gives each websocket a zlib compressor and
      decompressor with their windows, about 40 KB a connection (a
      thousand watchers of a page cost 40 MB more), to deflate events of a
      few hundred bytes, on the latency path, at the cost of CPU on both
      sides (``bench/fanout.py``).
    """
    return {
        "log_config": None,
        "ws_max_size": request_body_limit(config),
        "ws_per_message_deflate": False,
        "proxy_headers": False,
    }


def _peer(connection: Request | WebSocket) -> str | None:
    return connection.client.host if connection.client is not None else None


def _allowed_origins(config: Config) -> list[str]:
    """``cors_origins``, and the public URL's origin (an ingress may rewrite Host)."""
    origins = list(config.cors_origins)
    if config.public_url:
        with contextlib.suppress(ValueError):
            origins.append(web_origin(config.public_url))
    return list(dict.fromkeys(origins))


def _health_service(request: Request) -> HealthService:
    state: Any = request.state
    return ApiFactory(state.context).create_health_service()


def check_config(config: Config) -> None:
    """Refuse combinations that cannot work.

    Raises
    ------
    ConfigurationError
        Raised if Redis is set without a Postgres database: separate worker
        processes could not push events to the API through SQLite; or if
        ``auth_mode=none`` would serve a non-loopback host without
        ``allow_unauthenticated`` and ``allowed_hosts``; or
        ``auth_mode=proxy`` has no trusted proxies.
    """
    auth = config.auth
    if auth.mode == "none" and not config.binds_loopback:
        if not auth.allow_unauthenticated:
            msg = (
                f"NOTEBURST_AUTH_MODE=none on the non-loopback host "
                f"{config.host!r} would make anyone who can reach it an "
                "administrator: choose NOTEBURST_AUTH_MODE=tokens or proxy, or "
                "set NOTEBURST_ALLOW_UNAUTHENTICATED=true"
            )
            raise ConfigurationError(msg)
        if config.allowed_hosts is None:
            # Anyone who can reach it includes every web page its users
            # open: one on a name rebound to this address would be
            # same-origin to their browser (see Config.effective_allowed_hosts).
            msg = (
                f"NOTEBURST_AUTH_MODE=none on the non-loopback host "
                f"{config.host!r} needs NOTEBURST_ALLOWED_HOSTS, the names "
                "clients reach it by: accepting any name would let a web "
                "page on a name rebound to this address run code here "
                '(["*"] accepts that)'
            )
            raise ConfigurationError(msg)
    if auth.mode == "proxy" and not auth.trusted_proxies:
        msg = (
            "NOTEBURST_AUTH_MODE=proxy needs NOTEBURST_TRUSTED_PROXIES (the "
            "ingress's addresses); without it every request is anonymous"
        )
        raise ConfigurationError(msg)
    hub_configured = config.hub.url and config.hub.token
    if config.jupyter.lab_backend == "jupyterhub" and not hub_configured:
        msg = (
            "NOTEBURST_LAB_BACKEND=jupyterhub needs NOTEBURST_HUB_URL and "
            "NOTEBURST_HUB_TOKEN"
        )
        raise ConfigurationError(msg)
    if config.redis_url and not (
        config.database_url and config.database_url.startswith("postgresql")
    ):
        msg = (
            "NOTEBURST_REDIS_URL needs NOTEBURST_DATABASE_URL to point at "
            "PostgreSQL (postgresql+asyncpg://...)"
        )
        raise ConfigurationError(msg)


FULL_COLLECTION_SPACING = 100
"""Young-generation collections between two chances of a full one
(CPython's third threshold; its default is 10)."""


def tune_garbage_collector() -> None:
    """Keep full garbage collections rare and short in a long-lived server.

    Each full collection by CPython's cyclic collector traverses every
    tracked object, a pause added to whatever request, push or execution
    runs at that moment.  Two things make it short and rare:

    * **Start-up's objects are frozen.**  A serving process holds a great
      many objects made at import and start-up (modules, the GraphQL
      schema, SQLAlchemy's and Alembic's structures) that live as long as
      it does.  ``gc.freeze()`` moves them to the permanent generation,
      which collections skip.
    * **Full collections are spaced out.**  What is made later is mostly
      open subscriptions: about 150 tracked objects each, and a full
      collection took 30-115 ms while 1,000 of them opened (about 0.1 ms
      a subscription: a second at 10,000), coming seven times in that
      minute.  One landing in the push of an event to those subscribers
      doubled the time until the last got it (bench/README.md, "Full
      collections").  A full collection is considered after every
      :data:`FULL_COLLECTION_SPACING` young-generation collections
      instead of every 10, and still only once the objects that survived
      since the last one exceed a quarter of the long-lived ones; young
      cycles, most of the garbage, are collected as often as before.

    For long-lived server processes only (the ``serve`` and ``worker``
    commands): a process that creates and discards many apps, such as the
    test suite, would freeze its garbage.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_SPACING)


def create_app(
    config: Config | None = None,
    *,
    run_worker: bool | None = None,
    freeze_after_startup: bool = False,
) -> Starlette:
    """Create the Noteburst ASGI application.

    Parameters
    ----------
    config
        Configuration; read from the environment when omitted.
    run_worker
        Run a Dramatiq worker in this process; default: only in the embedded
        default (no Redis configured).
    freeze_after_startup
        Call :func:`tune_garbage_collector` once start-up is done (for a
        process that serves this one app until it exits).

    Returns
    -------
    Starlette
        The application.
    """
    cfg = config if config is not None else Config()
    check_config(cfg)
    with_worker = cfg.is_embedded if run_worker is None else run_worker

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[_State]:
        await _prepare_database(cfg)
        broker = create_broker(cfg)
        # The in-process worker announces events on a thread-safe local bus.
        # On SQLite the API listens to that bus; on Postgres it listens to
        # NOTIFY like any API process, so one code path serves both the
        # single-process and the scaled-out deployment.
        worker_bus = LocalEventBus()
        postgres = cfg.effective_database_url.startswith("postgresql")
        context = await ApiContext.build(
            cfg, broker=broker, local_bus=None if postgres else worker_bus
        )
        worker: RunningWorker | None = None
        try:
            if with_worker:
                worker = await asyncio.to_thread(
                    start_worker, cfg, broker, bus=worker_bus, embedded=cfg.is_embedded
                )
            _logger.info(
                "Noteburst ready",
                database=context.database.dialect_name,
                queue="redis" if cfg.redis_url else "in-process",
                worker="in-process" if worker else "separate",
                kernels=list(context.kernel_names),
            )
            if freeze_after_startup:
                tune_garbage_collector()
            yield {"context": context}
        finally:
            if worker is not None:
                await asyncio.to_thread(worker.stop)
            await context.aclose()

    # Only graphql-transport-ws: it is the protocol of the contract, and the
    # legacy graphql-ws protocol has been the channel of past auth bypasses.
    origins = _allowed_origins(cfg)
    graphql_app = _GraphQLApp(
        create_schema(cfg.graphql),
        subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
        mode=cfg.auth.mode,
        subscription_groups=SubscriptionGroups(max_tokens=cfg.graphql.max_tokens),
        # Websocket handshakes from other origins (Strawberry's check).
        allowed_origins=origins,
    )
    return Starlette(
        routes=[
            Route("/graphql", graphql_app),
            WebSocketRoute("/graphql", graphql_app),
            *rest_v1_routes(cfg.auth.mode),
            *openapi_routes(),
            *live_routes(cfg.auth.mode),
            *ops_routes(_health_service, queue_depths=True),
            *static_routes(_STATIC_PREFIX),
        ],
        middleware=[
            # The Host check against DNS rebinding (see
            # Config.effective_allowed_hosts), on every route.  Starlette's
            # own: it checks websocket handshakes as well as HTTP requests,
            # refusing both with 400 "Invalid host header" (a handshake
            # before it is accepted, as an HTTP denial response), and parses
            # bracketed IPv6 hosts.  No www. redirect: a refused name is
            # refused, not sent elsewhere.
            Middleware(
                TrustedHostMiddleware,
                allowed_hosts=cfg.effective_allowed_hosts,
                www_redirect=False,
            ),
            # Browser requests from other origins: refused unless listed
            # (see noteburst.api.origins); listed ones get CORS headers.
            Middleware(OriginGuard, allowed=origins),
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
                allow_credentials=True,
                max_age=600,
            ),
        ],
        lifespan=lifespan,
        max_body_size=request_body_limit(cfg),
    )


async def _prepare_database(config: Config) -> None:
    """Migrate the embedded SQLite database; check that Postgres is current."""
    database = Database.from_url(config.effective_database_url)
    try:
        if not database.is_postgres:
            await database.upgrade()
        elif not await database.is_current():
            msg = "the database schema is not current: run `noteburst db upgrade`"
            raise ConfigurationError(msg)
    finally:
        await database.aclose()


@contextlib.asynccontextmanager
async def serve_in_background(
    config: Config, *, run_worker: bool | None = None
) -> AsyncIterator[tuple[str, asyncio.Task[None]]]:
    """Serve Noteburst on a free loopback port from this event loop.

    Used by ``noteburst run`` without a server, and by tests and benchmarks.

    Yields
    ------
    tuple
        The base URL, and the server task (done if the server stopped).
    """
    # Bind and listen before uvicorn starts, so requests made while the
    # instance is still starting wait in the backlog instead of failing.
    sock = listening_socket("127.0.0.1", 0, backlog=128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, run_worker=run_worker),
            log_level="warning",
            lifespan="on",
            **server_options(config),
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}", task
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=60)
        sock.close()
