"""What the execution store's tests share: a fixed clock, adding and claiming.

Each helper but :func:`add_in` runs its own transaction on the
``database`` fixture's :class:`~noteburst.storage.Database`, so a test
reads as the sequence of transactions a service would run; ``add_in``
adds within a transaction the test holds open.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Concatenate, ParamSpec, TypeVar

from noteburst.constants import LOCAL_USER
from noteburst.domain.execution import Execution, ExecutionQueue
from noteburst.storage import Database, UnitOfWork

__all__ = [
    "LEASE",
    "NOTEBOOK",
    "T0",
    "add",
    "add_follower",
    "add_in",
    "claim",
    "get",
]

T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
"""The tests' "now" (with microseconds, which must survive a round trip)."""
LEASE = timedelta(seconds=30)
NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

P = ParamSpec("P")
R = TypeVar("R")


async def add_in(
    tx: UnitOfWork,
    queue: ExecutionQueue = ExecutionQueue.INTERACTIVE,
    *,
    now: datetime = T0,
    execution_id: str | None = None,
    cells_total: int = 3,
    cache_key: str | None = None,
    owner: str = LOCAL_USER,
) -> str:
    """Add a queued execution of :data:`NOTEBOOK` in ``tx``; return its id."""
    execution_id = execution_id or str(uuid.uuid4())
    await tx.executions.add(
        execution_id=execution_id,
        kernel_name="python3",
        timeout_seconds=60.0,
        source_text=json.dumps(NOTEBOOK),
        cells_total=cells_total,
        now=now,
        queue=queue,
        cache_key=cache_key,
        owner=owner,
    )
    return execution_id


def _in_own_transaction(
    step: Callable[Concatenate[UnitOfWork, P], Awaitable[R]],
) -> Callable[Concatenate[Database, P], Awaitable[R]]:
    """Make ``step(tx, ...)`` into ``step(database, ...)`` with a transaction."""

    async def run(database: Database, /, *args: P.args, **kwargs: P.kwargs) -> R:
        async with database.transaction() as tx:
            return await step(tx, *args, **kwargs)

    return run


add = _in_own_transaction(add_in)
"""Add a queued execution of :data:`NOTEBOOK`, in its own transaction."""


async def add_follower(
    database: Database,
    leader_id: str,
    *,
    queue: ExecutionQueue = ExecutionQueue.INTERACTIVE,
    now: datetime = T0,
) -> str:
    """Add an execution sharing the run of ``leader_id``; return its id."""
    execution_id = str(uuid.uuid4())
    async with database.transaction() as tx:
        await tx.cache.add_follower(
            execution_id=execution_id,
            leader_id=leader_id,
            kernel_name="python3",
            timeout_seconds=60.0,
            source_text=json.dumps(NOTEBOOK),
            cells_total=2,
            queue=queue,
            now=now,
        )
    return execution_id


async def claim(
    database: Database, execution_id: str, *, now: datetime = T0, max_attempts: int = 3
) -> Execution | None:
    """Claim one execution with a :data:`LEASE` from ``now``."""
    async with database.transaction() as tx:
        return await tx.claims.claim(
            execution_id, now=now, lease_until=now + LEASE, max_attempts=max_attempts
        )


async def get(database: Database, execution_id: str) -> Execution:
    """Read an execution that must exist (without its notebook)."""
    async with database.transaction() as tx:
        execution = await tx.executions.get(execution_id)
    assert execution is not None
    return execution
