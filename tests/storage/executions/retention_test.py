"""Purging old finished executions, on SQLite and Postgres.

``tx.retention`` (:mod:`noteburst.storage.executions.retention`): only
finished executions older than the cutoff are candidates, oldest first in
keyset batches; a purge takes every child with them (events, renderings,
webhooks and their deliveries), takes a run's followers along, leaves an
execution whose webhook is still owed, and the cache no longer finds a
purged result.
"""

from __future__ import annotations

import ast
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event

from noteburst.domain.execution import (
    ExecutionQueue,
    ExecutionStatus,
)
from noteburst.domain.webhook import WebhookDelivery, WebhookState
from noteburst.storage import Database
from noteburst.storage.database import make_engine
from noteburst.storage.executions import PurgeCandidate, PurgedCounts
from noteburst.storage.executions import retention as retention_module
from tests.storage.executions._helpers import NOTEBOOK, T0, add, add_in
from tests.support.executions import LEASE, finished_run, row_counts, start

CUTOFF = T0 - timedelta(days=30)
OLD = CUTOFF - timedelta(days=10)
YOUNG = CUTOFF + timedelta(days=1)
RESULT = json.dumps({**NOTEBOOK, "metadata": {"ran": True}})
KEY = "cd" * 32


async def candidates(
    database: Database,
    *,
    limit: int = 100,
    after: PurgeCandidate | None = None,
    cutoff: datetime = CUTOFF,
) -> list[PurgeCandidate]:
    async with database.transaction() as tx:
        return await tx.retention.candidates(
            finished_before=cutoff, limit=limit, after=after
        )


async def purge_all(database: Database, *, cutoff: datetime = CUTOFF) -> PurgedCounts:
    """Purge in batches of 100, each in its own transaction."""
    total = PurgedCounts()
    after: PurgeCandidate | None = None
    while True:
        async with database.transaction() as tx:
            batch = await tx.retention.candidates(
                finished_before=cutoff, limit=100, after=after
            )
            if not batch:
                return total
            total += await tx.retention.purge(
                [c.execution_id for c in batch], finished_before=cutoff
            )
        after = batch[-1]


async def present(database: Database, execution_id: str) -> bool:
    async with database.transaction() as tx:
        return await tx.executions.get(execution_id) is not None


@pytest.mark.asyncio
async def test_old_finished_executions_go_with_every_child(
    database: Database, database_url: str
) -> None:
    old = [
        await finished_run(database, at=OLD, webhook=WebhookState.DELIVERED),
        await finished_run(
            database,
            at=OLD + timedelta(hours=1),
            status=ExecutionStatus.FAILED,
            webhook=WebhookState.FAILED,
        ),
    ]
    cancelled = await add(database, now=OLD)
    async with database.transaction() as tx:
        assert await tx.cancels.request(cancelled, now=OLD)
    old.append(cancelled)
    young = await finished_run(database, at=YOUNG, webhook=WebhookState.DELIVERED)
    # Unfinished ones stay whatever their age: a queued one never claimed,
    # and a running one whose worker is long gone (the recovery sweep's).
    queued = await add(database, now=OLD - timedelta(days=300))
    running = await add(database, now=OLD - timedelta(days=300))
    await start(database, running, now=OLD - timedelta(days=300))
    before = await row_counts(database_url)
    assert before["webhook_deliveries"] == 3

    removed = await purge_all(database)

    # Two runs of 6 events (QUEUED, RUNNING, 3 cells, FINISHED) with one
    # rendering each, and a cancelled one of 2 events (QUEUED, FINISHED).
    assert removed == PurgedCounts(executions=3, events=6 + 6 + 2, renderings=2)
    for execution_id in old:
        assert not await present(database, execution_id)
    for execution_id in (young, queued, running):
        assert await present(database, execution_id)
    after = await row_counts(database_url)
    assert after == {
        "executions": 3,
        "execution_events": 6 + 1 + 2,  # young's, queued's, running's
        "execution_renderings": 1,
        "webhooks": 1,
        "webhook_deliveries": 1,
    }
    async with database.transaction() as tx:
        assert [e.sequence for e in await tx.events.after(young, 0)] == list(
            range(1, 7)
        )
        assert await tx.renderings.get(young, "html") is not None
        assert (await tx.webhooks.deliveries(young))[0].status_code == 200
    assert await purge_all(database) == PurgedCounts()


