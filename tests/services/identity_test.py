"""IdentityLease: a worker's hold on a bot identity."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from noteburst.services.identity import IdentityLease, NoIdentityAvailableError
from noteburst.storage.database import Database

POOL = ["noteburst-bot-01", "noteburst-bot-02"]


def _lease(database: Database, holder: str, seconds: float = 30) -> IdentityLease:
    return IdentityLease(
        database=database, pool=POOL, holder=holder, lease_seconds=seconds
    )


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
    async with database.lease_transaction() as leases:
        taken = await leases.claim(
            POOL, holder="newcomer", now=now, lease_until=now + timedelta(seconds=30)
        )
    assert taken == POOL[0]


@pytest.mark.asyncio
async def test_renewal_notices_a_take_over(database: Database) -> None:
    stalled = _lease(database, "stalled", seconds=0.6)
    assert await stalled.acquire() == POOL[0]
    now = datetime.now(UTC) + timedelta(hours=1)
    async with database.lease_transaction() as leases:
        assert (
            await leases.claim(
                POOL[:1], holder="thief", now=now, lease_until=now + timedelta(hours=1)
            )
            == POOL[0]
        )
    await asyncio.wait_for(stalled.lost.wait(), 10)
    await stalled.release()
    async with database.lease_transaction() as leases:
        assert await leases.holder_of(POOL[0]) == "thief"
