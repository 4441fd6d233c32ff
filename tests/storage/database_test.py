"""Database: engine setup, migrations at startup, one loop per Database."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from noteburst.exceptions import ConfigurationError, ServiceUnavailableError
from noteburst.storage import Database
from noteburst.storage.database import is_connection_failure, make_engine
from noteburst.storage.events import asyncpg_dsn
from noteburst.storage.sqlite_driver import InlineConnection
from tests.support.servers import PrivatePostgres, private_postgres

TIMEOUT = 30.0


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.mark.asyncio
async def test_upgrade_is_idempotent_and_reports_current(
    empty_database_url: str,
) -> None:
    database = Database.from_url(empty_database_url)
    try:
        async with asyncio.timeout(TIMEOUT):
            assert not await database.is_current()
            await database.upgrade()
            assert await database.is_current()
            await database.upgrade()
            assert await database.is_current()
    finally:
        await database.aclose()


@pytest.mark.asyncio
async def test_concurrent_upgrades_on_postgres(postgres_url: str) -> None:
    databases = [Database.from_url(postgres_url) for _ in range(3)]
    try:
        assert all(db.is_postgres for db in databases)
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*(db.upgrade() for db in databases))
            assert await databases[0].is_current()
    finally:
        for db in databases:
            await db.aclose()


@pytest.mark.asyncio
async def test_upgrade_leaves_logging_alone(sqlite_url: str) -> None:
    logger = logging.getLogger("noteburst.test.canary")
    root_handlers = list(logging.getLogger().handlers)
    database = Database.from_url(sqlite_url)
    try:
        await database.upgrade()
    finally:
        await database.aclose()
    assert not logger.disabled
    assert logging.getLogger().handlers == root_handlers


@pytest.mark.asyncio
async def test_sqlite_setup(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "noteburst.sqlite3"
    database = Database.from_url(f"sqlite:///{path}")  # bare scheme: aiosqlite
    try:
        assert database.dialect_name == "sqlite"
        assert not database.is_postgres
        await database.upgrade()
    finally:
        await database.aclose()
    assert path.is_file()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)

    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as connection:
            foreign_keys = await connection.exec_driver_sql("PRAGMA foreign_keys")
            assert foreign_keys.scalar() == 1
            # Locks are waited for by sqlite_driver, never inside SQLite.
            busy = await connection.exec_driver_sql("PRAGMA busy_timeout")
            assert busy.scalar() == 0
            raw = await connection.get_raw_connection()
            assert isinstance(raw.driver_connection, InlineConnection)
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_postgres_connection_that_died_in_the_pool_is_replaced(
    postgres_url: str, postgres_admin_url: str
) -> None:
    # As after a Postgres restart: the pooled connection's backend is gone.
    engine = make_engine(postgres_url)
    admin = await asyncpg.connect(asyncpg_dsn(postgres_admin_url), timeout=TIMEOUT)
    backend_pid = text("SELECT pg_backend_pid()")
    try:
        async with asyncio.timeout(TIMEOUT):
            async with engine.connect() as connection:
                pid = (await connection.execute(backend_pid)).scalar_one()
            pool = engine.pool
            assert isinstance(pool, QueuePool)
            assert pool.checkedin() == 1
            assert await admin.fetchval(
                "SELECT pg_terminate_backend($1, $2)", pid, int(TIMEOUT * 1000)
            )
            # The checkout's ping finds it dead; the pool connects afresh
            # instead of failing this transaction.
            async with engine.begin() as connection:
                new_pid = (await connection.execute(backend_pid)).scalar_one()
            assert new_pid != pid
    finally:
        await admin.close(timeout=TIMEOUT)
        await engine.dispose()


@pytest.mark.asyncio
async def test_postgres_checkout_ping_is_the_transactions_begin(
    postgres_url: str,
) -> None:
    # The ping costs no round trip of its own: the checkout has begun the
    # transaction before any statement (a SELECT 1 ping left it idle).
    engine = make_engine(postgres_url)
    try:
        async with asyncio.timeout(TIMEOUT), engine.begin() as connection:
            raw = await connection.get_raw_connection()
            assert raw.driver_connection is not None
            assert raw.driver_connection.is_in_transaction()
            # ...and the first statement runs in it (starting another one
            # would fail SQLAlchemy's own assertion).
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
            assert raw.driver_connection.is_in_transaction()
    finally:
        await engine.dispose()


def test_unsupported_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        Database.from_url("mysql+aiomysql://u@h/db")


@pytest.mark.asyncio
async def test_database_refuses_a_second_event_loop(sqlite_url: str) -> None:
    database = Database.from_url(sqlite_url)
    try:
        await database.upgrade()

        async def use_elsewhere() -> None:
            async with database.transaction():
                pass

        with pytest.raises(RuntimeError, match="one Database per event loop"):
            await asyncio.to_thread(asyncio.run, use_elsewhere())
    finally:
        await database.aclose()


@pytest.mark.asyncio
async def test_one_database_per_loop_share_a_file(sqlite_url: str) -> None:
    """The embedded layout: the web loop and a worker loop write one file."""
    web = Database.from_url(sqlite_url)
    await web.upgrade()

    async def worker() -> int:
        worker_db = Database.from_url(sqlite_url)
        try:
            async with worker_db.transaction() as tx:
                executions, _ = await tx.executions.list(
                    first=10, after=None, status=None
                )
            return len(executions)
        finally:
            await worker_db.aclose()

    try:
        assert await asyncio.to_thread(asyncio.run, worker()) == 0
    finally:
        await web.aclose()


@pytest.mark.asyncio
async def test_a_slow_commit_is_a_warning(postgres_url: str) -> None:
    """A commit the server holds up is logged with its duration.

    The stall is PostgreSQL's own: a deferred constraint trigger runs at
    commit and sleeps there, as a commit waiting for the disk would.
    """
    database = Database.from_url(postgres_url)
    try:
        async with asyncio.timeout(TIMEOUT):
            await database.upgrade()
            connection = await asyncpg.connect(asyncpg_dsn(postgres_url))
            try:
                await connection.execute(
                    """
                    CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS
                    $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;
                    CREATE CONSTRAINT TRIGGER stall_at_commit
                    AFTER INSERT OR UPDATE ON lab_identities
                    DEFERRABLE INITIALLY DEFERRED
                    FOR EACH ROW EXECUTE FUNCTION stall();
                    """
                )
            finally:
                await connection.close()
            now = datetime.now(UTC)
            with structlog.testing.capture_logs() as logs:
                async with database.transaction() as tx:
                    claimed = await tx.identities.claim(
                        ["bot-1"],
                        holder="me",
                        now=now,
                        lease_until=now + timedelta(minutes=1),
                    )
                assert claimed == "bot-1"
    finally:
        await database.aclose()
    slow = [entry for entry in logs if entry["event"] == "Slow database commit"]
    assert len(slow) == 1
    assert slow[0]["log_level"] == "warning"
    assert slow[0]["seconds"] >= 0.3
    assert slow[0]["stores"] == "identities"


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL of this module's own, to restart and stop."""
    with private_postgres() as server:
        yield server


