"""The worker's retention purge: at start, then on its own interval.

A real worker (``start_worker``, as ``noteburst worker`` and the embedded
default start it) on each database: executions that finished longer ago
than ``retention_days`` are gone soon after it starts, without a message
asking for it, and ones that age past the cutoff later go at a later
round; young ones stay.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from noteburst.factory import create_broker
from noteburst.storage import Database
from noteburst.storage.events import LocalEventBus
from noteburst.worker import process
from noteburst.worker.process import start_worker
from tests.support.app import make_config
from tests.support.executions import finished_run
from tests.support.waiting import wait_until


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_the_worker_purges_at_start_and_then_periodically(
    tmp_path: Path,
    jupyter_server: Any,
    database: Database,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rounds a fifth of a second apart (300 s in production), so that the
    # second round is seen within the test.
    monkeypatch.setattr(process, "PURGE_INTERVAL_SECONDS", 0.2)
    config = make_config(
        tmp_path,
        jupyter_server,
        database_url=database_url,
        warm_kernels={},
        retention_days=30,
    )
    now = datetime.now(UTC)
    old = await finished_run(database, at=now - timedelta(days=31))
    young = await finished_run(database, at=now - timedelta(days=29))

    async def gone(execution_id: str) -> bool:
        async with database.transaction() as tx:
            return await tx.executions.get(execution_id) is None

    broker = create_broker(config)
    worker = await asyncio.to_thread(
        start_worker, config, broker, bus=LocalEventBus(), embedded=False
    )
    try:
        await wait_until(lambda: gone(old), "the first purge", timeout=60)
        # Finished 31 days ago but written now, after the first round: a
        # later round finds it.
        later = await finished_run(database, at=now - timedelta(days=31))
        await wait_until(lambda: gone(later), "a later purge", timeout=60)
    finally:
        await asyncio.to_thread(worker.stop)
    assert not await gone(young)
