"""Starting and stopping a Dramatiq worker inside a Noteburst process.

Used twice: by the embedded default, which runs a worker beside the API in
one process, and by ``noteburst worker``, which runs only a worker.  The
Dramatiq CLI is not used because Noteburst builds its broker from its own
configuration and wants a short idle poll (Dramatiq's Redis consumer sleeps
up to ``worker_timeout`` when idle, 1 s by default, which a page view would
feel).  Each worker fetches only as many messages as it has threads, so
work goes to idle workers instead of queueing behind a busy one.

A worker stops gracefully (:meth:`RunningWorker.stop`): it pauses Dramatiq's
consumer and worker threads (no new message is taken; prefetched ones go
back to Redis when the worker stops), lets running executions finish for
the grace period, and hands the rest back to the queue (see
:mod:`noteburst.services.drain`).
"""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq

from ..config import Config
from ..storage.events import EventBus
from .actors import declare_actors
from .runtime import PURGE_INTERVAL_SECONDS, WorkerRuntime, WorkerStartupError

__all__ = ["IDLE_POLL_MS", "RunningWorker", "start_worker"]

IDLE_POLL_MS = 100
"""Longest an idle Redis consumer waits before fetching again.

An enqueue wakes it sooner (see :mod:`noteburst.storage.taskqueue`); this is
the fallback for a lost wake-up.
"""

STOP_AFTER_FAILED_START_MS = 10_000
"""Bound on stopping a worker whose start failed (it has no threads yet)."""

STOP_AFTER_DRAIN_MS = 60_000
"""Bound on Dramatiq's own stop once the drain is over (threads are idle)."""


@dataclass(frozen=True)
class RunningWorker:
    """A started worker, and the runtime its graceful stop goes through."""

    worker: dramatiq.Worker
    runtime: WorkerRuntime
    grace_seconds: float
    """Default grace period of :meth:`stop` (``workers.shutdown_grace_seconds``)."""

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop taking work, let running executions finish, hand back the rest.

        Blocks until the worker has stopped: at most the grace period, the
        hand-back's bound and Dramatiq's own stop.

        Parameters
        ----------
        grace_seconds
            How long running executions may take to finish; default
            :attr:`grace_seconds`.
        """
        grace = self.grace_seconds if grace_seconds is None else grace_seconds
        # Public flags of Dramatiq's threads, set without waiting (its
        # Worker.pause waits for running messages, which is the grace
        # period's job): a paused consumer fetches nothing more, a paused
        # worker thread takes nothing more from the in-memory queue.
        for consumer in self.worker.consumers.values():
            consumer.pause()
        for thread in self.worker.workers:
            thread.pause()
        try:
            self.runtime.drain(grace)
        finally:
            self.worker.stop(timeout=STOP_AFTER_DRAIN_MS)


def start_worker(
    config: Config,
    broker: dramatiq.Broker,
    *,
    bus: EventBus,
    embedded: bool,
) -> RunningWorker:
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
    RunningWorker
        The started worker; call ``stop()`` to stop it (gracefully).

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
    return RunningWorker(
        worker, runtime, grace_seconds=config.workers.shutdown_grace_seconds
    )
