"""The shared reader behind every watcher of an execution in one API process.

A dashboard shown to a thousand people has a thousand subscriptions to one
execution; when each read the log for itself after every wake-up, a
thousand identical reads stood between the event and the last of them.
:class:`EventFeeds` (one per API process) keeps, per execution watched
here, one :class:`Feed`: one bus subscription and one task that, on each
wake-up, reads the execution and the events after the last one it read,
once, and appends them as a :class:`Batch` to a chain that every local
watcher walks (see :mod:`.watch` for how a watcher joins and walks it, and
why that can neither lose nor repeat an event).

A feed waits out a database outage (:mod:`.outage`): its watchers just
wait, and a late read misses nothing, since every read is by position in
the log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Sequence,
)

from ..domain.execution import EventKind, Execution, ExecutionEvent
from ..exceptions import (
    ServiceUnavailableError,
)
from ..storage.database import Database
from ..storage.events import EventBus
from .outage import until_available

__all__ = ["Batch", "EventFeeds", "Feed", "FeedRead", "Kinds"]

Kinds = frozenset[EventKind] | None
"""The kinds a watcher wants (always with ``FINISHED``); None: every kind."""

FeedRead = tuple[Execution, Sequence[ExecutionEvent]]
"""A watcher's own read: the execution, and its events up to it."""

FEED_OUTAGE_SECONDS = 120.0
"""How long a shared reader waits out a database outage before its
watchers get a retryable ``service_unavailable`` error (and resume with
``afterSequence``)."""

FEED_START_SECONDS = 30.0
"""How long a watcher waits for a new feed to subscribe to the bus."""
FEED_STOP_SECONDS = 10.0
"""How long a feed's task may take to stop once cancelled."""


class Batch:
    """One read of a feed: the events of ``(start, end]`` of some kinds.

    ``kinds`` are those the read asked for (None: all): a watcher wanting
    others cannot be served by this batch.  ``execution`` is as of
    ``end``.  Batches form a chain (``following``), walked by every
    watcher of the feed; the first batch is an empty anchor.
    """

    __slots__ = (
        "_error",
        "_next",
        "_ready",
        "_views",
        "end",
        "events",
        "execution",
        "kinds",
        "start",
    )

    def __init__(
        self,
        *,
        start: int,
        end: int,
        kinds: Kinds,
        events: Sequence[ExecutionEvent],
        execution: Execution,
    ) -> None:
        self.start = start
        self.end = end
        self.kinds = kinds
        self.events = events
        self.execution = execution
        self._next: Batch | None = None
        self._error: BaseException | None = None
        self._ready = asyncio.Event()
        self._views: dict[Kinds, tuple[ExecutionEvent, ...]] = {}

    def serves(self, kinds: Kinds) -> bool:
        """Whether this batch holds every event of ``kinds`` in its range."""
        return self.kinds is None or (kinds is not None and kinds <= self.kinds)

    def view(self, kinds: Kinds) -> Sequence[ExecutionEvent]:
        """Return the events of ``kinds``, filtered once for all their watchers."""
        if kinds is None or kinds == self.kinds:
            return self.events
        view = self._views.get(kinds)
        if view is None:
            view = self._views[kinds] = tuple(e for e in self.events if e.kind in kinds)
        return view

    async def following(self) -> Batch:
        """Wait for the next batch (or the feed's failure) and return it."""
        if self._next is None and self._error is None:
            await self._ready.wait()
        if self._error is not None:
            # One error, many watchers: each raises its own, chained to it.
            if isinstance(self._error, ServiceUnavailableError):
                raise ServiceUnavailableError(
                    self._error.service, self._error.detail
                ) from self._error
            msg = "the execution's event feed failed"
            raise RuntimeError(msg) from self._error
        assert self._next is not None
        return self._next

    def link(self, batch: Batch) -> None:
        """Make ``batch`` the next one and wake the watchers waiting here."""
        self._next = batch
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        """End the chain here: every watcher waiting gets ``error``."""
        self._error = error
        self._ready.set()


def _narrowest(first: Kinds, second: Kinds) -> Kinds:
    """Return the kinds two reads both covered."""
    if first is None:
        return second
    if second is None:
        return first
    return first & second


