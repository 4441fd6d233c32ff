"""Time of one claim against the length of the queue (issue 16, "Long queues").

Run with ``uv run python bench/claim.py [--quick] [--sizes 10,1000] [--claims N]``.

A worker's claim (:meth:`noteburst.storage.executions.claims.ClaimStore.
claim_next`) takes the first queued execution in claim order.  Without an
index serving that order the database reads and sorts the whole queue for
every claim, so a long queue (documentation CI submitting thousands of
batch notebooks) slows every claim, the interactive ones included.  This
script fills a throwaway database with N queued executions and times the
claim at each N, on SQLite (the embedded default) and PostgreSQL.

The queue is filled with one bulk insert per size, straight into the
tables through the storage layer's engine (``make_engine``): submitting
100,000 executions one transaction at a time would take minutes and
measure nothing more.  The rows look like a long queue: 9 in 10 batch,
the rest interactive, creation times shuffled against insertion order,
1 in 100 a retry in backoff (``not_before`` in the future) and 1 in 100 a
follower of a shared run; each has its ``QUEUED`` event.  On PostgreSQL
the table is analysed after the fill, as autovacuum would have done.

Each claim runs as the runner runs it: ``claim_next`` (with ``woken_for``,
the message's execution) in its own transaction.  Two times are taken:
``claim_next`` alone (its two statements: what the queue's length can
change) and the whole transaction, from its start to its commit (on a
shared machine PostgreSQL's commit, a WAL flush, varies far more than the
statements).  The medians of ``--claims`` claims are printed; after each
claim (untimed) the claimed execution is put back in the queue, so every
claim at size N sees the same N queued executions.
``--explain`` also prints the claim's plan at each size: ``EXPLAIN
(ANALYZE, BUFFERS)`` on PostgreSQL, in a transaction rolled back, and
``EXPLAIN QUERY PLAN`` on SQLite.  The rows get a ``queue_rank`` only if
the schema has one, so the script also measures the tree before it (the
claim order's index, migration ``a8f5c98f5323``).

Needs PostgreSQL on ``127.0.0.1:5432`` (user ``postgres``, trust auth;
``--postgres URL`` to change): a database ``nb_bench_<random>`` is created
and dropped at the end.  Nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
from sqlalchemy import Table, delete, event, func, insert, select, update
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from noteburst.dbschema import ExecutionEventRow, ExecutionRow
from noteburst.domain.execution import ExecutionQueue, ExecutionStatus
from noteburst.storage.database import Database, make_engine
from noteburst.storage.events import asyncpg_dsn

SIZES = (10, 1_000, 10_000, 100_000)
QUICK_SIZES = (10, 1_000)
EXECUTIONS = cast(Table, ExecutionRow.__table__)
EVENTS = cast(Table, ExecutionEventRow.__table__)
T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(minutes=5)
MAX_ATTEMPTS = 3
BATCH = 5_000
"""Rows per ``INSERT`` of the fill."""


@dataclass(frozen=True, slots=True)
class Figure:
    backend: str
    size: int
    claim_ms: float
    """Median of ``claim_next`` alone (its two statements)."""
    transaction_ms: float
    """Median of the whole transaction (begin, ``claim_next``, commit)."""
    fill_s: float


def _row(
    rng: random.Random, execution_id: str, leaders: Sequence[str]
) -> dict[str, Any]:
    kind = rng.random()
    queue = ExecutionQueue.INTERACTIVE if rng.random() < 0.1 else ExecutionQueue.BATCH
    rank = {"queue_rank": queue.rank} if "queue_rank" in EXECUTIONS.c else {}
    return {
        **rank,
        "id": execution_id,
        "owner": f"user{rng.randrange(20)}",
        "status": ExecutionStatus.QUEUED.value,
        "kernel_name": "python3",
        "timeout_seconds": 60.0,
        "source_notebook": '{"cells": [], "metadata": {}, "nbformat": 4, '
        '"nbformat_minor": 5}',
        "result_notebook": None,
        "cells_total": 3,
        "cells_done": 0,
        "error": None,
        "attempts": 0,
        "last_sequence": 1,
        "created_at": T0 + timedelta(milliseconds=rng.randrange(10**9)),
        "queue": queue.value,
        # A retry in backoff, and a follower of a shared run: both skipped.
        "not_before": T0 + timedelta(days=365) if kind < 0.01 else None,
        "shares_run_of": leaders[0] if kind > 0.99 and leaders else None,
    }


async def fill(engine: AsyncEngine, count: int, rng: random.Random) -> None:
    """Insert ``count`` queued executions (and their ``QUEUED`` events)."""
    leaders: list[str] = []
    for start in range(0, count, BATCH):
        rows = []
        for _ in range(min(BATCH, count - start)):
            rows.append(_row(rng, str(uuid.uuid4()), leaders))
            if not leaders:
                leaders.append(rows[-1]["id"])
        events = [
            {
                "execution_id": row["id"],
                "sequence": 1,
                "kind": "queued",
                "status": ExecutionStatus.QUEUED.value,
                "cell_index": None,
                "cells_done": 0,
                "message": None,
                "output_start": None,
                "outputs": None,
                "created_at": row["created_at"],
            }
            for row in rows
        ]
        async with engine.begin() as connection:
            await connection.execute(insert(EXECUTIONS), rows)
            await connection.execute(insert(EVENTS), events)
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.exec_driver_sql("ANALYZE executions")
            await connection.exec_driver_sql("ANALYZE execution_events")


async def requeue_claimed(engine: AsyncEngine) -> None:
    """Put the executions the benchmark claimed back in the queue."""
    columns = EXECUTIONS.c
    async with engine.begin() as connection:
        await connection.execute(
            delete(EVENTS).where(
                EVENTS.c.sequence > 1,
                EVENTS.c.execution_id.in_(
                    select(columns.id).where(
                        columns.status == ExecutionStatus.RUNNING.value
                    )
                ),
            )
        )
        await connection.execute(
            update(EXECUTIONS)
            .where(columns.status == ExecutionStatus.RUNNING.value)
            .values(
                status=ExecutionStatus.QUEUED.value,
                attempts=0,
                started_at=None,
                lease_expires_at=None,
                last_sequence=1,
            )
        )


async def queued_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count())
            .select_from(EXECUTIONS)
            .where(EXECUTIONS.c.status == ExecutionStatus.QUEUED.value)
        )
    return int(count or 0)


async def newest_id(engine: AsyncEngine) -> str:
    """The id a worker's message would name: the newest submission's."""
    async with engine.connect() as connection:
        found = await connection.scalar(
            select(EXECUTIONS.c.id)
            .where(EXECUTIONS.c.status == ExecutionStatus.QUEUED.value)
            .order_by(EXECUTIONS.c.created_at.desc())
            .limit(1)
        )
    assert found is not None
    return str(found)


async def time_claims(
    database: Database, engine: AsyncEngine, claims: int, woken_for: str
) -> list[tuple[float, float]]:
    """Claim ``claims`` times, each in its own transaction.

    Returns, for each claim, the seconds ``claim_next`` took (its two
    statements) and those of the whole transaction (with begin and commit).
    The claimed execution is put back in the queue after each claim
    (untimed), so every claim sees the same queue.
    """
    seconds = []
    for _ in range(claims):
        now = T0 + timedelta(days=1)
        start = time.perf_counter()
        async with database.transaction() as tx:
            before = time.perf_counter()
            claimed = await tx.claims.claim_next(
                now=now,
                lease_until=now + LEASE,
                max_attempts=MAX_ATTEMPTS,
                woken_for=woken_for,
            )
            statements = time.perf_counter() - before
        seconds.append((statements, time.perf_counter() - start))
        assert claimed is not None
        await requeue_claimed(engine)
    return seconds


class StatementCatcher:
    """Remembers the claim statement as sent to the driver, to explain it."""

    def __init__(self) -> None:
        self.statement: str | None = None
        self.parameters: Any = None

    def __call__(
        self,
        _connection: SyncConnection,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> None:
        if "FROM executions AS queued" in statement:
            self.statement, self.parameters = statement, parameters


async def explain(engine: AsyncEngine, catcher: StatementCatcher) -> list[str]:
    """The plan of the last claim statement the catcher saw."""
    assert catcher.statement is not None
    postgres = engine.dialect.name == "postgresql"
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if postgres else "EXPLAIN QUERY PLAN "
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            result = await connection.exec_driver_sql(
                prefix + catcher.statement, catcher.parameters
            )
            rows = result.all()
        finally:
            await transaction.rollback()
    if postgres:
        return [row[0] for row in rows]
    return [f"{row._mapping['parent']:>3} {row._mapping['detail']}" for row in rows]


async def run_backend(
    backend: str, url: str, sizes: Sequence[int], claims: int, *, show_plans: bool
) -> list[Figure]:
    engine = make_engine(url)
    catcher = StatementCatcher()
    event.listen(engine.sync_engine, "before_cursor_execute", catcher)
    database = Database(engine)
    figures = []
    rng = random.Random(16)
    try:
        await database.upgrade()
        for size in sorted(sizes):
            start = time.perf_counter()
            await fill(engine, size - await queued_count(engine), rng)
            fill_seconds = time.perf_counter() - start
            woken_for = await newest_id(engine)
            # One claim not counted: the statement's first use is compiled.
            await time_claims(database, engine, 1, woken_for)
            seconds = await time_claims(database, engine, claims, woken_for)
            claim_ms = statistics.median(c * 1000 for c, _ in seconds)
            transaction_ms = statistics.median(t * 1000 for _, t in seconds)
            figure = Figure(backend, size, claim_ms, transaction_ms, fill_seconds)
            figures.append(figure)
            print(
                f"{backend:<10} {size:>8,}  claim_next {claim_ms:7.2f} ms,"
                f" transaction {transaction_ms:7.2f} ms"
                f" (medians; filled in {fill_seconds:.1f} s)",
                flush=True,
            )
            if show_plans:
                for line in await explain(engine, catcher):
                    print(f"    {line}")
    finally:
        await database.aclose()
    return figures


@contextlib.asynccontextmanager
async def throwaway_postgres(admin_url: str) -> AsyncIterator[str]:
    name = f"nb_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = admin_url.rsplit("/", 1)[0] + f"/{name}"
            yield url
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def print_table(figures: Sequence[Figure]) -> None:
    backends = list(dict.fromkeys(f.backend for f in figures))
    sizes = sorted({f.size for f in figures})
    by_key = {(f.backend, f.size): f for f in figures}
    print()
    print("median ms per claim: claim_next alone / whole transaction (with commit)")
    print(f"{'queued':>10} " + " ".join(f"{b:>20}" for b in backends))
    for size in sizes:
        cells = []
        for backend in backends:
            figure = by_key.get((backend, size))
            cells.append(
                f"{figure.claim_ms:9.2f} / {figure.transaction_ms:8.2f}"
                if figure
                else f"{'':>20}"
            )
        print(f"{size:>10,} " + " ".join(cells))


async def main(arguments: argparse.Namespace) -> None:
    sizes = (
        tuple(int(s) for s in arguments.sizes.split(","))
        if arguments.sizes
        else QUICK_SIZES
        if arguments.quick
        else SIZES
    )
    figures: list[Figure] = []
    if not arguments.skip_sqlite:
        with tempfile.TemporaryDirectory(prefix="noteburst-bench-") as folder:
            url = f"sqlite+aiosqlite:///{Path(folder) / 'noteburst.sqlite3'}"
            figures += await run_backend(
                "sqlite", url, sizes, arguments.claims, show_plans=arguments.explain
            )
    if not arguments.skip_postgres:
        async with throwaway_postgres(arguments.postgres) as url:
            figures += await run_backend(
                "postgres", url, sizes, arguments.claims, show_plans=arguments.explain
            )
    print_table(figures)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--sizes",
        help="comma-separated queue lengths (default 10,1000,10000,100000)",
    )
    parser.add_argument("--quick", action="store_true", help="sizes 10 and 1000")
    parser.add_argument(
        "--claims", type=int, default=21, help="claims timed per size (default 21)"
    )
    parser.add_argument("--explain", action="store_true", help="print the plans")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--postgres",
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
        help="SQLAlchemy URL of an administrative PostgreSQL database",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_arguments()))
