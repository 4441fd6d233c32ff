"""Submitting, reading and watching executions: what the API asks for.

A submission is checked completely before anything is stored, so bad input
leaves no trace; the row and its first event are committed before the queue
message is sent, so a worker never sees an id it cannot read.  Watching is
"subscribe, then read": the subscriber registers with the event bus before
reading stored events, and then re-reads after every wake-up, so it sees
each stored event exactly once in sequence order, however late it joined.

A submission names its queue (interactive work is claimed before batch
work) and its use of the result cache (:mod:`noteburst.domain.cache`): a
stored success of the same computation may answer it at once, and
identical submissions arriving while one is queued or running share that
run ("single flight").  Deciding which, and recording it, happens in one
transaction that holds a per-key lock, so two identical submissions never
both start a run.

Every service is made for one :class:`~noteburst.domain.auth.Caller`.  A
caller without the admin scope reads, lists, watches and cancels only
executions it submitted; another user's id is treated exactly as an unknown
one (the same query with an owner condition, the same answer), so nobody
can learn that an id exists.  The result cache is per user too (the owner
is part of the cache key).  Submissions are checked against per-user limits
(queued, running, submissions per minute) in the transaction that records
them, under a per-user lock, so concurrent submissions cannot overshoot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from ..domain.auth import Caller
from ..domain.cache import CacheMode, CachePolicy, cache_key
from ..domain.execution import (
    EventKind,
    Execution,
    ExecutionEvent,
    ExecutionQueue,
    ExecutionStatus,
)
from ..domain.notebook import accept_notebook, code_cell_indices, kernel_name_of
from ..domain.parameters import check_parameters, inject_parameters, parameter_defaults
from ..domain.webhook import WebhookRequest
from ..exceptions import (
    ExecutionNotFoundError,
    InvalidInputError,
    LimitExceededError,
    LimitKind,
    UnknownKernelError,
)
from ..storage.database import Database
from ..storage.events import EventBus, Signal
from ..storage.execution import ExecutionStore, cancel_signal_key, cursor_for
from ..storage.taskqueue import TaskQueue
from .webhook import NewWebhook, WebhookService

__all__ = [
    "ExecutionPage",
    "ExecutionService",
    "SubmissionLimits",
    "WatchedEvent",
]


_logger = structlog.get_logger("noteburst.executions")


@dataclass(frozen=True, slots=True)
class SubmissionLimits:
    """What a submission may ask for on this deployment."""

    max_notebook_bytes: int
    default_timeout_seconds: float
    max_timeout_seconds: float
    default_kernel_name: str
    kernel_names: Sequence[str]
    max_page_size: int = 100
    cache_environment_tag: str = "default"
    """Part of every result cache key (see ``Config.cache_environment_tag``)."""
    default_cell_timeout_seconds: float | None = None
    default_no_output_timeout_seconds: float | None = None
    max_queued_per_user: int | None = None
    """Most queued executions per user; None: no limit."""
    max_running_per_user: int | None = None
    """Running executions past which a user's submissions are refused."""
    max_submissions_per_minute: int | None = None
    """Most submissions per user in any 60 seconds; None: no limit."""

    @property
    def has_user_limits(self) -> bool:
        """Whether any per-user limit is set (else none is counted)."""
        return (
            self.max_queued_per_user is not None
            or self.max_running_per_user is not None
            or self.max_submissions_per_minute is not None
        )


@dataclass(frozen=True, slots=True)
class ExecutionPage:
    """One page of executions, newest first."""

    executions: list[Execution]
    cursors: list[str]
    has_next_page: bool


@dataclass(frozen=True, slots=True)
class WatchedEvent:
    """An event together with the execution as it was read with it."""

    event: ExecutionEvent
    execution: Execution


