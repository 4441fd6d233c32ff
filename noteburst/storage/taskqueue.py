"""The queue that carries execution ids from the API to workers.

Messages are only triggers: the database row is the truth, and a worker
claims it with a conditional update, so a lost or duplicated message costs
nothing but a sweep (see :mod:`noteburst.services.runner`).  The web tier
sends by actor and queue *name*, so it never imports worker code.

Two brokers sit behind one interface: Redis for the deployed service, and
Dramatiq's in-memory ``StubBroker`` for the embedded default, where an
in-process worker consumes it.  Both run the same actors.
"""

from __future__ import annotations

import asyncio

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO

from ..constants import EXECUTE_ACTOR_NAME, EXECUTION_QUEUE

__all__ = ["TaskQueue", "build_broker"]


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
        broker = RedisBroker(
            url=redis_url,
            namespace=namespace,
            heartbeat_timeout=15_000,
            socket_timeout=10,
            socket_connect_timeout=10,
        )
    broker.add_middleware(AsyncIO())
    broker.declare_queue(EXECUTION_QUEUE)
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
        delay = None if delay_seconds is None else int(delay_seconds * 1000)
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=EXECUTION_QUEUE,
            actor_name=EXECUTE_ACTOR_NAME,
            args=(execution_id,),
            kwargs={},
            options={},
        )
        if isinstance(self._broker, StubBroker):
            self._broker.enqueue(message, delay=delay)
        else:
            # redis-py is blocking; keep the event loop free.  The client's
            # socket timeouts bound the call.
            await asyncio.to_thread(self._broker.enqueue, message, delay=delay)
