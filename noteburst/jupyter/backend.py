"""Where kernels come from: the interface of lab backends, and the local one.

The rest of Noteburst asks a :class:`LabBackend` for a fresh kernel per
notebook and never learns whether it runs on a private jupyter_server
(:class:`LocalLabBackend`) or on a JupyterHub user server (a hub backend
with its own base URL and bot user per lab fits the same shape: ``start``
spawns or finds the lab, ``kernel`` talks to that lab's REST API and
websocket).

Kernels are shut down in the background: a kernel DELETE waits for the
kernel process to exit, and one that does not exit promptly is waited for
and then signalled by jupyter_client, which can take seconds; none of that
belongs on the response path.  The backend tracks these shutdowns and
:meth:`LabBackend.aclose` waits for them, bounded.  A backend is used from
one event loop.

:class:`LocalLabBackend` can keep a :class:`~.pool.KernelPool` of started,
warmed-up kernels per kernel name (``warm_kernels``), so that ``kernel()``
hands out a ready connection without waiting for a start; when the pool is
empty it starts one on demand, as without a pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import httpx

from .exceptions import JupyterError, JupyterWebError, KernelDiedError, KernelStartError
from .kernel import KernelConnection
from .local import FORKED_KERNEL_NAME, LocalJupyterServer
from .metrics import KERNEL_START_SECONDS
from .pool import KernelPool
from .protocol import WireProtocol
from .rest import JupyterRestClient

__all__ = [
    "KERNEL_START_ATTEMPTS",
    "KernelShutdowns",
    "LabBackend",
    "LabProgressCallback",
    "LocalLabBackend",
    "start_kernel",
]

_log = logging.getLogger(__name__)

LabProgressCallback = Callable[[str], Awaitable[None]]
"""Told, in a line of text, how the lab an execution waits for is coming up."""

KERNEL_START_ATTEMPTS: Final = 2
"""Kernels started for one request when a new one dies before it answers.

