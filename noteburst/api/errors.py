"""Expected failures as GraphQL types, and the one place that maps them.

Expected failures are part of the schema: a mutation returns a union of its
success type and these payloads, so clients branch on ``__typename`` rather
than parse error strings.  Where a field cannot return a union (queries and
subscriptions), :class:`UserFacingError` carries the client error's message
and code in ``extensions``.

A database outage is neither the caller's fault nor a bug: any operation
it interrupts answers with :func:`unavailable_error`, a GraphQL error whose
``extensions`` say ``code: "service_unavailable"``, ``retryable: true`` and
``retryAfterSeconds``, so clients can retry (a subscription resumes with
``afterSequence``).  A request refused before any GraphQL runs (its
credentials could not be checked) gets HTTP 503 with ``Retry-After``
(:func:`unavailable_response`), as GraphQL-over-HTTP asks of a request that
could not be executed; once execution started the answer is a GraphQL
response, HTTP 200, with the error in it.

Everything else is masked by :func:`should_mask_error`: the client sees
"Unexpected error." and the logs get the traceback.
"""

from __future__ import annotations

import math

import strawberry
from graphql import GraphQLError
from starlette.responses import JSONResponse
from starlette.status import HTTP_503_SERVICE_UNAVAILABLE

from ..exceptions import (
    ClientError,
    InvalidInputError,
    InvalidNotebookError,
    InvalidParametersError,
    LimitExceededError,
    ServiceUnavailableError,
    UnknownKernelError,
    WebhookRefusedError,
)
from ..exceptions import LimitKind as DomainLimitKind

__all__ = [
    "ExecutionNotFound",
    "InvalidInput",
    "InvalidNotebook",
    "InvalidParameters",
    "LimitExceeded",
    "LimitKind",
    "UnknownKernel",
    "UserFacingError",
    "WebhookRefused",
    "payload_for",
    "should_mask_error",
    "unavailable_error",
    "unavailable_extensions",
    "unavailable_response",
]


@strawberry.type(
    description=(
        "The notebook was not accepted: not JSON, not a notebook, invalid "
        "nbformat (the message names the failing path), or too large."
    )
)
class InvalidNotebook:
    message: str


@strawberry.type(description="The requested kernel is not available here.")
class UnknownKernel:
    message: str
    kernel_name: str
    available_kernels: list[str]


@strawberry.type(description="An argument other than the notebook is out of range.")
class InvalidInput:
    message: str
    field: str = strawberry.field(description="The input field at fault.")


@strawberry.type(
    description=(
        "A parameter cannot be given to this notebook: its name is not an "
        "identifier, or its value does not fit the type of the default in "
        "the notebook's parameters cell."
    )
)
class InvalidParameters:
    message: str
    name: str = strawberry.field(description="The parameter at fault.")


@strawberry.type(
    description=(
        "The webhook URL names or resolves to an address Noteburst may not "
        "call: loopback, private, link-local (cloud metadata), CGNAT, "
        "multicast, reserved or unspecified, unless the operator allows it; "
        "or its name could not be resolved in time."
    )
)
class WebhookRefused:
    message: str
    field: str = strawberry.field(description="The input field at fault.")


@strawberry.type(description="No execution has this id.")
class ExecutionNotFound:
    message: str
    id: strawberry.ID = strawberry.field(description="The id asked for.")


LimitKind = strawberry.enum(
    DomainLimitKind, name="LimitKind", description="Which limit refused a submission."
)


@strawberry.type(description="A per-user or per-request limit refused the submission.")
class LimitExceeded:
    message: str
    limit: DomainLimitKind
    maximum: int


ErrorPayload = (
    InvalidNotebook
    | UnknownKernel
    | InvalidInput
    | InvalidParameters
    | LimitExceeded
    | WebhookRefused
)


def payload_for(error: ClientError) -> ErrorPayload:
    """Return the GraphQL payload for an expected failure of a mutation.

    Raises
    ------
    ClientError
        Re-raised if it has no payload type (it then reaches the client as a
        :class:`UserFacingError` through the schema's error handling).
    """
    if isinstance(error, InvalidNotebookError):
        return InvalidNotebook(message=error.message)
    if isinstance(error, UnknownKernelError):
        return UnknownKernel(
            message=error.message,
            kernel_name=error.kernel_name,
            available_kernels=error.available,
        )
    if isinstance(error, InvalidInputError):
        return InvalidInput(message=error.message, field=error.field)
    if isinstance(error, InvalidParametersError):
        return InvalidParameters(message=error.message, name=error.name)
    if isinstance(error, LimitExceededError):
        return LimitExceeded(
            message=error.message, limit=error.limit, maximum=error.maximum
        )
    if isinstance(error, WebhookRefusedError):
        return WebhookRefused(message=error.message, field=error.field)
    raise error


class UserFacingError(GraphQLError):
    """A client error shown as-is, with its stable code in ``extensions``."""

    def __init__(self, error: ClientError) -> None:
        super().__init__(error.message, extensions={"code": error.code})


def unavailable_extensions(error: ServiceUnavailableError) -> dict[str, object]:
    """Return the ``extensions`` telling a client to come back shortly."""
    return {
        "code": error.code,
        "retryable": True,
        "retryAfterSeconds": math.ceil(error.retry_after_seconds),
    }


def unavailable_error(error: GraphQLError) -> GraphQLError | None:
    """Return the client's view of an operation a database outage interrupted.

    Returns
    -------
    GraphQLError or None
        The error with a fixed message (the cause, which names hosts and
        ports, stays in the logs) and :func:`unavailable_extensions`; `None`
        if ``error`` was not caused by an outage.
    """
    original = error.original_error
    if not isinstance(original, ServiceUnavailableError):
        return None
    return GraphQLError(
        message=original.message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=unavailable_extensions(original),
    )


def unavailable_response(error: ServiceUnavailableError) -> JSONResponse:
    """Return the HTTP 503 refusing a request that could not reach GraphQL."""
    body = {
        "errors": [
            {"message": error.message, "extensions": unavailable_extensions(error)}
        ]
    }
    return JSONResponse(
        body,
        status_code=HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(math.ceil(error.retry_after_seconds))},
    )


def should_mask_error(error: GraphQLError) -> bool:
    """Mask unexpected exceptions, but not validation or client errors.

    Validation errors have no original error; our client errors arrive as
    :class:`UserFacingError` (a GraphQLError) or as a raw
    :class:`ClientError` raised from a resolver.  An outage is replaced too,
    but by :func:`unavailable_error`, not by the mask.
    """
    original = error.original_error
    if original is None:
        return False
    return not isinstance(original, GraphQLError | ClientError)
