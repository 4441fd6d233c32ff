"""Bot identity leases on both backends: distinct holders, expiry, take-over."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from noteburst.storage.database import Database

POOL = ["noteburst-bot-01", "noteburst-bot-02"]


async def _claim(database: Database, holder: str, now: datetime) -> str | None:
    async with database.transaction() as tx:
        return await tx.identities.claim(
            POOL, holder=holder, now=now, lease_until=now + timedelta(seconds=30)
        )


@pytest.mark.asyncio
async def test_two_workers_get_distinct_identities(database: Database) -> None:
    now = datetime.now(UTC)
    first = await _claim(database, "worker-a", now)
    second = await _claim(database, "worker-b", now)
    assert {first, second} == set(POOL)
    assert await _claim(database, "worker-c", now) is None
    # Claiming again as the same holder keeps the same identity.
    assert await _claim(database, "worker-a", now) == first


@pytest.mark.asyncio
async def test_concurrent_claims_never_share(database: Database) -> None:
    now = datetime.now(UTC)
    claims = await asyncio.wait_for(
        asyncio.gather(*(_claim(database, f"worker-{i}", now) for i in range(5))), 60
    )
    taken = [c for c in claims if c is not None]
    assert sorted(taken) == POOL


@pytest.mark.asyncio
async def test_expired_lease_is_taken_over(database: Database) -> None:
    now = datetime.now(UTC)
    assert await _claim(database, "crashed", now) == POOL[0]
    assert await _claim(database, "other", now) == POOL[1]
    later = now + timedelta(seconds=31)
    # "other" kept renewing; "crashed" did not.
    async with database.transaction() as tx:
        assert await tx.identities.renew(
            POOL[1], holder="other", lease_until=later + timedelta(seconds=30)
        )
    assert await _claim(database, "newcomer", later) == POOL[0]
    async with database.transaction() as tx:
        assert not await tx.identities.renew(
            POOL[0], holder="crashed", lease_until=later + timedelta(seconds=30)
        )
        assert await tx.identities.holder_of(POOL[0]) == "newcomer"


@pytest.mark.asyncio
async def test_release_frees_the_identity(database: Database) -> None:
    now = datetime.now(UTC)
    name = await _claim(database, "leaving", now)
    assert name == POOL[0]
    async with database.transaction() as tx:
        assert await tx.identities.release(name, holder="leaving")
        assert not await tx.identities.release(name, holder="leaving")
    assert await _claim(database, "next", now) == POOL[0]
