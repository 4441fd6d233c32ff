"""Labs on JupyterHub: the hub's REST API, and a lab backend per bot user.

:class:`JupyterHubClient` speaks the part of the hub API Noteburst needs
(users, the default server, its spawn progress), and :class:`HubLabBackend`
uses it to implement :class:`~.backend.LabBackend` for one bot user's lab:
``start`` creates the user and spawns (or finds) its server, ``kernel``
takes fresh kernels from it through the hub proxy, exactly as
:class:`~.backend.LocalLabBackend` does on a local server.

The rules come from what was measured (``jupyter-on-loopback.md``):

* The token travels in the ``Authorization: token ...`` header, never in a
  URL (the hub answers 403) and never as a cookie.  Redirects are not
  followed: the proxy answers 302 (424 if followed) for a server that is
  gone, which is :class:`~.exceptions.LabUnavailableError`.
* Starting a server does not block: with the hub's ``slow_spawn_timeout``
  at 0 the POST answers 202 at once, and the spawn is followed on the
  progress event stream, bounded by a timeout.  A spawn that fails there
  (bad command, server never answering within the spawner's
  ``http_timeout``) is :class:`LabSpawnError` with the hub's message.
* Usernames are URL-escaped in routes (G14): the lab URL is taken from the
  hub's user model, not built from the name.
* The service token needs the scopes ``admin:users`` (create the bot user),
  ``servers`` or ``admin:servers`` (start, stop, progress) and
  ``access:servers`` (use the lab); the same token works on the lab.

A lab is reused across notebooks.  When it disappears (stopped, culled,
crashed), the kernel in use fails with
:class:`~.exceptions.LabUnavailableError`, and the next :meth:`kernel` call
spawns a new lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
)
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urljoin

import httpx

from .backend import KernelShutdowns, LabProgressCallback, start_kernel
from .exceptions import (
    JupyterError,
    JupyterWebError,
    KernelDiedError,
    KernelStartError,
    LabSpawnError,
    LabUnavailableError,
)
from .kernel import KernelConnection
from .metrics import LAB_SPAWN_SECONDS
from .pool import KernelPool
from .protocol import WireProtocol
from .rest import JupyterRestClient

__all__ = [
    "HubLabBackend",
    "JupyterHubClient",
    "LabSpawnError",
    "ProgressCallback",
    "SpawnProgress",
]

_log = logging.getLogger(__name__)

_UNAVAILABLE_STATUSES: Final = frozenset({502, 503, 504})
"""Gateway errors: the proxy is up but the hub behind it is not."""

_STOP_POLL_INTERVAL: Final = 0.1
"""Seconds between looks at a server that is still stopping (the hub has no
event for the end of a stop)."""

_PROBE_TIMEOUT: Final = 5.0
"""Upper bound in seconds of the status probe after a kernel failure."""


@dataclass(frozen=True, slots=True)
class SpawnProgress:
    """One event of a spawn's progress stream.

    Attributes
    ----------
    progress
        Percentage the spawner reports (0-100), if any.
    message
        Human-readable text, e.g. ``Spawning server...``.
    ready
        Whether this is the final event of a successful spawn.
    failed
        Whether this is the final event of a failed spawn.
    url
        Path of the ready server (``/user/NAME/``), on the ready event.
    raw
        The event as the hub sent it.
    """

    progress: int | None
    message: str
    ready: bool = False
    failed: bool = False
    url: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> SpawnProgress:
        """Build the progress from a decoded event-stream ``data`` object."""
        progress = event.get("progress")
        url = event.get("url")
        return cls(
            progress=int(progress) if isinstance(progress, int | float) else None,
            message=str(event.get("message") or ""),
            ready=bool(event.get("ready")),
            failed=bool(event.get("failed")),
            url=url if isinstance(url, str) else None,
            raw=dict(event),
        )


class JupyterHubClient:
    """Client for the JupyterHub REST API (users and their default server).

    Parameters
    ----------
    http
        Shared HTTP client (not closed here).  Its cookie jar is not used.
    hub_url
        Base URL of the hub, under which ``hub/api/`` lives, e.g.
        ``https://hub.example/`` (the proxy's public URL) or
        ``http://hub-internal:8081/``.
    token
        API token of the service, sent as ``Authorization: token ...``.
    timeout
        Timeout in seconds of every request (the progress stream is
        bounded separately).
    proxy_url
        Public URL of the hub proxy, where user servers are reached; the
        server paths the hub reports (``/user/NAME/``) are joined to it.
        Defaults to ``hub_url``.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        hub_url: str,
        token: str,
        timeout: float,
        proxy_url: str | None = None,
    ) -> None:
        self._http = http
        self.hub_url = hub_url.rstrip("/") + "/"
        self.proxy_url = (proxy_url or hub_url).rstrip("/") + "/"
        self._token = token
        self.timeout = timeout

    @property
    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a request (to the hub or a lab)."""
        return {"Authorization": f"token {self._token}"}

    def api_url(self, path: str) -> str:
        """Return the absolute URL of ``path`` under ``hub/api/``."""
        return f"{self.hub_url}hub/api/{path.lstrip('/')}"

    async def user(self, name: str) -> dict[str, Any] | None:
        """Return the user model, or `None` if the user does not exist.

        With ``admin:server_state`` (part of ``admin:servers``) each server's
        ``state`` is included, e.g. ``{"pid": 1234}`` for local spawners.
        """
        response = await self._request("GET", _user_path(name), expected={200, 404})
        if response.status_code == 404:  # noqa: PLR2004
            return None
        return _json_object(response)

    async def ensure_user(self, name: str) -> None:
        """Create the user unless it exists.

        Raises
        ------
        LabUnavailableError
            If the hub cannot be reached.
        JupyterWebError
            If the hub refuses (e.g. the token lacks ``admin:users``).
        """
        await self._request("POST", _user_path(name), expected={201, 409})

    async def delete_user(self, name: str) -> None:
        """Delete the user (the hub stops its servers first); absent is fine."""
        await self._request("DELETE", _user_path(name), expected={204, 404})

    async def start_server(
        self, name: str, *, user_options: Mapping[str, Any] | None = None
    ) -> bool:
        """Ask the hub to start the user's default server; do not wait for it.

        Parameters
        ----------
        name
            Hub username (the user must exist).
        user_options
            Options for the spawner (the JSON body of the request).

        Returns
        -------
        bool
            `True` if a spawn was requested or is already pending (202, or
            201 if it finished at once), `False` if the server was already
            running.  A server the hub believed running but that died is
            noticed here, and spawned again.

        Raises
        ------
        LabSpawnError
            If the hub refuses to start it (unknown user, a stop still
            pending: ``exc.__cause__`` is the `JupyterWebError`).
        LabUnavailableError
            If the hub cannot be reached.
        """
        path = f"{_user_path(name)}/server"
        body = dict(user_options) if user_options else None
        try:
            response = await self._request(
                "POST", path, json=body, expected={201, 202, 400}
            )
        except LabUnavailableError:
            raise
        except JupyterWebError as exc:
            raise LabSpawnError(
                f"hub refused to start the server of {name}: {exc}", username=name
            ) from exc
        if response.status_code != 400:  # noqa: PLR2004
            return True
        message = _hub_message(response)
        if "already running" in message:
            return False
        error = JupyterWebError.from_response(response)
        raise LabSpawnError(
            f"hub refused to start the server of {name}: {message}", username=name
        ) from error

    async def follow_spawn(
        self,
        name: str,
        *,
        timeout: float,  # noqa: ASYNC109 - the bound spans many awaits and yields
    ) -> AsyncGenerator[SpawnProgress, None]:
        """Yield the progress events of the user's spawn until it is ready.

        The last event yielded is the ready one; a server that is already
        running gives just that event.  Consume it with
        `contextlib.aclosing` if you may stop early.

        Parameters
        ----------
        name
            Hub username.
        timeout
            Seconds the whole spawn may take (time spent by the consumer
            between events counts too).

        Raises
        ------
        LabSpawnError
            If the spawn failed (the hub's message), did not finish within
            ``timeout``, or is not happening (never started, or stopped).
        LabUnavailableError
            If the hub cannot be reached.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        url = self.api_url(f"{_user_path(name)}/server/progress")
        request = self._http.build_request(
            "GET",
            url,
            headers={**self.auth_headers, "Accept": "text/event-stream"},
            timeout=httpx.Timeout(self.timeout, read=None),
        )
        request.headers.pop("Cookie", None)
        last: SpawnProgress | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout_at(deadline):
                    response = await self._http.send(
                        request, stream=True, follow_redirects=False
                    )
                    stack.push_async_callback(response.aclose)
                    if response.status_code != 200:  # noqa: PLR2004
                        await response.aread()
                        raise _progress_refused(name, response)
                events = await stack.enter_async_context(
                    contextlib.aclosing(_sse_events(response.aiter_lines()))
                )
                while True:
                    async with asyncio.timeout_at(deadline):
                        data = await anext(events, None)
                    if data is None:
                        raise LabSpawnError(
                            f"progress stream of {name} ended before the server "
                            f"was ready (last: {_describe(last)})",
                            username=name,
                        )
                    event = _parse_event(data)
                    if event is None:
                        continue
                    last = event
                    if event.failed:
                        raise LabSpawnError(
                            event.message or f"spawn of {name} failed", username=name
                        )
                    yield event
                    if event.ready:
                        return
        except TimeoutError as exc:
            raise LabSpawnError(
                f"server of {name} not ready after {timeout} s "
                f"(last progress: {_describe(last)})",
                username=name,
            ) from exc
        except httpx.TransportError as exc:
            raise LabUnavailableError.from_exception(exc) from exc
        except httpx.HTTPError as exc:
            raise JupyterWebError.from_exception(exc) from exc

    async def server_url(self, name: str) -> str | None:
        """Return the URL of the user's default server if it is ready.

        The path comes from the user model (``servers[""].url``, URL-escaped
        by the hub), joined with ``proxy_url``.  `None` if the user does not
        exist or the server is not running or not ready yet.
        """
        user = await self.user(name)
        servers = user.get("servers") if user else None
        server = servers.get("") if isinstance(servers, dict) else None
        if not isinstance(server, dict) or not server.get("ready"):
            return None
        path = server.get("url")
        if not isinstance(path, str) or not path:
            return None
        return urljoin(self.proxy_url, path)

    async def stop_server(self, name: str) -> bool:
        """Stop the user's default server (a pending spawn is cancelled).

        Returns
        -------
        bool
            `True` if the server is stopped (or was not running, or the user
            does not exist), `False` if the stop is still in progress (202).
        """
        response = await self._request(
            "DELETE", f"{_user_path(name)}/server", expected={202, 204, 404}
        )
        return response.status_code != 202  # noqa: PLR2004

    async def server_pending(self, name: str) -> str | None:
        """Return the pending action of the default server (``spawn``, ``stop``)."""
        user = await self.user(name)
        servers = user.get("servers") if user else None
        server = servers.get("") if isinstance(servers, dict) else None
        pending = server.get("pending") if isinstance(server, dict) else None
        return pending if isinstance(pending, str) else None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        expected: set[int],
        json: Any = None,
    ) -> httpx.Response:
        request = self._http.build_request(
            method,
            self.api_url(path),
            json=json,
            headers=self.auth_headers,
            timeout=self.timeout,
        )
        request.headers.pop("Cookie", None)
        try:
            response = await self._http.send(request, follow_redirects=False)
        except httpx.TransportError as exc:
            raise LabUnavailableError.from_exception(exc) from exc
        except httpx.HTTPError as exc:
            raise JupyterWebError.from_exception(exc) from exc
        if response.status_code in expected:
            return response
        if response.status_code in _UNAVAILABLE_STATUSES:
            raise LabUnavailableError.from_response(
                response, f"JupyterHub unavailable (HTTP {response.status_code})"
            )
        raise JupyterWebError.from_response(response)


