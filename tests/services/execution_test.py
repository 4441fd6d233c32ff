"""ExecutionService: cancelling, and the webhook each kind of ending owes.

A queued execution is cancelled at once, and the worker its message
reaches later does nothing (cancelling a running one is the runner's part:
``runner_test.py``).  Every way an execution ends owes its webhook: the
runner's own end and a cache hit are shown end to end in
``tests/app_webhooks_test.py``; here the API's cancel of a queued execution
and the recovery sweep's ``WORKER_LOST`` each queue a wake-up on the real
in-process broker (no worker consumes it, so the test sees it), and a
worker context's webhook service then delivers to a real receiver.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from noteburst.constants import WEBHOOK_TASK_QUEUE
from noteburst.domain.auth import LOCAL_CALLER
from noteburst.domain.execution import ErrorCode, EventKind, ExecutionStatus
from noteburst.domain.webhook import WebhookRequest, WebhookState
from noteburst.exceptions import ExecutionNotFoundError
from noteburst.factory import (
    ApiContext,
    ApiFactory,
    WorkerContext,
    WorkerFactory,
    create_broker,
)
from noteburst.storage.database import Database
from noteburst.storage.events import LocalEventBus
from tests.support.app import make_config
from tests.support.notebooks import notebook
from tests.support.runner_harness import Harness
from tests.support.runner_harness import stored_events as _events
from tests.support.services import services_for
from tests.support.webhooks import new_secret, receiver, verify_signature


@pytest.mark.asyncio
async def test_a_queued_execution_is_cancelled_at_once(harness: Harness) -> None:
    execution = await harness.service.submissions.submit(notebook("print('never')"))
    cancelled = await harness.service.executions.cancel(execution.id)
    assert cancelled.status is ExecutionStatus.CANCELLED
    assert cancelled.error is not None
    assert cancelled.error.code is ErrorCode.CANCELLED
    # The worker that receives the message later does nothing.
    assert await harness.runner.run(execution.id) is None
    # Cancelling again returns it unchanged; an unknown id is refused.
    again = await harness.service.executions.cancel(execution.id)
    assert (again.status, again.last_sequence) == (
        ExecutionStatus.CANCELLED,
        cancelled.last_sequence,
    )
    with pytest.raises(ExecutionNotFoundError):
        await harness.service.executions.cancel("no-such-execution")
    kinds = [e.kind for e in await _events(harness, execution.id)]
    assert kinds == [EventKind.QUEUED, EventKind.FINISHED]


@pytest.mark.asyncio
async def test_cancel_and_sweep_endings_wake_and_deliver_webhooks(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(
        tmp_path,
        jupyter_server,
        webhook_allowed_networks=["127.0.0.1/32"],
        max_attempts=1,
    )
    database = Database.from_url(config.effective_database_url)
    await database.upgrade()
    await database.aclose()
    broker = create_broker(config)
    bus = LocalEventBus()
    api = await ApiContext.build(config, broker=broker, local_bus=bus)
    worker = await WorkerContext.build(config, broker=broker, bus=bus)
    secret = new_secret()
    try:
        async with receiver() as hook:
            service = services_for(ApiFactory(api), LOCAL_CALLER)
            request = WebhookRequest(url=hook.url, secret=secret)
            cancelled = await service.submissions.submit(notebook("1"), webhook=request)
            lost = await service.submissions.submit(notebook("2"), webhook=request)
            wakeups = broker.queues[WEBHOOK_TASK_QUEUE]
            assert wakeups.qsize() == 0  # neither has ended

            ended = await service.executions.cancel(cancelled.id)
            assert ended.status is ExecutionStatus.CANCELLED
            assert wakeups.qsize() == 1

            # A worker took the other one and was lost; its lease lapsed.
            past = datetime.now(UTC) - timedelta(minutes=1)
            async with worker.database.transaction() as tx:
                claimed = await tx.claims.claim(
                    lost.id,
                    now=past,
                    lease_until=past + timedelta(seconds=1),
                    max_attempts=1,
                )
                assert claimed is not None
            await WorkerFactory(worker).create_recovery_sweep().sweep()
            assert wakeups.qsize() == 2

            webhooks = WorkerFactory(worker).create_webhook_service()
            for execution_id in (cancelled.id, lost.id):
                delivery = await webhooks.deliver(execution_id)
                assert delivery is not None
                assert delivery.succeeded
            with pytest.raises(RuntimeError, match="no sender"):
                await ApiFactory(api).create_webhook_service().deliver(lost.id)
            target = await webhooks.get(lost.id)
            assert target is not None
            assert target.state is WebhookState.DELIVERED
    finally:
        await worker.aclose()
        await api.aclose()
        broker.close()
    messages = {r.json()["data"]["id"]: r.json()["data"] for r in hook.received}
    assert messages[cancelled.id]["status"] == "CANCELLED"
    assert messages[lost.id]["status"] == "FAILED"
    assert messages[lost.id]["error"]["code"] == ErrorCode.WORKER_LOST.name
    assert all(verify_signature(secret, r) for r in hook.received)
