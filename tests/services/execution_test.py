"""CallerServices: what happens around the queue and the notebook rules."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from noteburst.domain.auth import LOCAL_CALLER
from noteburst.domain.execution import ExecutionStatus
from noteburst.factory import (
    ApiContext,
    ApiFactory,
    WorkerContext,
    WorkerFactory,
    create_broker,
)
from noteburst.storage.database import Database
from noteburst.storage.events import LocalEventBus
from noteburst.storage.taskqueue import build_broker
from tests.support.app import make_config
from tests.support.notebooks import notebook
from tests.support.services import services_for


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here once the socket is closed


@pytest.mark.asyncio
async def test_submission_survives_an_unreachable_queue(
    tmp_path: Path, jupyter_server: Any, postgres_url: str, redis_url: str
) -> None:
    config = make_config(tmp_path, jupyter_server, database_url=postgres_url)
    database = Database.from_url(postgres_url)
    await database.upgrade()
    await database.aclose()
    dead = build_broker(
        redis_url=f"redis://127.0.0.1:{_closed_port()}/0", namespace="nbtest-dead"
    )
    api = await ApiContext.build(config, broker=dead, local_bus=LocalEventBus())
    try:
        service = services_for(ApiFactory(api), LOCAL_CALLER)
        execution = await service.submissions.submit(notebook("1"))
        assert execution.status is ExecutionStatus.QUEUED
    finally:
        await api.aclose()

    # Once a queue answers, a worker's recovery sweep sends it.
    live_config = make_config(
        tmp_path, jupyter_server, database_url=postgres_url, redis_url=redis_url
    )
    live = create_broker(live_config)
    worker = await WorkerContext.build(live_config, broker=live, bus=LocalEventBus())
    try:
        recovery = WorkerFactory(worker).create_recovery_sweep()
        assert await recovery.sweep(everything_running=True) == 1
        runner = WorkerFactory(worker).create_runner()
        outcome = await runner.run(execution.id)
        assert outcome is not None
        assert outcome.status is ExecutionStatus.SUCCEEDED
    finally:
        await worker.aclose()
        live.close()
        dead.close()
