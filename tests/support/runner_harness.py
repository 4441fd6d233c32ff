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
from dataclasses import dataclass

from dramatiq.brokers.stub import StubBroker

from noteburst.domain.execution import EventKind, ExecutionEvent
from noteburst.factory import ApiContext, WorkerContext
from noteburst.services.recovery import RecoverySweep
from noteburst.services.runner import ExecutionRunner
from tests.support.services import CallerServices


@dataclass
class Harness:
    service: CallerServices
    runner: ExecutionRunner
    recovery: RecoverySweep
    api: ApiContext
    broker: StubBroker
    worker: WorkerContext


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
