"""A database outage fails no execution and repeats no finished run.

The retry loop itself is tested with a stand-in operation; everything
else against a PostgreSQL of this module's own that the tests stop and
start while a real kernel runs a notebook: a worker that finished a
notebook keeps it through the outage and stores it once the database is
back (one run, no failure), progress posted meanwhile is kept, and the
recovery sweep does not take leases that lapsed during an outage for lost
workers, and the shared reader of watchers waits an outage out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
from structlog.testing import capture_logs

from noteburst.config import WorkerSettings
from noteburst.domain.execution import EventKind, ExecutionStatus
from noteburst.exceptions import ServiceUnavailableError
from noteburst.services.outage import Backoff, until_available
from noteburst.services.recovery import RecoverySweep
from noteburst.services.watch import WatchedEvent
from noteburst.storage.database import Database
from tests.support.app import make_config
from tests.support.notebooks import held_until, notebook
from tests.support.runner_harness import (
    Harness,
    build_harness,
    cell_started,
    stored_events,
)
from tests.support.servers import PrivatePostgres, private_postgres
from tests.support.waiting import wait_until

TIMEOUT = 120.0
FAST = Backoff(first=0.001, cap=0.01)


@pytest.mark.asyncio
async def test_until_available_retries_until_the_database_answers() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ServiceUnavailableError("database", "restarting")
        return "stored"

    result = await until_available(flaky, what="a test", give_up_after=10, backoff=FAST)
    assert (result, calls) == ("stored", 4)


@pytest.mark.asyncio
async def test_until_available_gives_up_after_its_bound() -> None:
    async def down() -> None:
        raise ServiceUnavailableError("database", "down")

    with pytest.raises(ServiceUnavailableError):
        await until_available(down, what="a test", give_up_after=0.05, backoff=FAST)


@pytest.mark.asyncio
async def test_until_available_does_not_retry_other_errors() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await until_available(broken, what="a test", give_up_after=10, backoff=FAST)
    assert calls == 1


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first=0.1, cap=1.0)
    assert [backoff.delay(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL of this module's own, to stop and start."""
    with private_postgres() as server:
        yield server


@pytest_asyncio.fixture
async def outage_harness(
    tmp_path: Path, jupyter_server: Any, own_postgres: PrivatePostgres
) -> AsyncIterator[Harness]:
    url = await asyncio.to_thread(own_postgres.create_database)
    database = Database.from_url(url)
    try:
        await database.upgrade()
    finally:
        await database.aclose()
    config = make_config(
        tmp_path,
        jupyter_server,
        database_url=url,
        progress_flush_seconds=0,
        worker_lease_seconds=30,
    )
    try:
        async with build_harness(config) as harness:
            yield harness
    finally:
        if not own_postgres.is_running():
            await asyncio.to_thread(own_postgres.start)


