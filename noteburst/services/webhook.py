"""Webhooks: registering one with a submission, and delivering it, reliably.

Registration (at submission) checks the URL's form and every address its
host resolves to (:class:`~noteburst.storage.webhook_client.WebhookGuard`),
checks the secret's form and encrypts it; the execution service stores the
result with the execution, in its transaction.

Delivery is driven by the database, like executions: a pending webhook of
a terminal execution is owed (see :mod:`noteburst.storage.webhook`), and
messages on the webhook task queue are only wake-ups.  Whatever ends an
execution calls :meth:`WebhookService.wake` after its commit (and after
its terminal event is announced, so nothing here delays a subscriber);
the workers' periodic sweep (:meth:`WebhookService.sweep`) sends again
what a lost wake-up, a lost delayed message or a worker that died
mid-attempt left behind.  Each attempt is claimed with a lease, resolved,
checked and sent to the checked address, signed per Standard Webhooks,
and stored with its outcome; a failure is retried with exponential backoff
and jitter until the attempt limit or the horizon (counted from the end of
the execution).  The secret is decrypted only for signing and never logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from ..config import WebhookSettings
from ..domain.webhook import (
    WebhookDelivery,
    WebhookState,
    WebhookTarget,
    backoff_delay,
    build_payload,
    check_secret,
)
from ..metrics import WEBHOOK_DELIVERIES
from ..storage.database import Database
from ..storage.secrets import SecretBox, SecretUnreadableError
from ..storage.taskqueue import TaskQueue
from ..storage.webhook_client import (
    AttemptResult,
    WebhookGuard,
    WebhookSender,
    signed_headers,
)

__all__ = ["NewWebhook", "WebhookService"]

_logger = structlog.get_logger("noteburst.webhooks")

_OUTCOME_LABELS = {
    WebhookState.DELIVERED: "delivered",
    WebhookState.PENDING: "retry",
    WebhookState.FAILED: "gave_up",
}
"""``outcome`` label of :data:`~noteburst.metrics.WEBHOOK_DELIVERIES` per state."""

LEASE_MARGIN_SECONDS = 30.0
"""Added to an attempt's timeout for its lease: time to store the outcome."""


@dataclass(frozen=True, slots=True)
class NewWebhook:
    """A checked webhook, ready to store: the URL and the encrypted secret."""

    url: str
    secret_ciphertext: str

    def __repr__(self) -> str:
        return f"NewWebhook(url={self.url!r}, secret_ciphertext=<hidden>)"


