"""The actors: thin, idempotent, given only an execution id.

Actors are declared on the broker an entry point passes in (rather than on
Dramatiq's global broker at import time), so the embedded default and the
Redis worker, and tests of each, declare the same actor on their own broker.
Retries are off at the Dramatiq level: the runner records every failure on
the execution itself, and recovery from a lost worker is the lease sweep's
job, which counts attempts (Dramatiq does not count crashes).  The same
holds for webhook deliveries: their attempts and backoff are in the
database, and the webhook actor only starts an attempt on the worker's
loop (see :meth:`WorkerRuntime.start_delivery`).
"""

from __future__ import annotations

from typing import Any

import dramatiq

from ..constants import (
    EXECUTE_ACTOR_NAME,
    EXECUTION_TASK_QUEUE,
    WEBHOOK_ACTOR_NAME,
    WEBHOOK_TASK_QUEUE,
)
from .runtime import WorkerRuntime

__all__ = ["declare_actors"]


def declare_actors(
    broker: dramatiq.Broker, runtime: WorkerRuntime, *, time_limit_seconds: float
) -> dramatiq.Actor[Any, Any]:
    """Declare the execute and webhook actors on ``broker``.

    Parameters
    ----------
    broker
        The broker to consume from.
    runtime
        Provides a factory per message.
    time_limit_seconds
        Hard limit for one message; above the longest allowed execution, as
        the runner enforces the execution's own timeout.

    Returns
    -------
    dramatiq.Actor
        The execute actor.
    """

    async def execute_notebook(execution_id: str) -> None:
        await runtime.factory().create_runner().run(execution_id)

    async def deliver_webhook(execution_id: str) -> None:
        runtime.start_delivery(execution_id)

    dramatiq.actor(
        broker=broker,
        actor_name=WEBHOOK_ACTOR_NAME,
        queue_name=WEBHOOK_TASK_QUEUE,
        max_retries=0,
    )(deliver_webhook)
    decorate = dramatiq.actor(
        broker=broker,
        actor_name=EXECUTE_ACTOR_NAME,
        queue_name=EXECUTION_TASK_QUEUE,
        max_retries=0,
        time_limit=int(time_limit_seconds * 1000),
    )
    return decorate(execute_notebook)
