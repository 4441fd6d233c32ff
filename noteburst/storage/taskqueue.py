"""The queue that carries execution ids from the API to workers.

Messages are only wake-ups: the database is the truth and the queue, and a
woken worker claims the most urgent queued execution with a conditional
update (not necessarily the one the message named), so a lost or
duplicated message costs nothing but a sweep (see
:mod:`noteburst.services.runner`).  The web tier
sends by actor and queue *name*, so it never imports worker code.

Two brokers sit behind one interface: Redis for the deployed service, and
Dramatiq's in-memory ``StubBroker`` for the embedded default, where an
in-process worker consumes it.  Both run the same actors.

An idle Dramatiq Redis consumer polls: after an empty fetch it sleeps up to
its idle timeout (``worker_timeout``, 100 ms here) before fetching again, so
a new message waited for the rest of that sleep before a worker saw it, on
every execution's path.  The Redis broker here also publishes a wake-up on
a Redis channel after every enqueue, and its consumers wait on that channel
instead of sleeping: an idle worker fetches as soon as the wake-up reaches
it.  The wake-up is only a hint: a lost or late one costs at most the old
poll interval, as the consumer still fetches at least that often.

Each queue has its own channel.  A worker runs a consumer thread per queue
and per delay queue (four here); with one channel for all, every enqueue
woke all four, and the three with nothing to fetch ran their Redis fetch
script and competed for the interpreter lock with the one that had work,
on the way to every execution's start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO

from ..constants import (
    EXECUTE_ACTOR_NAME,
    EXECUTION_TASK_QUEUE,
    WEBHOOK_ACTOR_NAME,
    WEBHOOK_TASK_QUEUE,
)
from ..exceptions import ServiceUnavailableError

__all__ = ["SLOW_SEND_SECONDS", "TaskQueue", "WakingRedisBroker", "build_broker"]

_logger = structlog.get_logger("noteburst.taskqueue")

SLOW_SEND_SECONDS = 0.1
"""A Redis enqueue slower than this is logged as a warning.