async def _select_one(database: Database) -> int:
    async with database.transaction() as tx:
        value: int = await tx._session.scalar(text("SELECT 1"))
        return value


@pytest.mark.asyncio
async def test_a_stopped_database_is_unavailable_then_back_unaided(
    own_postgres: PrivatePostgres,
) -> None:
    database = Database.from_url(own_postgres.url)
    try:
        async with asyncio.timeout(TIMEOUT):
            assert await _select_one(database) == 1  # a pooled connection
            await asyncio.to_thread(own_postgres.stop, "fast")
            try:
                with pytest.raises(ServiceUnavailableError) as raised:
                    await _select_one(database)
                assert raised.value.service == "database"
                assert is_connection_failure(raised.value.__cause__)  # type: ignore[arg-type]
            finally:
                await asyncio.to_thread(own_postgres.start)
            assert await _select_one(database) == 1
    finally:
        await database.aclose()


@pytest.mark.asyncio
async def test_a_restart_between_transactions_is_not_seen(
    own_postgres: PrivatePostgres,
) -> None:
    database = Database.from_url(own_postgres.url)
    try:
        async with asyncio.timeout(TIMEOUT):
            assert await _select_one(database) == 1
            await asyncio.to_thread(own_postgres.restart, "fast")
            # The dead pooled connection fails its checkout ping and is
            # replaced: no error reaches the caller.
            assert await _select_one(database) == 1
    finally:
        await database.aclose()


async def _restart_mid_transaction(database: Database, server: PrivatePostgres) -> None:
    async with database.transaction() as tx:
        await tx._session.execute(text("SELECT 1"))
        await asyncio.to_thread(server.restart, "fast")
        await tx._session.execute(text("SELECT 1"))


async def _run_statements(database: Database, *statements: str) -> None:
    async with database.transaction() as tx:
        for statement in statements:
            await tx._session.execute(text(statement))


@pytest.mark.asyncio
async def test_a_connection_lost_inside_a_transaction_is_unavailable(
    own_postgres: PrivatePostgres,
) -> None:
    database = Database.from_url(own_postgres.url)
    try:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ServiceUnavailableError):
                await _restart_mid_transaction(database, own_postgres)
            assert await _select_one(database) == 1
    finally:
        await database.aclose()


@pytest.mark.asyncio
async def test_errors_the_database_answers_are_not_unavailability(
    postgres_url: str,
) -> None:
    database = Database.from_url(postgres_url)
    try:
        async with asyncio.timeout(TIMEOUT):
            # Raised as SQLAlchemy's own error, not as unavailability.
            with pytest.raises(DBAPIError) as raised:
                await _run_statements(database, "SELECT no_such_column")
            assert not is_connection_failure(raised.value)
            # A statement's own timeout shares SQLSTATE class 57 with a
            # server's shutdown, but retrying would not help.
            with pytest.raises(DBAPIError) as cancelled:
                await _run_statements(
                    database,
                    "SET LOCAL statement_timeout = 1",
                    "SELECT pg_sleep(1)",
                )
            assert not is_connection_failure(cancelled.value)
    finally:
        await database.aclose()
