"""Webhooks registered with executions, and every attempt to deliver them.

``webhooks`` has one row per execution submitted with a webhook, inserted in
the submission's transaction.  It is also the outbox: a row whose state is
``pending`` and whose execution is terminal is a delivery owed, and since
the terminal status is committed in the transaction that ends the
execution, no end can be stored without its delivery being owed too.  The
rest of the row schedules attempts (``next_attempt_at``) and fences a
worker's attempt in flight (``lease_expires_at``: a worker that dies
mid-delivery leaves a lease that lapses, and the sweep sends it again).

The caller's secret is stored only encrypted (``secret_ciphertext``, a
Fernet token made with the server key); it never leaves the worker
otherwise.  ``webhook_deliveries`` keeps one row per attempt.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime

__all__ = ["WebhookDeliveryRow", "WebhookRow"]


class WebhookRow(Base):
    """The webhook of one execution (``webhooks``)."""

    __tablename__ = "webhooks"

    execution_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("executions.id", ondelete="CASCADE"),
        primary_key=True,
    )
    url: Mapped[str] = mapped_column(Text)
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    """The caller's ``whsec_`` secret, as a Fernet token (server key)."""
    state: Mapped[str] = mapped_column(String(16))
    """``WebhookState`` value: pending, delivered or failed."""
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """After a failed attempt: not before this; NULL: as soon as it ends."""
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """While an attempt is in flight: when its worker is presumed lost."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_webhooks_state", "state"),)


class WebhookDeliveryRow(Base):
    """One attempt to deliver a webhook (``webhook_deliveries``)."""

    __tablename__ = "webhook_deliveries"

    execution_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("webhooks.execution_id", ondelete="CASCADE"),
        primary_key=True,
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_seconds: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    succeeded: Mapped[bool] = mapped_column(Boolean)
