"""RetentionService: the purge in batches, each its own transaction, on both databases.

What a purge deletes is the store's (tests/storage/executions/
retention_test.py); here: the cutoff comes from ``retention.days`` or an
explicit age, 0 days keeps everything, batches of N over M executions are
ceil(M / N) transactions, each committed before the next starts, and a
dry run counts exactly what a purge then deletes, deleting nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from noteburst.config import RetentionSettings
from noteburst.domain.execution import ExecutionStatus
from noteburst.services.retention import RetentionService
from noteburst.storage import Database, UnitOfWork
from noteburst.storage.database import make_engine
from noteburst.storage.executions import PurgedCounts
from tests.support.executions import finished_run, row_counts

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


def service(
    database: Database, *, days: float = 30, batch_size: int = 500
) -> RetentionService:
    return RetentionService(
        database=database,
        settings=RetentionSettings(days=days, batch_size=batch_size),
        pause_seconds=0,
    )


@pytest.mark.asyncio
async def test_the_configured_age_decides_what_goes(
    database: Database, database_url: str
) -> None:
    old = await finished_run(database, at=NOW - timedelta(days=31))
    young = await finished_run(database, at=NOW - timedelta(days=29))
    report = await service(database).purge(now=NOW)
    assert report.cutoff == NOW - timedelta(days=30)
    assert report.removed == PurgedCounts(executions=1, events=6, renderings=1)
    assert not report.dry_run
    async with database.transaction() as tx:
        assert await tx.executions.get(old) is None
        assert await tx.executions.get(young) is not None
    # An explicit age overrides the configured one.
    report = await service(database).purge(older_than=timedelta(days=1), now=NOW)
    assert report.removed.executions == 1
    assert (await row_counts(database_url))["executions"] == 0


@pytest.mark.asyncio
async def test_zero_days_keeps_everything(
    database: Database, database_url: str
) -> None:
    await finished_run(database, at=NOW - timedelta(days=3650))
    retention = service(database, days=0)
    assert not retention.enabled
    report = await retention.purge(now=NOW)
    assert report.cutoff is None
    assert report.removed == PurgedCounts()
    assert report.batches == 0
    assert (await row_counts(database_url))["executions"] == 1


@pytest.mark.asyncio
async def test_an_age_beyond_the_calendar_purges_nothing(database: Database) -> None:
    await finished_run(database, at=NOW - timedelta(days=3650))
    report = await service(database, days=999_999_999).purge(now=NOW)
    assert report.cutoff is None
    assert report.removed == PurgedCounts()


@pytest.mark.asyncio
async def test_bad_arguments_are_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="older_than"):
        await service(database).purge(older_than=timedelta(0))
    with pytest.raises(ValueError, match="batch_size"):
        await service(database).purge(batch_size=0)


class WatchedDatabase(Database):
    """A Database that counts the executions left as each transaction begins.

    Counted on a connection of its own, so what it sees is what the
    previous transactions committed.
    """

    def __init__(self, url: str) -> None:
        super().__init__(make_engine(url))
        self.watched_url = url
        self.seen: list[int] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        self.seen.append((await row_counts(self.watched_url))["executions"])
        async with super().transaction() as tx:
            yield tx


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("old", "seen"),
    [
        # 2, 2, then 1: fewer than a batch says that none are left.
        (5, [6, 4, 2]),
        # 2, 2, then a transaction that finds none.
        (4, [5, 3, 1]),
        (1, [2]),
        (0, [1]),
    ],
)
async def test_each_batch_is_a_transaction_committed_before_the_next(
    database_url: str, old: int, seen: list[int]
) -> None:
    # Batches of 2; one young execution stays throughout.  Each
    # transaction starts with the previous batch gone for every other
    # connection: committed, with nothing held across batches.
    database = WatchedDatabase(database_url)
    try:
        for i in range(old):
            await finished_run(
                database,
                at=NOW - timedelta(days=40, minutes=i),
                status=ExecutionStatus.FAILED if i % 2 else ExecutionStatus.SUCCEEDED,
            )
        young = await finished_run(database, at=NOW - timedelta(days=1))
        database.seen.clear()
        report = await service(database, batch_size=2).purge(now=NOW)
        assert database.seen == seen
        assert report.batches == -(-old // 2)
        assert report.removed == PurgedCounts(
            executions=old, events=6 * old, renderings=old
        )
        assert report.longest_batch_seconds >= 0
        assert (await row_counts(database_url))["executions"] == 1
        async with database.transaction() as tx:
            assert await tx.executions.get(young) is not None
    finally:
        await database.aclose()


@pytest.mark.asyncio
async def test_a_dry_run_counts_and_deletes_nothing(
    database: Database, database_url: str
) -> None:
    for i in range(5):
        await finished_run(
            database,
            at=NOW - timedelta(days=40, minutes=i),
            progress=i,
            rendering=i % 2 == 0,
        )
    await finished_run(database, at=NOW - timedelta(days=1))
    before = await row_counts(database_url)
    dry = await service(database, batch_size=2).purge(now=NOW, dry_run=True)
    assert dry.dry_run
    assert dry.batches == 3
    assert dry.removed == PurgedCounts(
        executions=5, events=3 * 5 + (0 + 1 + 2 + 3 + 4), renderings=3
    )
    assert await row_counts(database_url) == before
    real = await service(database, batch_size=2).purge(now=NOW)
    assert real.removed == dry.removed
