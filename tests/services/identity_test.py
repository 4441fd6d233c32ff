"""IdentityLease: a worker's hold on a bot identity.

Includes the wait at worker start: a worker that finds every identity
leased keeps trying (the lease of a crashed or stopping worker frees up
within one lease period) and only gives up, with an error saying what to
do, after its bounded wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from noteburst.services.identity import IdentityLease, NoIdentityAvailableError
from noteburst.storage.database import Database

POOL = ["noteburst-bot-01", "noteburst-bot-02"]


def _lease(
    database: Database,
    holder: str,
    seconds: float = 30,
    pool: Sequence[str] = POOL,
) -> IdentityLease:
    return IdentityLease(
        database=database, pool=pool, holder=holder, lease_seconds=seconds
    )


async def _until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``condition()`` until it is true, failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_workers_hold_distinct_identities(database: Database) -> None:
    a, b, c = _lease(database, "a"), _lease(database, "b"), _lease(database, "c")
    try:
        assert [await a.acquire(), await b.acquire()] == POOL
        with pytest.raises(NoIdentityAvailableError, match="2 bot identities"):
            await c.acquire()
        await a.release()
        assert await c.acquire() == POOL[0]
    finally:
        for lease in (a, b, c):
            await lease.release()


@pytest.mark.asyncio
async def test_a_crashed_workers_identity_comes_back(database: Database) -> None:
    crashed = _lease(database, "crashed", seconds=0.3)
    assert await crashed.acquire() == POOL[0]
    # Simulate a crash: the renewer stops, nothing is released.
    assert crashed._renewer is not None
    crashed._renewer.cancel()
    # Once the lease is past, another worker takes it over...
    now = datetime.now(UTC) + timedelta(seconds=1)
    async with database.transaction() as tx:
        taken = await tx.identities.claim(
            POOL, holder="newcomer", now=now, lease_until=now + timedelta(seconds=30)
        )
    assert taken == POOL[0]


@pytest.mark.asyncio
async def test_renewal_notices_a_take_over(database: Database) -> None:
    stalled = _lease(database, "stalled", seconds=0.6)
    assert await stalled.acquire() == POOL[0]
    now = datetime.now(UTC) + timedelta(hours=1)
    async with database.transaction() as tx:
        assert (
            await tx.identities.claim(
                POOL[:1], holder="thief", now=now, lease_until=now + timedelta(hours=1)
            )
            == POOL[0]
        )
    await asyncio.wait_for(stalled.lost.wait(), 10)
    await stalled.release()
    async with database.transaction() as tx:
        assert await tx.identities.holder_of(POOL[0]) == "thief"


@pytest.mark.asyncio
async def test_acquire_waits_until_an_identity_is_released(database: Database) -> None:
    a, b = _lease(database, "a"), _lease(database, "b")
    waiter = _lease(database, "waiter")
    try:
        assert [await a.acquire(), await b.acquire()] == POOL
        with structlog.testing.capture_logs() as logs:
            claim = asyncio.create_task(waiter.acquire(wait_seconds=60))
            # It found both held and is waiting, not failing.
            await _until(
                lambda: (
                    any("waiting for one" in log["event"] for log in logs)
                    or claim.done()
                ),
                "the waiting claim",
            )
            assert not claim.done(), claim
            await b.release()
            assert await asyncio.wait_for(claim, 30) == POOL[1]
        async with database.transaction() as tx:
            assert await tx.identities.holder_of(POOL[1]) == "waiter"
    finally:
        for lease in (a, b, waiter):
            await lease.release()


@pytest.mark.asyncio
async def test_acquire_waits_for_a_crashed_workers_lease_to_expire(
    database: Database,
) -> None:
    pool = POOL[:1]
    crashed = _lease(database, "crashed", seconds=1.5, pool=pool)
    newcomer = _lease(database, "newcomer", seconds=1.5, pool=pool)
    try:
        assert await crashed.acquire() == pool[0]
        # A crash: the renewer stops, nothing is released.
        assert crashed._renewer is not None
        crashed._renewer.cancel()
        started = time.monotonic()
        assert await asyncio.wait_for(newcomer.acquire(wait_seconds=60), 30) == pool[0]
        # Not at once: only after the crashed worker's lease ran out.
        assert time.monotonic() - started > 0.5
        async with database.transaction() as tx:
            assert await tx.identities.holder_of(pool[0]) == "newcomer"
    finally:
        await newcomer.release()


@pytest.mark.asyncio
async def test_acquire_gives_up_after_waiting(database: Database) -> None:
    a, b = _lease(database, "a", seconds=3), _lease(database, "b", seconds=3)
    late = _lease(database, "late", seconds=3)
    try:
        assert [await a.acquire(), await b.acquire()] == POOL
        started = time.monotonic()
        with pytest.raises(NoIdentityAvailableError) as raised:
            await asyncio.wait_for(late.acquire(wait_seconds=1.5), 30)
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < 20, elapsed
        assert str(raised.value) == (
            "all 2 bot identities are held by live workers (waited 1.5 s for "
            "one to be released or to expire); add names to "
            "NOTEBURST_HUB_IDENTITIES or run fewer workers (each worker "
            "process leases one identity)"
        )
        # The live workers kept theirs.
        async with database.transaction() as tx:
            assert [await tx.identities.holder_of(name) for name in POOL] == ["a", "b"]
    finally:
        for lease in (a, b, late):
            await lease.release()
