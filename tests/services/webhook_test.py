"""WebhookService on real databases: retries, horizon, leases, rebinding, wake-ups.

Deliveries are driven by calling :meth:`WebhookService.deliver` here (the
worker's actor does the same), against a real receiver on loopback, which
the guard allows because 127.0.0.1 is allow-listed.  Wake-ups are read
from the real in-process broker's queues.  A resolver is injected only for
DNS rebinding: real DNS cannot be changed on demand.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
import pytest_asyncio
from dramatiq.common import dq_name
from prometheus_client import REGISTRY

from noteburst.config import WebhookSettings
from noteburst.constants import WEBHOOK_TASK_QUEUE
from noteburst.domain.addresses import AddressPolicy, parse_networks
from noteburst.domain.execution import ExecutionQueue, ExecutionStatus
from noteburst.domain.webhook import WebhookState
from noteburst.exceptions import WebhookRefusedError
from noteburst.services.webhook import WebhookService
from noteburst.storage import Database
from noteburst.storage.secrets import SecretBox
from noteburst.storage.taskqueue import TaskQueue, build_broker
from noteburst.storage.webhook_client import (
    Resolver,
    WebhookGuard,
    WebhookSender,
    system_resolver,
)
from tests.support.waiting import wait_until
from tests.support.webhooks import HANG, new_secret, receiver, verify_signature

NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

MakeService = Callable[..., WebhookService]


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        yield client


@pytest.fixture
def broker() -> dramatiq.Broker:
    return build_broker(redis_url=None, namespace="webhook-test")


@pytest.fixture
def make_service(
    database: Database, broker: dramatiq.Broker, http: httpx.AsyncClient, tmp_path: Path
) -> MakeService:
    box = SecretBox.from_settings(None, tmp_path)

    def make(resolver: Resolver = system_resolver, **settings: Any) -> WebhookService:
        guard = WebhookGuard(
            policy=AddressPolicy(allowed_networks=parse_networks(["127.0.0.1/32"])),
            resolver=resolver,
        )
        defaults = WebhookSettings(
            initial_backoff_seconds=0.01,
            max_backoff_seconds=0.05,
            timeout_seconds=5.0,
        )
        return WebhookService(
            database=database,
            task_queue=TaskQueue(broker),
            guard=guard,
            secrets=lambda: box,
            settings=defaults.model_copy(update=settings),
            public_url="http://nb.test",
            sender=WebhookSender(http=http, guard=guard),
        )

    return make


async def submit(
    database: Database, service: WebhookService, url: str, secret: str
) -> str:
    """Store a queued execution with a webhook, as the submission does."""
    hook = await service.register(url, secret)
    execution_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    async with database.transaction() as tx:
        await tx.executions.add(
            execution_id=execution_id,
            kernel_name="python3",
            timeout_seconds=60,
            source_text=json.dumps(NOTEBOOK),
            cells_total=0,
            now=now,
        )
        await tx.webhooks.add(
            execution_id,
            url=hook.url,
            secret_ciphertext=hook.secret_ciphertext,
            now=now,
        )
    return execution_id


async def end(database: Database, execution_id: str) -> None:
    async with database.transaction() as tx:
        assert await tx.cancels.request(execution_id, now=datetime.now(UTC))


async def deliver_when_due(service: WebhookService, execution_id: str) -> None:
    """Deliver once, waiting out the backoff (the delayed message's job)."""
    delivered = False

    async def attempt() -> bool:
        nonlocal delivered
        delivered = await service.deliver(execution_id) is not None
        return delivered

    await wait_until(attempt, "the next attempt is due", timeout=30)


def pending_messages(broker: dramatiq.Broker, *, delayed: bool = False) -> int:
    queue = broker.queues[
        dq_name(WEBHOOK_TASK_QUEUE) if delayed else WEBHOOK_TASK_QUEUE
    ]
    return int(queue.qsize())


def _deliveries(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "noteburst_webhook_deliveries_total", {"outcome": outcome}
    )
    return value or 0.0


@pytest.mark.asyncio
async def test_500_twice_then_200_stores_three_attempts(
    database: Database, make_service: MakeService, broker: dramatiq.Broker
) -> None:
    service = make_service()
    secret = new_secret()
    counted = {outcome: _deliveries(outcome) for outcome in ("retry", "delivered")}
    async with receiver(500, 500, 200) as hook:
        execution_id = await submit(database, service, hook.url, secret)
        assert await service.deliver(execution_id) is None  # not ended yet
        assert await service.wake(execution_id) == 0
        await end(database, execution_id)
        assert await service.wake(execution_id) == 1
        assert pending_messages(broker) == 1
        for _ in range(3):
            await deliver_when_due(service, execution_id)
        assert await service.deliver(execution_id) is None  # done: nothing due
    attempts = await service.deliveries(execution_id)
    assert [(d.attempt, d.status_code, d.succeeded) for d in attempts] == [
        (1, 500, False),
        (2, 500, False),
        (3, 200, True),
    ]
    assert [d.error for d in attempts] == ["HTTP 500", "HTTP 500", None]
    assert all(d.latency_seconds > 0 for d in attempts)
    target = await service.get(execution_id)
    assert target is not None
    assert (target.state, target.attempts) == (WebhookState.DELIVERED, 3)
    # The metrics (noteburst_webhook_deliveries_total) count each attempt.
    assert _deliveries("retry") - counted["retry"] == 2
    assert _deliveries("delivered") - counted["delivered"] == 1
    # Each failure scheduled its retry as a delayed message.
    assert pending_messages(broker, delayed=True) == 2
    # One message, signed each time, with the same id on every attempt.
    assert len(hook.received) == 3
    assert {r.headers["webhook-id"] for r in hook.received} == {f"msg_{execution_id}"}
    assert all(verify_signature(secret, r) for r in hook.received)
    data = hook.received[-1].json()["data"]
    assert data["id"] == execution_id
    assert data["status"] == "CANCELLED"
    assert data["error"]["code"] == "CANCELLED"


@pytest.mark.asyncio
async def test_attempt_limit_and_horizon_give_up(
    database: Database, make_service: MakeService
) -> None:
    gave_up = _deliveries("gave_up")
    async with receiver(500, 500, 500, 500) as hook:
        limited = make_service(max_attempts=2)
        first = await submit(database, limited, hook.url, new_secret())
        await end(database, first)
        await deliver_when_due(limited, first)
        await deliver_when_due(limited, first)
        target = await limited.get(first)
        assert target is not None
        assert (target.state, target.attempts) == (WebhookState.FAILED, 2)

        short = make_service(horizon_seconds=0.001)
        second = await submit(database, short, hook.url, new_secret())
        await end(database, second)
        await deliver_when_due(short, second)
        target = await short.get(second)
        assert target is not None
        assert (target.state, target.attempts) == (WebhookState.FAILED, 1)
        assert target.next_attempt_at is None
    assert _deliveries("gave_up") - gave_up == 2


@pytest.mark.asyncio
async def test_timeouts_are_retried(
    database: Database, make_service: MakeService
) -> None:
    service = make_service(timeout_seconds=0.5)
    async with receiver(HANG, 200) as hook:
        execution_id = await submit(database, service, hook.url, new_secret())
        await end(database, execution_id)
        await deliver_when_due(service, execution_id)
        await deliver_when_due(service, execution_id)
    attempts = await service.deliveries(execution_id)
    assert [(d.status_code, d.error) for d in attempts] == [
        (None, "no answer within 0.5s"),
        (200, None),
    ]


@pytest.mark.asyncio
async def test_a_name_rebound_to_a_private_address_is_refused_at_delivery(
    database: Database, make_service: MakeService
) -> None:
    answers = [["127.0.0.1"], ["10.9.8.7"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    service = make_service(resolver=rebinding)
    async with receiver(200) as hook:
        url = f"http://rebind.test:{hook.port}/hook"
        execution_id = await submit(database, service, url, new_secret())  # 127.0.0.1
        await end(database, execution_id)
        await deliver_when_due(service, execution_id)  # now 10.9.8.7
        assert hook.received == []
    [attempt] = await service.deliveries(execution_id)
    assert attempt.status_code is None
    assert attempt.error is not None
    assert "10.9.8.7 is a private address" in attempt.error


@pytest.mark.asyncio
async def test_refused_at_registration(make_service: MakeService) -> None:
    async def private(host: str, port: int) -> list[str]:
        return ["192.168.7.7"]

    with pytest.raises(WebhookRefusedError, match="private"):
        await make_service(resolver=private).register(
            "https://hooks.example.com/", new_secret()
        )


@pytest.mark.asyncio
async def test_a_worker_lost_mid_attempt_is_resent_by_the_sweep(
    database: Database, make_service: MakeService, broker: dramatiq.Broker
) -> None:
    service = make_service()
    async with receiver(200) as hook:
        execution_id = await submit(database, service, hook.url, new_secret())
        await end(database, execution_id)
        # A worker claims the attempt and dies before storing its outcome.
        now = datetime.now(UTC)
        async with database.transaction() as tx:
            claimed = await tx.webhooks.claim(
                execution_id, now=now, lease_until=now + timedelta(seconds=0.3)
            )
        assert claimed is not None
        assert claimed.attempt == 1
        assert await service.deliver(execution_id) is None  # the lease holds
        assert await service.sweep() == 0

        async def resent() -> bool:
            return await service.sweep() == 1

        await wait_until(resent, "the lost attempt's lease lapses", timeout=30)
        assert pending_messages(broker) == 1
        delivery = await service.deliver(execution_id)
        assert delivery is not None
        assert delivery.succeeded
        assert delivery.attempt == 2
        assert len(hook.received) == 1


@pytest.mark.asyncio
async def test_the_end_of_a_shared_run_wakes_its_followers_webhooks(
    database: Database, make_service: MakeService, broker: dramatiq.Broker
) -> None:
    service = make_service()
    async with receiver() as hook:
        leader = await submit(database, service, hook.url, new_secret())
        follower = str(uuid.uuid4())
        hooked = await service.register(hook.url, new_secret())
        now = datetime.now(UTC)
        async with database.transaction() as tx:
            await tx.cache.add_follower(
                execution_id=follower,
                leader_id=leader,
                kernel_name="python3",
                timeout_seconds=60,
                source_text=json.dumps(NOTEBOOK),
                cells_total=0,
                queue=ExecutionQueue.INTERACTIVE,
                now=now,
            )
            await tx.webhooks.add(
                follower,
                url=hooked.url,
                secret_ciphertext=hooked.secret_ciphertext,
                now=now,
            )
        await end(database, leader)  # cancelling the run ends its follower
        assert await service.wake(leader) == 2
        await deliver_when_due(service, follower)
        assert hook.received[0].json()["data"]["id"] == follower
        assert hook.received[0].json()["data"]["status"] == "CANCELLED"
    async with database.transaction() as tx:
        ended = await tx.executions.get(follower)
    assert ended is not None
    assert ended.status is ExecutionStatus.CANCELLED
