"""Persistence: the database and its stores, the event bus, the task queue.

This package is the only place that knows SQLAlchemy, asyncpg and the table
layout; callers get domain objects (:mod:`noteburst.domain.execution`) and
these entry points:

* :class:`Database` (one per event loop): ``transaction()`` yields a
  :class:`UnitOfWork` naming every store bound to that transaction
  (``tx.executions``, ``tx.events``, ``tx.claims``, ``tx.cancels``,
  ``tx.cache``, ``tx.quotas``, ``tx.retention``, ``tx.webhooks``,
  ``tx.renderings``, ``tx.tokens``, ``tx.identities``); ``upgrade()``
  migrates the schema.
  The execution store's parts are in :mod:`.executions`.
* :class:`EventBus` (from :func:`create_event_bus`): subscribe to wake-ups
  when an execution gets new events; ``announce`` after committing them.
* :class:`~.taskqueue.TaskQueue`: sends work to Dramatiq actors by name.
"""

from .database import Database
from .events import (
    EventBus,
    LocalEventBus,
    PostgresEventBus,
    Signal,
    create_event_bus,
)
from .executions import NewEvent, cursor_for
from .unit_of_work import UnitOfWork

__all__ = [
    "Database",
    "EventBus",
    "LocalEventBus",
    "NewEvent",
    "PostgresEventBus",
    "Signal",
    "UnitOfWork",
    "create_event_bus",
    "cursor_for",
]
