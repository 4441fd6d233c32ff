"""Starting and stopping a Dramatiq worker inside a Noteburst process.

Used twice: by the embedded default, which runs a worker beside the API in
one process, and by ``noteburst worker``, which runs only a worker.  The
Dramatiq CLI is not used because Noteburst builds its broker from its own
configuration and wants a short idle poll (Dramatiq's Redis consumer sleeps
up to ``worker_timeout`` when idle, 1 s by default, which a page view would
feel).  Each worker fetches only as many messages as it has threads, so
work goes to idle workers instead of queueing behind a busy one.
"""

from __future__ import annotations

import dramatiq

from ..config import Config
from ..storage.events import EventBus
from .actors import declare_actors
from .runtime import PURGE_INTERVAL_SECONDS, WorkerRuntime, WorkerStartupError

__all__ = ["IDLE_POLL_MS", "start_worker"]

IDLE_POLL_MS = 100
"""Longest an idle Redis consumer waits before fetching again.

An enqueue wakes it sooner (see :mod:`noteburst.storage.taskqueue`); this is
the fallback for a lost wake-up.
"""

STOP_AFTER_FAILED_START_MS = 10_000
"""Bound on stopping a worker whose start failed (it has no threads yet)."""


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

    Raises
    ------
    WorkerStartupError
        If the worker could not build its context (e.g. no bot identity
        became free in time); nothing is left running.
    """
    runtime = WorkerRuntime(
        config,
        bus=bus,
        recover_everything_at_start=embedded,
        sweep_interval=config.workers.lease_seconds / 2,
        purge_interval=PURGE_INTERVAL_SECONDS,
    )
    broker.add_middleware(runtime)
    declare_actors(
        broker, runtime, time_limit_seconds=config.limits.max_timeout_seconds + 3600
    )
    worker = dramatiq.Worker(
        broker, worker_threads=config.workers.threads, worker_timeout=IDLE_POLL_MS
    )
    # Dramatiq prefetches twice as many messages as there are threads.  A
    # notebook may run for hours, and a prefetched message would wait behind
    # it while another worker sits idle: take only what can start at once.
    worker.queue_prefetch = config.workers.threads
    try:
        worker.start()
    except WorkerStartupError:
        # The AsyncIO middleware's loop thread (not a daemon) is already
        # running; stop it, or a worker that cannot start never exits.
        worker.stop(timeout=STOP_AFTER_FAILED_START_MS)
        raise
    return worker
