"""The Redis broker's wake-ups: an idle worker sees a new message at once."""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
from typing import Any

import dramatiq
import pytest
import structlog
from dramatiq.broker import MessageProxy

from noteburst.constants import (
    EXECUTE_ACTOR_NAME,
    EXECUTION_TASK_QUEUE,
    WEBHOOK_ACTOR_NAME,
    WEBHOOK_TASK_QUEUE,
)
from noteburst.storage import taskqueue
from noteburst.storage.taskqueue import TaskQueue, WakingRedisBroker, build_broker

WAIT = 10.0
IDLE_MS = 120_000  # far longer than the test may take: only a wake-up helps


def message(
    execution_id: str, *, queue_name: str = EXECUTION_TASK_QUEUE
) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=queue_name,
        actor_name=EXECUTE_ACTOR_NAME
        if queue_name == EXECUTION_TASK_QUEUE
        else WEBHOOK_ACTOR_NAME,
        args=(execution_id,),
        kwargs={},
        options={},
    )


def test_an_idle_consumer_wakes_when_a_message_is_enqueued(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = build_broker(redis_url=redis_url, namespace=f"nbt-{secrets.token_hex(4)}")
    assert isinstance(broker, WakingRedisBroker)
    consumer = broker.consume(EXECUTION_TASK_QUEUE, prefetch=1, timeout=IDLE_MS)

    # Counted, not a flag: the consumer may reach its second wait before
    # this thread has seen the first (a cleared flag would lose it).
    idle = threading.Semaphore(0)
    real_wait = taskqueue._WakingConsumer._wait  # white box: when it waits

    def noted_wait(self: taskqueue._WakingConsumer) -> None:
        idle.release()
        real_wait(self)

    monkeypatch.setattr(taskqueue._WakingConsumer, "_wait", noted_wait)
    received: queue.Queue[MessageProxy] = queue.Queue()
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            item = next(consumer)
            if item is not None:
                received.put(item)
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        # Two empty fetches: the first wait returns at once (it reads the
        # subscription's confirmation); the second is the idle wait.
        assert idle.acquire(timeout=WAIT)
        assert idle.acquire(timeout=WAIT)
        broker.enqueue(message("abc"))
        got = received.get(timeout=WAIT)
        assert got.args == ("abc",)
        consumer.ack(got)
    finally:
        stop.set()
        broker.enqueue(message("unblock"))  # ends a wait still in progress
        thread.join(WAIT)
        consumer.close()
        broker.close()
    assert not thread.is_alive()


def test_a_delayed_message_publishes_no_wake_up(redis_url: str) -> None:
    broker = build_broker(redis_url=redis_url, namespace=f"nbt-{secrets.token_hex(4)}")
    assert isinstance(broker, WakingRedisBroker)
    listener = broker.client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(broker.wake_channel(EXECUTION_TASK_QUEUE))
    listener.subscribe(broker.wake_channel(WEBHOOK_TASK_QUEUE))
    try:
        assert listener.get_message(timeout=WAIT) is None  # a confirmation
        assert listener.get_message(timeout=WAIT) is None  # the other one
        broker.enqueue(message("later"), delay=60_000)
        # Publishes reach a subscriber in order: had the delayed message
        # published a wake-up, it would come before this one.
        broker.enqueue(message("deliver", queue_name=WEBHOOK_TASK_QUEUE))
        wake = listener.get_message(timeout=WAIT)
        assert wake is not None
        assert wake["channel"] == broker.wake_channel(WEBHOOK_TASK_QUEUE).encode()
    finally:
        listener.close()
        broker.close()


def test_a_consumer_is_woken_only_for_its_own_queue(redis_url: str) -> None:
    """The webhook queue's consumer is not woken by an execution's message."""
    broker = build_broker(redis_url=redis_url, namespace=f"nbt-{secrets.token_hex(4)}")
    assert isinstance(broker, WakingRedisBroker)
    listener = broker.client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(broker.wake_channel(WEBHOOK_TASK_QUEUE))
    try:
        assert listener.get_message(timeout=WAIT) is None  # the confirmation
        broker.enqueue(message("run"))
        broker.enqueue(message("deliver", queue_name=WEBHOOK_TASK_QUEUE))
        wake = listener.get_message(timeout=WAIT)
        assert wake is not None
        assert wake["data"] == WEBHOOK_TASK_QUEUE.encode()  # not the execution's
    finally:
        listener.close()
        broker.close()


@pytest.mark.asyncio
async def test_a_slow_send_is_a_warning(redis_url: str) -> None:
    """An enqueue Redis holds up is logged with its duration.

    ``CLIENT PAUSE ... WRITE`` makes Redis hold every client's writes (the
    enqueue script included) for that long: a real stall on demand.
    """
    broker = build_broker(redis_url=redis_url, namespace=f"nbt-{secrets.token_hex(4)}")
    assert isinstance(broker, WakingRedisBroker)
    task_queue = TaskQueue(broker)
    try:
        async with asyncio.timeout(WAIT):
            await task_queue.enqueue_execution("fast")
            broker.client.execute_command("CLIENT", "PAUSE", "300", "WRITE")
            with structlog.testing.capture_logs() as logs:
                await task_queue.enqueue_execution("held")
    finally:
        broker.client.execute_command("CLIENT", "UNPAUSE")
        broker.close()
    slow = [entry for entry in logs if entry["event"] == "Slow queue send"]
    assert len(slow) == 1
    assert slow[0]["log_level"] == "warning"
    assert slow[0]["seconds"] >= 0.3
    assert slow[0]["queue"] == EXECUTION_TASK_QUEUE