A kernel can exit just after its websocket opened, before it answered our
``kernel_info`` and so before any notebook code ran (seen once in CI with
several kernels starting at once: jupyter_server reported it
``restarting``; a port taken between jupyter_client choosing it and the
kernel binding it fits).  Nothing is lost then, so a fresh kernel is
started instead of failing the execution with a dead kernel; a second
death in a row is a kernel that cannot start (`KernelStartError`).
"""


@runtime_checkable
class LabBackend(Protocol):
    """A source of fresh kernels on some Jupyter server."""

    async def start(self) -> None:
        """Make the lab ready (start or find the server); idempotent."""
        ...

    async def kernel_names(self) -> list[str]:
        """Return the names of the kernelspecs the lab offers."""
        ...

    def kernel(
        self,
        kernel_name: str,
        *,
        on_progress: LabProgressCallback | None = None,
    ) -> contextlib.AbstractAsyncContextManager[KernelConnection]:
        """Start a fresh kernel and open its websocket, for one notebook.

        ``on_progress`` is awaited with a line of text for each step of a
        lab start this call has to wait for (a spawn on JupyterHub).  On
        exit the websocket is closed and the kernel shut down in the
        background, tracked so that :meth:`aclose` can await it.
        """
        ...

    async def aclose(self) -> None:
        """Wait (bounded) for background shutdowns, then release the lab."""
        ...


class LocalLabBackend:
    """Kernels from a jupyter_server on this machine.

    Uses the server at ``url`` if given; otherwise :meth:`start` starts a
    :class:`~.local.LocalJupyterServer` in ``root_dir`` and :meth:`aclose`
    stops it.

    Parameters
    ----------
    http
        Shared HTTP client (not closed by the backend).
    root_dir
        Directory for a server started by the backend (kernels' working
        directory).
    url
        Base URL of an existing server; `None` to start one.
    token
        API token of the existing server.
    start_timeout
        Seconds a started server may take to become ready.
    kernel_start_timeout
        Seconds a kernel may take from creation until its websocket is open.
    request_timeout
        Timeout in seconds of each REST request.
    shutdown_timeout
        Seconds :meth:`aclose` waits for background kernel shutdowns.
    wire_protocol
        Preferred kernel websocket framing.
    warm_kernels
        Number of started kernels to keep ready per kernel name (see
        :class:`~.pool.KernelPool`); `None` or 0 for none (start on demand).
        :meth:`start` begins filling the pool without waiting for it; await
        ``backend.pool.wait_full()`` (under `asyncio.timeout`) to wait.
    warm_kernels_max
        The most kernels a kernel name's pool grows to with demand (see
        :class:`~.pool.Demand`); `None`: a fixed pool.
    warm_up_code
        Code run (silently, outside the history) in each pooled kernel of a
        kernel name before it is handed out, e.g. ``import numpy``.
    warm_up_max_failures
        Consecutive failed pooled starts (warm-up errors included) after
        which a kernel name's pool gives up and kernels are started on
        demand.
    retire_delay
        Seconds a used kernel is left alone before it is shut down (and its
        pool replacement started); see :class:`KernelShutdowns`.
    fork_kernels
        Fork ``python3`` kernels from a template that ran
        ``warm_up_code["python3"]`` (only for a server this backend starts;
        see :class:`~.local.LocalJupyterServer`).
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        root_dir: Path,
        url: str | None = None,
        token: str | None = None,
        start_timeout: float = 60,
        kernel_start_timeout: float = 60,
        request_timeout: float = 30,
        shutdown_timeout: float = 10,
        wire_protocol: WireProtocol = WireProtocol.V1,
        warm_kernels: Mapping[str, int] | None = None,
        warm_kernels_max: int | None = None,
        warm_up_code: Mapping[str, str] | None = None,
        warm_up_max_failures: int = 5,
        retire_delay: float = 0.0,
        fork_kernels: bool = False,
    ) -> None:
        self._http = http
        self.fork_kernels = fork_kernels
        self.root_dir = root_dir
        self._url = url
        self._token = token
        self.start_timeout = start_timeout
        self.kernel_start_timeout = kernel_start_timeout
        self.request_timeout = request_timeout
        self.shutdown_timeout = shutdown_timeout
        self.wire_protocol = wire_protocol
        self._server: LocalJupyterServer | None = None
        self._rest: JupyterRestClient | None = None
        self._shutdowns = KernelShutdowns(delay=retire_delay)
        self.warm_kernels_max = warm_kernels_max
        self.warm_kernels = {
            name: size for name, size in (warm_kernels or {}).items() if size > 0
        }
        self.warm_up_code = dict(warm_up_code or {})
        self.warm_up_max_failures = warm_up_max_failures
        self._pool: KernelPool | None = None

    @property
    def pool(self) -> KernelPool | None:
        """The warm kernel pool (after :meth:`start`, if ``warm_kernels``)."""
        return self._pool

    @property
    def rest(self) -> JupyterRestClient:
        """REST client of the lab (after :meth:`start`)."""
        if self._rest is None:
            raise JupyterError("LocalLabBackend.start() has not been called")
        return self._rest

    @property
    def server(self) -> LocalJupyterServer | None:
        """The server this backend started, if it started one."""
        return self._server

    async def start(self) -> None:
        """Start the server (unless ``url`` was given) and check it answers.

        Then begins filling the warm kernel pool, if any, without waiting.

        Raises
        ------
        LabUnavailableError
            If the server cannot be started or reached.
        """
        if self._rest is not None:
            return
        url, token = self._url, self._token
        if url is None:
            warmup = self.warm_up_code.get(FORKED_KERNEL_NAME, "")
            server = LocalJupyterServer(
                root_dir=self.root_dir,
                start_timeout=self.start_timeout,
                fork_kernels=warmup if self.fork_kernels else None,
            )
            await server.start()
            self._server = server
            url, token = server.url, server.token
        rest = JupyterRestClient(
            http=self._http, base_url=url, token=token, timeout=self.request_timeout
        )
        try:
            await rest.status()
        except BaseException:
            await self._stop_server()
            raise
        self._rest = rest
        if self.warm_kernels:
            self._pool = KernelPool(
                rest=rest,
                retire=lambda kernel_id, conn: self._retire(rest, kernel_id, conn),
                sizes=self.warm_kernels,
                max_size=self.warm_kernels_max,
                warm_up_code=self.warm_up_code,
                wire_protocol=self.wire_protocol,
                start_timeout=self.kernel_start_timeout,
                max_failures=self.warm_up_max_failures,
            )
            self._pool.start()

    async def kernel_names(self) -> list[str]:
        """Return the kernelspec names the server offers."""
        return await self.rest.kernelspecs()

    def kernel(
        self,
        kernel_name: str,
        *,
        on_progress: LabProgressCallback | None = None,
    ) -> contextlib.AbstractAsyncContextManager[KernelConnection]:
        """Start a fresh kernel and open its websocket, for one notebook.

        With a warm pool for ``kernel_name``, a ready pooled kernel (never
        used before) is handed out instead, and a replacement starts in the
        background; if none is ready, the request waits in line for the
        pool's next kernel (:meth:`~.pool.KernelPool.acquire`), or starts
        one on demand if the pool is failing.

        Parameters
        ----------
        kernel_name
            Kernelspec name, e.g. ``python3``.
        on_progress
            Unused: the local server is started by :meth:`start`, before
            any execution waits for it.

        Returns
        -------
        contextlib.AbstractAsyncContextManager[KernelConnection]
            Yields the open connection; on exit (also on error or
            cancellation) closes it and shuts the kernel down in the
            background.

        Raises
        ------
        KernelStartError
            If the kernel cannot be started (unknown name, start timeout).
        LabUnavailableError
            If the server is gone.
        """
        return self._kernel(kernel_name)

    @contextlib.asynccontextmanager
    async def _kernel(self, kernel_name: str) -> AsyncIterator[KernelConnection]:
        rest = self.rest
        pooled = (
            await self._pool.acquire(kernel_name) if self._pool is not None else None
        )
        if pooled is not None:
            try:
                yield pooled
            finally:
                if self._pool is not None:
                    self._pool.hand_back(pooled)
                self._retire(rest, pooled.kernel_id, pooled)
            return

        async def create() -> tuple[JupyterRestClient, str]:
            return rest, await rest.create_kernel(kernel_name)

        kernel_id, conn = await start_kernel(
            create,
            lambda failed_id, failed: self._retire(rest, failed_id, failed),
            kernel_name=kernel_name,
            wire_protocol=self.wire_protocol,
            start_timeout=self.kernel_start_timeout,
        )
        try:
            yield conn
        finally:
            self._retire(rest, kernel_id, conn)

    def _retire(
        self, rest: JupyterRestClient, kernel_id: str, conn: KernelConnection | None
    ) -> None:
        self._shutdowns.retire(rest, kernel_id, conn)

    @property
    def pending_shutdowns(self) -> int:
        """Number of kernel shutdowns still running in the background."""
        return len(self._shutdowns)

    async def aclose(self) -> None:
        """Close the pool, wait (bounded) for kernel shutdowns, stop our server."""
        try:
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.aclose(grace=self.shutdown_timeout)
            await self._shutdowns.drain(self.shutdown_timeout)
        finally:
            self._rest = None
            await self._stop_server()

    async def _stop_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop()


