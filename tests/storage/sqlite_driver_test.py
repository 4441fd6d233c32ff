"""The SQLite driver that runs on the loop's thread and waits for locks off SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from noteburst.storage import Database, sqlite_driver
from noteburst.storage.sqlite_driver import InlineConnection

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


async def _open(path: Path, busy_timeout_seconds: float = 30) -> InlineConnection:
    connection: InlineConnection = await sqlite_driver.connect(
        str(path), uri=False, busy_timeout_seconds=busy_timeout_seconds
    )()
    await connection.execute("PRAGMA journal_mode=WAL")
    return connection


@pytest.fixture
def retries(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set when the driver first waits for a lock (its asyncio.sleep)."""
    waited = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waited.set()
        await asyncio.sleep(seconds)

    monkeypatch.setattr(sqlite_driver, "asyncio", SimpleNamespace(sleep=sleep))
    return waited


@pytest.mark.asyncio
async def test_statements_run_on_the_loops_thread(tmp_path: Path) -> None:
    connection = await _open(tmp_path / "db.sqlite3")
    try:
        await connection.create_function("thread_id", 0, threading.get_ident)
        cursor = await connection.execute("SELECT thread_id(), 40 + 2")
        assert await cursor.fetchall() == [(threading.get_ident(), 42)]
        await cursor.close()
    finally:
        await connection.close()


@pytest.mark.asyncio
async def test_a_writer_waits_for_the_lock_without_holding_up_its_loop(
    tmp_path: Path, retries: asyncio.Event
) -> None:
    """The holder of the lock is on the same loop and must be able to finish.

    SQLite's own busy wait would sleep on the loop's thread: the holder,
    suspended in its transaction, could then never commit.
    """
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    holder_db, waiter_db = Database.from_url(url), Database.from_url(url)
    await holder_db.upgrade()
    release = asyncio.Event()

    async def hold_the_lock() -> None:
        async with holder_db.transaction() as tx:
            # Any statement: the transaction's BEGIN IMMEDIATE took the lock.
            await tx.quotas.owner_counts("someone", since=EPOCH)
            await release.wait()

    async def write() -> int:
        async with waiter_db.transaction() as tx:
            counts = await tx.quotas.owner_counts("someone", since=EPOCH)
            return counts.queued

    try:
        async with asyncio.timeout(30):
            holder = asyncio.create_task(hold_the_lock())
            writer = asyncio.create_task(write())
            await retries.wait()  # the writer found the lock taken
            assert not writer.done()
            release.set()  # runs only because the loop is free
            await holder
            assert await writer == 0
    finally:
        release.set()
        await holder_db.aclose()
        await waiter_db.aclose()


@pytest.mark.asyncio
async def test_a_lock_held_too_long_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    waiter = await _open(path, busy_timeout_seconds=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await asyncio.wait_for(waiter.execute("BEGIN IMMEDIATE"), 10)
        other.execute("ROLLBACK")
        await waiter.execute("BEGIN IMMEDIATE")
        assert waiter.raw.in_transaction
        await waiter.rollback()
    finally:
        other.close()
        await waiter.close()
