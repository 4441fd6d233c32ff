"""The ``harness`` fixture of the service tests that drive executions.

Submitting, reading and cancelling, watching, progress, running and
recovery (``submission_test.py`` keeps a harness of its own: services for
two cache environments).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from dramatiq.brokers.stub import StubBroker

from noteburst.domain.auth import LOCAL_CALLER
from noteburst.factory import (
    ApiContext,
    ApiFactory,
    WorkerContext,
    WorkerFactory,
    create_broker,
)
from noteburst.storage.events import LocalEventBus
from tests.support.app import make_config
from tests.support.runner_harness import Harness
from tests.support.services import services_for


@pytest_asyncio.fixture
async def harness(
    tmp_path: Path, jupyter_server: Any, database_url: str
) -> AsyncIterator[Harness]:
    config = make_config(
        tmp_path,
        jupyter_server,
        database_url=database_url,
        kernel_names=["python3", "no-such-kernel"],
        max_attempts=2,
        # Cell events are written as soon as they are posted, which these
        # tests were written for; the gathering is tested in progress_test.py.
        progress_flush_seconds=0,
    )
    broker = create_broker(config)
    assert isinstance(broker, StubBroker)
    bus = LocalEventBus()
    api = await ApiContext.build(config, broker=broker, local_bus=bus)
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
        await api.aclose()
