"""Push notification that an execution has new stored events.

Subscriptions follow "subscribe, then read, then wait": a subscriber
registers a :class:`Signal`, reads the stored events it has not seen
(``tx.events.after``), and awaits :meth:`Signal.wait` before
reading again.  The bus carries no event data, only "look again", so a
missed or duplicated wake-up can never lose or repeat an event: the stored,
gap-free sequence is the truth.  That is also what makes the signal cheap:
a :class:`Signal` is a set/clear flag, so however slow its subscriber,
any number of announcements coalesce into one pending wake-up and memory
stays bounded.

Two implementations:

* :class:`LocalEventBus`, for the embedded mode (SQLite, in-process worker).
  The worker calls :meth:`~LocalEventBus.announce` after committing, from
  its own thread and event loop; subscribers are woken on their own loop
  with ``call_soon_threadsafe``.
* :class:`PostgresEventBus`, for Postgres.  The execution store already sent
  ``pg_notify`` inside the committing transaction, from whichever process
  made the change, so ``announce`` does nothing.  One dedicated asyncpg
  connection per process LISTENs and routes notifications to local
  subscribers by execution id.  Notifications sent while that connection is
  down are lost for good, so after every (re)connection the bus wakes every
  subscriber to re-read (a resync).

Use :func:`create_event_bus` to pick one for a database URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import asyncpg
import structlog
from sqlalchemy.engine import make_url

from noteburst.constants import EVENTS_CHANNEL

__all__ = [
    "EventBus",
    "LocalEventBus",
    "PostgresEventBus",
    "Signal",
    "asyncpg_dsn",
    "create_event_bus",
]

_logger = structlog.get_logger("noteburst.events")


class Signal:
    """One subscriber's wake-up flag, owned by the loop that subscribed.

    Obtain one from ``EventBus.subscribe``.  Wake-ups coalesce: several
    announcements before the next :meth:`wait` produce one return.  A
    wake-up may be spurious (a resync); re-read and wait again.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self._lock = threading.Lock()
        self._scheduled = False

    async def wait(self) -> None:
        """Return once something new may exist for the execution.

        Returns at once if a wake-up arrived since the last call.  Wrap in
        :func:`asyncio.timeout` to bound the wait.
        """
        await self._event.wait()
        self._event.clear()

    def notify(self) -> None:
        """Wake the subscriber; callable from any thread or event loop."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._event.set()
            return
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._set_on_loop)
        except RuntimeError:
            # The subscriber's loop is closed: nobody is waiting any more.
            with self._lock:
                self._scheduled = False

    def _set_on_loop(self) -> None:
        with self._lock:
            self._scheduled = False
        self._event.set()


class EventBus(Protocol):
    """Wakes subscribers of an execution when new events are committed."""

    def subscribe(self, execution_id: str) -> AbstractAsyncContextManager[Signal]:
        """Register for wake-ups about ``execution_id`` for a block.

        Enter the block before reading stored events so that nothing
        committed after the read goes unnoticed.
        """
        ...

    def announce(self, execution_id: str, sequence: int) -> None:
        """Tell subscribers an event was committed (call after the commit).

        Thread-safe and non-blocking.  ``sequence`` is the event's sequence.
        """
        ...

    async def start(self) -> None:
        """Begin delivering; call once on the loop that will own the bus."""
        ...

    async def aclose(self) -> None:
        """Stop delivering and release connections."""
        ...


class _Subscribers:
    """Thread-safe map from execution id to the signals waiting on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, set[Signal]] = {}

    @asynccontextmanager
    async def subscribe(self, execution_id: str) -> AsyncIterator[Signal]:
        signal = Signal(asyncio.get_running_loop())
        with self._lock:
            self._by_id.setdefault(execution_id, set()).add(signal)
        try:
            yield signal
        finally:
            with self._lock:
                signals = self._by_id.get(execution_id)
                if signals is not None:
                    signals.discard(signal)
                    if not signals:
                        del self._by_id[execution_id]

    def notify(self, execution_id: str) -> None:
        with self._lock:
            signals = list(self._by_id.get(execution_id, ()))
        for signal in signals:
            signal.notify()

    def notify_all(self) -> None:
        with self._lock:
            signals = [s for group in self._by_id.values() for s in group]
        for signal in signals:
            signal.notify()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(group) for group in self._by_id.values())


