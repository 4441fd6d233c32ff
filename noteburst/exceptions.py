"""Every error Noteburst raises above the Jupyter adapters, in one place.

The hierarchy::

    NoteburstError
    ├── ClientError                 the caller can fix it; mapped to typed
    │   │                           GraphQL payloads, never logged as a fault
    │   ├── InvalidNotebookError    not JSON, not a notebook, invalid nbformat,
    │   │                           too large
    │   ├── UnknownKernelError      no such kernel on this deployment
    │   ├── InvalidParametersError  a parameter name or value the notebook
    │   │                           cannot take
    │   ├── InvalidInputError       any other bad argument (timeout <= 0, ...)
    │   ├── WebhookRefusedError     a webhook URL that resolves to an address
    │   │                           Noteburst must not call (SSRF guard)
    │   ├── ExecutionNotFoundError  no execution with that id (or not the
    │   │                           caller's: the two look the same)
    │   ├── LimitExceededError      a per-user limit refused a submission
    │   ├── AuthenticationError     no credentials, or bad ones (HTTP 401)
    │   ├── PermissionDeniedError   credentials without the needed scope
    │   │                           (HTTP 403)
    │   └── TokenNotFoundError      no API token with that key (CLI)
    ├── ExecutionFinishedError      a worker tried to change an execution that
    │                               already ended (cancelled, given up on):
    │                               it should stop
    ├── ServiceUnavailableError     a service Noteburst depends on (the
    │                               database) cannot be reached right now:
    │                               transient, retried by workers, shown to
    │                               API callers as retryable (HTTP 503)
    └── ConfigurationError          the deployment is misconfigured; raised at
                                    start, never per request

Each client error carries a stable snake-case ``code`` so clients and logs can
match on it without parsing messages.  The Jupyter adapters have their own
hierarchy (:mod:`noteburst.jupyter.exceptions`) because that package is kept
free of Noteburst imports; the runner service converts those into
:class:`noteburst.domain.execution.ExecutionFailure` values stored on the
execution, since a failing notebook is an outcome, not an exception.
"""

from __future__ import annotations

import enum

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConfigurationError",
    "ExecutionFinishedError",
    "ExecutionNotFoundError",
    "InvalidInputError",
    "InvalidNotebookError",
    "InvalidParametersError",
    "LimitExceededError",
    "LimitKind",
    "NoteburstError",
    "PermissionDeniedError",
    "ServiceUnavailableError",
    "TokenNotFoundError",
    "UnknownKernelError",
    "WebhookRefusedError",
]


class NoteburstError(Exception):
    """Root of Noteburst's own exceptions."""


class ClientError(NoteburstError):
    """A request the caller can correct; the message is safe to show them."""

    code = "client_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidNotebookError(ClientError):
    """The submitted notebook cannot be parsed, validated or accepted."""

    code = "invalid_notebook"


class UnknownKernelError(ClientError):
    """The requested kernel is not available on this deployment."""

    code = "unknown_kernel"

    def __init__(self, kernel_name: str, available: list[str]) -> None:
        names = ", ".join(sorted(available)) or "none"
        super().__init__(f"unknown kernel {kernel_name!r}; available kernels: {names}")
        self.kernel_name = kernel_name
        self.available = sorted(available)


class InvalidParametersError(ClientError):
    """A parameter is not an identifier, or its value has the wrong type."""

    code = "invalid_parameters"

    def __init__(self, *, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class InvalidInputError(ClientError):
    """An argument other than the notebook is out of range or malformed."""

    code = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class WebhookRefusedError(ClientError):
    """A webhook URL names or resolves to an address that is not allowed.

    Loopback, private, link-local (the cloud metadata service), and other
    non-public addresses are refused unless the operator allow-listed them;
    so is a name that cannot be resolved in time.
    """

    code = "webhook_refused"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: refused: {reason}")
        self.field = field
        self.reason = reason


class ExecutionNotFoundError(ClientError):
    """No execution has the given id."""

    code = "execution_not_found"

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"no execution with id {execution_id!r}")
        self.execution_id = execution_id


class LimitKind(enum.StrEnum):
    """Which per-user limit refused a submission (stable, for clients)."""

    QUEUED_EXECUTIONS = "queued_executions"
    RUNNING_EXECUTIONS = "running_executions"
    SUBMISSIONS_PER_MINUTE = "submissions_per_minute"


class LimitExceededError(ClientError):
    """A per-user limit refused a submission; the message names the limit."""

    code = "limit_exceeded"

    def __init__(self, limit: LimitKind, maximum: int) -> None:
        what = {
            LimitKind.QUEUED_EXECUTIONS: "queued executions",
            LimitKind.RUNNING_EXECUTIONS: "running executions",
            LimitKind.SUBMISSIONS_PER_MINUTE: "submissions in the last minute",
        }[limit]
        super().__init__(
            f"limit reached: at most {maximum} {what} per user; try again later"
        )
        self.limit = limit
        self.maximum = maximum


class AuthenticationError(ClientError):
    """The request has no credentials, or ones that are not (or no longer) valid.

    The message never says which (unknown, expired or revoked token), so it
    tells a guesser nothing.
    """

    code = "unauthenticated"


class PermissionDeniedError(ClientError):
    """The caller is known but lacks the scope the API needs."""

    code = "forbidden"


class TokenNotFoundError(ClientError):
    """No API token has the given key."""

    code = "token_not_found"

    def __init__(self, key: str) -> None:
        super().__init__(f"no token with key {key!r}")
        self.key = key


class ExecutionFinishedError(NoteburstError):
    """A change was refused because the execution already finished.

    Raised by the event log to a worker still running an execution that was
    cancelled or given up on; not a client error (no request caused it).
    """

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution {execution_id!r} has already finished")
        self.execution_id = execution_id


class ServiceUnavailableError(NoteburstError):
    """A service Noteburst depends on cannot be reached right now.

    Raised by the storage layer when the database refuses or drops the
    connection (a restart, a failover, a network blip), never for a
    statement the database rejected.  It says nothing about the request, so
    it is not a :class:`ClientError`, but it is not a fault in Noteburst
    either: the same request succeeds once the service is back.  Workers
    retry with backoff; the API answers with a typed, retryable error.
    """

    code = "service_unavailable"

    def __init__(
        self, service: str, detail: str, *, retry_after_seconds: float = 5.0
    ) -> None:
        super().__init__(f"the {service} is unavailable: {detail}")
        self.service = service
        self.detail = detail
        self.retry_after_seconds = retry_after_seconds
        self.message = f"The {service} is unavailable right now; retry shortly."


class ConfigurationError(NoteburstError):
    """The service's configuration is inconsistent or unusable."""
