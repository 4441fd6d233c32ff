"""Watching an execution: its stored events, then live ones, until it ends.

Watching is "subscribe, then read": a watcher registers for wake-ups before
reading stored events, and reads again after every wake-up, so it sees each
stored event exactly once in sequence order, however late it joined.  The
bus carries no data, only "look again" (see :mod:`noteburst.storage.events`),
so a lost or repeated wake-up can neither lose nor repeat an event.  This is
the logic behind the GraphQL subscription, kept apart from its resolver (as
Strawberry's docs advise).

Many watchers of one execution share one reader.  A dashboard shown to a
thousand people has a thousand subscriptions to one execution; when each
read the log for itself after every wake-up, a thousand identical reads
stood between the event and the last of them (on PostgreSQL the spread of
the terminal event was ~0.4-0.8 s at 1,000 watchers, see
``bench/README.md``).  So :class:`EventFeeds` (one per API process) keeps,
per execution being watched here, one :class:`Feed`: one bus subscription
and one task that, on each wake-up, reads the execution and the events after
the last one it read, once, and appends them as a :class:`Batch` to a
chain that every local watcher walks.  Watchers share the batches and the
event objects in them; each applies its own ``kinds`` (a batch keeps one
filtered view per distinct ``kinds``) and its own resume point.  A watcher
holds a reference into the chain and nothing else: no queue, no signal, no
read of its own once it has caught up.  Watchers that subscribe together
(a page opened by a class at once) share their backlog read as well
(:meth:`Feed.read_once`): 10,000 of them reading one by one held the
database pool long enough for connection waits to time out.

The log's gap-free sequence stays the truth, and what makes joining safe.
Each read is bounded (``through``) by the execution's ``last_sequence``,
read first in the same transaction, so it covers exactly the sequences
``(after, through]`` whatever the kinds, and the execution read with the
events is exactly as of the last of them (a ``FINISHED`` event always comes
with the ended execution).  A batch records the range it covers and the
kinds it was read for.  A watcher joins the feed (so the feed is subscribed
to the bus), then reads its own backlog up to ``through``; it starts
walking at the feed's newest batch and, if that batch already reaches past
its own read, reads once more up to a ``through`` that covers it.  From
there it takes from each later batch only the sequences above the ones it
has, and reads for itself only when a batch cannot serve it (read before
its kinds were added to the feed's): gaps and repeats are impossible by
construction, and a terminal execution ends a watch only once it has read
up to the execution's last sequence, which is its ``FINISHED`` event.

A follower of a shared run (see :mod:`noteburst.storage.executions.cache`)
has no events of its own: its watcher follows the run it shares, reading
for itself, and yields each of that run's events with the follower as its
execution.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncIterator,
    Collection,
    Sequence,
)
from dataclasses import dataclass, replace
from functools import partial

from ..domain.auth import Caller
from ..domain.execution import EventKind, Execution, ExecutionEvent
from ..exceptions import (
    ExecutionNotFoundError,
    InvalidInputError,
)
from ..storage.database import Database
from ..storage.events import EventBus, Signal
from ..storage.unit_of_work import UnitOfWork
from .feeds import EventFeeds, Feed, Kinds

__all__ = ["ExecutionWatcher", "WatchedEvent"]


@dataclass(frozen=True, slots=True)
class WatchedEvent:
    """An event together with the execution as it was read with it."""

    event: ExecutionEvent
    execution: Execution


class ExecutionWatcher:
    """Follow executions' events, for one caller.

    Parameters
    ----------
    database
        Where executions and their events live.
    bus
        Wakes the watcher when new events are committed.
    feeds
        The process's shared readers.
    caller
        Who is watching: only their executions are visible unless they are
        an administrator.
    """

    def __init__(
        self, *, database: Database, bus: EventBus, feeds: EventFeeds, caller: Caller
    ) -> None:
        self._db = database
        self._bus = bus
        self._feeds = feeds
        self._owner = caller.owner_filter

    async def watch(
        self,
        execution_id: str,
        *,
        after_sequence: int | None = None,
        kinds: Collection[EventKind] | None = None,
    ) -> AsyncIterator[WatchedEvent]:
        """Yield an execution's events until it ends.

        Without ``after_sequence`` the first item is the latest stored event
        (the current state); with it, every stored event after that sequence
        is replayed first.  Live events follow, each exactly once, and the
        iterator ends after the terminal event.  A follower of a shared run
        yields that run's events (their sequences are the run's), each with
        the follower as its execution.

        ``kinds``, if given, keeps only events of those kinds, plus the
        terminal ``FINISHED`` event, which is always yielded: a dashboard
        waiting for a result needs none of the cell events, which are most
        of a run's events, each read, resolved and sent.

        Raises
        ------
        ExecutionNotFoundError
            Raised if there is no such execution.
        InvalidInputError
            Raised if ``after_sequence`` is negative.
        """
        if after_sequence is not None and after_sequence < 0:
            raise InvalidInputError("afterSequence", "must not be negative")
        wanted = None if kinds is None else frozenset(kinds) | {EventKind.FINISHED}
        follower = False
        async with self._feeds.join(execution_id, wanted) as feed:
            execution, events = await feed.read_once(
                (after_sequence, wanted, self._owner),
                partial(
                    self._read_own,
                    execution_id,
                    after=after_sequence,
                    kinds=wanted,
                    owner=self._owner,
                ),
            )
            if execution.shares_run_of is not None:
                # Its events are the shared run's (or, cancelled alone, its
                # own end): read for itself, as below.
                follower = True
            else:
                async for item in self._walk(
                    feed,
                    execution,
                    events,
                    after=after_sequence or 0,
                    kinds=wanted,
                ):
                    yield item
        if follower:
            async for item in self._watch_follower(
                execution_id, after_sequence=after_sequence, wanted=wanted
            ):
                yield item

    async def _read_own(
        self,
        execution_id: str,
        *,
        after: int | None,
        kinds: Kinds,
        owner: str | None = None,
    ) -> tuple[Execution, Sequence[ExecutionEvent]]:
        """Read the execution, then its events after ``after`` up to it.

        ``after`` None: the latest event of ``kinds`` (the current state).
        The events are exactly those of ``kinds`` in ``(after,
        execution.last_sequence]``, and the execution is as of the last.
        """
        async with self._db.transaction() as tx:
            execution = await tx.executions.get(execution_id, owner=owner)
            if execution is None:
                raise ExecutionNotFoundError(execution_id)
            through = execution.last_sequence
            if after is None:
                latest = await tx.events.latest(
                    execution_id, kinds=kinds, through=through
                )
                events: Sequence[ExecutionEvent] = [] if latest is None else [latest]
            else:
                events = await tx.events.after(
                    execution_id, after, kinds=kinds, through=through
                )
        return execution, events

    async def _walk(
        self,
        feed: Feed,
        execution: Execution,
        events: Sequence[ExecutionEvent],
        *,
        after: int,
        kinds: Kinds,
    ) -> AsyncIterator[WatchedEvent]:
        """Yield ``events`` (read with ``execution``), then the feed's, to the end.

        ``after``: nothing at or below this sequence is yielded.
        """
        covered = max(after, execution.last_sequence)
        # Take a place in the chain before yielding (the feed starts
        # reading once anchored); batches pile up behind it meanwhile.
        ended = execution.status.is_terminal
        batch = None if ended else feed.anchor(execution.last_sequence, execution)
        for event in events:
            yield WatchedEvent(event=event, execution=execution)
        if batch is None:
            return
        del execution, events  # the feed's batches hold what is needed now
        while True:
            if batch.end > covered and (
                batch.start > covered or not batch.serves(kinds)
            ):
                # The feed read further than this watcher (or for other
                # kinds): read the difference, up to at least batch.end.
                own, backlog = await feed.read_once(
                    (covered, kinds, None),
                    partial(self._read_own, feed.stream, after=covered, kinds=kinds),
                )
                for event in backlog:
                    yield WatchedEvent(event=event, execution=own)
                covered = max(covered, own.last_sequence)
                if own.status.is_terminal:
                    return
                del own, backlog
            elif batch.end > covered:
                for event in batch.view(kinds):
                    if event.sequence > covered:
                        yield WatchedEvent(event=event, execution=batch.execution)
                covered = batch.end
                if batch.execution.status.is_terminal:
                    return
            batch = await batch.following()

    async def _watch_follower(
        self,
        execution_id: str,
        *,
        after_sequence: int | None,
        wanted: Kinds,
    ) -> AsyncIterator[WatchedEvent]:
        """:meth:`watch` for a follower of a shared run, reading for itself.

        Followers are one per submission of an identical notebook, each
        watched by its submitter: there is nothing to share.
        """
        async with contextlib.AsyncExitStack() as subscriptions:
            signal = await subscriptions.enter_async_context(
                self._bus.subscribe(execution_id)
            )
            async for item in self._watch_from_state(
                execution_id,
                subscriptions=subscriptions,
                signal=signal,
                after_sequence=after_sequence,
                wanted=wanted,
            ):
                yield item

    async def _watch_from_state(
        self,
        execution_id: str,
        *,
        subscriptions: contextlib.AsyncExitStack,
        signal: Signal,
        after_sequence: int | None,
        wanted: frozenset[EventKind] | None,
    ) -> AsyncIterator[WatchedEvent]:
        """:meth:`_watch_follower` from the current state or a replay.

        Starts with the latest stored event (of the ``wanted`` kinds)
        unless ``after_sequence`` is given; a follower of a shared run
        follows that run's events (subscribed on ``subscriptions``).
        """
        stream = execution_id
        async with self._db.transaction() as tx:
            # Events first, the execution after them, in every read here:
            # each statement sees what had been committed before it (read
            # committed), so the execution is then at least as new as the
            # events it is yielded with (a FINISHED event with an execution
            # read before its end would carry no result and no error).
            latest = await tx.events.latest(execution_id)
            execution = await tx.executions.get(execution_id, owner=self._owner)
        own_signal = signal
        if (
            execution is not None
            and execution.shares_run_of is not None
            and latest is None
        ):
            # A follower's events are those of the run it shares (until
            # it is cancelled on its own: then it has its own end event).
            stream = execution.shares_run_of
            signal = await subscriptions.enter_async_context(
                self._bus.subscribe(stream)
            )
            async with self._db.transaction() as tx:
                latest = await tx.events.latest(stream)
                execution = await tx.executions.get(execution_id, owner=self._owner)
        if execution is None or latest is None:
            raise ExecutionNotFoundError(execution_id)
        if after_sequence is None:
            if wanted is not None and latest.kind not in wanted:
                # The current state, as the wanted kinds tell it (every
                # execution starts with QUEUED; a follower's stream too).
                async with self._db.transaction() as tx:
                    latest = await tx.events.latest(stream, kinds=wanted)
            if latest is not None:
                yield WatchedEvent(event=latest, execution=execution)
                if latest.kind is EventKind.FINISHED:
                    return
                last_seen = latest.sequence
            else:
                last_seen = 0
        else:
            last_seen = after_sequence
        async for item in self._follow(
            execution_id,
            stream=stream,
            execution=execution,
            last_seen=last_seen,
            signals=(signal, own_signal),
            kinds=wanted,
        ):
            yield item

    async def _follow(
        self,
        execution_id: str,
        *,
        stream: str,
        execution: Execution,
        last_seen: int,
        signals: tuple[Signal, Signal],
        kinds: frozenset[EventKind] | None,
    ) -> AsyncIterator[WatchedEvent]:
        """Yield the events of ``stream`` after ``last_seen`` until the end.

        ``stream`` is the execution itself, or for a follower the run it
        shares; ``signals`` wake it for either.  ``kinds``: only these.
        """
        read_again = False
        while True:
            events, left, execution = await self._read_followed(
                execution_id,
                stream=stream,
                execution=execution,
                last_seen=last_seen,
                kinds=kinds,
            )
            if left is not None:
                # Cancelled on its own: the shared run goes on without it.
                for event in events:
                    if event.created_at <= left.created_at and (
                        event.kind is not EventKind.FINISHED
                    ):
                        yield WatchedEvent(event=event, execution=execution)
                yield WatchedEvent(event=left, execution=execution)
                return
            for event in events:
                yield WatchedEvent(event=event, execution=execution)
                last_seen = event.sequence
                if event.kind is EventKind.FINISHED:
                    return
            if not events and execution.status.is_terminal:
                if last_seen >= execution.last_sequence or read_again:
                    # Resumed after the terminal event: nothing more will come.
                    return
                # The end was committed between this round's event read and
                # its execution read (read committed: each statement sees
                # what was committed before it), so its FINISHED event is
                # stored: read once more at once, rather than end without it.
                read_again = True
                continue
            if signals[0] is signals[1]:
                await signals[0].wait()
            else:
                await _either(*signals)

    async def _read_followed(
        self,
        execution_id: str,
        *,
        stream: str,
        execution: Execution,
        last_seen: int,
        kinds: frozenset[EventKind] | None,
    ) -> tuple[Sequence[ExecutionEvent], ExecutionEvent | None, Execution]:
        """Read one round of :meth:`_follow`.

        Returns the events after ``last_seen``, a follower's own end if it
        left the shared run, and the execution as of them.
        """
        left: ExecutionEvent | None = None
        async with self._db.transaction() as tx:
            events = await tx.events.after(stream, last_seen, kinds=kinds)
            if stream != execution_id:
                left = await _left_shared_run(tx, execution_id)
            if stream != execution_id or not _only_progress(events):
                execution = await tx.executions.get(execution_id) or execution
            else:
                # Cell progress changes nothing else about the execution
                # (a cancel request wakes this loop without events, and
                # is read above): no read per progress batch.
                execution = replace(
                    execution,
                    progress=replace(
                        execution.progress, cells_done=events[-1].cells_done
                    ),
                )
        return events, left, execution


async def _left_shared_run(tx: UnitOfWork, execution_id: str) -> ExecutionEvent | None:
    """Return the end of a follower cancelled on its own, if it was.

    A follower has no events of its own while it shares a run (and none when
    the run ends it); cancelling it alone ends it with its own ``FINISHED``.
    """
    own = await tx.events.latest(execution_id)
    if own is not None and own.kind is EventKind.FINISHED:
        return own
    return None


_PROGRESS_KINDS = frozenset(
    {EventKind.CELL_STARTED, EventKind.CELL_FINISHED, EventKind.CELL_OUTPUTS}
)


def _only_progress(events: list[ExecutionEvent]) -> bool:
    """Whether ``events`` is non-empty and holds only cell progress."""
    return bool(events) and all(e.kind in _PROGRESS_KINDS for e in events)


async def _either(first: Signal, second: Signal) -> None:
    """Return once either signal is raised."""
    waits = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