class LocalEventBus:
    """In-process bus: ``announce`` wakes subscribers in this process only.

    Every method is safe to call from any thread; subscribers may live on
    different event loops.
    """

    def __init__(self) -> None:
        self._subscribers = _Subscribers()

    def subscribe(self, execution_id: str) -> AbstractAsyncContextManager[Signal]:
        """Register for wake-ups about ``execution_id`` (see :class:`EventBus`)."""
        return self._subscribers.subscribe(execution_id)

    def announce(self, execution_id: str, sequence: int) -> None:
        """Wake the execution's subscribers, on their own loops."""
        self._subscribers.notify(execution_id)

    async def start(self) -> None:
        """Nothing to start."""

    async def aclose(self) -> None:
        """Wake everyone once so no subscriber is left behind a lost update."""
        self._subscribers.notify_all()

    @property
    def subscriber_count(self) -> int:
        """Signals currently registered (for tests and metrics)."""
        return len(self._subscribers)


def asyncpg_dsn(url: str) -> str:
    """Turn a SQLAlchemy Postgres URL into a DSN asyncpg accepts.

    Parameters
    ----------
    url
        E.g. ``postgresql+asyncpg://user:p%40ss@host/db``.

    Returns
    -------
    str
        E.g. ``postgresql://user:p%40ss@host/db``, password included.
    """
    return (
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


class PostgresEventBus:
    """LISTEN/NOTIFY bus with one dedicated, self-healing connection.

    Parameters
    ----------
    url
        SQLAlchemy URL (``postgresql+asyncpg://...``) or plain asyncpg DSN.
    channel
        Channel to LISTEN on.
    connect_timeout
        Seconds allowed for connecting.
    query_timeout
        Seconds allowed for any statement on the connection.
    health_check_interval
        Seconds between ``SELECT 1`` probes; asyncpg has no TCP keepalive,
        so this is what notices a half-open connection.
    min_backoff, max_backoff
        Reconnection delay: doubles from ``min_backoff`` up to
        ``max_backoff`` while connecting fails.
    """

    def __init__(
        self,
        url: str,
        *,
        channel: str = EVENTS_CHANNEL,
        connect_timeout: float = 10.0,
        query_timeout: float = 5.0,
        health_check_interval: float = 10.0,
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
    ) -> None:
        self._dsn = asyncpg_dsn(url)
        self._channel = channel
        self._connect_timeout = connect_timeout
        self._query_timeout = query_timeout
        self._health_check_interval = health_check_interval
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._subscribers = _Subscribers()
        self._task: asyncio.Task[None] | None = None
        self._state: asyncio.Condition | None = None
        self._connection: asyncpg.Connection | None = None
        self._generation = 0
        self._connected_since_backoff = False
        self._closing = False

    def subscribe(self, execution_id: str) -> AbstractAsyncContextManager[Signal]:
        """Register for wake-ups about ``execution_id`` (see :class:`EventBus`)."""
        return self._subscribers.subscribe(execution_id)

    def announce(self, execution_id: str, sequence: int) -> None:
        """Do nothing: the committing transaction already sent ``pg_notify``."""

    async def start(self) -> None:
        """Start listening; return once LISTEN is active.

        Raises
        ------
        TimeoutError
            No connection could be made within three connect timeouts.
        """
        if self._task is not None:
            return
        self._state = asyncio.Condition()
        self._task = asyncio.create_task(self._run(), name="noteburst-listen")
        try:
            async with asyncio.timeout(3 * self._connect_timeout):
                await self.wait_listening()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop listening and close the connection; wake all subscribers."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            # Python 3.11 can swallow a cancellation that races a finishing
            # await; the flag and repeated cancels make the stop certain.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._closing = False
        self._subscribers.notify_all()

    @property
    def is_listening(self) -> bool:
        """Whether LISTEN is active on a live connection right now."""
        connection = self._connection
        return connection is not None and not connection.is_closed()

    @property
    def generation(self) -> int:
        """How many times LISTEN has been established (1 after start)."""
        return self._generation

    @property
    def backend_pid(self) -> int | None:
        """Server process id of the listening connection, if connected."""
        connection = self._connection
        return None if connection is None else connection.get_server_pid()

    async def wait_listening(self, *, generation: int = 1) -> None:
        """Wait until listening on connection number ``generation`` or later.

        Parameters
        ----------
        generation
            Pass ``bus.generation + 1`` to wait for the next reconnection.
            Bound the wait with :func:`asyncio.timeout`.
        """
        if self._state is None:
            msg = "PostgresEventBus.start() was not called"
            raise RuntimeError(msg)
        async with self._state:
            await self._state.wait_for(
                lambda: self._generation >= generation and self.is_listening
            )

    async def _set_connection(self, connection: asyncpg.Connection | None) -> None:
        assert self._state is not None
        async with self._state:
            self._connection = connection
            if connection is not None:
                self._generation += 1
            self._state.notify_all()

    async def _run(self) -> None:
        backoff = self._min_backoff
        while not self._closing:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _logger.warning(
                    "Postgres event listener failed; reconnecting",
                    delay_seconds=backoff,
                    error=repr(exc),
                )
            if self._connected_since_backoff:
                backoff = self._min_backoff
                self._connected_since_backoff = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _listen_once(self) -> None:
        """Connect, LISTEN, resync, and watch the connection until it dies."""
        async with asyncio.timeout(self._connect_timeout + 1):
            connection = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        try:
            async with asyncio.timeout(self._query_timeout):
                await connection.add_listener(self._channel, self._on_notification)
            await self._set_connection(connection)
            self._connected_since_backoff = True
            # Anything committed while no connection listened was missed.
            self._subscribers.notify_all()
            _logger.info(
                "Listening for execution events",
                channel=self._channel,
                connection=self._generation,
            )
            while not lost.is_set() and not self._closing:
                try:
                    async with asyncio.timeout(self._health_check_interval):
                        await lost.wait()
                except TimeoutError:
                    async with asyncio.timeout(self._query_timeout):
                        await connection.fetchval("SELECT 1")
            _logger.warning("Postgres event listener connection lost")
        finally:
            await self._set_connection(None)
            await self._close(connection)

    async def _close(self, connection: asyncpg.Connection) -> None:
        if connection.is_closed():
            return
        try:
            async with asyncio.timeout(self._query_timeout):
                await connection.close()
        except Exception:
            connection.terminate()

    def _on_notification(
        self,
        _connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        _pid: int,
        _channel: str,
        payload: object,
    ) -> None:
        try:
            data = json.loads(str(payload))
            execution_id = data["id"]
        except (ValueError, KeyError, TypeError):
            _logger.warning("Ignoring malformed notification", payload=payload)
            return
        if isinstance(execution_id, str):
            self._subscribers.notify(execution_id)


def create_event_bus(database_url: str) -> EventBus:
    """Create the event bus matching a database URL.

    Parameters
    ----------
    database_url
        SQLAlchemy URL of the database the stores write to.

    Returns
    -------
    EventBus
        :class:`PostgresEventBus` for Postgres (changes made by any process
        are seen), :class:`LocalEventBus` otherwise (only changes announced
        in this process are seen).  Call ``start()`` before use.
    """
    if make_url(database_url).get_backend_name() == "postgresql":
        return PostgresEventBus(database_url)
    return LocalEventBus()