class Feed:
    """The shared reader of one execution's events in this process."""

    def __init__(self, stream: str, *, database: Database, bus: EventBus) -> None:
        self.stream = stream
        self._db = database
        self._bus = bus
        self.users = 0
        self._wants: Counter[Kinds] = Counter()
        self.head: Batch | None = None
        """The newest batch; None until a watcher has anchored the feed."""
        self._listening = asyncio.Event()
        self._anchored = asyncio.Event()
        self._position = 0
        """The last sequence read (published or not)."""
        self._unpublished: tuple[Kinds] | None = None
        """The kinds that reads not published yet covered (None: no such read)."""
        self.reads = 0
        """Reads made (for tests and metrics)."""
        self._reading: dict[Hashable, asyncio.Future[FeedRead]] = {}
        """Watchers' backlog reads in flight (see :meth:`read_once`)."""
        self.task = asyncio.create_task(self._run(), name=f"noteburst-feed-{stream}")

    def want(self, kinds: Kinds, count: int) -> None:
        """Count ``count`` more (or fewer) watchers of ``kinds`` on this feed."""
        self._wants[kinds] += count
        if self._wants[kinds] <= 0:
            del self._wants[kinds]

    def _kinds(self) -> Kinds:
        """Return what the next read asks for: every kind a watcher wants."""
        if None in self._wants:
            return None
        union: frozenset[EventKind] = frozenset()
        for kinds in self._wants:
            assert kinds is not None
            union |= kinds
        return union

    async def listening(self) -> None:
        """Return once the feed is subscribed to the bus."""
        waits = [asyncio.ensure_future(self._listening.wait()), self.task]
        try:
            async with asyncio.timeout(FEED_START_SECONDS):
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waits[0].cancel()
        if not self._listening.is_set():
            self.task.result()  # its error
            raise RuntimeError("event feed stopped")  # pragma: no cover

    async def read_once(
        self, key: Hashable, read: Callable[[], Awaitable[FeedRead]]
    ) -> FeedRead:
        """Return what ``read`` returns, or what an identical read in flight does.

        Watchers that join at once (a page shown to many, opened together)
        make the same backlog read; ``key`` says which reads are the same
        (their resume point, kinds and owner).  Sharing one that started
        before a watcher joined is safe: the feed was listening before any
        of its watchers read, so whatever that read missed reaches the
        chain, and the watcher's walk reads for itself whatever the chain
        has already passed (see :meth:`ExecutionWatcher._walk`).
        """
        shared = self._reading.get(key)
        if shared is None:
            shared = self._reading[key] = asyncio.ensure_future(read())
            shared.add_done_callback(lambda done: self._forget(key, done))
            return await asyncio.shield(shared)
        try:
            return await asyncio.shield(shared)
        except Exception:
            # Not this watcher's read: its own gives it its own error.
            return await read()

    def _forget(self, key: Hashable, done: asyncio.Future[FeedRead]) -> None:
        if self._reading.get(key) is done:
            del self._reading[key]
        if not done.cancelled():
            done.exception()  # raised to whoever awaited it

    def stop_reads(self) -> None:
        """Cancel the shared reads in flight (their watchers have gone)."""
        for read in list(self._reading.values()):
            read.cancel()

    def anchor(self, through: int, execution: Execution) -> Batch:
        """Start the chain after a watcher read up to ``through``; the newest batch."""
        if self.head is None:
            self.head = Batch(
                start=through, end=through, kinds=None, events=(), execution=execution
            )
            self._position = through
            self._anchored.set()
        return self.head

    async def _run(self) -> None:
        async with self._bus.subscribe(self.stream) as signal:
            self._listening.set()
            await self._anchored.wait()
            try:
                while True:
                    await signal.wait()
                    # Through a database outage the watchers just wait: the
                    # read is by position in the log, so a late one misses
                    # nothing.
                    if await until_available(
                        self._read,
                        what="events for watchers",
                        give_up_after=FEED_OUTAGE_SECONDS,
                        execution_id=self.stream,
                    ):
                        return
            except Exception as exc:
                assert self.head is not None
                self.head.fail(exc)
                raise

    async def _read(self) -> bool:
        """Read what is new and publish it; whether the execution has ended."""
        assert self.head is not None
        after = self._position
        kinds = self._kinds()
        self.reads += 1
        async with self._db.transaction() as tx:
            # The execution first: its last_sequence bounds the event read
            # (see the module docstring).  Both statements run even when
            # nothing is new (a resync or a cancel request woke the feed):
            # the second is an index probe that finds nothing.
            execution = await tx.executions.get(self.stream)
            through = after if execution is None else execution.last_sequence
            events = await tx.events.after(
                self.stream, after, kinds=kinds, through=through
            )
        if execution is None or through <= after:
            return False
        if self._unpublished is not None:
            kinds = _narrowest(self._unpublished[0], kinds)
        self._position = through
        ended = execution.status.is_terminal
        if not events and not ended:
            # Nothing any watcher here wants (cell events, say, and only
            # status watchers): no batch and no wake-up; the next batch
            # covers this range too, for the kinds both reads asked for.
            self._unpublished = (kinds,)
            return False
        batch = Batch(
            start=self.head.end,
            end=through,
            kinds=kinds,
            events=events,
            execution=execution,
        )
        self._unpublished = None
        self.head.link(batch)
        self.head = batch
        return ended

    def close(self) -> None:
        """Fail the watchers waiting on this feed (the process is stopping)."""
        if self.head is not None:
            self.head.fail(RuntimeError("the event feeds were closed"))


class EventFeeds:
    """The shared readers of a process, one per execution watched in it.

    Built once per API process (:class:`noteburst.factory.ApiContext`) on
    its event loop; every :class:`ExecutionWatcher` of the process uses it.
    """

    def __init__(self, *, database: Database, bus: EventBus) -> None:
        self._db = database
        self._bus = bus
        self._feeds: dict[str, Feed] = {}

    def feed(self, stream: str) -> Feed | None:
        """Return the feed of ``stream`` if one runs (for tests and metrics)."""
        return self._feeds.get(stream)

    @contextlib.asynccontextmanager
    async def join(self, stream: str, kinds: Kinds) -> AsyncIterator[Feed]:
        """Use the feed of ``stream`` for a block, starting it if need be.

        The feed is subscribed to the bus on entry: read the backlog after
        entering, and nothing committed after that read is missed.
        """
        feed = self._feeds.get(stream)
        if feed is None or feed.task.done():
            feed = self._feeds[stream] = Feed(stream, database=self._db, bus=self._bus)
        feed.users += 1
        feed.want(kinds, 1)
        try:
            await feed.listening()
            yield feed
        finally:
            feed.users -= 1
            feed.want(kinds, -1)
            if feed.users == 0:
                if self._feeds.get(stream) is feed:
                    del self._feeds[stream]
                feed.stop_reads()
                await _stop(feed.task)

    async def aclose(self) -> None:
        """Stop every feed (their watchers fail with the feed's error)."""
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            await _stop(feed.task)
            feed.close()


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait, boundedly, until it has stopped."""
    task.cancel()
    await asyncio.wait({task}, timeout=FEED_STOP_SECONDS)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: its watchers were given it
