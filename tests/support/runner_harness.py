"""An API context and a worker context sharing one bus, for service tests.

What the embedded default wires up, without the web server: the services a
GraphQL request would get (:attr:`Harness.service`), the runner and the
recovery sweep a worker would get, and the stub broker between them (tests
deliver its messages by hand).  The ``harness`` fixture (in
``tests/services/conftest.py``) builds one per test on the test's database.

Also what several service test modules read through a harness: the stored
events of an execution, and the moment a cell starts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from dramatiq.brokers.stub import StubBroker

from noteburst.config import Config
from noteburst.domain.auth import LOCAL_CALLER
from noteburst.domain.execution import EventKind, ExecutionEvent
from noteburst.factory import (
    ApiContext,
    ApiFactory,
    WorkerContext,
    WorkerFactory,
    create_broker,
)
from noteburst.services.recovery import RecoverySweep
from noteburst.services.runner import ExecutionRunner
from noteburst.storage.events import LocalEventBus
from tests.support.services import CallerServices, services_for


@dataclass
class Harness:
    service: CallerServices
    runner: ExecutionRunner
    recovery: RecoverySweep
    api: ApiContext
    broker: StubBroker
    worker: WorkerContext


@contextlib.asynccontextmanager
async def build_harness(config: Config) -> AsyncIterator[Harness]:
    """Build a harness on ``config``'s (migrated) database; close it after."""
    broker = create_broker(config)
    assert isinstance(broker, StubBroker)
    bus = LocalEventBus()
    api = await ApiContext.build(config, broker=broker, local_bus=bus)
    try:
        worker = await WorkerContext.build(config, broker=broker, bus=bus)
        try:
            yield Harness(
                service=services_for(ApiFactory(api), LOCAL_CALLER),
                runner=WorkerFactory(worker).create_runner(),
                recovery=WorkerFactory(worker).create_recovery_sweep(),
                api=api,
                broker=broker,
                worker=worker,
            )
        finally:
            await worker.aclose()
    finally:
        await api.aclose()


async def stored_events(harness: Harness, execution_id: str) -> list[ExecutionEvent]:
    """Every stored event of ``execution_id``, in order, read in one transaction."""
    async with harness.api.database.transaction() as tx:
        return list(await tx.events.after(execution_id, 0))


async def cell_started(harness: Harness, execution_id: str, index: int) -> None:
    """Watch ``execution_id`` until cell ``index`` has started."""
    async with asyncio.timeout(60):
        async for watched in harness.service.watcher.watch(execution_id):
            event = watched.event
            if event.kind is EventKind.CELL_STARTED and event.cell_index == index:
                return
