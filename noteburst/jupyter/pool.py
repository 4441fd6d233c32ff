"""A pool of started, ready kernels, so a notebook does not wait for one.

A kernel start (a new process importing ipykernel, then its websocket and
``kernel_info``) takes many times as long as running a small notebook on a
kernel that is already up, and more with heavy imports.  :class:`KernelPool`
keeps, per kernel name, a configured number of kernels started ahead of
time, each with its websocket open, its ``kernel_info`` answered and,
optionally, warm-up code for that kernel name already run (``import
numpy``), so heavy imports are paid ahead of time.

Rules (see ``jupyter-on-loopback.md`` §6: a reused kernel leaks state):

* A kernel is handed out once (:meth:`KernelPool.take`) and never comes
  back; the caller retires it.  Its replacement starts when the caller
  hands it back (:meth:`KernelPool.hand_back`: the execution is over and
  its result stored) or closes the connection, or after
  :attr:`KernelPool.refill_delay` seconds if that comes first, not at the
  take.  Not when the kernel is gone: a retired kernel is left alone for
  a moment before its shutdown (the backend's retire delay), and while
  its slot waited for that too, requests back to back found the pool at
  most one start ahead (``bench/load.py``, back to back, 40 runs: p50
  0.083-0.087 s, against 0.073-0.081 s now).  Not at the take either:
  a kernel start costs a few hundred milliseconds of CPU (a new Python
  process importing ipykernel, and the server's work for it), and
  started at the take it ran exactly while the taken kernel ran the
  notebook, competing with the notebook's first cells for the CPU (worst
  on a machine with few cores).  A long execution still gets its replacement
  after the delay, so the pool is not empty for long.
* Starts ahead of demand (for the pool's target) run
  :data:`AHEAD_STARTS` at a time; starts for requests waiting in line,
  as many as there are requests.  Starts made together are each slower
  on a busy machine, which raised the measured start time and with it
  the target: several at once left a kernel ready no sooner, at more CPU.
* Every IPython kernel also gets :data:`~.protocol.STOP_AFTER_ERROR_GUARD`
  while it warms up (after the warm-up code), so ``execute_notebook`` does
  not send it ahead of the first cell.  This also takes off the notebook's
  path what a fresh ipykernel does lazily on its first execution, which
  the notebook's first cell would otherwise wait for.  In the same request
  (:data:`IPYTHON_WARM_UP`), :data:`IPYTHON_PRIMER` runs once, as cells do
  (not silently) but outside the history, for what a fresh process still
  does slowly the first few times.
* Warm-up code runs with ``silent=True, store_history=False``: the
  notebook's first cell still gets ``execution_count`` 1 and the warm-up's
  messages are dropped (they are routed by their own ``msg_id``).  What it
  imports or defines stays visible to the notebook; that is its point.
* A start that fails (also an error reply to the warm-up) retires its
  kernel, is logged, and is retried after a growing pause; after
  ``max_failures`` consecutive failures the kernel name's pool gives up and
  records the error (:meth:`KernelPool.error`, raised by
  :meth:`KernelPool.wait_full`).  :meth:`KernelPool.take` then returns
  `None` and the caller starts kernels on demand, as without a pool.
* An idle pooled kernel is watched for free, without polling: each keeps
  the queue of its ``kernel_info`` request open, and a watcher task waits
  on it.  The connection's reader fails every queue when the websocket
  closes (server gone, keepalive ping timeout) or jupyter_server reports
  the kernel ``dead``/``restarting`` (its process died), so the watcher
  wakes, and the kernel is evicted and replaced.  A kernel deleted through
  the REST API (by someone else, or a culler) is subtler: jupyter_server
  keeps its websocket open and silent; the only sign is the kernel's
  ``shutdown_reply``, broadcast on iopub.  The pool's connections treat that
  message as death while they are idle in the pool.  :meth:`KernelPool.take`
  also checks ``conn.failure`` (an attribute read, no round trip) in case
  the watcher has not run yet.  A kernel that dies in the last instant
  before it is taken fails the notebook's first request, as a cold kernel
  would.

The pool follows demand.  A kernel name's pool keeps its configured
number of kernels ready, plus what the recent arrival rate keeps in use or
starting (Little's law: arrivals per second times the seconds a kernel is
held before its replacement may start plus the seconds a start takes,
see :class:`~.demand.Demand`), up to a limit.  With a fixed pool of one, requests
that come back to back always found it empty: its replacement was still
starting, and each paid a whole kernel start.  A pool that has grown keeps
its extra kernels when demand falls (they are started already; they are
not replaced once taken).

A request that finds no kernel ready waits for one (:meth:`KernelPool.acquire`)
rather than starting its own, and the pool starts one more for each
waiting request.  Waiting requests are served first come, first served,
by whichever start ends first, also one begun earlier for the pool's
target.  Measured under load (``bench/load.py``, 30 notebooks, 4 in flight,
2 CPUs, where the machine is the limit): with requests starting kernels
of their own, about half of them did, each waited its whole start on a
saturated machine, then ran its first cells on a kernel not warmed up; the
other half ran at once.  Latency p95 was 0.49-0.56 s at p50 0.30 s.
Waiting in line, every request waits about the same, on a warmed-up kernel:
p95 0.39-0.45 s, at the same throughput.  A pool that is failing (a start
failed and has not been followed by a success) does not make anyone
wait: :meth:`~KernelPool.acquire` then returns `None` at once, and the
caller starts a kernel as without a pool; a failed start also sends the
requests already waiting off to start their own.

The pool is used from one event loop and does not depend on the backend:
it gets the REST client and a ``retire`` callback that shuts a kernel down
in the background (the backend's tracked shutdown path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from . import protocol
from .demand import Demand
from .exceptions import JupyterError, KernelDiedError, KernelStartError
from .kernel import KernelConnection
from .metrics import KERNEL_START_SECONDS, track_pool
from .protocol import Message, WireProtocol
from .rest import JupyterRestClient

__all__ = ["DEFAULT_BACKOFF", "KernelPool", "PoolStats", "RetireCallback"]

_log = logging.getLogger(__name__)

RetireCallback = Callable[[str, KernelConnection | None], None]
"""Shut kernel ``kernel_id`` down (closing ``conn`` if given) in the background."""

IPYTHON_PRIMER: Final = """\
def _noteburst_prime():
    from IPython.display import HTML

    shell = get_ipython()
    shell.display_formatter.format(HTML("<b>prime</b>"))
    shell.display_formatter.format((1, 2))