An enqueue is normally a quick Redis round trip, and a submission's answer
waits for it, so a stall (Redis, or this process's thread pool) shows in a
page view's latency and belongs in the log, beside the database's slow
commits.
"""


class WakingRedisBroker(RedisBroker):
    """A Redis broker whose idle consumers wake when a message is enqueued.

    See the module docstring.  The channels are per namespace and queue, so
    deployments sharing a Redis do not wake each other, and a consumer is
    woken only for its own queue.
    """

    def wake_channel(self, queue_name: str) -> str:
        """Return the Redis pub/sub channel of the wake-ups for ``queue_name``."""
        return f"{self.namespace}:wake:{queue_name}"

    def enqueue(
        self, message: dramatiq.Message[Any], *, delay: int | None = None
    ) -> dramatiq.Message[Any]:
        """Enqueue as usual, then publish a wake-up (unless delayed)."""
        enqueued = super().enqueue(message, delay=delay)
        if delay is None:
            try:
                self.client.publish(
                    self.wake_channel(enqueued.queue_name), enqueued.queue_name
                )
            except redis.RedisError as exc:
                # The message is stored; consumers find it by polling.
                _logger.warning("Could not publish a queue wake-up", error=repr(exc))
        return enqueued

    def consume(
        self, queue_name: str, prefetch: int = 1, timeout: int = 5000
    ) -> Consumer:
        """Return a consumer that waits for wake-ups instead of sleeping."""
        # timeout=0: the inner consumer never sleeps after an empty fetch
        # (Dramatiq's backoff is capped at it); the wrapper waits instead.
        inner = super().consume(queue_name, prefetch=prefetch, timeout=0)
        return _WakingConsumer(
            inner, self.client, self.wake_channel(queue_name), timeout / 1000
        )


class _WakingConsumer(Consumer):
    """Wraps a Redis consumer: after an empty fetch, wait for a wake-up.

    Subscribed before the first fetch, so a wake-up published between an
    empty fetch and the wait is buffered on the connection, not lost.  Any
    Redis error on the channel falls back to sleeping ``idle_seconds`` and
    subscribing again later.  Used only from its consumer thread.
    """

    def __init__(
        self,
        inner: Consumer,
        client: redis.Redis,
        channel: str,
        idle_seconds: float,
    ) -> None:
        self._inner = inner
        self._client = client
        self._channel = channel
        self._idle = idle_seconds
        self._pubsub: Any = None

    def __next__(self) -> MessageProxy | None:
        self._subscribe()
        message = next(self._inner)
        if message is None:
            self._wait()
        return message

    def ack(self, message: MessageProxy) -> None:
        self._inner.ack(message)

    def nack(self, message: MessageProxy) -> None:
        self._inner.nack(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        self._inner.requeue(messages)

    def close(self) -> None:
        self._unsubscribe()
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _subscribe(self) -> None:
        if self._pubsub is not None:
            return
        pubsub = self._client.pubsub(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=True
        )
        try:
            pubsub.subscribe(self._channel)
        except redis.RedisError:
            pubsub.close()
            return  # _wait sleeps; the next fetch tries again
        self._pubsub = pubsub

    def _unsubscribe(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()

    def _wait(self) -> None:
        if self._pubsub is None:
            time.sleep(self._idle)
            return
        try:
            self._pubsub.get_message(timeout=self._idle)
            # Several wake-ups (or the subscription's confirmation, which
            # returns None at once) cost at most one more fetch.
            while self._pubsub.get_message(timeout=0) is not None:
                pass
        except redis.RedisError:
            self._unsubscribe()
            time.sleep(self._idle)


def build_broker(*, redis_url: str | None, namespace: str) -> dramatiq.Broker:
    """Create the broker for this process.

    Parameters
    ----------
    redis_url
        Redis to use, or `None` for the in-process broker.
    namespace
        Prefix of Dramatiq's keys in Redis.

    Returns
    -------
    dramatiq.Broker
        A broker with the ``AsyncIO`` middleware (the actors are coroutines)
        and the execution queue declared.
    """
    broker: dramatiq.Broker
    if redis_url is None:
        broker = StubBroker()
    else:
        # A short heartbeat timeout makes Redis hand a dead worker's message
        # to a live one within seconds instead of a minute; the claim in the
        # runner makes the rare duplicate harmless.
        broker = WakingRedisBroker(  # type: ignore[no-untyped-call]
            url=redis_url,
            namespace=namespace,
            heartbeat_timeout=15_000,
            socket_timeout=10,
            socket_connect_timeout=10,
        )
    broker.add_middleware(AsyncIO())
    broker.declare_queue(EXECUTION_TASK_QUEUE)
    broker.declare_queue(WEBHOOK_TASK_QUEUE)
    return broker


class TaskQueue:
    """Sends "run this execution" messages.

    Parameters
    ----------
    broker
        The process's broker, from :func:`build_broker`.
    """

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    @property
    def broker(self) -> dramatiq.Broker:
        """The underlying Dramatiq broker."""
        return self._broker

    async def ping(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound the caller sets
        """Check that the queue (Redis) answers ``PING`` within ``timeout``.

        The in-process queue of the embedded default always answers.

        Raises
        ------
        ServiceUnavailableError
            If Redis did not answer in time or refused.
        """
        client = getattr(self._broker, "client", None)
        if not isinstance(client, redis.Redis):
            return
        try:
            # redis-py is blocking: a thread, bounded by the client's own
            # socket timeouts and by ``timeout`` here (the thread then ends
            # on its own when the socket times out).
            async with asyncio.timeout(timeout):
                await asyncio.to_thread(client.ping)
        except TimeoutError as exc:
            raise ServiceUnavailableError(
                "queue", f"Redis gave no answer within {timeout:g} s"
            ) from exc
        except redis.RedisError as exc:
            raise ServiceUnavailableError("queue", f"Redis: {exc}") from exc

    async def enqueue_execution(
        self, execution_id: str, *, delay_seconds: float | None = None
    ) -> None:
        """Ask a worker to run an execution.

        Parameters
        ----------
        execution_id
            The id of a committed, queued execution.
        delay_seconds
            Deliver no earlier than this (a retry's backoff).
        """
        await self._send(
            EXECUTION_TASK_QUEUE, EXECUTE_ACTOR_NAME, execution_id, delay_seconds
        )

    async def enqueue_webhook(
        self, execution_id: str, *, delay_seconds: float | None = None
    ) -> None:
        """Ask a worker to attempt delivery of an execution's webhook.

        Parameters
        ----------
        execution_id
            An execution whose webhook is (or will be, after the delay) due.
        delay_seconds
            Deliver no earlier than this (a retry's backoff).
        """
        await self._send(
            WEBHOOK_TASK_QUEUE, WEBHOOK_ACTOR_NAME, execution_id, delay_seconds
        )

    async def _send(
        self,
        queue_name: str,
        actor_name: str,
        execution_id: str,
        delay_seconds: float | None,
    ) -> None:
        delay = None if delay_seconds is None else int(delay_seconds * 1000)
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=queue_name,
            actor_name=actor_name,
            args=(execution_id,),
            kwargs={},
            options={},
        )
        if isinstance(self._broker, StubBroker):
            self._broker.enqueue(message, delay=delay)
        else:
            # redis-py is blocking; keep the event loop free.  The client's
            # socket timeouts bound the call.
            sending = time.monotonic()
            await asyncio.to_thread(self._broker.enqueue, message, delay=delay)
            seconds = time.monotonic() - sending
            if seconds > SLOW_SEND_SECONDS:
                _logger.warning(
                    "Slow queue send", seconds=round(seconds, 3), queue=queue_name
                )
