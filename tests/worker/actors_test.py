"""The execute actor through a real Dramatiq worker: a message sent twice runs once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker

from noteburst.constants import EXECUTION_TASK_QUEUE
from noteburst.domain.auth import LOCAL_CALLER
from noteburst.domain.execution import EventKind, ExecutionStatus
from noteburst.factory import ApiContext, ApiFactory, create_broker
from noteburst.storage.events import LocalEventBus
from noteburst.worker.process import start_worker
from tests.support.app import make_config
from tests.support.notebooks import notebook
from tests.support.services import services_for


@pytest.mark.asyncio
async def test_same_message_twice_one_execution_one_result(
    tmp_path: Path, jupyter_server: Any, database_url: str
) -> None:
    config = make_config(tmp_path, jupyter_server, database_url=database_url)
    broker = create_broker(config)
    assert isinstance(broker, StubBroker)
    bus = LocalEventBus()
    api = await ApiContext.build(config, broker=broker, local_bus=bus)
    try:
        service = services_for(ApiFactory(api), LOCAL_CALLER)
        execution = await service.submissions.submit(notebook("print('once')"))
        await api.task_queue.enqueue_execution(execution.id)  # the duplicate
        assert broker.queues[EXECUTION_TASK_QUEUE].qsize() == 2
        worker = await asyncio.to_thread(
            start_worker, config, broker, bus=bus, embedded=False
        )
        try:
            # join() returns once both messages were processed (and raises
            # if either failed).
            await asyncio.to_thread(broker.join, EXECUTION_TASK_QUEUE, timeout=120_000)
        finally:
            await asyncio.to_thread(worker.stop)
        final = await service.executions.get(execution.id)
        assert final is not None
        assert final.status is ExecutionStatus.SUCCEEDED
        assert final.attempts == 1
        async with api.database.transaction() as tx:
            kinds = [e.kind for e in await tx.events.after(execution.id, 0)]
        assert EventKind.CELL_OUTPUTS in kinds  # print('once'), as it happened
        kinds = [kind for kind in kinds if kind is not EventKind.CELL_OUTPUTS]
        assert kinds == [
            EventKind.QUEUED,
            EventKind.RUNNING,
            EventKind.CELL_STARTED,
            EventKind.CELL_FINISHED,
            EventKind.FINISHED,
        ]
        notebook_out = await service.executions.get_notebook(execution.id)
        assert notebook_out is not None
        assert notebook_out["cells"][0]["outputs"][0]["text"] == "once\n"
    finally:
        await api.aclose()