_noteburst_prime()
del _noteburst_prime
"""
"""Code that walks the paths a notebook's cells take, to warm them up.

A fresh kernel runs its first cells measurably more slowly than one that
has already run notebooks: the first executions in a Python process are
slower (probably imports done on first use and the interpreter specializing
hot code after a few runs).  Run once (in :data:`IPYTHON_WARM_UP`),
non-silently (an execution as a cell's) but outside the history, it puts
those first executions behind the kernel before a notebook gets it, so the
notebook does not pay for them.  It leaves nothing in the namespace, does
not move ``execution_count`` (IPython counts only executions stored in the
history) and writes nothing.  Not even an empty ``print``: any write to
stdout arms ipykernel's 0.2 s flush timer, and a notebook taken before it
fired had its first ``print`` split in two stream messages by it.
"""

IPYTHON_WARM_UP: Final = protocol.STOP_AFTER_ERROR_GUARD + IPYTHON_PRIMER
"""What an IPython kernel runs once while it warms up: the guard, then the primer.

One request, not one each: a request is a round trip through the kernel
(status, input, reply), the Jupyter server and Noteburst, paid by every
kernel (bench/README.md, 2026-12-08).  Run as a cell is (not silently),
for the primer; the guard's code shows nothing either way.

The primer runs once.  It ran 10 times until 2026-12-07; measured then
(bench/latency.py, 20 runs each, embedded-warm), the 5 cells of a notebook
on a pooled kernel took the same after 1 run as after 10 (26 against 27 ms
on plain kernels, 22 ms on forked ones, the floor 22-24 ms), while the 9
runs more cost every kernel about 50 ms of CPU (kernel, Jupyter server and
Noteburst), the ceiling under load (bench/load.py).
"""

AHEAD_STARTS: Final = 1
"""Starts in progress at once for the pool's target, beyond those for waiters."""

DEFAULT_BACKOFF: Final = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Pauses after the 1st, 2nd, ... consecutive failed start (the last repeats)."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of one kernel name's pool.

    Attributes
    ----------
    target
        Kernels the pool keeps now, ready or in use or starting: the
        configured number, grown with demand (see :class:`~.demand.Demand`).
    ready
        Kernels ready to be taken.
    starting
        Starts in progress (including pauses after a failure).
    handed_out
        Kernels given out by :meth:`KernelPool.take`.
    started
        Kernels that became ready (including ones evicted later).
    failed
        Starts that failed (kernel start, ``kernel_info`` or warm-up), plus
        ready kernels lost while idle (the ``evicted`` ones the watcher saw).
    evicted
        Ready kernels dropped because they died or their websocket closed.
    consecutive_failures
        Failures since the last successful start.
    error
        Why the pool gave up on this kernel name, if it did.
    deferred
        Replacements of handed-out kernels not started yet: each starts
        when its kernel's connection is closed, or after
        :attr:`KernelPool.refill_delay`.
    """

    target: int
    ready: int
    starting: int
    handed_out: int
    started: int
    failed: int
    evicted: int
    consecutive_failures: int
    error: JupyterError | None
    deferred: int = 0
    limit: int = 0
    """The most ``target`` may grow to."""
    waiting: int = 0
    """Requests waiting in :meth:`KernelPool.acquire` for a kernel."""


class _PoolConnection(KernelConnection):
    """A connection that, while idle in the pool, fails on a shutdown.

    jupyter_server neither closes the websocket of a kernel deleted through
    its REST API nor sends a ``dead`` status; the kernel's iopub
    ``shutdown_reply`` (to the server's own request, so no parent of ours)
    is the only sign.  Once handed out, the connection behaves exactly like
    any other :class:`~.kernel.KernelConnection`.
    """

    idle_in_pool = False
    on_close: Callable[[], None] | None = None
    """Called once, when the connection is handed back or first closed."""

    def _dispatch(self, msg: Message) -> None:
        if self.idle_in_pool and msg.get("msg_type") == "shutdown_reply":
            self._fail(KernelDiedError(f"kernel {self.kernel_id} was shut down"))
            return
        super()._dispatch(msg)

    async def aclose(self) -> None:
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()
        await super().aclose()


@dataclass(eq=False)
class _Deferred:
    """The replacement of one handed-out kernel, not started yet."""

    lane: _Lane
    taken_at: float
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Pooled:
    conn: KernelConnection
    watch_id: str
    watcher: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Lane:
    name: str
    base: int
    limit: int
    warm_up_code: str | None
    demand: Demand = field(default_factory=Demand)
    target: int = 0
    ready: deque[_Pooled] = field(default_factory=deque)
    starting: int = 0
    handed_out: int = 0
    started: int = 0
    failed: int = 0
    evicted: int = 0
    consecutive_failures: int = 0
    error: JupyterError | None = None
    deferred: set[_Deferred] = field(default_factory=set)
    waiters: deque[asyncio.Future[KernelConnection | None]] = field(
        default_factory=deque
    )
    """Requests waiting for a kernel, oldest first (see :meth:`KernelPool.acquire`)."""

    def __post_init__(self) -> None:
        self.target = self.target or self.base


def _needs_start(lane: _Lane) -> bool:
    """Whether ``lane`` has a waiter without a start, or is below its target.

    Below its target, with fewer than :data:`AHEAD_STARTS` starts under way
    beyond those for waiters.
    """
    waiting = len(lane.waiters)
    if lane.starting < waiting:
        return True
    held = len(lane.ready) + lane.starting + len(lane.deferred)
    return held < lane.target and lane.starting - waiting < AHEAD_STARTS


class KernelPool:
    """Ready kernels per kernel name, started ahead of demand.

    Parameters
    ----------
    rest
        REST client of the server that runs the kernels.
    retire
        Called with ``(kernel_id, conn)`` for every kernel the pool drops
        (failed start, dead while idle, :meth:`aclose`); it must shut the
        kernel down in the background and not raise.
    sizes
        Number of ready kernels to keep per kernel name; names with 0 (or
        absent) have no pool.
    max_size
        The most kernels a kernel name's pool grows to with demand (ready,
        in use or starting); None or at most its size: a fixed pool.
    warm_up_code
        Code to run in each new kernel of a kernel name before it is pooled.
    wire_protocol
        Preferred websocket framing.
    start_timeout
        Seconds one start may take: kernel creation, websocket handshake,
        ``kernel_info`` and warm-up together.
    max_failures
        Consecutive failed starts of a kernel name after which its pool
        gives up.
    backoff
        Pauses in seconds after the 1st, 2nd, ... consecutive failure; the
        last one repeats.
    username
        Username recorded in request headers.

    Attributes
    ----------
    refill_delay
        Longest time in seconds a handed-out kernel's replacement waits
        for that kernel's connection to close before it starts anyway.
    """

    refill_delay: float = 2.0

    def __init__(
        self,
        *,
        rest: JupyterRestClient,
        retire: RetireCallback,
        sizes: Mapping[str, int],
        max_size: int | None = None,
        warm_up_code: Mapping[str, str] | None = None,
        wire_protocol: WireProtocol = WireProtocol.V1,
        start_timeout: float = 60,
        max_failures: int = 5,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        username: str = "noteburst",
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if not backoff:
            raise ValueError("backoff needs at least one pause")
        code = dict(warm_up_code or {})
        self._lanes: dict[str, _Lane] = {}
        for name, size in sizes.items():
            if size < 0:
                raise ValueError(f"negative pool size for {name!r}")
            if size > 0:
                limit = max(size, max_size or 0)
                self._lanes[name] = _Lane(name, size, limit, code.get(name) or None)
        self._rest = rest
        self._retire = retire
        self.wire_protocol = wire_protocol
        self.start_timeout = start_timeout
        self.max_failures = max_failures
        self.backoff = tuple(backoff)
        self.username = username
        self._tasks: set[asyncio.Task[None]] = set()
        self._starts: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        self._started = False
        track_pool(self)

    # -- public API ----------------------------------------------------------

    @property
    def kernel_names(self) -> list[str]:
        """Kernel names that have a pool (size > 0)."""
        return list(self._lanes)

    def start(self) -> None:
        """Begin filling every pool in the background; idempotent.

        Does not wait: use :meth:`wait_full` for that.
        """
        if self._started or self._closed.is_set():
            return
        self._started = True
        for lane in self._lanes.values():
            self._top_up(lane)

    def take(self, kernel_name: str) -> KernelConnection | None:
        """Hand out a ready kernel, or `None` if none is ready.

        Never waits and never makes a request.  The kernel is the caller's
        from now on (it must be retired after use).  Its replacement starts
        once the caller closes the connection, or after
        :attr:`refill_delay` (see the module docstring).  `None` means:
        start a kernel on demand.
        """
        lane = self._lanes.get(kernel_name)
        if lane is None:
            return None
        now = time.monotonic()
        lane.demand.record_take(now)
        lane.target = lane.demand.target(lane.base, lane.limit, now)
        conn: KernelConnection | None = None
        while lane.ready:
            pooled = lane.ready.popleft()
            self._unwatch(pooled)
            if pooled.conn.failure is None:
                conn = pooled.conn
                lane.handed_out += 1
                self._defer_refill(lane, conn)
                break
            self._evict(lane, pooled, pooled.conn.failure)
        self._top_up(lane)
        self._notify()
        return conn

    async def acquire(self, kernel_name: str) -> KernelConnection | None:
        """Hand out a ready kernel, waiting for one if none is ready.

        Like :meth:`take`, but a request that finds the pool empty waits
        in line for the next kernel the pool starts (one more is started
        for it) instead of getting `None`.  Waits at most about one start:
        a start that fails gives `None` to every request in line.
        `None` at once if ``kernel_name`` has no pool, the pool gave up or
        is closed, or its last start failed (see the module docstring): the
        caller then starts a kernel on demand.  Cancelling the wait leaves
        the line; a kernel handed over in that instant is retired.
        """
        conn = self.take(kernel_name)
        lane = self._lanes.get(kernel_name)
        if (
            conn is not None
            or lane is None
            or not self._started
            or self._closed.is_set()
            or lane.error is not None
            or lane.consecutive_failures > 0
        ):
            return conn
        waiter: asyncio.Future[KernelConnection | None] = (
            asyncio.get_running_loop().create_future()
        )
        lane.waiters.append(waiter)
        self._top_up(lane)
        try:
            return await waiter
        except BaseException:
            if waiter in lane.waiters:
                lane.waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                handed = waiter.result()
                if handed is not None:
                    self._retire(handed.kernel_id, handed)
            raise

    def hand_back(self, conn: KernelConnection) -> None:
        """Say that the execution on a handed-out kernel is over.

        Its slot is free: its replacement may start now, before the caller
        retires the kernel (see the module docstring).  Idempotent; does
        nothing for a kernel that did not come from this pool.
        """
        if isinstance(conn, _PoolConnection):
            callback, conn.on_close = conn.on_close, None
            if callback is not None:
                callback()

    def size(self, kernel_name: str) -> int:
        """Return the number of ready kernels for ``kernel_name``."""
        lane = self._lanes.get(kernel_name)
        return len(lane.ready) if lane is not None else 0

    def handed_out(self, kernel_name: str) -> int:
        """Return how many kernels :meth:`take` gave out for ``kernel_name``."""
        lane = self._lanes.get(kernel_name)
        return lane.handed_out if lane is not None else 0

    def ready_kernel_ids(self, kernel_name: str) -> list[str]:
        """Return the ids of the ready kernels of ``kernel_name``, oldest first."""
        lane = self._lanes.get(kernel_name)
        return [p.conn.kernel_id for p in lane.ready] if lane is not None else []

    def error(self, kernel_name: str) -> JupyterError | None:
        """Why the pool of ``kernel_name`` gave up, if it did."""
        lane = self._lanes.get(kernel_name)
        return lane.error if lane is not None else None

    def stats(self, kernel_name: str) -> PoolStats:
        """Return a snapshot of the counters of ``kernel_name``'s pool."""
        lane = self._lanes.get(kernel_name) or _Lane(kernel_name, 0, 0, None)
        return PoolStats(
            target=lane.target,
            ready=len(lane.ready),
            starting=lane.starting,
            handed_out=lane.handed_out,
            started=lane.started,
            failed=lane.failed,
            evicted=lane.evicted,
            consecutive_failures=lane.consecutive_failures,
            error=lane.error,
            deferred=len(lane.deferred),
            limit=lane.limit,
            waiting=len(lane.waiters),
        )

    async def wait_full(self, kernel_name: str | None = None) -> None:
        """Wait until the pool of ``kernel_name`` (or of every name) is full.

        Waits without limit; bound it with `asyncio.timeout`.  A kernel name
        without a pool counts as full.

        Parameters
        ----------
        kernel_name
            The kernel name; `None` for all of them.

        Raises
        ------
        KernelStartError
            If a waited-for pool gave up (too many failed starts), or the
            pool is closed.
        """
        lanes = (
            list(self._lanes.values())
            if kernel_name is None
            else [self._lanes[kernel_name]]
            if kernel_name in self._lanes
            else []
        )

        def full() -> bool:
            for lane in lanes:
                if lane.error is not None:
                    raise lane.error
            if self._closed.is_set():
                raise KernelStartError("kernel pool is closed")
            return all(len(lane.ready) >= lane.target for lane in lanes)

        await self.wait_for(full)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` is true.

        It is checked now and after every change of the pool (a kernel
        ready, taken, evicted, a start failed); exceptions it raises
        propagate.  Waits without limit; bound it with `asyncio.timeout`.
        """
        while not predicate():
            await self._changed.wait()

    async def aclose(self, grace: float = 10) -> None:
        """Stop refilling and shut every pooled kernel down; idempotent.

        Starts in progress get ``grace`` seconds to finish (their kernel is
        then retired, so none is left behind on the server) before they are
        cancelled.  The shutdowns themselves run through ``retire``.
        """
        self._closed.set()
        for lane in self._lanes.values():
            self._send_waiters_away(lane)
            for deferred in list(lane.deferred):
                self._release(deferred)
        self._notify()
        if self._starts:
            _done, pending = await asyncio.wait(set(self._starts), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                _log.warning("%d kernel pool starts cancelled", len(pending))
                await asyncio.wait(pending)
        for lane in self._lanes.values():
            while lane.ready:
                pooled = lane.ready.popleft()
                self._unwatch(pooled)
                self._retire(pooled.conn.kernel_id, pooled.conn)
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- filling -------------------------------------------------------------

    def _defer_refill(self, lane: _Lane, conn: KernelConnection) -> None:
        """Hold a handed-out kernel's slot until it is closed, or a delay."""
        deferred = _Deferred(lane, taken_at=time.monotonic())
        lane.deferred.add(deferred)
        deferred.timer = asyncio.get_running_loop().call_later(
            self.refill_delay, self._release, deferred
        )
        if isinstance(conn, _PoolConnection):
            conn.on_close = lambda: self._release(deferred)

    def _release(self, deferred: _Deferred) -> None:
        """Free a deferred slot (idempotent) and start its replacement."""
        lane = deferred.lane
        if deferred not in lane.deferred:
            return
        lane.deferred.discard(deferred)
        lane.demand.record_held(time.monotonic() - deferred.taken_at)
        if deferred.timer is not None:
            deferred.timer.cancel()
            deferred.timer = None
        self._top_up(lane)
        self._notify()

    def _top_up(self, lane: _Lane) -> None:
        if not self._started or self._closed.is_set() or lane.error is not None:
            self._send_waiters_away(lane)
            return
        while _needs_start(lane):
            lane.starting += 1
            task = asyncio.create_task(
                self._start_one(lane), name=f"kernel-pool-start-{lane.name}"
            )
            self._starts.add(task)
            task.add_done_callback(self._starts.discard)

    async def _start_one(self, lane: _Lane) -> None:
        try:
            began = time.monotonic()
            try:
                pooled = await self._start_kernel(lane)
            except Exception as exc:  # every failure is counted
                await self._record_failure(lane, exc)
                return
            seconds = time.monotonic() - began
            lane.demand.record_start(seconds)
            KERNEL_START_SECONDS.labels(lane.name, "pool").observe(seconds)
            lane.consecutive_failures = 0
            lane.started += 1
            if self._closed.is_set():
                self._retire(pooled.conn.kernel_id, pooled.conn)
                return
            if self._hand_to_waiter(lane, pooled):
                return
            lane.ready.append(pooled)
            pooled.watcher = self._spawn(
                self._watch(lane, pooled), f"kernel-pool-watch-{pooled.conn.kernel_id}"
            )
        finally:
            lane.starting -= 1
            self._top_up(lane)
            self._notify()

    async def _start_kernel(self, lane: _Lane) -> _Pooled:
        """Create, connect, ``kernel_info`` and warm up one kernel."""
        kernel_id: str | None = None
        conn: KernelConnection | None = None
        try:
            async with asyncio.timeout(self.start_timeout):
                kernel_id = await self._rest.create_kernel(lane.name)
                conn = await _PoolConnection.open(
                    self._rest,
                    kernel_id,
                    wire_protocol=self.wire_protocol,
                    open_timeout=self.start_timeout,
                    username=self.username,
                )
                assert isinstance(conn, _PoolConnection)
                watch_id = await self._kernel_info(conn)
                if lane.warm_up_code is not None:
                    await self._warm_up(conn, lane, lane.warm_up_code)
                info = conn.kernel_info_reply
                if info is not None and protocol.guard_applies(info):
                    await self._warm_up(conn, lane, IPYTHON_WARM_UP, silent=False)
                    conn.guard_installed = True
            conn.idle_in_pool = True
            return _Pooled(conn, watch_id)
        except BaseException as exc:
            if kernel_id is not None:
                self._retire(kernel_id, conn)
            if isinstance(exc, TimeoutError):
                raise KernelStartError(
                    f"pooled {lane.name} kernel not ready after {self.start_timeout} s",
                    kernel_name=lane.name,
                ) from exc
            raise

    async def _kernel_info(self, conn: KernelConnection) -> str:
        """Ask for ``kernel_info``; return its ``msg_id``, still collected.

        The queue of this request stays open for the watcher.
        """
        msg_id = await conn.request(
            protocol.kernel_info_request(
                session=conn.session_id, username=conn.username
            )
        )
        try:
            while (msg := await conn.receive(msg_id))["msg_type"] != (
                "kernel_info_reply"
            ):
                pass
        except BaseException:
            conn.forget(msg_id)
            raise
        # execute_notebook reads language_info from it instead of asking again.
        conn.kernel_info_reply = msg
        return msg_id

    async def _warm_up(
        self, conn: KernelConnection, lane: _Lane, code: str, *, silent: bool = True
    ) -> None:
        """Run ``code`` outside the history; raise if it fails."""
        msg_id = await conn.request(
            protocol.execute_request(
                code,
                session=conn.session_id,
                username=conn.username,
                silent=silent,
                store_history=False,
                stop_on_error=False,
            )
        )
        try:
            reply: protocol.Message | None = None
            idle = False
            while reply is None or not idle:
                msg = await conn.receive(msg_id)
                if msg["msg_type"] == "execute_reply":
                    reply = msg
                elif (
                    msg["msg_type"] == "status"
                    and msg["content"].get("execution_state") == "idle"
                ):
                    idle = True
        finally:
            conn.forget(msg_id)
        content = reply["content"]
        if content.get("status") != "ok":
            raise KernelStartError(
                f"warm-up code of {lane.name} failed: "
                f"{content.get('ename', content.get('status'))}: "
                f"{content.get('evalue', '')}",
                kernel_name=lane.name,
            )

    def _hand_to_waiter(self, lane: _Lane, pooled: _Pooled) -> bool:
        """Give a newly ready kernel to the oldest waiting request, if any.

        Handed out as :meth:`take` hands out a ready one: no longer idle in
        the pool (its ``kernel_info`` queue closed), its slot deferred.
        """
        while lane.waiters:
            waiter = lane.waiters.popleft()
            if waiter.done():  # cancelled meanwhile
                continue
            self._unwatch(pooled)
            lane.handed_out += 1
            self._defer_refill(lane, pooled.conn)
            waiter.set_result(pooled.conn)
            self._notify()
            return True
        return False

    def _send_waiters_away(self, lane: _Lane) -> None:
        """Tell every waiting request to start a kernel of its own."""
        while lane.waiters:
            waiter = lane.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def _record_failure(self, lane: _Lane, exc: Exception) -> None:
        # Nobody waits on a failing pool: the requests in line start their own.
        self._send_waiters_away(lane)
        lane.failed += 1
        lane.consecutive_failures += 1
        count = lane.consecutive_failures
        if count >= self.max_failures:
            if lane.error is None:
                lane.error = KernelStartError(
                    f"kernel pool for {lane.name} gave up after {count} "
                    f"consecutive failures; last: {exc}",
                    kernel_name=lane.name,
                )
                lane.error.__cause__ = exc
                _log.error(
                    "Kernel pool for %s gave up after %d failures in a row; kernels "
                    "will be started on demand: %s",
                    lane.name,
                    count,
                    exc,
                )
            return
        delay = self.backoff[min(count, len(self.backoff)) - 1]
        _log.warning(
            "Pooled %s kernel failed or lost (%d in a row), replacing in %s s: %s",
            lane.name,
            count,
            delay,
            exc,
        )
        self._notify()
        # A pause, not synchronisation: it ends early when the pool closes.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closed.wait()

    # -- watching ------------------------------------------------------------

    async def _watch(self, lane: _Lane, pooled: _Pooled) -> None:
        """Wait until the idle connection fails; then evict it."""
        try:
            while True:
                await pooled.conn.receive(pooled.watch_id)
        except JupyterError as exc:
            if pooled not in lane.ready:
                return
            lane.ready.remove(pooled)
            pooled.conn.forget(pooled.watch_id)
            self._evict(lane, pooled, exc)
            # A kernel lost while idle counts as a failure, so one that keeps
            # dying after its warm-up backs off and gives up too.  Its slot
            # stays reserved during the pause.
            lane.starting += 1
            try:
                await self._record_failure(lane, exc)
            finally:
                lane.starting -= 1
                self._top_up(lane)
                self._notify()

    def _unwatch(self, pooled: _Pooled) -> None:
        if isinstance(pooled.conn, _PoolConnection):
            pooled.conn.idle_in_pool = False
        if pooled.watcher is not None:
            pooled.watcher.cancel()
            pooled.watcher = None
        pooled.conn.forget(pooled.watch_id)

    def _evict(self, lane: _Lane, pooled: _Pooled, reason: BaseException) -> None:
        lane.evicted += 1
        _log.warning(
            "Pooled %s kernel %s is gone (%s); replacing it",
            lane.name,
            pooled.conn.kernel_id,
            reason,
        )
        self._retire(pooled.conn.kernel_id, pooled.conn)

    # -- plumbing ------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _notify(self) -> None:
        """Wake every :meth:`wait_full` waiter to re-check."""
        self._changed.set()
        self._changed = asyncio.Event()
