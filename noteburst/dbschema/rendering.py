"""Rendered views of executed notebooks (``execution_renderings``).

An executed notebook is rendered to HTML once per variant (with or without
code) and kept, because a render is nbconvert's CPU-heavy work over the
whole notebook and a dashboard shows the same result to many page views.
Rows go with their execution (``ON DELETE CASCADE``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime

__all__ = ["ExecutionRenderingRow"]


class ExecutionRenderingRow(Base):
    """One rendering of one execution's notebook."""

    __tablename__ = "execution_renderings"

    execution_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("executions.id", ondelete="CASCADE"),
        primary_key=True,
    )
    variant: Mapped[str] = mapped_column(String(32), primary_key=True)
    """Which view, e.g. ``html`` or ``html-no-code``."""
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