@pytest.mark.asyncio
async def test_the_cutoff_is_on_the_finish_not_the_submission(
    database: Database,
) -> None:
    # Submitted long before the cutoff, finished just after it: kept.
    async with database.transaction() as tx:
        slow = await add_in(tx, now=OLD)
    await start(database, slow, now=OLD)
    async with database.transaction() as tx:
        assert await tx.claims.finish(
            slow,
            status=ExecutionStatus.SUCCEEDED,
            result_text=RESULT,
            error=None,
            now=CUTOFF + timedelta(seconds=1),
        )
    exact = await finished_run(database, at=CUTOFF)
    assert await candidates(database) == []
    assert await candidates(database, cutoff=CUTOFF + timedelta(seconds=2)) == [
        PurgeCandidate(exact, CUTOFF),
        PurgeCandidate(slow, CUTOFF + timedelta(seconds=1)),
    ]


@pytest.mark.asyncio
async def test_batches_continue_after_the_last_candidate(database: Database) -> None:
    # Two share a finish time: the id breaks the tie, and neither is
    # skipped or read twice across a batch boundary.
    times = [OLD, OLD + timedelta(seconds=1), OLD + timedelta(seconds=1)]
    times += [OLD + timedelta(seconds=2), OLD + timedelta(seconds=3)]
    ids = [await finished_run(database, at=at, rendering=False) for at in times]
    expected = sorted(zip(times, ids, strict=True))
    seen: list[PurgeCandidate] = []
    sizes: list[int] = []
    after: PurgeCandidate | None = None
    while batch := await candidates(database, limit=2, after=after):
        sizes.append(len(batch))
        seen.extend(batch)
        after = batch[-1]
    assert sizes == [2, 2, 1]
    assert [(c.finished_at, c.execution_id) for c in seen] == expected
    # Nothing was deleted by looking.
    assert all([await present(database, i) for i in ids])


@pytest.mark.asyncio
async def test_a_count_is_what_a_purge_then_deletes(
    database: Database, database_url: str
) -> None:
    ids = [
        await finished_run(database, at=OLD, progress=i, rendering=i % 2 == 0)
        for i in range(4)
    ]
    async with database.transaction() as tx:
        counted = await tx.retention.count(ids)
    assert counted == PurgedCounts(executions=4, events=3 + 4 + 5 + 6, renderings=2)
    assert (await row_counts(database_url))["executions"] == 4
    assert await purge_all(database) == counted


@pytest.mark.asyncio
async def test_an_owed_webhook_keeps_its_execution_until_it_is_settled(
    database: Database,
) -> None:
    owed = await finished_run(database, at=OLD, webhook=WebhookState.PENDING)
    assert await candidates(database) == []
    assert await purge_all(database) == PurgedCounts()
    assert await present(database, owed)
    async with database.transaction() as tx:
        taken = await tx.webhooks.claim(owed, now=T0, lease_until=T0 + LEASE)
        assert taken is not None
        assert await tx.webhooks.record(
            owed,
            WebhookDelivery(
                attempt=taken.attempt,
                started_at=T0,
                status_code=204,
                latency_seconds=0.01,
                error=None,
                succeeded=True,
            ),
            state=WebhookState.DELIVERED,
            next_attempt_at=None,
            now=T0,
        )
    assert await candidates(database) == [PurgeCandidate(owed, OLD)]


@pytest.mark.asyncio
async def test_a_run_takes_its_followers_along(database: Database) -> None:
    # The run sorts first, its follower last: a batch of one would
    # otherwise leave the follower pointing at a run whose events are gone.
    leader = "00000000-0000-4000-8000-000000000000"
    follower = "ffffffff-ffff-4fff-8fff-ffffffffffff"
    async with database.transaction() as tx:
        await add_in(tx, now=OLD, execution_id=leader, cache_key=KEY)
        await tx.cache.add_follower(
            execution_id=follower,
            leader_id=leader,
            kernel_name="python3",
            timeout_seconds=60.0,
            source_text=json.dumps(NOTEBOOK),
            cells_total=3,
            queue=ExecutionQueue.INTERACTIVE,
            now=OLD,
        )
    await start(database, leader, now=OLD)
    async with database.transaction() as tx:
        assert await tx.claims.finish(
            leader,
            status=ExecutionStatus.SUCCEEDED,
            result_text=RESULT,
            error=None,
            now=OLD,
        )
        ended = await tx.executions.get(follower)
        assert ended is not None
        assert ended.status is ExecutionStatus.SUCCEEDED
    async with database.transaction() as tx:
        batch = await tx.retention.candidates(finished_before=CUTOFF, limit=1)
        assert [c.execution_id for c in batch] == [leader]
        removed = await tx.retention.purge([leader], finished_before=CUTOFF)
    assert removed.executions == 2
    assert not await present(database, follower)