class ExecutionService:
    """Submit, read and watch executions.

    Parameters
    ----------
    database
        Where executions live.
    bus
        Wakes watchers when new events are committed.
    queue
        Hands execution ids to workers.
    limits
        What a submission may ask for.
    caller
        Who is asking: executions are theirs, and only theirs are visible
        unless they are an administrator.
    webhooks
        Checks webhooks given with submissions and wakes their delivery;
        `None`: submissions with a webhook are refused.
    """

    def __init__(
        self,
        *,
        database: Database,
        bus: EventBus,
        queue: TaskQueue,
        limits: SubmissionLimits,
        caller: Caller,
        webhooks: WebhookService | None = None,
    ) -> None:
        self._db = database
        self._bus = bus
        self._queue = queue
        self._limits = limits
        self._caller = caller
        self._owner = caller.owner_filter
        self._webhooks = webhooks

    async def submit(
        self,
        notebook: Any,
        *,
        kernel_name: str | None = None,
        timeout_seconds: float | None = None,
        parameters: object = None,
        queue: ExecutionQueue = ExecutionQueue.INTERACTIVE,
        cache: CachePolicy | None = None,
        cell_timeout_seconds: float | None = None,
        no_output_timeout_seconds: float | None = None,
        webhook: WebhookRequest | None = None,
    ) -> Execution:
        """Check a notebook, store it as a queued execution and enqueue it.

        With a cache policy other than BYPASS the execution may instead be a
        cache hit (stored as succeeded at once, with a copy of the cached
        result) or a follower of an identical run already queued or
        running (no message is sent then; see :class:`CacheMode`).

        Parameters
        ----------
        notebook
            An nbformat v4 document as JSON data, or a string holding one.
        kernel_name
            Kernel to run it on; default: the notebook's kernelspec, else the
            deployment's default kernel.
        timeout_seconds
            Whole-execution timeout; default from configuration.
        parameters
            Values injected as papermill does (a cell tagged
            ``injected-parameters`` after the cell tagged ``parameters``, or
            at the top), checked against the parameters cell's defaults.
        queue
            Which queue it waits in.  Interactive is the default so that
            clients that never heard of queues keep today's latency; bulk
            clients (documentation CI) opt into batch.
        cache
            How to use the result cache; default: bypass it (see
            :mod:`noteburst.domain.cache` for why).
        cell_timeout_seconds
            Limit per cell; default from configuration (maybe none).
        no_output_timeout_seconds
            Limit on how long a cell may send nothing; default from
            configuration (maybe none).
        webhook
            Where to POST a signed message when the execution ends.

        Returns
        -------
        Execution
            The queued execution (or the cache hit, or the follower).

        Raises
        ------
        InvalidNotebookError
            Raised if the notebook is unacceptable.
        UnknownKernelError
            Raised if the kernel is not available here.
        InvalidInputError
            Raised if a timeout is out of range (the field is named),
            parameters is not an object, or the cache's maximum age is
            negative or not finite; or the webhook's URL or secret is
            malformed.
        WebhookRefusedError
            Raised if the webhook's host is, or resolves to, an address
            that is not allowed.
        InvalidParametersError
            Raised if a parameter is not an identifier or its value does not
            fit its default's type.
        LimitExceededError
            Raised if the caller is at one of the per-user limits.
        """
        timeout = self._check_timeout(timeout_seconds)
        policy = self._check_cache(cache)
        cell_timeout = self._check_optional_timeout(
            "cellTimeoutSeconds",
            cell_timeout_seconds,
            self._limits.default_cell_timeout_seconds,
        )
        no_output_timeout = self._check_optional_timeout(
            "noOutputTimeoutSeconds",
            no_output_timeout_seconds,
            self._limits.default_no_output_timeout_seconds,
        )
        accepted = accept_notebook(notebook, max_bytes=self._limits.max_notebook_bytes)
        name = (
            kernel_name
            or kernel_name_of(accepted.notebook)
            or self._limits.default_kernel_name
        )
        if name not in self._limits.kernel_names:
            raise UnknownKernelError(name, list(self._limits.kernel_names))
        source, source_text = accepted.notebook, accepted.text
        if parameters is not None:
            if not isinstance(parameters, Mapping):
                raise InvalidInputError("parameters", "must be a JSON object")
            check_parameters(parameters, parameter_defaults(source))
            if parameters:
                source = inject_parameters(source, parameters, name)
                source_text = json.dumps(
                    source, ensure_ascii=False, separators=(",", ":")
                )
        execution_id = str(uuid.uuid4())
        cells_total = _runnable_cell_count(source)
        key = None
        if policy.mode is not CacheMode.BYPASS:
            key = cache_key(
                accepted.notebook,
                parameters=parameters if isinstance(parameters, Mapping) else None,
                kernel_name=name,
                environment=self._limits.cache_environment_tag,
                owner=self._caller.user,
            )
        new = _NewExecution(
            id=execution_id,
            kernel_name=name,
            timeout_seconds=timeout,
            source_text=source_text,
            cells_total=cells_total,
            queue=queue,
            cache_key=key,
            cell_timeout_seconds=cell_timeout,
            no_output_timeout_seconds=no_output_timeout,
            owner=self._caller.user,
        )
        hook = await self._register_webhook(webhook)
        async with self._db.transaction() as store:
            now = datetime.now(UTC)
            if self._limits.has_user_limits:
                await self._check_user_limits(store, now)
            event, runs, execution = await _record(store, new, policy, now)
            if hook is not None:
                await store.webhooks().add(
                    execution_id,
                    url=hook.url,
                    secret_ciphertext=hook.secret_ciphertext,
                    now=now,
                )
            if execution is None:
                execution = await store.get(execution_id)
        assert execution is not None
        if event is not None:
            self._bus.announce(execution_id, event.sequence)
        if hook is not None and execution.status.is_terminal:
            await self._wake_webhooks(execution_id)  # a cache hit ends at once
        if not runs:
            _logger.info(
                "Execution answered by the cache"
                if execution.cache_hit
                else "Execution shares an identical run",
                execution_id=execution_id,
                cached_from=execution.cached_from,
                shares_run_of=execution.shares_run_of,
            )
            return execution
        try:
            await self._queue.enqueue_execution(execution_id)
        except Exception:
            # The execution is stored and stays queued: the workers' recovery
            # sweep sends it again once the queue answers, so the caller gets
            # its execution rather than an error for work that is not lost.
            _logger.exception(
                "Queue unavailable; execution left for the recovery sweep",
                execution_id=execution_id,
            )
        return execution

    async def cancel(self, execution_id: str) -> Execution:
        """Cancel an execution; idempotent.

        A queued execution ends ``cancelled`` at once.  For a running one the
        request is recorded and its worker (in whatever process) is told;
        it interrupts the kernel and ends the execution ``cancelled`` with
        the notebook as far as it got, which subscribers see as the
        terminal event.  A finished execution is returned unchanged.

        Returns
        -------
        Execution
            The execution after the request: ``cancelled`` if it was queued,
            still ``running`` (with ``cancel_requested_at``) if it was
            running, as it was if it had finished.

        Raises
        ------
        ExecutionNotFoundError
            Raised if there is no such execution (or it is another user's).
        """
        async with self._db.transaction() as store:
            event = await store.request_cancel(
                execution_id, now=datetime.now(UTC), owner=self._owner
            )
            execution = await store.get(execution_id, owner=self._owner)
        if execution is None:
            raise ExecutionNotFoundError(execution_id)
        if event is not None:
            self._bus.announce(execution_id, event.sequence)
            await self._wake_webhooks(execution_id)
        elif execution.status is ExecutionStatus.RUNNING:
            # For the in-process bus; on Postgres the NOTIFYs already went out.
            self._bus.announce(cancel_signal_key(execution_id), 0)
            self._bus.announce(execution_id, 0)  # watchers refresh their snapshot
        _logger.info(
            "Cancellation requested",
            execution_id=execution_id,
            status=execution.status.value,
        )
        return execution

    async def _register_webhook(
        self, webhook: WebhookRequest | None
    ) -> NewWebhook | None:
        if webhook is None:
            return None
        if self._webhooks is None:
            raise InvalidInputError("webhook", "webhooks are not enabled here")
        return await self._webhooks.register(webhook.url, webhook.secret)

    async def _wake_webhooks(self, execution_id: str) -> None:
        if self._webhooks is not None:
            await self._webhooks.wake(execution_id)

    async def get(self, execution_id: str) -> Execution | None:
        """Return an execution (without its notebook), or `None`.

        None also for another user's execution, unless the caller is an
        administrator.
        """
        async with self._db.transaction() as store:
            return await store.get(execution_id, owner=self._owner)

    async def get_notebook(self, execution_id: str) -> dict[str, Any] | None:
        """Return the executed notebook, once the execution is terminal."""
        async with self._db.transaction() as store:
            return await store.get_result_notebook(execution_id, owner=self._owner)

    async def list(
        self,
        *,
        first: int | None,
        after: str | None,
        status: ExecutionStatus | None,
    ) -> ExecutionPage:
        """List executions newest first.

        Raises
        ------
        InvalidInputError
            Raised if ``first`` is out of range or ``after`` is not a cursor
            this service issued.
        """
        size = 20 if first is None else first
        if not 0 <= size <= self._limits.max_page_size:
            raise InvalidInputError(
                "first", f"must be between 0 and {self._limits.max_page_size}"
            )
        async with self._db.transaction() as store:
            executions, has_next = await store.list(
                first=size, after=after, status=status, owner=self._owner
            )
        return ExecutionPage(
            executions=executions,
            cursors=[cursor_for(e) for e in executions],
            has_next_page=has_next,
        )

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
        async with contextlib.AsyncExitStack() as subscriptions:
            signal = await subscriptions.enter_async_context(
                self._bus.subscribe(execution_id)
            )
            if after_sequence is not None and (
                replay := await self._start_replay(execution_id, after_sequence, wanted)
            ):
                execution, first = replay
                events = self._follow(
                    execution_id,
                    stream=execution_id,
                    execution=execution,
                    last_seen=after_sequence,
                    signals=(signal, signal),
                    kinds=wanted,
                    first=first,
                )
            else:
                events = self._watch_from_state(
                    execution_id,
                    subscriptions=subscriptions,
                    signal=signal,
                    after_sequence=after_sequence,
                    wanted=wanted,
                )
            async for item in events:
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
        """:meth:`watch` from the current state, or a follower's replay.

        Starts with the latest stored event (of the ``wanted`` kinds)
        unless ``after_sequence`` is given; a follower of a shared run
        follows that run's events too (subscribed on ``subscriptions``).
        """
        stream = execution_id
        async with self._db.transaction() as store:
            # Events first, the execution after them, in every read here:
            # each statement sees what had been committed before it (read
            # committed), so the execution is then at least as new as the
            # events it is yielded with (a FINISHED event with an execution
            # read before its end would carry no result and no error).
            latest = await store.latest_event(execution_id)
            execution = await store.get(execution_id, owner=self._owner)
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
            async with self._db.transaction() as store:
                latest = await store.latest_event(stream)
                execution = await store.get(execution_id, owner=self._owner)
        if execution is None or latest is None:
            raise ExecutionNotFoundError(execution_id)
        if after_sequence is None:
            if wanted is not None and latest.kind not in wanted:
                # The current state, as the wanted kinds tell it (every
                # execution starts with QUEUED; a follower's stream too).
                async with self._db.transaction() as store:
                    latest = await store.latest_event(stream, kinds=wanted)
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
        first: Sequence[ExecutionEvent] | None = None,
    ) -> AsyncIterator[WatchedEvent]:
        """Yield the events of ``stream`` after ``last_seen`` until the end.

        ``stream`` is the execution itself, or for a follower the run it
        shares; ``signals`` wake it for either.  ``kinds``: only these.
        ``first``: the events after ``last_seen`` if the caller has just
        read them with ``execution`` (not for a follower), so the first
        round reads nothing.
        """
        while True:
            left: ExecutionEvent | None = None
            if first is not None:
                events, first = first, None
            else:
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
                # Resumed after the terminal event: nothing more will come.
                return
            if signals[0] is signals[1]:
                await signals[0].wait()
            else:
                await _either(*signals)

    async def _start_replay(
        self,
        execution_id: str,
        after_sequence: int,
        kinds: frozenset[EventKind] | None,
    ) -> tuple[Execution, Sequence[ExecutionEvent]] | None:
        """Read the execution and its events after ``after_sequence``.

        A page that subscribes right after submitting passes 0: this is the
        one transaction that starts its subscription (the first round of
        :meth:`_follow`, which then reads nothing).  None for a follower of
        a shared run, whose events are another's (see :meth:`watch`).

        Raises
        ------
        ExecutionNotFoundError
            Raised if there is no such execution (or it is another user's).
        """
        async with self._db.transaction() as store:
            # Events before the execution (see _watch_from_state).
            events = await store.events_after(execution_id, after_sequence, kinds=kinds)
            execution = await store.get(execution_id, owner=self._owner)
        if execution is None:
            raise ExecutionNotFoundError(execution_id)
        if execution.shares_run_of is not None:
            return None
        return execution, events

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
        async with self._db.transaction() as store:
            events = await store.events_after(stream, last_seen, kinds=kinds)
            if stream != execution_id:
                left = await _left_shared_run(store, execution_id)
            if stream != execution_id or not _only_progress(events):
                execution = await store.get(execution_id) or execution
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

    async def queue_position(self, execution_id: str) -> int | None:
        """1-based place of a queued execution in the claim order, else None."""
        async with self._db.transaction() as store:
            return await store.queue_position(execution_id, owner=self._owner)

    async def _check_user_limits(self, store: ExecutionStore, now: datetime) -> None:
        """Refuse a submission past a per-user limit (in the recording transaction).

        The per-user lock is held until the transaction ends, so the count
        and the insert that follows are one step for this user.
        """
        owner = self._caller.user
        await store.lock_owner(owner)
        counts = await store.owner_counts(owner, since=now - timedelta(minutes=1))
        checks = (
            (
                LimitKind.QUEUED_EXECUTIONS,
                counts.queued,
                self._limits.max_queued_per_user,
            ),
            (
                LimitKind.RUNNING_EXECUTIONS,
                counts.running,
                self._limits.max_running_per_user,
            ),
            (
                LimitKind.SUBMISSIONS_PER_MINUTE,
                counts.recent,
                self._limits.max_submissions_per_minute,
            ),
        )
        for kind, count, maximum in checks:
            if maximum is not None and count >= maximum:
                _logger.info(
                    "Submission refused by a per-user limit",
                    user=owner,
                    limit=kind.value,
                    maximum=maximum,
                    count=count,
                )
                raise LimitExceededError(kind, maximum)

    def _check_cache(self, cache: CachePolicy | None) -> CachePolicy:
        if cache is None:
            return CachePolicy()
        age = cache.max_age_seconds
        if age is not None and (not math.isfinite(age) or age < 0):
            raise InvalidInputError(
                "cache.maxAgeSeconds", "must be a non-negative number"
            )
        return cache

    def _check_timeout(self, timeout_seconds: float | None) -> float:
        if timeout_seconds is None:
            return self._limits.default_timeout_seconds
        if not math.isfinite(timeout_seconds) or timeout_seconds <= 0:
            raise InvalidInputError("timeoutSeconds", "must be a positive number")
        if timeout_seconds > self._limits.max_timeout_seconds:
            raise InvalidInputError(
                "timeoutSeconds",
                f"must be at most {self._limits.max_timeout_seconds:g}",
            )
        return timeout_seconds

    def _check_optional_timeout(
        self, field: str, value: float | None, default: float | None
    ) -> float | None:
        if value is None:
            return default
        return _positive_timeout(field, value, self._limits.max_timeout_seconds)