@pytest.mark.asyncio
async def test_a_finished_notebook_is_stored_once_the_database_is_back(
    outage_harness: Harness, own_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    harness = outage_harness
    release = tmp_path / "release"
    runs = tmp_path / "runs"
    execution = await harness.service.submissions.submit(
        notebook(
            held_until(release),
            f"with open({str(runs)!r}, 'a') as f: f.write('ran\\n')",
            "'last'",
        )
    )
    async with asyncio.timeout(TIMEOUT):
        running = asyncio.create_task(harness.runner.run(execution.id))
        await cell_started(harness, execution.id, 0)
        with capture_logs() as logs:
            # The database goes away while cell 0 runs: cells 1 and 2 run
            # and finish meanwhile, and the result has nowhere to go.
            await asyncio.to_thread(own_postgres.stop, "fast")
            release.touch()

            async def storing_waits() -> bool:
                return any(
                    entry.get("what") == "the result"
                    and entry["event"] == "Database unavailable; retrying"
                    for entry in logs
                )

            await wait_until(storing_waits, "the result's store waits")
            assert not running.done()
            await asyncio.to_thread(own_postgres.start)
            outcome = await running
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED
    final = await harness.service.executions.get(execution.id)
    assert final is not None
    assert final.status is ExecutionStatus.SUCCEEDED
    assert final.attempts == 1
    assert runs.read_text() == "ran\n"  # run once, not again
    events = await stored_events(harness, execution.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    # Progress posted during the outage was kept and stored with the end.
    finished_cells = [e.cell_index for e in events if e.kind is EventKind.CELL_FINISHED]
    assert finished_cells == [0, 1, 2]
    assert [e.kind for e in events].count(EventKind.FINISHED) == 1
    assert events[-1].kind is EventKind.FINISHED


@pytest.mark.asyncio
async def test_a_claim_waits_out_an_outage(
    outage_harness: Harness, own_postgres: PrivatePostgres
) -> None:
    harness = outage_harness
    execution = await harness.service.submissions.submit(notebook("1 + 1"))
    with capture_logs() as logs:
        await asyncio.to_thread(own_postgres.stop, "fast")
        try:
            async with asyncio.timeout(TIMEOUT):
                running = asyncio.create_task(harness.runner.run(execution.id))

                async def claim_waits() -> bool:
                    return any(entry.get("what") == "a claim" for entry in logs)

                await wait_until(claim_waits, "the claim waits")
        finally:
            await asyncio.to_thread(own_postgres.start)
    async with asyncio.timeout(TIMEOUT):
        outcome = await running
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED


async def _claim_with_lapsed_lease(harness: Harness) -> str:
    """Submit and claim an execution whose lease has already lapsed."""
    execution = await harness.service.submissions.submit(notebook("1"))
    now = datetime.now(UTC)
    async with harness.api.database.transaction() as tx:
        claimed = await tx.claims.claim_next(
            now=now,
            lease_until=now - timedelta(seconds=1),
            max_attempts=3,
            woken_for=execution.id,
        )
    assert claimed is not None
    return execution.id


async def _status(harness: Harness, execution_id: str) -> ExecutionStatus:
    execution = await harness.service.executions.get(execution_id)
    assert execution is not None
    return execution.status


@pytest.mark.asyncio
async def test_the_sweep_leaves_leases_lapsed_in_its_own_outage_alone(
    outage_harness: Harness,
) -> None:
    harness = outage_harness
    execution_id = await _claim_with_lapsed_lease(harness)
    # A lease far shorter than the time since this module's last restart,
    # so only the sweeper's own outage holds it back.
    context = harness.worker
    sweep = RecoverySweep(
        database=context.database,
        bus=context.bus,
        task_queue=context.task_queue,
        workers=WorkerSettings(lease_seconds=0.01),
    )
    async with asyncio.timeout(TIMEOUT):
        assert await sweep.sweep(after_outage=True) == 0
        assert await _status(harness, execution_id) is ExecutionStatus.RUNNING
        # A round later its worker has had its chance: it is lost.
        assert await sweep.sweep() == 1
        assert await _status(harness, execution_id) is ExecutionStatus.QUEUED


@pytest.mark.asyncio
async def test_the_sweep_leaves_leases_alone_right_after_a_restart(
    outage_harness: Harness, own_postgres: PrivatePostgres
) -> None:
    harness = outage_harness
    execution_id = await _claim_with_lapsed_lease(harness)
    async with asyncio.timeout(TIMEOUT):
        await asyncio.to_thread(own_postgres.restart, "fast")
        # The server started less than a lease (30 s) ago: no worker could
        # renew before, so the lapsed lease proves nothing yet.
        with structlog.testing.capture_logs() as logs:
            assert await harness.recovery.sweep() == 0
        assert any("database outage" in entry["event"] for entry in logs)
        assert await _status(harness, execution_id) is ExecutionStatus.RUNNING


@pytest.mark.asyncio
async def test_watchers_wait_out_an_outage_and_miss_nothing(
    outage_harness: Harness, own_postgres: PrivatePostgres
) -> None:
    harness = outage_harness
    execution = await harness.service.submissions.submit(notebook("1 + 1"))
    async with asyncio.timeout(TIMEOUT):
        watch = harness.service.watcher.watch(execution.id, after_sequence=0)
        watched = [await anext(watch)]  # QUEUED; the shared feed is listening
        rest = asyncio.create_task(_drain(watch))
        with capture_logs() as logs:
            await asyncio.to_thread(own_postgres.stop, "fast")
            # A wake-up during the outage: the shared read fails and waits.
            harness.api.bus.announce(execution.id, watched[0].event.sequence)

            async def feed_waits() -> bool:
                return any(e.get("what") == "events for watchers" for e in logs)

            await wait_until(feed_waits, "the shared read waits")
            await asyncio.to_thread(own_postgres.start)
        outcome = await harness.runner.run(execution.id)
        watched.extend(await rest)
    assert outcome is not None
    assert outcome.status is ExecutionStatus.SUCCEEDED
    sequences = [item.event.sequence for item in watched]
    assert sequences == list(range(1, len(sequences) + 1))
    assert [item.event.kind for item in watched].count(EventKind.FINISHED) == 1
    assert watched[-1].event.kind is EventKind.FINISHED


async def _drain(watch: AsyncIterator[WatchedEvent]) -> list[WatchedEvent]:
    return [item async for item in watch]
