"""API tokens (``auth_mode=tokens``).

One row per token.  Only a SHA-256 hash of the secret is stored (see
:mod:`noteburst.domain.auth` for why a fast hash suits random secrets), so
a copy of the database gives no one a usable token.  Revoked and expired
tokens are kept, for ``token list`` and for audit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime

__all__ = ["ApiTokenRow"]


class ApiTokenRow(Base):
    """One API token (``api_tokens``)."""

    __tablename__ = "api_tokens"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    """Public part of the token, which finds the row in one indexed read."""
    secret_hash: Mapped[str] = mapped_column(String(64))
    """Hex SHA-256 of the token's secret part."""
    user: Mapped[str] = mapped_column(String(255), index=True)
    scopes: Mapped[str] = mapped_column(Text)
    """Space-separated scopes."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
