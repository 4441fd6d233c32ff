"""SQLite for SQLAlchemy's asyncio engine, run on the event loop's own thread.

SQLAlchemy's ``sqlite+aiosqlite`` dialect drives SQLite through aiosqlite,
which runs every call in a thread of its own and hands the result back to
the loop.  A statement costs four such round trips (cursor, execute,
fetchall, close), and each waits for the interpreter lock on the way there
and back.  In the embedded default, where the web server, the worker, the
kernels' websockets and two database threads share one process, those
hand-offs, not SQLite's own work, were most of every transaction's time,
and a small notebook's path from submission to result runs several
transactions (submit, claim, store the result).

So this module gives the dialect a connection shaped like aiosqlite's whose
coroutines call :mod:`sqlite3` directly and never suspend, except in one
place: waiting for the write lock.  SQLite's own ``busy_timeout`` would
sleep inside the call, on the loop's thread, and another task of the same
loop that holds the lock (its transaction suspended on a real await) could
then never finish: a deadlock.  Here ``busy_timeout`` is 0 and a statement
refused with ``SQLITE_BUSY`` outside a transaction (``BEGIN IMMEDIATE``, in
practice) is retried after an ``asyncio.sleep`` that lets the holder go on,
with backoff, up to the same overall limit as before.  Inside a transaction
that began with ``BEGIN IMMEDIATE`` and uses WAL journaling, no statement
waits for a lock.

What this costs: the loop is busy while SQLite works, i.e. for the length of
each statement (short for Noteburst's small statements; storing a
multi-megabyte notebook takes longer) and for the WAL checkpoint a commit
runs now and then.  The embedded default accepts that; deployments use
PostgreSQL through asyncpg, which this module does not touch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, Self, TypeVar

__all__ = ["InlineConnection", "InlineCursor", "connect"]

_T = TypeVar("_T")

_RETRY_FIRST_SECONDS = 0.0005
_RETRY_MAX_SECONDS = 0.02


def _is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)


class InlineCursor:
    """The subset of ``aiosqlite.Cursor`` that SQLAlchemy's adapter uses."""

    def __init__(self, connection: InlineConnection) -> None:
        self._connection = connection
        self._cursor = connection.raw.cursor()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def description(self) -> Any:
        """Column descriptions of the last query (DB-API)."""
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        """Rows changed by the last statement (DB-API)."""
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        """Row id of the last inserted row (DB-API)."""
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        """Rows per fetchmany (DB-API)."""
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = ()) -> Self:
        """Run one statement."""
        await self._connection.run(self._cursor.execute, sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> Self:
        """Run one statement per parameter set."""
        await self._connection.run(self._cursor.executemany, sql, parameters)
        return self

    async def fetchone(self) -> Any:
        """Next row, or None."""
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to ``size`` next rows."""
        if size is None:
            return self._cursor.fetchmany()
        return self._cursor.fetchmany(size)

    async def fetchall(self) -> list[Any]:
        """Every remaining row."""
        return self._cursor.fetchall()

    async def close(self) -> None:
        """Close the cursor."""
        self._cursor.close()


class InlineConnection:
    """The subset of ``aiosqlite.Connection`` that SQLAlchemy's adapter uses.

    Parameters
    ----------
    raw
        An open :mod:`sqlite3` connection in autocommit mode
        (``isolation_level=None``), used only from this loop.
    busy_timeout_seconds
        How long a statement outside a transaction may wait for a lock
        another connection holds.
    """

    def __init__(self, raw: sqlite3.Connection, busy_timeout_seconds: float) -> None:
        self.raw = raw
        self._busy_timeout = busy_timeout_seconds
        # SQLAlchemy's adapter checks this before commit and rollback.
        self._connection: sqlite3.Connection | None = raw

    @property
    def isolation_level(self) -> str | None:
        """Always None: transactions are begun explicitly."""
        return self.raw.isolation_level

    async def run(self, call: Callable[..., _T], *args: Any) -> _T:
        """Call ``call(*args)``; retry a lock refusal outside a transaction."""
        if self.raw.in_transaction:
            return call(*args)
        deadline = time.monotonic() + self._busy_timeout
        delay = _RETRY_FIRST_SECONDS
        while True:
            try:
                return call(*args)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or self.raw.in_transaction:
                    raise
                if time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_SECONDS)

    def cursor(self) -> InlineCursor:
        """Open a new cursor."""
        return InlineCursor(self)

    async def execute(self, sql: str, parameters: Any = ()) -> InlineCursor:
        """Run one statement on a new cursor."""
        cursor = self.cursor()
        await cursor.execute(sql, parameters)
        return cursor

    async def commit(self) -> None:
        """Commit the open transaction."""
        self.raw.commit()

    async def rollback(self) -> None:
        """Roll back the open transaction."""
        self.raw.rollback()

    async def close(self) -> None:
        """Close the connection (again: nothing)."""
        if self._connection is not None:
            self._connection = None
            self.raw.close()

    def stop(self) -> None:
        """Close at once (SQLAlchemy's forced termination)."""
        if self._connection is not None:
            self._connection = None
            self.raw.close()

    async def create_function(
        self,
        name: str,
        num_params: int,
        func: Callable[..., Any],
        *,
        deterministic: bool = False,
    ) -> None:
        """Make a Python function callable from SQL."""
        self.raw.create_function(name, num_params, func, deterministic=deterministic)


def connect(
    database: str, *, uri: bool, busy_timeout_seconds: float
) -> Callable[[], Any]:
    """Build an ``async_creator`` for SQLAlchemy's ``create_async_engine``.

    Parameters
    ----------
    database
        A file path, or a ``file:`` URI with ``uri`` true.
    uri
        Whether ``database`` is a URI.
    busy_timeout_seconds
        See :class:`InlineConnection`.
    """

    async def create() -> InlineConnection:
        raw = sqlite3.connect(
            database,
            uri=uri,
            isolation_level=None,
            # Closed by the pool, maybe during garbage collection, which can
            # run on any thread; it is only ever used from its own loop.
            check_same_thread=False,
            # Never wait for a lock inside SQLite, on the loop's thread:
            # InlineConnection.run waits with asyncio.sleep instead.
            timeout=0,
        )
        return InlineConnection(raw, busy_timeout_seconds)

    return create