@pytest.mark.asyncio
async def test_the_cache_no_longer_finds_a_purged_result(database: Database) -> None:
    old = await finished_run(database, at=OLD, cache_key=KEY)
    async with database.transaction() as tx:
        # Any age accepted: the old result is the key's cached result...
        assert await tx.cache.find_cached(KEY, finished_after=None) == old
    await purge_all(database)
    async with database.transaction() as tx:
        # ...until it is purged: a submission then runs the notebook again.
        assert await tx.cache.find_cached(KEY, finished_after=None) is None
    young = await finished_run(database, at=YOUNG, cache_key=KEY)
    await purge_all(database)
    async with database.transaction() as tx:
        assert await tx.cache.find_cached(KEY, finished_after=None) == young


@pytest.mark.asyncio
async def test_a_cache_hit_whose_source_was_purged_copies_nothing(
    database: Database,
) -> None:
    source = await finished_run(database, at=OLD, cache_key=KEY)
    await purge_all(database)
    async with database.transaction() as tx:
        hit = await tx.cache.add_cache_hit(
            execution_id=str(uuid.uuid4()),
            cached_from=source,
            timeout_seconds=60.0,
            source_text=json.dumps(NOTEBOOK),
            queue=ExecutionQueue.INTERACTIVE,
            now=T0,
        )
    assert hit is None


@pytest.mark.asyncio
async def test_the_purge_reads_the_head_of_its_index(database_url: str) -> None:
    # The candidates' statement as the driver receives it, explained on
    # the same database: a range of ix_executions_finished_at_id read in
    # order, with no sort of every finished execution.
    engine = make_engine(database_url)
    caught: list[tuple[str, Any]] = []

    def catch(
        _conn: Connection,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        _many: bool,
    ) -> None:
        if "ORDER BY executions.finished_at" in statement:
            caught.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", catch)
    database = Database(engine)
    try:
        for i in range(40):
            await finished_run(
                database,
                at=OLD + timedelta(days=i),
                progress=0,
                rendering=False,
                webhook=WebhookState.DELIVERED if i % 4 == 0 else None,
            )
        first = await candidates(database, limit=5)
        await candidates(database, limit=5, after=first[-1])
        statement, parameters = caught[-1]
        async with engine.connect() as connection:
            transaction = await connection.begin()
            if database.is_postgres:
                await connection.exec_driver_sql("ANALYZE executions")
                await connection.exec_driver_sql("ANALYZE webhooks")
                # Off, so that on tables this small a scan of everything,
                # or of a bitmap, then a sort cannot win on cost: what is
                # left shows whether the index serves the order.
                await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
                await connection.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
                plan = (
                    await connection.exec_driver_sql(
                        "EXPLAIN (FORMAT JSON) " + statement, parameters
                    )
                ).scalar_one()
                nodes = list(plan_nodes(plan[0]["Plan"]))
                shape = [(n["Node Type"], n.get("Index Name")) for n in nodes]
                assert ("Index Scan", INDEX) in shape, shape
                assert "Sort" not in [kind for kind, _ in shape], shape
            else:
                rows = (
                    await connection.exec_driver_sql(
                        "EXPLAIN QUERY PLAN " + statement, parameters
                    )
                ).all()
                details = [row._mapping["detail"] for row in rows]
                assert [d for d in details if f"USING INDEX {INDEX}" in d], details
                assert not [d for d in details if "TEMP B-TREE" in d], details
            await transaction.rollback()
    finally:
        await database.aclose()


INDEX = "ix_executions_finished_at_id"


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a PostgreSQL JSON plan, depth first."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def test_the_retention_part_imports_only_the_shared_base() -> None:
    # The import-linter contract of the parts' independence lists the
    # parts in pyproject.toml; this keeps the newest one to the rule too.
    tree = ast.parse(Path(retention_module.__file__).read_text(encoding="utf-8"))
    relative = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level > 0
    }
    absolute = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
    }
    assert relative == {"_base"}
    assert not [m for m in absolute if m.startswith("noteburst.storage")]
