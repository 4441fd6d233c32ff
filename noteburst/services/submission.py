"""Submitting an execution: check everything, record it, wake a worker.

A submission is checked completely before anything is stored, so bad input
leaves no trace; the row and its first event are committed before the queue
message is sent, so a worker never sees an id it cannot read.

A submission names its queue (interactive work is claimed before batch
work) and its use of the result cache (:mod:`noteburst.domain.cache`): a
stored success of the same computation may answer it at once, and
identical submissions arriving while one is queued or running share that
run ("single flight").  Deciding which, and recording it, happens in one
transaction that holds a per-key lock, so two identical submissions never
both start a run.

Submissions are checked against per-user limits (queued, running,
submissions per minute) in the transaction that records them, under a
per-user lock, so concurrent submissions cannot overshoot.  The result
cache is per user (the owner is part of the cache key).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from ..config import LimitSettings
from ..domain.auth import Caller
from ..domain.cache import CacheMode, CachePolicy, cache_key
from ..domain.execution import Execution, ExecutionEvent, ExecutionQueue
from ..domain.notebook import accept_notebook, kernel_name_of, runnable_cell_count
from ..domain.parameters import check_parameters, inject_parameters, parameter_defaults
from ..domain.webhook import WebhookRequest
from ..exceptions import (
    InvalidInputError,
    LimitExceededError,
    LimitKind,
    UnknownKernelError,
)
from ..metrics import EXECUTIONS_SUBMITTED
from ..storage.database import Database
from ..storage.events import EventBus
from ..storage.taskqueue import TaskQueue
from ..storage.unit_of_work import UnitOfWork
from .webhook import NewWebhook, WebhookService

__all__ = ["SubmissionService"]

_logger = structlog.get_logger("noteburst.executions")


class SubmissionService:
    """Check and record submissions, for one caller.

    Parameters
    ----------
    database
        Where executions live.
    bus
        Wakes watchers when new events are committed.
    task_queue
        Hands execution ids to workers.
    limits
        What a submission may ask for (``config.limits``).
    default_kernel_name
        Kernel of a submission that names none (nor does its notebook).
    kernel_names
        Kernels submissions may name (discovered at start).
    caller
        Who is submitting: the executions are theirs.
    webhooks
        Checks webhooks given with submissions and wakes their delivery;
        `None`: submissions with a webhook are refused.
    """

    def __init__(
        self,
        *,
        database: Database,
        bus: EventBus,
        task_queue: TaskQueue,
        limits: LimitSettings,
        default_kernel_name: str,
        kernel_names: Sequence[str],
        caller: Caller,
        webhooks: WebhookService | None = None,
    ) -> None:
        self._db = database
        self._bus = bus
        self._task_queue = task_queue
        self._limits = limits
        self._default_kernel_name = default_kernel_name
        self._kernel_names = tuple(kernel_names)
        self._has_user_limits = any(
            maximum is not None
            for maximum in (
                limits.max_queued_per_user,
                limits.max_running_per_user,
                limits.max_submissions_per_minute,
            )
        )
        self._caller = caller
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
            or self._default_kernel_name
        )
        if name not in self._kernel_names:
            raise UnknownKernelError(name, list(self._kernel_names))
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
        cells_total = runnable_cell_count(source)
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
        async with self._db.transaction() as tx:
            now = datetime.now(UTC)
            if self._has_user_limits:
                await self._check_user_limits(tx, now)
            event, runs, execution = await _record(tx, new, policy, now)
            if hook is not None:
                await tx.webhooks.add(
                    execution_id,
                    url=hook.url,
                    secret_ciphertext=hook.secret_ciphertext,
                    now=now,
                )
            if execution is None:
                execution = await tx.executions.get(execution_id)
        assert execution is not None
        EXECUTIONS_SUBMITTED.labels(execution.queue.value).inc()
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
            await self._task_queue.enqueue_execution(execution_id)
        except Exception:
            # The execution is stored and stays queued: the workers' recovery
            # sweep sends it again once the queue answers, so the caller gets
            # its execution rather than an error for work that is not lost.
            _logger.exception(
                "Queue unavailable; execution left for the recovery sweep",
                execution_id=execution_id,
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

    async def _check_user_limits(self, tx: UnitOfWork, now: datetime) -> None:
        """Refuse a submission past a per-user limit (in the recording transaction).

        The per-user lock is held until the transaction ends, so the count
        and the insert that follows are one step for this user.
        """
        owner = self._caller.user
        await tx.quotas.lock_owner(owner)
        counts = await tx.quotas.owner_counts(owner, since=now - timedelta(minutes=1))
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
    tx: UnitOfWork, new: _NewExecution, policy: CachePolicy, now: datetime
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
        await tx.cache.lock_key(new.cache_key)
        if policy.mode is CacheMode.USE:
            cached = await tx.cache.find_cached(
                new.cache_key, finished_after=policy.oldest_usable(now)
            )
            if cached is not None:
                hit = await tx.cache.add_cache_hit(
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
        leader = await tx.cache.find_shared_run(
            new.cache_key, include_running=policy.mode is CacheMode.USE
        )
        if leader is not None:
            await tx.cache.add_follower(
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
    added = await tx.executions.add(
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
