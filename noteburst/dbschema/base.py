"""Declarative base and the column types every table shares.

Two things are decided once here rather than per table:

* Constraint and index names follow :data:`NAMING_CONVENTION`, so Alembic
  migrations name them identically on Postgres and SQLite and can later
  drop or alter them by name (SQLite batch mode needs names).
* Timestamps go through :class:`UTCDateTime`.  SQLite has no timezone-aware
  type and silently drops ``tzinfo``; Postgres returns aware values.  The
  decorator stores UTC on both and always hands back aware UTC datetimes,
  so code above storage never sees a naive datetime.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Dialect, MetaData
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

__all__ = ["NAMING_CONVENTION", "Base", "UTCDateTime"]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Names for constraints and indexes that do not give one explicitly."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC on every backend.

    Binding a naive datetime raises :class:`ValueError`: the caller's
    timezone would otherwise be guessed.  On SQLite the value is stored as
    naive UTC text (fixed width, so text comparison orders correctly); on
    Postgres as ``timestamp with time zone``.  Results are always aware and
    in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        """Convert to UTC; drop the tzinfo where the backend cannot keep it."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            msg = f"naive datetime {value!r}: pass a timezone-aware value"
            raise ValueError(msg)
        utc = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return utc.replace(tzinfo=None)
        return utc

    def process_result_value(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        """Re-attach UTC to what SQLite returns; normalise Postgres to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @property
    def python_type(self) -> type[datetime]:
        """Values are :class:`datetime.datetime`."""
        return datetime


class Base(DeclarativeBase):
    """Declarative base whose metadata Alembic compares against."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
