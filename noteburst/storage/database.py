"""The database handle: engine, transactions and schema migrations.

One :class:`Database` wraps one SQLAlchemy :class:`~sqlalchemy.ext.asyncio.
AsyncEngine`.  It is the only way the rest of Noteburst reaches the
database: :meth:`Database.transaction` yields a
:class:`~noteburst.storage.unit_of_work.UnitOfWork` whose stores are bound
to one transaction, so nothing above storage ever touches SQLAlchemy.  It
is also the one place that decides whether the database is PostgreSQL.

**One Database per event loop.**  Pooled asyncpg and aiosqlite connections
belong to the loop that opened them; using them from another loop fails with
"attached to a different loop" errors, or worse, hangs.  The web server and
the embedded worker run different loops (the worker's in its own thread), so
each creates its own ``Database.from_url(...)`` on its own loop and closes it
there with :meth:`Database.aclose`.  A Database remembers the first loop it
is used on and raises :class:`RuntimeError` if used from another, so the
mistake shows up at once rather than as a flaky hang.

SQLite (the embedded default) is configured for a web loop and a worker loop
writing to one file: WAL journaling (readers never block the writer), a
writer that waits for the other (up to ``SQLITE_BUSY_TIMEOUT_MS``) instead of
failing with "database is locked", foreign keys on (for ``ON DELETE
CASCADE``), and every transaction opened with ``BEGIN IMMEDIATE``.  The last
one matters: a deferred transaction that reads and then writes can fail
immediately with ``SQLITE_BUSY`` when another connection wrote in between,
which no lock wait retries; taking the write lock at ``BEGIN`` turns that
into an ordinary wait.  Transactions are short, so serialising them is
cheap.  SQLite runs on each loop's own thread, through
:mod:`noteburst.storage.sqlite_driver` rather than aiosqlite's thread (see
there for why), and the wait for the lock is an ``asyncio.sleep``, never a
sleep inside SQLite.

Migrations are Alembic revisions in the repository's ``alembic/`` folder.
:meth:`Database.upgrade` runs them on this engine's own connection (Alembic's
"connection sharing" recipe) because ``alembic/env.py`` would otherwise call
:func:`asyncio.run`, which cannot run inside the application's loop.  On
Postgres it holds a transaction-scoped advisory lock, so replicas starting
together migrate one at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from alembic.command import upgrade as alembic_upgrade
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import await_

from noteburst.exceptions import ConfigurationError, ServiceUnavailableError
from noteburst.metrics import DATABASE_SLOW_COMMITS

from . import sqlite_driver
from .unit_of_work import UnitOfWork

__all__ = [
    "ALEMBIC_SCRIPT_LOCATION",
    "MIGRATION_LOCK_KEY",
    "SLOW_COMMIT_SECONDS",
    "SQLITE_BUSY_TIMEOUT_MS",
    "STATEMENT_TIMEOUT_SECONDS",
    "Database",
    "alembic_config",
    "is_connection_failure",
    "make_engine",
]


def _find_migrations() -> Path:
    package = Path(__file__).resolve().parents[1]
    installed = package / "_alembic"  # where the wheel puts them
    return installed if installed.is_dir() else package.parent / "alembic"


ALEMBIC_SCRIPT_LOCATION = _find_migrations()
"""Folder holding ``env.py`` and ``versions/``: the repository's ``alembic/``,
or its copy inside an installed wheel."""

MIGRATION_LOCK_KEY = 0x6E6F7465  # "note"
"""Postgres advisory lock key held while migrating."""

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another before "database is locked"."""

SLOW_COMMIT_SECONDS = 0.1
"""A commit slower than this is logged as a warning.

A PostgreSQL commit waits for its WAL to reach the disk, normally a short
wait, but a commit now and then stalls far longer, and the submission's
answer or the result's push waits for it.  Such stalls come from the
database server (its disk's flushes, a checkpoint), not from Noteburst, and
an operator looking at a page view's tail latency needs to see them.  The
threshold is far above a normal commit, so only stalls are logged.
"""

_CONNECT_TIMEOUT_SECONDS = 10.0