ProgressCallback = Callable[[SpawnProgress], Awaitable[None]]


@dataclass(eq=False)
class _Lab:
    """One spawned lab: its REST client and its warm kernels."""

    rest: JupyterRestClient
    pool: KernelPool | None = None
    gone: bool = False
    """The server is stopped or vanished: its kernels went with it."""


class HubLabBackend:
    """Kernels from one bot user's lab on JupyterHub.

    The lab is spawned on first use and reused; several executions use it
    at once, one kernel each (as many as the worker runs at once).  With
    ``warm_kernels`` it keeps started kernels ready, as
    :class:`~.backend.LocalLabBackend` does; the pool belongs to one lab and
    is dropped with it.  After ``idle_timeout`` seconds without a kernel in
    use the lab is stopped, and the next kernel spawns it again.

    Parameters
    ----------
    http
        Shared HTTP client (not closed by the backend).
    hub_url
        Base URL of the hub (``hub/api/`` lives under it).
    token
        Service token with ``admin:users``, ``admin:servers`` (or
        ``servers``) and ``access:servers``; used on the lab as well.
    username
        The bot user whose default server is the lab (``[a-z0-9-]``).
    proxy_url
        Public URL of the hub proxy; defaults to ``hub_url``.
    spawn_timeout
        Seconds a spawn (request, progress, first answer) may take.
    kernel_start_timeout
        Seconds a kernel may take from creation until its websocket is open.
    request_timeout
        Timeout in seconds of each REST request (hub and lab).
    shutdown_timeout
        Seconds :meth:`aclose` waits for background kernel shutdowns.
    wire_protocol
        Preferred kernel websocket framing.
    user_options
        Spawner options sent with each spawn request.
    on_progress
        Awaited with every spawn progress event (including the final ready
        one); keep it quick, it runs inside the spawn timeout.
    warm_kernels
        Started kernels to keep ready per kernel name in each lab.
    warm_kernels_max
        The most kernels a kernel name's pool grows to with demand.
    warm_up_code
        Code run in each pooled kernel of a kernel name before it is used.
    warm_up_max_failures
        Consecutive failed pooled starts after which a kernel name's pool
        gives up (kernels are then started on demand).
    idle_timeout
        Seconds without a kernel in use after which the lab is stopped;
        `None` to keep it until :meth:`aclose`.
    retire_delay
        Seconds a used kernel is left alone before it is shut down (and its
        pool replacement started); see :class:`~.backend.KernelShutdowns`.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        hub_url: str,
        token: str,
        username: str,
        proxy_url: str | None = None,
        spawn_timeout: float = 120,
        kernel_start_timeout: float = 60,
        request_timeout: float = 30,
        shutdown_timeout: float = 10,
        wire_protocol: WireProtocol = WireProtocol.V1,
        user_options: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        warm_kernels: Mapping[str, int] | None = None,
        warm_kernels_max: int | None = None,
        warm_up_code: Mapping[str, str] | None = None,
        warm_up_max_failures: int = 5,
        idle_timeout: float | None = None,
        retire_delay: float = 0.0,
    ) -> None:
        self._http = http
        self._token = token
        self.username = username
        self.spawn_timeout = spawn_timeout
        self.kernel_start_timeout = kernel_start_timeout
        self.request_timeout = request_timeout
        self.shutdown_timeout = shutdown_timeout
        self.wire_protocol = wire_protocol
        self.user_options = dict(user_options) if user_options else None
        self.on_progress = on_progress
        self.warm_kernels_max = warm_kernels_max
        self.warm_kernels = {
            name: size for name, size in (warm_kernels or {}).items() if size > 0
        }
        self.warm_up_code = dict(warm_up_code or {})
        self.warm_up_max_failures = warm_up_max_failures
        self.idle_timeout = idle_timeout
        self.hub = JupyterHubClient(
            http=http,
            hub_url=hub_url,
            token=token,
            timeout=request_timeout,
            proxy_url=proxy_url,
        )
        self._current: _Lab | None = None
        self._lab_lock = asyncio.Lock()
        self._spawns = 0
        self._idle_stops = 0
        self._last_progress: SpawnProgress | None = None
        self._listeners: set[LabProgressCallback] = set()
        self._in_use = 0
        self._idle_timer: asyncio.Task[None] | None = None
        self._surrendered: str | None = None
        self._shutdowns = KernelShutdowns(delay=retire_delay)

    @property
    def rest(self) -> JupyterRestClient:
        """REST client of the current lab (after :meth:`start`)."""
        if self._current is None:
            raise JupyterError("HubLabBackend has no lab: call start()")
        return self._current.rest

    @property
    def lab_url(self) -> str | None:
        """Base URL of the current lab, if the backend has one."""
        return self._current.rest.base_url if self._current else None

    @property
    def pool(self) -> KernelPool | None:
        """Warm kernels of the current lab (with ``warm_kernels``)."""
        return self._current.pool if self._current else None

    @property
    def spawns(self) -> int:
        """How many spawns this backend has requested (finding one running is none)."""
        return self._spawns

    @property
    def idle_stops(self) -> int:
        """How many times the lab was stopped for being idle."""
        return self._idle_stops

    @property
    def kernels_in_use(self) -> int:
        """Kernels handed out by :meth:`kernel` and not yet given back."""
        return self._in_use

    @property
    def pending_shutdowns(self) -> int:
        """Number of kernel shutdowns still running in the background."""
        return len(self._shutdowns)

    async def start(self) -> None:
        """Make sure the bot user exists and its lab runs and answers.

        Idempotent while the lab is known to be up; spawns a new lab if the
        previous one was found gone.  Starts filling the warm pool without
        waiting for it.

        Raises
        ------
        LabSpawnError
            If the spawn fails or does not finish within ``spawn_timeout``.
        LabUnavailableError
            If the hub, or the new lab, cannot be reached, or the identity
            was surrendered.
        """
        await self._lab()

    async def kernel_names(self) -> list[str]:
        """Return the kernelspec names the lab offers (spawning it if needed)."""
        lab = await self._lab()
        try:
            return await lab.rest.kernelspecs()
        except JupyterWebError:
            if not await self._lab_is_gone(lab):
                raise
            self._forget_lab(lab, gone=True)
            return await (await self._lab()).rest.kernelspecs()

    def kernel(
        self,
        kernel_name: str,
        *,
        on_progress: LabProgressCallback | None = None,
    ) -> contextlib.AbstractAsyncContextManager[KernelConnection]:
        """Hand out a fresh kernel in the lab, with its websocket open.

        A warm kernel from the pool (never used before): a ready one, or
        the pool's next (:meth:`~.pool.KernelPool.acquire`); one started
        now if the pool is failing.  If the lab is gone (found now, or by an
        earlier failure), a new one is spawned first.

        Parameters
        ----------
        kernel_name
            Kernelspec name, e.g. ``python3``.
        on_progress
            Awaited with a line of text for each spawn progress event while
            this call waits for a lab to be spawned.

        Returns
        -------
        contextlib.AbstractAsyncContextManager[KernelConnection]
            Yields the open connection; on exit (also on error or
            cancellation) closes it and shuts the kernel down in the
            background.  If the block fails because the lab went away
            (including a kernel reported dead because its server stopped),
            the error is `LabUnavailableError` and the next call spawns a
            new lab.

        Raises
        ------
        KernelStartError
            If the kernel cannot be started (unknown name, start timeout).
        LabUnavailableError
            If the lab is gone (and could not be replaced), or the identity
            was surrendered.
        LabSpawnError
            If a new lab was needed and could not be spawned.
        """
        return self._kernel(kernel_name, on_progress)

    def surrender_identity(self, reason: str) -> None:
        """Stop driving this user's lab: another worker holds the identity.

        The lab is left running for its new holder; warm kernels are shut
        down and kernels in use finish normally.  Until
        :meth:`assume_identity`, :meth:`kernel` raises `LabUnavailableError`
        (a retryable failure: the execution is queued again).
        """
        _log.error("Surrendering the lab of %s: %s", self.username, reason)
        self._surrendered = reason
        self._cancel_idle_timer()
        if self._current is not None:
            self._forget_lab(self._current, gone=False)

    def assume_identity(self, username: str) -> None:
        """Drive the lab of ``username`` from now on (after a surrender)."""
        if self._current is not None:
            self._forget_lab(self._current, gone=False)
        self.username = username
        self._surrendered = None
        _log.info("Now driving the lab of %s", username)

    async def aclose(self, stop_lab: bool = True) -> None:
        """Drop the warm pool, wait (bounded) for shutdowns, stop the lab.

        Parameters
        ----------
        stop_lab
            Whether to stop the bot user's server; `False` leaves it running
            for the next backend (or the hub's culler).  A surrendered lab
            is never stopped: it belongs to another worker.
        """
        self._cancel_idle_timer()
        lab, self._current = self._current, None
        try:
            if lab is not None and lab.pool is not None:
                await lab.pool.aclose(grace=self.shutdown_timeout)
            await self._shutdowns.drain(self.shutdown_timeout)
        finally:
            stop = stop_lab and self._surrendered is None
            if stop and (lab is not None or self._spawns):
                await self._stop_server()

    # -- internals -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _kernel(
        self, kernel_name: str, on_progress: LabProgressCallback | None
    ) -> AsyncIterator[KernelConnection]:
        self._in_use += 1
        self._cancel_idle_timer()
        try:
            lab = await self._lab_for(on_progress)
            pooled = (
                await lab.pool.acquire(kernel_name) if lab.pool is not None else None
            )

            async def create() -> tuple[JupyterRestClient, str]:
                nonlocal lab
                lab, new_id = await self._create_kernel(lab, kernel_name, on_progress)
                return lab.rest, new_id

            kernel_id: str | None = None
            conn: KernelConnection | None = None
            try:
                if pooled is not None:
                    kernel_id, conn = pooled.kernel_id, pooled
                else:
                    kernel_id, conn = await start_kernel(
                        create,
                        lambda failed_id, failed: self._retire(lab, failed_id, failed),
                        kernel_name=kernel_name,
                        wire_protocol=self.wire_protocol,
                        start_timeout=self.kernel_start_timeout,
                    )
                yield conn
            except (LabUnavailableError, KernelDiedError, KernelStartError) as exc:
                if not await self._lab_is_gone(lab):
                    raise
                self._forget_lab(lab, gone=True)
                raise LabUnavailableError(
                    f"lab of {self.username} went away: {exc}", url=lab.rest.base_url
                ) from exc
            finally:
                if pooled is not None and lab.pool is not None:
                    lab.pool.hand_back(pooled)
                if kernel_id is not None:
                    self._retire(lab, kernel_id, conn)
        finally:
            self._in_use -= 1
            if self._in_use == 0:
                self._arm_idle_timer()

    async def _create_kernel(
        self, lab: _Lab, kernel_name: str, on_progress: LabProgressCallback | None
    ) -> tuple[_Lab, str]:
        try:
            return lab, await lab.rest.create_kernel(kernel_name)
        except JupyterWebError:
            # A stopped lab answers a GET with 302, but a POST reaches the
            # hub itself, which refuses it with 403 (no XSRF token): ask.
            if not await self._lab_is_gone(lab):
                raise
            self._forget_lab(lab, gone=True)
        lab = await self._lab_for(on_progress)
        return lab, await lab.rest.create_kernel(kernel_name)

    async def _lab_for(self, on_progress: LabProgressCallback | None) -> _Lab:
        """Return the lab; ``on_progress`` hears of a spawn this waits for."""
        if on_progress is None or self._current is not None:
            return await self._lab()
        self._listeners.add(on_progress)
        try:
            return await self._lab()
        finally:
            self._listeners.discard(on_progress)

    async def _lab(self) -> _Lab:
        """Return the current lab, spawning one if there is none."""
        if self._surrendered is not None:
            raise LabUnavailableError(
                f"this worker no longer holds the identity {self.username}: "
                f"{self._surrendered}"
            )
        lab = self._current
        if lab is not None:
            return lab
        async with self._lab_lock:
            if self._current is None:
                self._current = self._open_lab(await self._spawn_lab())
            return self._current

    def _open_lab(self, rest: JupyterRestClient) -> _Lab:
        """Wrap a ready lab; start filling its warm pool (without waiting)."""
        lab = _Lab(rest)
        if self.warm_kernels:
            lab.pool = KernelPool(
                rest=rest,
                retire=lambda kernel_id, conn: self._retire(lab, kernel_id, conn),
                sizes=self.warm_kernels,
                max_size=self.warm_kernels_max,
                warm_up_code=self.warm_up_code,
                wire_protocol=self.wire_protocol,
                start_timeout=self.kernel_start_timeout,
                max_failures=self.warm_up_max_failures,
                username=self.username,
            )
            lab.pool.start()
        return lab

    async def _spawn_lab(self) -> JupyterRestClient:
        """Spawn (or find) the lab, bounded by ``spawn_timeout``."""
        name = self.username
        self._last_progress = None
        began, spawns = time.monotonic(), self._spawns
        try:
            async with asyncio.timeout(self.spawn_timeout) as scope:
                rest = await self._spawn_lab_unbounded(scope)
            if self._spawns > spawns:  # a lab found running took no spawn
                LAB_SPAWN_SECONDS.observe(time.monotonic() - began)
            return rest
        except TimeoutError as exc:
            await self._cancel_spawn()
            raise LabSpawnError(
                f"lab of {name} not ready after {self.spawn_timeout} s "
                f"(last progress: {_describe(self._last_progress)})",
                username=name,
            ) from exc
        except LabSpawnError as exc:
            await self._cancel_spawn()
            if name in str(exc):
                raise
            raise LabSpawnError(
                f"lab of {name} could not be started: {exc}", username=name
            ) from exc

    async def _spawn_lab_unbounded(self, scope: asyncio.Timeout) -> JupyterRestClient:
        hub, name = self.hub, self.username
        await hub.ensure_user(name)
        if await self._request_spawn():
            self._spawns += 1
        deadline = scope.when()
        assert deadline is not None
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        # follow_spawn bounds itself (and says so in its error); the
        # enclosing scope is the backstop for the whole start.
        async with contextlib.aclosing(
            hub.follow_spawn(name, timeout=remaining)
        ) as events:
            async for event in events:
                self._last_progress = event
                await self._tell_progress(event)
        url = await hub.server_url(name)
        if url is None:
            raise LabUnavailableError(
                f"hub reported the lab of {name} ready, but it has no URL"
            )
        rest = JupyterRestClient(
            http=self._http,
            base_url=url,
            token=self._token,
            timeout=self.request_timeout,
        )
        await rest.status()
        _log.info("Lab of %s ready at %s", name, rest.base_url)
        return rest

    async def _tell_progress(self, event: SpawnProgress) -> None:
        if self.on_progress is not None:
            await self.on_progress(event)
        text = _progress_text(self.username, event)
        for listener in list(self._listeners):
            try:
                await listener(text)
            except Exception:
                # A listener records progress for one execution; its failure
                # must not fail the spawn every waiting execution needs.
                _log.exception("Spawn progress listener failed")

    async def _request_spawn(self) -> bool:
        """POST the spawn; if a stop is still pending, wait for it first."""
        while True:
            try:
                return await self.hub.start_server(
                    self.username, user_options=self.user_options
                )
            except LabSpawnError as exc:
                cause = exc.__cause__
                stopping = (
                    isinstance(cause, JupyterWebError)
                    and cause.status == 400  # noqa: PLR2004
                    and "pending stop" in str(cause)
                )
                if not stopping:
                    raise
            # The hub signals nothing when a stop ends: poll, bounded by the
            # caller's spawn timeout.
            while True:
                if await self.hub.server_pending(self.username) != "stop":
                    break
                await asyncio.sleep(_STOP_POLL_INTERVAL)

    async def _cancel_spawn(self) -> None:
        """Stop a spawn that failed or timed out (best effort, bounded)."""
        await self._stop_server()

    async def _stop_server(self) -> None:
        """Stop the lab, or a spawn in progress (best effort, bounded)."""
        try:
            async with asyncio.timeout(self.request_timeout):
                await self.hub.stop_server(self.username)
        except (JupyterError, TimeoutError) as exc:
            _log.warning("Could not stop the lab of %s: %s", self.username, exc)

    def _forget_lab(self, lab: _Lab, *, gone: bool) -> None:
        """Drop ``lab`` as the current lab and its warm pool, in the background.

        ``gone``: the server is stopped or vanished, so its kernels need no
        DELETE (only their websockets are closed).
        """
        lab.gone = lab.gone or gone
        if self._current is lab:
            if gone:
                _log.warning(
                    "Lab of %s at %s is gone", self.username, lab.rest.base_url
                )
            self._current = None
        pool, lab.pool = lab.pool, None
        if pool is not None:
            self._shutdowns.add(
                f"pool-{id(pool)}", pool.aclose(grace=self.shutdown_timeout)
            )

    async def _lab_is_gone(self, lab: _Lab) -> bool:
        if lab.gone or self._current is not lab:
            return True
        try:
            async with asyncio.timeout(min(self.request_timeout, _PROBE_TIMEOUT)):
                await lab.rest.status()
        except LabUnavailableError:
            return True
        except (JupyterError, TimeoutError):
            return False
        return False

    def _retire(self, lab: _Lab, kernel_id: str, conn: KernelConnection | None) -> None:
        if not lab.gone:
            self._shutdowns.retire(lab.rest, kernel_id, conn)
        elif conn is not None:
            # The lab is gone: nothing to DELETE, only the websocket to close.
            self._shutdowns.add(kernel_id, conn.aclose())

    # -- idleness ------------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        if self.idle_timeout is None or self._current is None:
            return
        self._cancel_idle_timer()
        self._idle_timer = asyncio.create_task(
            self._stop_when_idle(self.idle_timeout), name=f"lab-idle-{self.username}"
        )

    def _cancel_idle_timer(self) -> None:
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def _stop_when_idle(self, delay: float) -> None:
        # A timer, not a synchronisation: any kernel() cancels it.
        await asyncio.sleep(delay)
        async with self._lab_lock:
            lab = self._current
            if lab is None or self._in_use:
                return
            _log.info(
                "Stopping the lab of %s after %g s without executions",
                self.username,
                delay,
            )
            self._idle_stops += 1
            self._forget_lab(lab, gone=True)
            await self._stop_server()
        self._idle_timer = None


# -- helpers -----------------------------------------------------------------


def _user_path(name: str) -> str:
    return f"users/{quote(name, safe='')}"


async def _sse_events(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """Yield the ``data`` of each server-sent event (blank keepalives too)."""
    data: list[str] = []
    async for line in lines:
        if not line:
            yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        # "event:", "id:", "retry:" and ":" comments carry nothing we need.
    if data:
        yield "\n".join(data)


def _parse_event(data: str) -> SpawnProgress | None:
    if not data.strip():
        return None  # keepalive
    try:
        event = json.loads(data)
    except json.JSONDecodeError:
        _log.warning("Undecodable spawn progress event: %.200s", data)
        return None
    if not isinstance(event, dict):
        return None
    return SpawnProgress.from_event(event)


def _hub_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:500]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return response.text[:500]


def _progress_refused(name: str, response: httpx.Response) -> JupyterError:
    if response.status_code in _UNAVAILABLE_STATUSES:
        return LabUnavailableError.from_response(
            response, f"JupyterHub unavailable (HTTP {response.status_code})"
        )
    if response.status_code in {400, 404}:
        error = LabSpawnError(
            f"server of {name} is not starting: {_hub_message(response)}",
            username=name,
        )
        error.__cause__ = JupyterWebError.from_response(response)
        return error
    return JupyterWebError.from_response(response)


def _progress_text(name: str, event: SpawnProgress) -> str:
    if event.ready:
        return f"lab of {name} is ready"
    if event.failed:
        return f"lab of {name} failed to start: {event.message}"
    percent = f" ({event.progress}%)" if event.progress is not None else ""
    return f"starting the lab of {name}: {event.message or 'spawning'}{percent}"


def _describe(event: SpawnProgress | None) -> str:
    if event is None:
        return "none"
    return f"{event.progress}% {event.message}"


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JupyterWebError.from_response(
            response, f"response is not JSON: {exc}"
        ) from exc
    if not isinstance(value, dict):
        raise JupyterWebError.from_response(response, "response is not a JSON object")
    return value
