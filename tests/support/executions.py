"""Finished executions made through the store, at a chosen time, and row counts.

For the retention tests of every layer (the store, the service, the
worker's purge, ``noteburst db purge``, the soak test): an execution that
ran and ended at a given time, with the rows a real one leaves (events, a
rendering, a webhook and its attempt), written with the store's own API
exactly as the services write them; and the row count of every table an
execution fills.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

from sqlalchemy import text

from noteburst.constants import LOCAL_USER
from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    Execution,
    ExecutionFailure,
    ExecutionQueue,
    ExecutionStatus,
)
from noteburst.domain.webhook import WebhookDelivery, WebhookState
from noteburst.storage import Database, NewEvent
from noteburst.storage.database import make_engine

__all__ = [
    "EMPTY_NOTEBOOK",
    "LEASE",
    "TABLES",
    "finished_run",
    "row_counts",
    "start",
]

EMPTY_NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
LEASE = timedelta(seconds=30)

TABLES = (
    "executions",
    "execution_events",
    "execution_renderings",
    "webhooks",
    "webhook_deliveries",
)
"""The executions table and every table of its children."""


async def start(database: Database, execution_id: str, *, now: datetime) -> Execution:
    """Claim an execution and append its RUNNING event, as a worker does."""
    async with database.transaction() as tx:
        claimed = await tx.claims.claim(
            execution_id, now=now, lease_until=now + LEASE, max_attempts=3
        )
        assert claimed is not None
        await tx.events.append(
            execution_id,
            kind=EventKind.RUNNING,
            status=ExecutionStatus.RUNNING,
            now=now,
        )
    return claimed


async def finished_run(
    database: Database,
    *,
    at: datetime,
    status: ExecutionStatus = ExecutionStatus.SUCCEEDED,
    execution_id: str | None = None,
    progress: int = 3,
    rendering: bool = True,
    webhook: WebhookState | None = None,
    cache_key: str | None = None,
    output: str = "",
) -> str:
    """Run one execution to its end at ``at``; return its id.

    It has QUEUED, RUNNING, ``progress`` cell events and FINISHED, and
    ``output`` (if any) as the text of each cell event's output and of the
    executed notebook's metadata; with ``rendering``, one stored HTML
    rendering; with ``webhook``, a webhook left in that state (with one
    recorded attempt unless pending).
    """
    started = at - timedelta(minutes=1)
    execution_id = execution_id or str(uuid.uuid4())
    async with database.transaction() as tx:
        await tx.executions.add(
            execution_id=execution_id,
            kernel_name="python3",
            timeout_seconds=60.0,
            source_text=json.dumps(EMPTY_NOTEBOOK),
            cells_total=max(progress, 1),
            now=started,
            queue=ExecutionQueue.INTERACTIVE,
            cache_key=cache_key,
            owner=LOCAL_USER,
        )
        if webhook is not None:
            await tx.webhooks.add(
                execution_id,
                url="https://hooks.example/x",
                secret_ciphertext="sealed",
                now=started,
            )
    claimed = await start(database, execution_id, now=started)
    error = (
        None
        if status is ExecutionStatus.SUCCEEDED
        else ExecutionFailure(code=ErrorCode.CELL_ERROR, message="boom")
    )
    outputs = [{"output_type": "stream", "name": "stdout", "text": output}]
    result = json.dumps({**EMPTY_NOTEBOOK, "metadata": {"ran": True, "log": output}})
    async with database.transaction() as tx:
        assert await tx.claims.finish(
            execution_id,
            status=status,
            result_text=result,
            error=error,
            now=at,
            attempt=claimed.attempts,
            progress=[
                NewEvent(
                    kind=EventKind.CELL_OUTPUTS if output else EventKind.CELL_FINISHED,
                    status=ExecutionStatus.RUNNING,
                    cells_done=i + 1,
                    created_at=at,
                    cell_index=i,
                    output_start=0 if output else None,
                    outputs=outputs if output else None,
                )
                for i in range(progress)
            ],
        )
        if rendering:
            await tx.renderings.put(execution_id, "html", f"<p>{output}</p>", now=at)
    if webhook is not None and webhook is not WebhookState.PENDING:
        async with database.transaction() as tx:
            taken = await tx.webhooks.claim(
                execution_id, now=at, lease_until=at + LEASE
            )
            assert taken is not None
            assert await tx.webhooks.record(
                execution_id,
                WebhookDelivery(
                    attempt=taken.attempt,
                    started_at=at,
                    status_code=200,
                    latency_seconds=0.01,
                    error=None,
                    succeeded=webhook is WebhookState.DELIVERED,
                ),
                state=webhook,
                next_attempt_at=None,
                now=at,
            )
    return execution_id


async def row_counts(database_url: str) -> dict[str, int]:
    """Count the rows of :data:`TABLES`, on a connection of its own."""
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            return {
                table: (
                    await connection.execute(text(f"SELECT count(*) FROM {table}"))
                ).scalar_one()
                for table in TABLES
            }
    finally:
        await engine.dispose()