STATEMENT_TIMEOUT_SECONDS = 60.0
"""Longest a PostgreSQL statement may take before the client gives up on it.

Far above any statement Noteburst sends (the largest moves one notebook).
"""
_PING_TIMEOUT_SECONDS = 10.0

_logger = structlog.get_logger("noteburst.database")

_UNAVAILABLE_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown: "terminating connection due to ..."
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: "the database system is starting up"
        "53300",  # too_many_connections
    }
)
"""SQLSTATEs outside class 08 (connection exception) that mean "not now".

``57014`` (query_canceled) shares class 57 but is a statement's own
timeout, not an outage, so the class is not taken whole.
"""


def is_connection_failure(error: BaseException) -> bool:
    """Whether ``error`` means the database could not be reached or went away.

    True for a refused or dropped connection, a server shutting down or
    starting up (a restart, a failover), a pool with no connection to give
    in time, or a connect that timed out: the same work succeeds once the
    database is back.  False for anything the database answered (a
    constraint, a syntax error, a statement timeout), which retrying would
    not fix.  Looks through SQLAlchemy's wrapping (``orig``) and the
    exception's causes, since the asyncpg adapter reports a server's
    shutdown as its own error class with the SQLSTATE as ``pgcode``.
    """
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DisconnectionError | PoolTimeoutError | OSError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        sqlstate = getattr(current, "sqlstate", None) or getattr(
            current, "pgcode", None
        )
        if isinstance(sqlstate, str) and (
            sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES
        ):
            return True
        for linked in (
            getattr(current, "orig", None),
            current.__cause__,
            current.__context__,
        ):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return False


def make_engine(url: str | URL, *, echo: bool = False) -> AsyncEngine:
    """Create an engine configured for Noteburst's backends.

    Used by :meth:`Database.from_url` and by ``alembic/env.py`` (the Alembic
    command line), so both see the same SQLite settings.

    Parameters
    ----------
    url
        SQLAlchemy URL: ``postgresql+asyncpg://...`` or
        ``sqlite+aiosqlite:///path``.  The parent folder of a SQLite file is
        created if missing.
    echo
        Log every SQL statement (debugging).

    Returns
    -------
    AsyncEngine
        A new engine; the caller disposes of it.

    Raises
    ------
    ConfigurationError
        The URL names a backend other than Postgres or SQLite.
    """
    parsed = make_url(url)
    # Bare scheme names would pick synchronous drivers; use the async ones.
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        engine = create_async_engine(
            parsed,
            echo=echo,
            connect_args={
                "timeout": _CONNECT_TIMEOUT_SECONDS,
                # A bound on every statement: a connection that died without
                # a word (a half-open socket after a failover) would
                # otherwise hold its transaction, and the worker, forever.
                # Expired, it is a connection failure, retried as such.
                "command_timeout": STATEMENT_TIMEOUT_SECONDS,
            },
        )
        _ping_on_checkout(engine)
        return engine
    if backend == "sqlite":
        return _make_sqlite_engine(parsed, echo=echo)
    msg = f"unsupported database URL {parsed!r}: use postgresql+asyncpg or sqlite"
    raise ConfigurationError(msg)


