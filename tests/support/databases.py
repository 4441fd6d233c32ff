"""Fixtures for real Postgres, SQLite and Redis, each test with a clean one.

Where the servers are comes from the environment:

``NOTEBURST_TEST_POSTGRES``
    SQLAlchemy URL of a Postgres database to connect to as an administrator
    (default ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``).  Every
    test using ``postgres_url`` gets a brand-new database ``nb_<random>``
    created through it and dropped (``WITH (FORCE)``) afterwards.
``NOTEBURST_TEST_REDIS``
    Redis server URL (default ``redis://127.0.0.1:6379``).  Every test using
    ``redis_url`` gets one of the logical databases 1-15, reserved with a
    lock key in database 0 so concurrent test runs on one server never
    share one, and flushed before and after the test.

Fixtures: ``backend_urls`` (the embedded default, then PostgreSQL + Redis:
the ``database_url``/``redis_url`` settings of each, for tests of a whole
Noteburst), ``postgres_url`` and ``sqlite_url`` (empty databases, no schema),
``database_url`` (each backend in turn, migrated), ``database`` (a migrated
:class:`~noteburst.storage.database.Database` on the test's loop),
``redis_url``, and ``postgres_admin_url``.

The URL fixtures are synchronous (they do their asyncpg work on a private
thread and loop), so both sync tests, such as the Alembic command tests,
and async tests can use them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
import redis

from noteburst.storage.database import Database
from noteburst.storage.events import asyncpg_dsn

__all__ = [
    "backend_urls",
    "database",
    "database_url",
    "postgres_admin_url",
    "postgres_url",
    "redis_url",
    "run_async",
    "sqlite_url",
]

_T = TypeVar("_T")

_DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
_DEFAULT_REDIS = "redis://127.0.0.1:6379"
_REDIS_DATABASES = range(1, 16)
_REDIS_LOCK_PREFIX = "noteburst-test:redis-db-lock:"
_REDIS_LOCK_SECONDS = 3600
_TIMEOUT = 30.0


def run_async(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion on a private thread and event loop.

    For synchronous fixtures and tests: works whether or not the calling
    thread is running an event loop, and leaves that loop alone.
    """
    result: list[_T] = []
    failure: list[BaseException] = []

    async def bounded() -> _T:
        async with asyncio.timeout(_TIMEOUT):
            return await make()

    def target() -> None:
        try:
            result.append(asyncio.run(bounded()))
        except BaseException as exc:  # handed to the calling thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="noteburst-test-async")
    thread.start()
    thread.join(_TIMEOUT + 5)
    if thread.is_alive():
        pytest.fail("async helper did not finish in time")
    if failure:
        raise failure[0]
    return result[0]


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """SQLAlchemy URL of the administrative Postgres database."""
    return os.environ.get("NOTEBURST_TEST_POSTGRES", _DEFAULT_POSTGRES)


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """URL of a fresh, empty Postgres database, dropped after the test.

    The schema is not created: use ``database`` for a migrated one.
    """
    name = f"nb_{secrets.token_hex(6)}"
    admin_dsn = asyncpg_dsn(postgres_admin_url)

    async def execute(sql: str) -> None:
        connection = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await connection.execute(sql, timeout=_TIMEOUT)
        finally:
            await connection.close(timeout=10)

    run_async(lambda: execute(f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(postgres_admin_url, name)
    finally:
        run_async(lambda: execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a SQLite file in a not yet existing folder under tmp_path."""
    return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'noteburst.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """URL of a fresh database with the schema; runs once per backend.

    Migrated (``alembic upgrade head``) but holding no executions.  Use
    ``sqlite_url`` or ``postgres_url`` for a database without the schema.
    """
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)

    async def migrate() -> None:
        db = Database.from_url(url)
        try:
            await db.upgrade()
        finally:
            await db.aclose()

    run_async(migrate)
    return url


@pytest_asyncio.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated :class:`Database` for ``database_url``, closed after the test.

    Created on the test's event loop, which must be the only loop using it.
    """
    db = Database.from_url(database_url)
    try:
        async with asyncio.timeout(_TIMEOUT):
            await db.upgrade()
        yield db
    finally:
        await db.aclose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of an empty Redis logical database reserved for this test.

    Yields ``redis://host:port/N``; the database is flushed before and after
    the test and released afterwards.
    """
    base = os.environ.get("NOTEBURST_TEST_REDIS", _DEFAULT_REDIS)
    token = secrets.token_hex(8)
    locks = redis.Redis.from_url(base, db=0, socket_timeout=_TIMEOUT)
    try:
        number = next(
            (
                n
                for n in _REDIS_DATABASES
                if locks.set(
                    f"{_REDIS_LOCK_PREFIX}{n}", token, nx=True, ex=_REDIS_LOCK_SECONDS
                )
            ),
            None,
        )
        if number is None:
            pytest.fail("no free Redis database (1-15) for this test")
        client = redis.Redis.from_url(base, db=number, socket_timeout=_TIMEOUT)
        try:
            client.flushdb()
            parts = urlsplit(base)
            yield urlunsplit(parts._replace(path=f"/{number}"))
        finally:
            client.flushdb()
            client.close()
            lock = f"{_REDIS_LOCK_PREFIX}{number}"
            if locks.get(lock) == token.encode():
                locks.delete(lock)
    finally:
        locks.close()


@pytest.fixture(params=["embedded", "postgres+redis"])
def backend_urls(request: pytest.FixtureRequest) -> dict[str, str | None]:
    """Settings of each backend in turn: embedded (None: the default), then
    a clean PostgreSQL database and Redis of the test's own."""
    if request.param == "embedded":
        return {"database_url": None, "redis_url": None}
    return {
        "database_url": request.getfixturevalue("postgres_url"),
        "redis_url": request.getfixturevalue("redis_url"),
    }