class WebhookService:
    """Register, deliver and report webhooks.

    Parameters
    ----------
    database
        Where webhooks and their executions live.
    task_queue
        Carries delivery wake-ups to workers.
    guard
        Checks URLs and their addresses.
    secrets
        Returns the box that encrypts secrets at rest (called only when a
        secret is encrypted or decrypted, so the key is loaded lazily).
    settings
        Timeouts and retry schedule (``config.webhooks``; the addresses
        allowed are the guard's).
    public_url
        Base URL the messages link to results under
        (``Config.effective_public_url``).
    sender
        Sends attempts; only workers have one.
    """

    def __init__(
        self,
        *,
        database: Database,
        task_queue: TaskQueue,
        guard: WebhookGuard,
        secrets: Callable[[], SecretBox],
        settings: WebhookSettings,
        public_url: str,
        sender: WebhookSender | None = None,
    ) -> None:
        self._db = database
        self._task_queue = task_queue
        self._guard = guard
        self._secrets = secrets
        self._settings = settings
        self._public_url = public_url
        self._sender = sender

    async def register(self, url: str, secret: str) -> NewWebhook:
        """Check a webhook given with a submission and encrypt its secret.

        Raises
        ------
        InvalidInputError
            The URL or the secret is malformed (the field is named; the
            secret is never repeated).
        WebhookRefusedError
            The URL's host is, or resolves to, an address not allowed.
        """
        check_secret(secret)
        await self._guard.check(url)
        return NewWebhook(url=url, secret_ciphertext=self._secrets().encrypt(secret))

    async def get(self, execution_id: str) -> WebhookTarget | None:
        """Return the execution's webhook (its URL and state, never its secret)."""
        async with self._db.transaction() as tx:
            return await tx.webhooks.get(execution_id)

    async def deliveries(self, execution_id: str) -> list[WebhookDelivery]:
        """Return every stored delivery attempt of the execution's webhook."""
        async with self._db.transaction() as tx:
            return await tx.webhooks.deliveries(execution_id)

    async def wake(self, execution_id: str) -> int:
        """Send wake-ups for webhooks owed now that ``execution_id`` ended.

        Covers the execution and the followers of its shared run.  Never
        raises: a lost wake-up is repaired by the sweep.

        Returns
        -------
        int
            How many wake-ups were sent.
        """
        try:
            async with self._db.transaction() as tx:
                due = await tx.webhooks.due(
                    now=datetime.now(UTC), ending_with=execution_id
                )
            for owed in due:
                await self._task_queue.enqueue_webhook(owed)
        except Exception:
            _logger.exception(
                "Webhook wake-up failed; the sweep will send it",
                execution_id=execution_id,
            )
            return 0
        return len(due)

    async def sweep(self) -> int:
        """Send wake-ups for every webhook owed an attempt now.

        Returns
        -------
        int
            How many were sent.
        """
        async with self._db.transaction() as tx:
            due = await tx.webhooks.due(now=datetime.now(UTC))
        for owed in due:
            await self._task_queue.enqueue_webhook(owed)
        if due:
            _logger.info("Webhook deliveries resent by the sweep", count=len(due))
        return len(due)

    async def deliver(self, execution_id: str) -> WebhookDelivery | None:
        """Make one delivery attempt of an execution's webhook, if it is due.

        Returns
        -------
        WebhookDelivery or None
            The stored attempt, or None if nothing was due (a duplicate or
            early wake-up, an attempt in flight elsewhere, done already).
        """
        if self._sender is None:
            msg = "this webhook service has no sender (not a worker)"
            raise RuntimeError(msg)
        settings = self._settings
        started = datetime.now(UTC)
        lease = settings.timeout_seconds + LEASE_MARGIN_SECONDS
        async with self._db.transaction() as tx:
            claimed = await tx.webhooks.claim(
                execution_id,
                now=started,
                lease_until=started + timedelta(seconds=lease),
            )
            execution = (
                None if claimed is None else await tx.executions.get(execution_id)
            )
        if claimed is None or execution is None:
            return None
        log = _logger.bind(execution_id=execution_id, attempt=claimed.attempt)
        final = False
        try:
            secret = self._secrets().decrypt(claimed.secret_ciphertext)
        except SecretUnreadableError as exc:
            # No later attempt could do better: give up at once.
            result = AttemptResult(
                status_code=None, latency_seconds=0.0, error=str(exc)
            )
            final = True
        else:
            payload = build_payload(execution, public_url=self._public_url, now=started)
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
            headers = signed_headers(
                secret,
                message_id=f"msg_{execution_id}",
                timestamp=started,
                body=body,
            )
            del secret
            result = await self._sender.send(
                claimed.url,
                body=body.encode(),
                headers=headers,
                timeout=settings.timeout_seconds,
            )
        delivery = WebhookDelivery(
            attempt=claimed.attempt,
            started_at=started,
            status_code=result.status_code,
            latency_seconds=result.latency_seconds,
            error=result.error,
            succeeded=result.succeeded,
        )
        now = datetime.now(UTC)
        state, delay = self._next(delivery, execution.finished_at or now, now, final)
        next_at = None if delay is None else now + timedelta(seconds=delay)
        async with self._db.transaction() as tx:
            recorded = await tx.webhooks.record(
                execution_id, delivery, state=state, next_attempt_at=next_at, now=now
            )
        if not recorded:
            log.warning("Webhook attempt outlived its lease; its outcome is dropped")
            WEBHOOK_DELIVERIES.labels("dropped").inc()
            return None
        WEBHOOK_DELIVERIES.labels(_OUTCOME_LABELS[state]).inc()
        log.info(
            "Webhook attempt",
            succeeded=delivery.succeeded,
            status_code=delivery.status_code,
            latency_seconds=round(delivery.latency_seconds, 4),
            error=delivery.error,
            state=state.value,
            retry_in_seconds=None if delay is None else round(delay, 3),
        )
        if delay is not None:
            try:
                await self._task_queue.enqueue_webhook(
                    execution_id, delay_seconds=delay
                )
            except Exception:
                log.exception("Cannot schedule the webhook's retry; the sweep will")
        return delivery

    def _next(
        self,
        delivery: WebhookDelivery,
        ended_at: datetime,
        now: datetime,
        final: bool,
    ) -> tuple[WebhookState, float | None]:
        """Return the state after an attempt, and the wait before the next one."""
        if delivery.succeeded:
            return WebhookState.DELIVERED, None
        settings = self._settings
        if final or delivery.attempt >= settings.max_attempts:
            return WebhookState.FAILED, None
        delay = backoff_delay(
            delivery.attempt,
            initial_seconds=settings.initial_backoff_seconds,
            max_seconds=settings.max_backoff_seconds,
        )
        horizon = ended_at + timedelta(seconds=settings.horizon_seconds)
        if now + timedelta(seconds=delay) > horizon:
            return WebhookState.FAILED, None
        return WebhookState.PENDING, delay
