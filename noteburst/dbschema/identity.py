"""Leases on the bot identities that workers drive JupyterHub labs as.

One row per identity name (``noteburst-bot-01``...).  A worker holds an
identity while ``lease_expires_at`` is in the future and it keeps renewing;
a crashed worker stops renewing and its identity becomes claimable again.
Rows are created on first claim, so the pool can grow by configuration
alone.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime

__all__ = ["LabIdentityRow"]


class LabIdentityRow(Base):
    """One bot identity and who holds it (``lab_identities``)."""

    __tablename__ = "lab_identities"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