def _ping_on_checkout(engine: AsyncEngine) -> None:
    """Replace a pooled Postgres connection that died while idle.

    After a Postgres restart every pooled connection is dead, and the first
    transaction on each would fail; a ping at checkout finds out first, and
    the pool then connects afresh (up to three attempts).  That is what
    ``pool_pre_ping`` does, but SQLAlchemy's asyncpg ping is three round
    trips (``BEGIN``, ``;``, ``ROLLBACK``: asyncpg prepares ``;``, which
    needs a transaction under pgbouncer's transaction pooling).

    Here the ping is the ``BEGIN`` that the transaction would send anyway
    with its first statement: the checkout starts the transaction on
    SQLAlchemy's asyncpg adapter (its ``_start_transaction``, which its first
    statement would otherwise call), so the ping costs no round trip of its
    own.  Every checkout here runs a transaction (sessions and
    ``engine.begin()``); one that ends with no statement sends a
    ``ROLLBACK``, as it would have.  A ping of its own, even a single
    ``SELECT 1``, would add a round trip to every transaction, and a
    submission takes several on the way to its result.
    ``_start_transaction`` is private (SQLAlchemy 2.1, pinned by the lock
    file): ``tests/storage/database_test.py`` checks both that the checkout
    begins the transaction and that a dead connection is replaced.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        try:
            if dbapi_connection.autocommit or dbapi_connection._transaction:
                # Not a connection about to begin (none here): ping alone.
                await_(
                    dbapi_connection.driver_connection.execute(
                        "SELECT 1", timeout=_PING_TIMEOUT_SECONDS
                    )
                )
            else:
                await_(
                    asyncio.wait_for(
                        dbapi_connection._start_transaction(),
                        _PING_TIMEOUT_SECONDS,
                    )
                )
        except Exception as exc:
            msg = f"pooled connection failed its ping: {exc!r}"
            raise DisconnectionError(msg) from exc


def _make_sqlite_engine(url: URL, *, echo: bool) -> AsyncEngine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or "mode=memory" in str(url)
    kwargs: dict[str, Any] = {}
    if in_memory:
        # Each new connection to :memory: is a new, empty database.
        kwargs["poolclass"] = StaticPool
    elif not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # The connections are sqlite_driver's, on the loop's thread (see there
    # for why), opened in autocommit mode: the sqlite3 module would
    # otherwise issue a deferred BEGIN lazily before the first write.
    filenames, options = SQLiteDialect_aiosqlite().create_connect_args(url)
    creator = sqlite_driver.connect(
        filenames[0],
        uri=bool(options.get("uri", False)),
        busy_timeout_seconds=SQLITE_BUSY_TIMEOUT_MS / 1000,
    )
    engine = create_async_engine(url, echo=echo, async_creator=creator, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # No waiting inside SQLite: sqlite_driver waits for locks
            # without holding up the loop.
            cursor.execute("PRAGMA busy_timeout=0")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def alembic_config(*, script_location: Path = ALEMBIC_SCRIPT_LOCATION) -> AlembicConfig:
    """Build an Alembic configuration without reading ``alembic.ini``.

    Skipping the ini file keeps Alembic from reconfiguring logging (its
    ``[loggers]`` section would silence the application's loggers).

    Parameters
    ----------
    script_location
        Folder with ``env.py`` and ``versions/``.

    Returns
    -------
    alembic.config.Config
        Configuration to pass to :mod:`alembic.command` functions; set
        ``attributes["connection"]`` to run on an existing connection.

    Raises
    ------
    ConfigurationError
        The migration scripts are not where expected.
    """
    if not (script_location / "env.py").is_file():
        msg = (
            f"Alembic migrations not found in {script_location}; Noteburst "
            "must run from its source tree or an install that ships alembic/"
        )
        raise ConfigurationError(msg)
    config = AlembicConfig()
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    return config


def _upgrade_on(connection: Connection, config: AlembicConfig) -> None:
    config.attributes["connection"] = connection
    alembic_upgrade(config, "head")


def _is_current_on(connection: Connection, config: AlembicConfig) -> bool:
    heads = set(ScriptDirectory.from_config(config).get_heads())
    current = set(MigrationContext.configure(connection).get_current_heads())
    return current == heads


def _describe(error: BaseException) -> str:
    """Describe a connection failure's root cause in one line, for logs."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    text_ = str(root).strip().splitlines()
    return f"{type(root).__name__}: {text_[0]}" if text_ else type(root).__name__


class Database:
    """An engine, its sessions, and the schema's migrations.

    Create with :meth:`from_url` on the event loop that will use it; see the
    module documentation for why each loop needs its own.

    Parameters
    ----------
    engine
        Engine from :func:`make_engine`; the Database owns and disposes it.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessionmaker = async_sessionmaker(
            engine, expire_on_commit=False, autoflush=False
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._postgres = engine.dialect.name == "postgresql"

    @classmethod
    def from_url(cls, url: str, *, echo: bool = False) -> Database:
        """Open a database by SQLAlchemy URL (no connection is made yet).

        Parameters
        ----------
        url
            ``postgresql+asyncpg://user@host/db`` or
            ``sqlite+aiosqlite:///path/to/file.sqlite3``; see
            ``Config.effective_database_url``.
        echo
            Log every SQL statement.

        Returns
        -------
        Database
            A handle to close with :meth:`aclose`.
        """
        return cls(make_engine(url, echo=echo))

    @property
    def dialect_name(self) -> str:
        """``"postgresql"`` or ``"sqlite"``."""
        return self._engine.dialect.name

    @property
    def is_postgres(self) -> bool:
        """Whether this is Postgres (LISTEN/NOTIFY and advisory locks exist)."""
        return self._postgres

    @property
    def url(self) -> str:
        """The database URL including the password (for the event bus DSN)."""
        return self._engine.url.render_as_string(hide_password=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        """Run a unit of work in one database transaction.

        Commits when the block exits normally and rolls back if it raises.
        Announce events on the event bus only after the block has exited,
        so subscribers never look for an event that is not committed yet.

        Keep the block short and do not await another transaction inside
        it: on SQLite every transaction holds the write lock from its
        start, so a nested one waits for ``busy_timeout`` and then fails.

        Yields
        ------
        UnitOfWork
            Every store, bound to the transaction (``tx.executions``,
            ``tx.claims``, ``tx.webhooks``...); do not keep it past the block.

        Raises
        ------
        ServiceUnavailableError
            The database could not be reached or dropped the connection
            (see :func:`is_connection_failure`); the transaction is rolled
            back, unless the connection was lost during the commit itself,
            when it may have committed.  Every write Noteburst retries is
            conditional on the row's state (a claim, a finish of this
            attempt), so repeating one that did commit changes nothing.
        """
        self._check_loop()
        try:
            async with self._sessionmaker() as session, session.begin():
                work = UnitOfWork(session, postgres=self._postgres)
                yield work
                committing = time.monotonic()
        except ServiceUnavailableError:
            raise
        except Exception as exc:
            if is_connection_failure(exc):
                raise ServiceUnavailableError("database", _describe(exc)) from exc
            raise
        # Reached only if the block ended normally and the commit succeeded.
        seconds = time.monotonic() - committing
        if seconds > SLOW_COMMIT_SECONDS:
            DATABASE_SLOW_COMMITS.inc()
            _logger.warning(
                "Slow database commit",
                seconds=round(seconds, 3),
                stores=",".join(work.stores_used),
            )

    async def ping(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound the caller sets
        """Check that the database answers a trivial query within ``timeout``.

        For readiness probes: it opens (or checks out) a connection and runs
        ``SELECT 1``, nothing else.

        Raises
        ------
        ServiceUnavailableError
            If it did not answer in time, refused, or failed.
        """
        self._check_loop()
        try:
            async with asyncio.timeout(timeout), self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except TimeoutError as exc:
            raise ServiceUnavailableError(
                "database", f"no answer within {timeout:g} s"
            ) from exc
        except Exception as exc:
            raise ServiceUnavailableError("database", _describe(exc)) from exc

    async def upgrade(self) -> None:
        """Migrate the schema to the newest revision (``alembic upgrade head``).

        Safe to call at every start: it does nothing when already current,
        and on Postgres concurrent callers wait for each other.  Does not
        touch logging configuration.
        """
        self._check_loop()
        config = alembic_config()
        async with self._engine.begin() as connection:
            if self.is_postgres:
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": MIGRATION_LOCK_KEY},
                )
            await connection.run_sync(_upgrade_on, config)

    async def is_current(self) -> bool:
        """Whether the schema is at the newest revision.

        Returns
        -------
        bool
            False for an empty database or one needing :meth:`upgrade`.
        """
        self._check_loop()
        config = alembic_config()
        async with self._engine.connect() as connection:
            return await connection.run_sync(_is_current_on, config)

    async def aclose(self) -> None:
        """Close every pooled connection; call on the loop that used them."""
        await self._engine.dispose()

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            msg = (
                "this Database was first used on another event loop; create "
                "one Database per event loop (see noteburst.storage.database)"
            )
            raise RuntimeError(msg)