def _positive_timeout(field: str, value: float, maximum: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError(field, "must be a positive number")
    if value > maximum:
        raise InvalidInputError(field, f"must be at most {maximum:g}")
    return value


@dataclass(frozen=True, slots=True)
class _NewExecution:
    """A checked submission, ready to be recorded."""

    id: str
    kernel_name: str
    timeout_seconds: float
    source_text: str
    cells_total: int
    queue: ExecutionQueue
    cache_key: str | None
    cell_timeout_seconds: float | None
    no_output_timeout_seconds: float | None
    owner: str


async def _record(
    store: ExecutionStore, new: _NewExecution, policy: CachePolicy, now: datetime
) -> tuple[ExecutionEvent | None, bool, Execution | None]:
    """Record a submission as a cache hit, a follower, or a run of its own.

    Called inside the submission's transaction: with a cache key, the
    per-key lock makes look-up and insert one step for identical
    submissions.  Returns the event to announce (None for a follower, which
    has none of its own), whether a worker must be told (only for a run
    of its own), and the execution as stored if it is known without a read
    (a run of its own: its insert reads it back).
    """
    if new.cache_key is not None:
        await store.lock_cache_key(new.cache_key)
        if policy.mode is CacheMode.USE:
            cached = await store.find_cached(
                new.cache_key, finished_after=policy.oldest_usable(now)
            )
            if cached is not None:
                hit = await store.add_cache_hit(
                    execution_id=new.id,
                    cached_from=cached,
                    timeout_seconds=new.timeout_seconds,
                    source_text=new.source_text,
                    queue=new.queue,
                    now=now,
                    owner=new.owner,
                )
                if hit is not None:
                    return hit, False, None
        leader = await store.find_shared_run(
            new.cache_key, include_running=policy.mode is CacheMode.USE
        )
        if leader is not None:
            await store.add_follower(
                execution_id=new.id,
                leader_id=leader,
                kernel_name=new.kernel_name,
                timeout_seconds=new.timeout_seconds,
                source_text=new.source_text,
                cells_total=new.cells_total,
                queue=new.queue,
                now=now,
                owner=new.owner,
            )
            return None, False, None
    added = await store.add(
        execution_id=new.id,
        kernel_name=new.kernel_name,
        timeout_seconds=new.timeout_seconds,
        source_text=new.source_text,
        cells_total=new.cells_total,
        now=now,
        queue=new.queue,
        cache_key=new.cache_key,
        cell_timeout_seconds=new.cell_timeout_seconds,
        no_output_timeout_seconds=new.no_output_timeout_seconds,
        owner=new.owner,
    )
    return added.event, True, added.execution


async def _left_shared_run(
    store: ExecutionStore, execution_id: str
) -> ExecutionEvent | None:
    """Return the end of a follower cancelled on its own, if it was.

    A follower has no events of its own while it shares a run (and none when
    the run ends it); cancelling it alone ends it with its own ``FINISHED``.
    """
    own = await store.latest_event(execution_id)
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


def _runnable_cell_count(notebook: dict[str, Any]) -> int:
    """Count the code cells that will run (empty ones are skipped, as nbclient does)."""
    cells = notebook.get("cells", [])
    return sum(1 for i in code_cell_indices(notebook) if _source(cells[i]).strip())


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)
