"""Soak: executions keep arriving, the purge keeps the database's size bounded.

Day after simulated day, executions run to their end through the store's
own API (events with outputs, a rendering, now and then a webhook and its
attempt), each finishing on that day of a clock the test moves, and the
retention purge runs at the end of the day, in small batches.  The rows
kept must be exactly the retention window's, and the space the tables take
must stop growing once the first executions age out: SQLite's page count
(pages freed by the purge are reused, so the file stops growing without a
VACUUM), PostgreSQL's total size of the tables and their indexes and TOAST
after a plain ``VACUUM`` (what autovacuum does; ``VACUUM FULL`` would
shrink it, but space only needs to be reused).  Without the purge every
measure grows with the number of days.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import text

from noteburst.config import RetentionSettings
from noteburst.domain.webhook import WebhookState
from noteburst.services.retention import RetentionService
from noteburst.storage import Database
from noteburst.storage.database import make_engine
from noteburst.storage.events import asyncpg_dsn
from tests.support.executions import TABLES, finished_run, row_counts

DAYS = 30
PER_DAY = 12
RETENTION_DAYS = 5
CELLS = 4
OUTPUT_BYTES = 1000
"""Random bytes in each output, 2,000 characters as hex: the events, result
and rendering are kilobytes each, and compress to no less (PostgreSQL
compresses long values, and would store a repeated character in a few
bytes)."""
START = datetime(2032, 1, 1, tzinfo=UTC)


async def database_size(database_url: str, database: Database) -> int:
    """Bytes the executions' tables take, as the database would reuse them."""
    if database.is_postgres:
        connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
        try:
            await connection.execute(f"VACUUM {', '.join(TABLES)}", timeout=60)
            size: int = await connection.fetchval(
                "SELECT sum(pg_total_relation_size(t::regclass))::bigint"
                " FROM unnest($1::text[]) AS t",
                list(TABLES),
            )
            return size
        finally:
            await connection.close(timeout=10)
    engine = make_engine(database_url)
    try:
        async with engine.connect() as sqlite:
            pages = (await sqlite.execute(text("PRAGMA page_count"))).scalar_one()
            page = (await sqlite.execute(text("PRAGMA page_size"))).scalar_one()
            return int(pages) * int(page)
    finally:
        await engine.dispose()


@pytest.mark.soak
@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_the_database_stays_bounded_while_executions_keep_arriving(
    database: Database, database_url: str
) -> None:
    retention = RetentionService(
        database=database,
        settings=RetentionSettings(days=RETENTION_DAYS, batch_size=5),
    )
    sizes: list[int] = []
    longest = 0.0
    outputs = random.Random(18)
    for day in range(DAYS):
        for i in range(PER_DAY):
            await finished_run(
                database,
                at=START + timedelta(days=day, minutes=i),
                progress=CELLS,
                output=outputs.randbytes(OUTPUT_BYTES).hex(),
                webhook=WebhookState.DELIVERED if i % 3 == 0 else None,
            )
        report = await retention.purge(now=START + timedelta(days=day, hours=1))
        longest = max(longest, report.longest_batch_seconds)
        # The days kept: the last RETENTION_DAYS, this one included.
        kept = PER_DAY * min(day + 1, RETENTION_DAYS)
        assert await row_counts(database_url) == {
            "executions": kept,
            # QUEUED, RUNNING, one per cell, FINISHED.
            "execution_events": kept * (CELLS + 3),
            "execution_renderings": kept,
            "webhooks": kept // 3,
            "webhook_deliveries": kept // 3,
        }, day
        if day >= RETENTION_DAYS:
            assert report.removed.executions == PER_DAY
            assert report.batches == -(-PER_DAY // 5)
        sizes.append(await database_size(database_url, database))
    # Once the first days age out, the space taken stops growing: the last
    # days take no more than the days just after the window first filled
    # (with a margin for pages a table keeps half used); 30 days without a
    # purge would take six times the window's space.
    settled = max(sizes[RETENTION_DAYS : 2 * RETENTION_DAYS])
    print(  # the figures, seen with -s
        f"\n{database.dialect_name}: bytes per day {sizes}; "
        f"longest batch {longest * 1000:.1f} ms"
    )
    assert max(sizes[2 * RETENTION_DAYS :]) <= settled * 1.25, sizes
    assert sizes[-1] < sizes[RETENTION_DAYS - 1] * 2, sizes
