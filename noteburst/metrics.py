"""Noteburst's Prometheus metrics, declared in one place.

Every process serves its own: the API at ``/metrics`` beside ``/graphql``,
and a worker on ``NOTEBURST_WORKER_HTTP_PORT`` (see
:mod:`noteburst.api.ops`); Prometheus adds them up across pods.  So each
metric is counted where its event happens (an execution's end in the worker
that ran it, a submission in the API that took it), never twice.

Labels are bounded: statuses, error codes and queues are enums, kernel
names are the deployment's configured ones (a submission naming another
is refused before it counts).  No execution id, user or URL is ever a label.

The Jupyter adapters declare their own metrics (kernel starts, lab spawns,
pool sizes) in :mod:`noteburst.jupyter.metrics`, since that package imports
nothing of Noteburst's; both use the same default registry.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "DATABASE_SLOW_COMMITS",
    "EXECUTIONS_FINISHED",
    "EXECUTIONS_HANDED_BACK",
    "EXECUTIONS_SUBMITTED",
    "EXECUTION_SECONDS",
    "QUEUE_DEPTH",
    "QUEUE_WAIT_SECONDS",
    "SUBSCRIPTIONS_OPEN",
    "WEBHOOK_DELIVERIES",
]

_DURATION_BUCKETS: Final = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
"""From a trivial notebook on a warm kernel to an hour-long one."""

EXECUTIONS_SUBMITTED: Final = Counter(
    "noteburst_executions_submitted",
    "Executions accepted by this API process, by queue.",
    ["queue"],
)
EXECUTIONS_FINISHED: Final = Counter(
    "noteburst_executions_finished",
    "Executions this worker process ended, by terminal status and error code "
    '(error_code="" for a success).',
    ["status", "error_code"],
)
EXECUTION_SECONDS: Final = Histogram(
    "noteburst_execution_duration_seconds",
    "Time from an execution's start on a worker to its end, by terminal status.",
    ["status"],
    buckets=_DURATION_BUCKETS,
)
EXECUTIONS_HANDED_BACK: Final = Counter(
    "noteburst_executions_handed_back",
    "Running executions a stopping worker put back in the queue (to run "
    "elsewhere) when its shutdown grace period ended.",
)
QUEUE_WAIT_SECONDS: Final = Histogram(
    "noteburst_queue_wait_seconds",
    "Time an execution waited in its queue before a worker started it, by queue.",
    ["queue"],
    buckets=_DURATION_BUCKETS,
)
QUEUE_DEPTH: Final = Gauge(
    "noteburst_queue_depth",
    "Executions waiting in each queue, read from the database when the API's "
    "/metrics is scraped.",
    ["queue"],
)
SUBSCRIPTIONS_OPEN: Final = Gauge(
    "noteburst_subscriptions_open",
    "GraphQL operations running over websockets on this API process (the "
    "executionStatus subscriptions, and the rare query sent over a websocket).",
)
WEBHOOK_DELIVERIES: Final = Counter(
    "noteburst_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, retry, gave_up, ...).",
    ["outcome"],
)
DATABASE_SLOW_COMMITS: Final = Counter(
    "noteburst_database_slow_commits",
    "Database commits slower than 0.1 s (see storage.database.SLOW_COMMIT_SECONDS).",
)
