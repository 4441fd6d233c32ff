"""Webhooks: what a caller registers, what Noteburst sends, and the retry rule.

A submission may carry ``webhook: {url, secret}``.  When the execution ends
(however it ends), Noteburst POSTs a JSON message to the URL signed as the
Standard Webhooks specification says (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``: HMAC-SHA256 with the caller's secret).  The message
has the specification's recommended shape, ``{type, timestamp, data}``,
with the execution's id, status, times, error and a link that fetches the
result (a GraphQL GET query for ``execution(id)``).

Everything here is pure: checking the URL's form and the secret, building
the message, and spacing retries.  Which addresses a URL may reach is
:mod:`noteburst.domain.addresses`; signing and sending live with the sender.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import random
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..exceptions import InvalidInputError
from .execution import Execution

__all__ = [
    "EXECUTION_FINISHED_EVENT",
    "MAX_URL_LENGTH",
    "WebhookDelivery",
    "WebhookRequest",
    "WebhookState",
    "WebhookTarget",
    "WebhookUrl",
    "backoff_delay",
    "build_payload",
    "check_secret",
    "check_url",
    "result_link",
]

EXECUTION_FINISHED_EVENT = "execution.finished"
"""The ``type`` of the one message Noteburst sends per execution."""

MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
MIN_SECRET_BYTES = 24
"""Standard Webhooks asks for 24 to 64 random bytes (192 to 512 bits)."""
MAX_SECRET_BYTES = 64


class WebhookState(enum.StrEnum):
    """Where a webhook's delivery stands."""

    PENDING = "pending"
    """Waiting for the execution to end, or for its next attempt."""
    DELIVERED = "delivered"
    """A 2xx answer was received."""
    FAILED = "failed"
    """Every attempt failed and the retry horizon or attempt limit is reached."""


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A webhook as a submission gives it (not checked yet)."""

    url: str
    secret: str = field(repr=False)
    """``whsec_`` + base64; kept out of ``repr`` so it cannot reach a log."""


@dataclass(frozen=True, slots=True)
class WebhookUrl:
    """A webhook URL whose form was checked (not yet its addresses)."""

    url: str
    scheme: str
    host: str
    """Host name or address literal, without IPv6 brackets."""
    port: int


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A registered webhook as the API shows it: never the secret."""

    execution_id: str
    url: str
    state: WebhookState
    attempts: int
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One attempt to deliver a webhook.

    Attributes
    ----------
    attempt
        1, 2, 3... per execution.
    started_at
        When the attempt began (before name resolution).
    status_code
        The receiver's HTTP status, if it answered.
    latency_seconds
        From the start of the attempt to its answer or failure.
    error
        Why it failed (a refused address, a timeout, a status), or None.
    succeeded
        Whether the receiver answered 2xx.
    """

    attempt: int
    started_at: datetime
    status_code: int | None
    latency_seconds: float
    error: str | None
    succeeded: bool


def check_url(url: str, *, field: str = "webhook.url") -> WebhookUrl:
    """Check a webhook URL's form: absolute http(s), a host, no credentials.

    Raises
    ------
    InvalidInputError
        Naming ``field``.
    """
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInputError(field, f"must be at most {MAX_URL_LENGTH} characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError(field, f"not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise InvalidInputError(field, "must be an http or https URL")
    if not parts.hostname:
        raise InvalidInputError(field, "must name a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInputError(field, "must not contain credentials")
    if parts.fragment:
        raise InvalidInputError(field, "must not have a fragment")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidInputError(field, "must not contain spaces or control characters")
    default_port = 443 if scheme == "https" else 80
    return WebhookUrl(
        url=url,
        scheme=scheme,
        host=parts.hostname,
        port=port if port is not None else default_port,
    )


def check_secret(secret: str, *, field: str = "webhook.secret") -> bytes:
    """Check a Standard Webhooks secret, ``whsec_`` + base64 of 24-64 bytes.

    Returns
    -------
    bytes
        The key bytes.

    Raises
    ------
    InvalidInputError
        Naming ``field``; the message never repeats the secret.
    """
    body = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(
            field, "must be 'whsec_' followed by base64 (Standard Webhooks)"
        ) from exc
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise InvalidInputError(
            field,
            f"must encode {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes, "
            f"not {len(key)}",
        )
    return key


def result_link(public_url: str, execution_id: str) -> str:
    """Return a URL that fetches the execution and its notebook (GraphQL GET)."""
    query = (
        "query Execution($id: ID!) { execution(id: $id) { id status "
        "finishedAt error { code message } notebook } }"
    )
    params = urllib.parse.urlencode(
        {"query": query, "variables": json.dumps({"id": execution_id})}
    )
    return f"{public_url.rstrip('/')}/graphql?{params}"


def build_payload(
    execution: Execution, *, public_url: str, now: datetime
) -> dict[str, object]:
    """Build the JSON message announcing that ``execution`` ended.

    The same message (apart from ``timestamp``) is sent on every attempt,
    with the same ``webhook-id``, so a receiver can drop duplicates.
    """
    error = execution.error
    return {
        "type": EXECUTION_FINISHED_EVENT,
        "timestamp": now.astimezone(UTC).isoformat(),
        "data": {
            "id": execution.id,
            "status": execution.status.name,
            "createdAt": execution.created_at.astimezone(UTC).isoformat(),
            "startedAt": None
            if execution.started_at is None
            else execution.started_at.astimezone(UTC).isoformat(),
            "finishedAt": None
            if execution.finished_at is None
            else execution.finished_at.astimezone(UTC).isoformat(),
            "attempts": execution.attempts,
            "cacheHit": execution.cache_hit,
            "error": None
            if error is None
            else {
                "code": error.code.name,
                "message": error.message,
                "cellIndex": error.cell_index,
            },
            "resultUrl": result_link(public_url, execution.id),
        },
    }


def backoff_delay(
    attempt: int,
    *,
    initial_seconds: float,
    max_seconds: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential (``initial * 2**(attempt-1)``, capped at ``max_seconds``)
    with jitter between half and all of it ("equal jitter"), so receivers that
    failed together are not all retried at the same instant.
    """
    ceiling = min(max_seconds, initial_seconds * 2.0 ** max(attempt - 1, 0))
    draw: float = (rng or random).random()
    return ceiling / 2 + draw * ceiling / 2
