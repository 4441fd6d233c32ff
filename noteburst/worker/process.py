"""Starting and stopping a Dramatiq worker inside a Noteburst process.

Used twice: by the embedded default, which runs a worker beside the API in
one process, and by ``noteburst worker``, which runs only a worker.  The
Dramatiq CLI is not used because Noteburst builds its broker from its own
configuration and wants a short idle poll (Dramatiq's Redis consumer sleeps
up to ``worker_timeout`` when idle, 1 s by default, which a page view would
feel).
"""

from __future__ import annotations

import dramatiq

from ..config import Config
from ..storage.events import EventBus
from .actors import declare_actors
from .runtime import WorkerRuntime

__all__ = ["IDLE_POLL_MS", "start_worker"]

IDLE_POLL_MS = 100
"""Longest an idle Redis consumer waits before fetching again.

An enqueue wakes it sooner (see :mod:`noteburst.storage.taskqueue`); this is
the fallback for a lost wake-up.
"""


def start_worker(
    config: Config,
    broker: dramatiq.Broker,
    *,
    bus: EventBus,
    embedded: bool,
) -> dramatiq.Worker:
    """Declare the actors and start a worker consuming ``broker``.

    Parameters
    ----------
    config
        The configuration.
    broker
        The process's broker (with the ``AsyncIO`` middleware).
    bus
        Where committed events are announced.
    embedded
        Whether this is the only worker (every running execution found at
        start is then treated as lost).

    Returns
    -------
    dramatiq.Worker
        The started worker; call ``stop()`` to stop it.
    """
    runtime = WorkerRuntime(
        config,
        bus=bus,
        recover_everything_at_start=embedded,
        sweep_interval=config.worker_lease_seconds / 2,
    )
    broker.add_middleware(runtime)
    declare_actors(
        broker, runtime, time_limit_seconds=config.max_timeout_seconds + 3600
    )
    worker = dramatiq.Worker(
        broker, worker_threads=config.worker_threads, worker_timeout=IDLE_POLL_MS
    )
    worker.start()
    return worker
