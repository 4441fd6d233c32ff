"""Names and defaults shared by every layer.

Kept in one module without internal imports so that the web tier can name an
actor or a task queue without importing worker code, and so that the
defaults a user reads in docs/configuration.md have exactly one source.

Two words are kept apart everywhere: a submission's *queue* is its
:class:`~noteburst.domain.execution.ExecutionQueue` (``INTERACTIVE`` or
``BATCH``, the order workers claim in); a *task queue* is Dramatiq's (Redis
or in-process), which only carries wake-ups to workers
(:class:`~noteburst.storage.taskqueue.TaskQueue`).
"""

__all__ = [
    "ADMIN_SCOPE",
    "CANCELS_CHANNEL",
    "DEFAULT_KERNEL_NAME",
    "DEFAULT_MAX_NOTEBOOK_BYTES",
    "DEFAULT_TIMEOUT_SECONDS",
    "EVENTS_CHANNEL",
    "EXECUTE_ACTOR_NAME",
    "EXECUTION_TASK_QUEUE",
    "KERNEL_WS_SUBPROTOCOL",
    "LOCAL_USER",
    "TOKEN_PREFIX",
    "USER_SCOPE",
    "WEBHOOK_ACTOR_NAME",
    "WEBHOOK_TASK_QUEUE",
]

DEFAULT_KERNEL_NAME = "python3"
"""Kernel used when neither the request nor the notebook's kernelspec names one."""

DEFAULT_MAX_NOTEBOOK_BYTES = 16 * 1024 * 1024
"""Largest submitted notebook, in bytes of its JSON text (16 MiB)."""

DEFAULT_TIMEOUT_SECONDS = 600.0
"""Whole-execution timeout when a submission does not give one."""

EXECUTE_ACTOR_NAME = "execute_notebook"
"""Dramatiq actor that runs one execution, given only its id."""

EXECUTION_TASK_QUEUE = "noteburst-executions"
"""Dramatiq task queue the execute actor consumes (wake-ups only)."""

WEBHOOK_ACTOR_NAME = "deliver_webhook"
"""Dramatiq actor that makes one delivery attempt of an execution's webhook."""

WEBHOOK_TASK_QUEUE = "noteburst-webhooks"
"""Dramatiq task queue of webhook deliveries, apart from executions.

The actor only starts the attempt on the worker's event loop and returns,
so a slow receiver never holds a worker thread an execution could use.
"""

EVENTS_CHANNEL = "noteburst_events"
"""Postgres LISTEN/NOTIFY channel announcing new execution events."""

CANCELS_CHANNEL = "noteburst_cancels"
"""Postgres LISTEN/NOTIFY channel telling workers to cancel a running execution.

Separate from :data:`EVENTS_CHANNEL` so a worker hears only cancellations,
not every progress event of every execution.
"""

KERNEL_WS_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
"""Binary kernel websocket protocol offered by jupyter_server 2.x."""

USER_SCOPE = "exec:notebook"
"""Scope to submit executions and see one's own (Rubin's name for it)."""

ADMIN_SCOPE = "exec:admin"
"""Scope to see and cancel everyone's executions (Rubin's name for it)."""

LOCAL_USER = "local"
"""The one user of ``auth_mode=none``, and the owner given to executions that
existed before executions had owners."""

TOKEN_PREFIX = "nbt_"  # noqa: S105 (a prefix, not a secret)
"""Start of every Noteburst API token, so secret scanners can recognise one."""