async def start_kernel(
    create: Callable[[], Awaitable[tuple[JupyterRestClient, str]]],
    retire: Callable[[str, KernelConnection | None], None],
    *,
    kernel_name: str,
    wire_protocol: WireProtocol,
    start_timeout: float,
) -> tuple[str, KernelConnection]:
    """Start a kernel that has answered ``kernel_info``: both backends' way.

    Parameters
    ----------
    create
        Creates a kernel (REST) and returns the client of its server and
        its id; called again for a replacement (see
        :data:`KERNEL_START_ATTEMPTS`).
    retire
        Shuts a kernel that failed to start down, in the background.
    kernel_name
        Kernelspec name, for messages.
    wire_protocol
        Preferred websocket framing.
    start_timeout
        Seconds each kernel may take from creation until it has answered.

    Returns
    -------
    tuple[str, KernelConnection]
        The kernel's id and its open connection, whose
        ``kernel_info_reply`` is set (`execute_notebook` asks no more).

    Raises
    ------
    KernelStartError
        If the kernel does not answer in time, or died before answering
        :data:`KERNEL_START_ATTEMPTS` times in a row.
    LabUnavailableError
        If the server is gone.
    """
    began = time.monotonic()
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        rest, kernel_id = await create()
        conn: KernelConnection | None = None
        scope = asyncio.timeout(start_timeout)
        try:
            async with scope:
                conn = await KernelConnection.open(
                    rest,
                    kernel_id,
                    wire_protocol=wire_protocol,
                    open_timeout=start_timeout,
                )
                await conn.kernel_info()
        except KernelDiedError as exc:
            retire(kernel_id, conn)
            if attempt == KERNEL_START_ATTEMPTS:
                raise KernelStartError(
                    f"{kernel_name} kernel died before it answered, {attempt} "
                    f"kernels in a row; last: {exc}",
                    kernel_name=kernel_name,
                ) from exc
            _log.warning(
                "New %s kernel %s died before it answered; starting another: %s",
                kernel_name,
                kernel_id,
                exc,
            )
            continue
        except BaseException as exc:
            retire(kernel_id, conn)
            if isinstance(exc, TimeoutError) and scope.expired():
                raise KernelStartError(
                    f"{kernel_name} kernel {kernel_id} did not answer within "
                    f"{start_timeout:g} s",
                    kernel_name=kernel_name,
                ) from exc
            raise
        KERNEL_START_SECONDS.labels(kernel_name, "on_demand").observe(
            time.monotonic() - began
        )
        return kernel_id, conn
    raise AssertionError("unreachable: the last attempt returns or raises")


