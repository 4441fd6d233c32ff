"""A queue message is a wake-up: the runner takes the most urgent queued work.

Against real Postgres/SQLite and the session's jupyter_server: whichever
execution a message names, the runner claims the next one in claim order,
and since one message is sent per queued execution, each runs exactly once
and spare messages find nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from dramatiq.brokers.stub import StubBroker

from noteburst.domain.auth import LOCAL_CALLER
from noteburst.domain.execution import ExecutionQueue, ExecutionStatus
from noteburst.factory import (
    ApiContext,
    ApiFactory,
    WorkerContext,
    WorkerFactory,
    create_broker,
)
from noteburst.services.runner import ExecutionRunner
from noteburst.storage.events import LocalEventBus
from tests.support.app import make_config
from tests.support.notebooks import notebook
from tests.support.services import CallerServices, services_for


@dataclass
class Harness:
    service: CallerServices
    runner: ExecutionRunner


@pytest_asyncio.fixture
async def harness(
    tmp_path: Path, jupyter_server: Any, database_url: str
) -> AsyncIterator[Harness]:
    config = make_config(tmp_path, jupyter_server, database_url=database_url)
    broker = create_broker(config)
    assert isinstance(broker, StubBroker)
    bus = LocalEventBus()
    api = await ApiContext.build(config, broker=broker, local_bus=bus)
    worker = await WorkerContext.build(config, broker=broker, bus=bus)
    try:
        yield Harness(
            service=services_for(ApiFactory(api), LOCAL_CALLER),
            runner=WorkerFactory(worker).create_runner(),
        )
    finally:
        await worker.aclose()
        await api.aclose()


@pytest.mark.asyncio
async def test_each_message_runs_the_most_urgent_queued_execution(
    harness: Harness,
) -> None:
    batch = await harness.service.submissions.submit(
        notebook("'batch'"), queue=ExecutionQueue.BATCH
    )
    interactive = await harness.service.submissions.submit(notebook("'interactive'"))

    # The batch execution's message arrives first, but the worker it wakes
    # runs the interactive execution, submitted later.
    first = await asyncio.wait_for(harness.runner.run(batch.id), 120)
    assert first is not None
    assert first.status is ExecutionStatus.SUCCEEDED
    ran_first = await harness.service.executions.get(interactive.id)
    waiting = await harness.service.executions.get(batch.id)
    assert ran_first is not None
    assert ran_first.status is ExecutionStatus.SUCCEEDED
    assert waiting is not None
    assert waiting.status is ExecutionStatus.QUEUED

    # The interactive execution's own message then runs the batch one...
    second = await asyncio.wait_for(harness.runner.run(interactive.id), 120)
    assert second is not None
    done = await harness.service.executions.get(batch.id)
    assert done is not None
    assert done.status is ExecutionStatus.SUCCEEDED
    assert done.attempts == 1
    # ...and a duplicate finds nothing to do.
    assert await harness.runner.run(batch.id) is None
    for execution_id in (batch.id, interactive.id):
        final = await harness.service.executions.get(execution_id)
        assert final is not None
        assert (final.status, final.attempts) == (ExecutionStatus.SUCCEEDED, 1)
