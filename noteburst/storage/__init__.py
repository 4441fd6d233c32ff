"""Persistence: the database, the execution store and the event bus.

This package is the only place that knows SQLAlchemy, asyncpg and the table
layout; callers get domain objects (:mod:`noteburst.domain.execution`) and
these entry points:

* :class:`Database` (one per event loop): ``transaction()`` yields an
  :class:`ExecutionStore`; ``upgrade()`` migrates the schema.
* :class:`EventBus` (from :func:`create_event_bus`): subscribe to wake-ups
  when an execution gets new events; ``announce`` after committing them.
"""

from .database import Database
from .events import (
    EventBus,
    LocalEventBus,
    PostgresEventBus,
    Signal,
    create_event_bus,
)
from .execution import ExecutionFinishedError, ExecutionStore, NewEvent, cursor_for

__all__ = [
    "Database",
    "EventBus",
    "ExecutionFinishedError",
    "ExecutionStore",
    "LocalEventBus",
    "NewEvent",
    "PostgresEventBus",
    "Signal",
    "create_event_bus",
    "cursor_for",
]