class KernelShutdowns:
    """Kernel shutdowns running in the background, off the response path.

    Both backends hand finished kernels here; ``drain`` waits for them at
    close, bounded, cancelling what does not finish in time.

    A retired kernel is left alone for ``delay`` seconds before its
    websocket is closed and it is deleted.  Its execution's result has just
    been stored and announced, and subscribers are reading and pushing it
    at that moment; the shutdown (work for jupyter_server and the kernel)
    and the warm pool's replacement start, which begins when the
    connection closes (a new kernel process: a few hundred ms of CPU),
    otherwise compete for the CPU with that push, and the push is what a
    waiting page view sees.  The cost: the replacement is ready ``delay``
    seconds later, which only back-to-back requests on a pool of one
    notice.  ``drain`` ends pending delays at once.
    """

    def __init__(self, *, delay: float = 0.0) -> None:
        if delay < 0:
            raise ValueError("delay must not be negative")
        self.delay = delay
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = asyncio.Event()

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, kernel_id: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` (the shutdown of ``kernel_id``) in the background."""
        task = asyncio.create_task(coro, name=f"kernel-shutdown-{kernel_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def retire(
        self, rest: JupyterRestClient, kernel_id: str, conn: KernelConnection | None
    ) -> None:
        """Close the websocket and DELETE the kernel in the background.

        After :attr:`delay` seconds, or at once if :meth:`drain` has begun.
        """
        self.add(kernel_id, self._after_delay(rest, kernel_id, conn))

    async def _after_delay(
        self, rest: JupyterRestClient, kernel_id: str, conn: KernelConnection | None
    ) -> None:
        if self.delay > 0 and not self._draining.is_set():
            # A pause that ends early when draining begins, not synchronisation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.delay):
                    await self._draining.wait()
        await _shutdown_kernel(rest, kernel_id, conn)

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound, not a deadline for callers
        """Wait up to ``timeout`` seconds for every shutdown; cancel the rest."""
        self._draining.set()
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            _log.warning("%d kernel shutdowns did not finish in time", len(pending))
            await asyncio.wait(pending)


_DELETE_RETRY_DELAYS: Final = (0.25, 0.5, 1.0, 2.0)
"""Pauses between DELETE attempts for a kernel that is restarting.

jupyter_server answers 500 to a DELETE while its restarter is replacing a
dead kernel (jupyter_client's shutdown trips over the pending ``ready``
future); a little later the DELETE succeeds.
"""


async def _shutdown_kernel(
    rest: JupyterRestClient, kernel_id: str, conn: KernelConnection | None
) -> None:
    """Close the websocket and delete the kernel; log, never raise."""
    try:
        if conn is not None:
            await conn.aclose()
        async with asyncio.timeout(rest.timeout):
            for delay in (*_DELETE_RETRY_DELAYS, None):
                try:
                    await rest.delete_kernel(kernel_id)
                except JupyterWebError as exc:
                    if exc.status != 500 or delay is None:  # noqa: PLR2004
                        raise
                    await asyncio.sleep(delay)
                else:
                    return
    except JupyterError as exc:
        _log.warning("Could not shut down kernel %s: %s", kernel_id, exc)
    except TimeoutError:
        _log.warning("Shutting down kernel %s timed out", kernel_id)
