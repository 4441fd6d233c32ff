"""A watch never ends before yielding the terminal event.

Reads of a watch round take the events, then the execution (so the
execution is at least as new as the events yielded with it).  On
PostgreSQL each statement sees what was committed before it, so an end
committed between the two reads showed a terminal execution after an empty
event read: the watch ended (the subscription completed) without FINISHED.
Seen in CI as ``app_webhooks_test`` and ``app_auth_test`` failures.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from noteburst.domain.execution import (
    ErrorCode,
    EventKind,
    ExecutionFailure,
    ExecutionStatus,
)
from noteburst.storage.executions import EventLogStore
from tests.support.notebooks import notebook
from tests.support.runner_harness import Harness


@pytest.mark.asyncio
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("after_sequence", [0, None], ids=["replay", "current"])
async def test_an_end_committed_after_an_empty_read_is_still_yielded(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, after_sequence: int | None
) -> None:
    execution = await harness.service.submissions.submit(notebook("print('x')"))
    error = ExecutionFailure(code=ErrorCode.CANCELLED, message="cancelled")
    ended = False
    real_after = EventLogStore.after

    async def after_then_end(self: EventLogStore, *args: Any, **kwargs: Any) -> Any:
        nonlocal ended
        events = await real_after(self, *args, **kwargs)
        if not events and not ended:
            # The end commits between this read and the execution's.
            ended = True
            async with harness.worker.database.transaction() as other:
                event = await other.claims.finish(
                    execution.id,
                    status=ExecutionStatus.CANCELLED,
                    result_text=None,
                    error=error,
                    now=datetime.now(UTC),
                )
            assert event is not None
            harness.worker.bus.announce(execution.id, event.sequence)
        return events

    monkeypatch.setattr(EventLogStore, "after", after_then_end)
    async with asyncio.timeout(60):
        watch = harness.service.watcher.watch(
            execution.id, after_sequence=after_sequence
        )
        watched = [await anext(watch)]
        # A wake-up with nothing new yet (a resync does that): the next
        # round's event read finds nothing, and the end lands right after.
        harness.api.bus.announce(execution.id, watched[0].event.sequence)
        watched.extend([item async for item in watch])
    assert ended
    assert [item.event.kind for item in watched] == [
        EventKind.QUEUED,
        EventKind.FINISHED,
    ]
    assert watched[-1].execution.status is ExecutionStatus.CANCELLED
    assert watched[-1].execution.error == error
