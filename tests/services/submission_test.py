"""SubmissionService: the checks at submission, the cache and shared runs.

Real Postgres/SQLite and the session's jupyter_server.  Bad cell timeouts
are refused before anything is stored.  Many identical submissions at once
start one run (the per-key lock), and a result computed under one
environment tag is not reused under another.  A submission is kept when
the queue cannot be reached, and a worker's recovery sweep sends it once
one answers.
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

from noteburst.constants import EXECUTION_TASK_QUEUE
from noteburst.domain.auth import LOCAL_CALLER
from noteburst.domain.cache import CacheMode, CachePolicy
from noteburst.domain.execution import ExecutionStatus
from noteburst.exceptions import InvalidInputError
from noteburst.factory import (
    ApiContext,
    ApiFactory,
    WorkerContext,
    WorkerFactory,
    create_broker,
)
from noteburst.services.runner import ExecutionRunner
from noteburst.storage.database import Database
from noteburst.storage.events import LocalEventBus
from noteburst.storage.taskqueue import build_broker
from tests.support.app import make_config
from tests.support.notebooks import notebook
from tests.support.services import CallerServices, services_for
from tests.support.waiting import free_port as _closed_port

USE = CachePolicy(CacheMode.USE)


@dataclass
class Harness:
    broker: StubBroker
    runner: ExecutionRunner
    services: dict[str, CallerServices]
    """Submission services by environment tag, sharing one database."""

    @property
    def service(self) -> CallerServices:
        """The services of the first environment, for tests that need only one."""
        return self.services["w_2026_47"]


@pytest_asyncio.fixture
async def harness(
    tmp_path: Path, jupyter_server: Any, database_url: str
) -> AsyncIterator[Harness]:
    config = make_config(tmp_path, jupyter_server, database_url=database_url)
    broker = create_broker(config)
    assert isinstance(broker, StubBroker)
    bus = LocalEventBus()
    contexts: list[ApiContext | WorkerContext] = []
    try:
        services = {}
        for tag in ("w_2026_47", "w_2026_48"):
            limits = config.limits.model_copy(update={"cache_environment_tag": tag})
            tagged = config.model_copy(update={"limits": limits})
            api = await ApiContext.build(tagged, broker=broker, local_bus=bus)
            contexts.append(api)
            services[tag] = services_for(ApiFactory(api), LOCAL_CALLER)
        worker = await WorkerContext.build(config, broker=broker, bus=bus)
        contexts.append(worker)
        yield Harness(
            broker=broker,
            runner=WorkerFactory(worker).create_runner(),
            services=services,
        )
    finally:
        for context in reversed(contexts):
            await context.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cellTimeoutSeconds", 0),
        ("cellTimeoutSeconds", float("inf")),
        ("noOutputTimeoutSeconds", -1),
        ("noOutputTimeoutSeconds", 1e12),
    ],
)
async def test_bad_cell_timeouts_are_refused(
    harness: Harness, field: str, value: float
) -> None:
    cell, silence = (value, None) if field == "cellTimeoutSeconds" else (None, value)
    with pytest.raises(InvalidInputError) as caught:
        await harness.service.submissions.submit(
            notebook("1"), cell_timeout_seconds=cell, no_output_timeout_seconds=silence
        )
    assert caught.value.field == field


@pytest.mark.asyncio
async def test_many_identical_submissions_at_once_make_one_run(
    harness: Harness,
) -> None:
    service = harness.services["w_2026_47"]
    source = notebook("'same'")
    submitted = await asyncio.gather(
        *(service.submissions.submit(source, cache=USE) for _ in range(20))
    )
    leaders = [s for s in submitted if s.shares_run_of is None]
    assert len(leaders) == 1
    assert {s.shares_run_of for s in submitted} == {None, leaders[0].id}
    # Only the run is handed to a worker.
    assert harness.broker.queues[EXECUTION_TASK_QUEUE].qsize() == 1


@pytest.mark.asyncio
async def test_a_result_is_reused_only_in_its_environment(harness: Harness) -> None:
    source = notebook("21 * 2")
    this_week = harness.services["w_2026_47"]
    ran = await this_week.submissions.submit(source, cache=USE)
    outcome = await asyncio.wait_for(harness.runner.run(ran.id), 120)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED

    hit = await this_week.submissions.submit(source, cache=USE)
    assert hit.cached_from == ran.id
    next_week = await harness.services["w_2026_48"].submissions.submit(
        source, cache=USE
    )
    assert not next_week.cache_hit
    assert next_week.status is ExecutionStatus.QUEUED
    with_parameters = await this_week.submissions.submit(
        source, cache=USE, parameters={"x": 1}
    )
    assert not with_parameters.cache_hit
    # Markdown does not change what runs.
    annotated = await this_week.submissions.submit(
        notebook("21 * 2", "# md:notes"), cache=USE
    )
    assert annotated.cached_from == ran.id


@pytest.mark.asyncio
async def test_a_negative_max_age_is_refused(harness: Harness) -> None:
    with pytest.raises(InvalidInputError, match="maxAgeSeconds"):
        await harness.services["w_2026_47"].submissions.submit(
            notebook("1"), cache=CachePolicy(CacheMode.USE, max_age_seconds=-1)
        )


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
