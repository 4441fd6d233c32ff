"""The GraphQL schema: queries, mutations and the status subscription.

Resolvers are thin: they convert input, call one service method and convert
the result; client errors become typed payloads (mutations) or
:class:`~noteburst.api.errors.UserFacingError` (queries, subscriptions).
The SDL is exported to the repository's ``schema.graphql`` by
``python -m noteburst.api.export_schema``; a test fails when it is stale.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Annotated, TypeVar

import strawberry
import structlog
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.scalars import JSON
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from ..config import GraphQLSettings
from ..domain.cache import CacheMode, CachePolicy
from ..domain.execution import EventKind, ExecutionQueue, ExecutionStatus
from ..domain.webhook import WebhookRequest
from ..exceptions import (
    ClientError,
    ExecutionNotFoundError,
    ServiceUnavailableError,
)
from .context import GraphQLContext
from .errors import (
    ExecutionNotFound,
    InvalidInput,
    InvalidNotebook,
    InvalidParameters,
    LimitExceeded,
    UnknownKernel,
    UserFacingError,
    WebhookRefused,
    payload_for,
    should_mask_error,
    unavailable_error,
)
from .types import (
    Execution,
    ExecutionConnection,
    ExecutionEdge,
    ExecutionEvent,
    PageInfo,
)

__all__ = ["Mutation", "Query", "Subscription", "schema"]

Info = strawberry.Info[GraphQLContext, None]

_logger = structlog.get_logger("noteburst.api")


@strawberry.input(description="How a submission uses the result cache.")
class CacheInput:
    mode: CacheMode = strawberry.field(
        default=CacheMode.BYPASS,
        description="USE, REFRESH or BYPASS (see CacheMode).",
    )
    max_age_seconds: float | None = strawberry.field(
        default=None,
        description=(
            "With USE: reuse only a result finished at most this many seconds "
            "ago; null: any age. Results are kept only as long as the server's "
            "retention (NOTEBURST_RETENTION_DAYS): an older one is gone, and "
            "the notebook runs again."
        ),
    )


@strawberry.input(
    description=(
        "Where to POST a signed message when the execution ends (Standard "
        "Webhooks: webhook-id, webhook-timestamp, webhook-signature)."
    )
)
class WebhookInput:
    url: str = strawberry.field(
        description=(
            "http(s) URL. Its host must resolve to public addresses only "
            "(unless the operator allows others); redirects are not followed."
        )
    )
    secret: str = strawberry.field(
        description=(
            "Signing secret, 'whsec_' + base64 of 24 to 64 random bytes. "
            "Stored encrypted; never returned."
        )
    )


@strawberry.input(description="A notebook to execute.")
class SubmitExecutionInput:
    notebook: JSON = strawberry.field(
        description=(
            "An nbformat v4 document as a JSON object (a JSON string holding "
            "one is accepted too)."
        )
    )
    kernel_name: str | None = strawberry.field(
        default=None,
        description=(
            "Kernel to run on; default: the notebook's kernelspec, else python3."
        ),
    )
    timeout_seconds: float | None = strawberry.field(
        default=None,
        description="Timeout for the whole execution; default from configuration.",
    )
    cell_timeout_seconds: float | None = strawberry.field(
        default=None,
        description=(
            "Timeout for each cell (its clock starts when the cell before it "
            "is complete); default from configuration, where unset means none."
        ),
    )
    no_output_timeout_seconds: float | None = strawberry.field(
        default=None,
        description=(
            "How long a cell may produce no output before the execution times "
            "out; default from configuration, where unset means none."
        ),
    )
    parameters: JSON | None = strawberry.field(
        default=None,
        description=(
            "Values for the notebook's parameters (a JSON object), injected as "
            "papermill does: a cell tagged injected-parameters after the cell "
            "tagged parameters (at the top when there is none). Values keep "
            "their JSON types; one that does not fit the type of a literal "
            "default in the parameters cell is refused (InvalidParameters)."
        ),
    )
    queue: ExecutionQueue = strawberry.field(
        default=ExecutionQueue.INTERACTIVE,
        description=(
            "INTERACTIVE (default, so existing clients keep their latency) or "
            "BATCH (bulk work that should give way to page views)."
        ),
    )
    cache: CacheInput | None = strawberry.field(
        default=None,
        description=(
            "Result cache use; default BYPASS, because a notebook may read "
            "the clock or live data and a client that did not ask must never "
            "get an old result."
        ),
    )
    webhook: WebhookInput | None = strawberry.field(
        default=None,
        description=(
            "Called once when the execution ends, however it ends; retried "
            "with backoff (see Execution.webhookDeliveries)."
        ),
    )


SubmitExecutionPayload = Annotated[
    Execution
    | InvalidNotebook
    | UnknownKernel
    | InvalidInput
    | InvalidParameters
    | LimitExceeded
    | WebhookRefused,
    strawberry.union(
        "SubmitExecutionPayload",
        description="The queued execution, or why the submission was refused.",
    ),
]


CancelExecutionPayload = Annotated[
    Execution | ExecutionNotFound,
    strawberry.union(
        "CancelExecutionPayload",
        description=(
            "The execution after the request (a finished one unchanged), or "
            "ExecutionNotFound."
        ),
    ),
]


_Service = TypeVar("_Service")


def _service(make: Callable[[], _Service]) -> _Service:
    """Return a service for the operation's caller.

    ``make`` is one of the context's service methods, e.g.
    ``_service(info.context.watcher)``.

    Raises
    ------
    UserFacingError
        Raised if the connection has no caller.
    """
    try:
        return make()
    except ClientError as exc:
        raise UserFacingError(exc) from exc


@strawberry.type
class Query:
    @strawberry.field(
        description=(
            "One execution, or null when the id is unknown or the execution "
            "is another user's (the two are indistinguishable)."
        )
    )
    async def execution(self, info: Info, id: strawberry.ID) -> Execution | None:
        service = _service(info.context.execution_service)
        found = await service.get(str(id))
        return Execution.from_domain(found) if found else None

    @strawberry.field(
        description=(
            "The caller's executions (everyone's for an administrator), "
            "newest first, with cursor pagination."
        )
    )
    async def executions(
        self,
        info: Info,
        first: int | None = 20,
        after: str | None = None,
        status: ExecutionStatus | None = None,
    ) -> ExecutionConnection:
        service = _service(info.context.execution_service)
        try:
            page = await service.list(first=first, after=after, status=status)
        except ClientError as exc:
            raise UserFacingError(exc) from exc
        edges = [
            ExecutionEdge(cursor=cursor, node=Execution.from_domain(execution))
            for execution, cursor in zip(page.executions, page.cursors, strict=True)
        ]
        return ExecutionConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next_page,
                end_cursor=page.cursors[-1] if page.cursors else None,
            ),
        )


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Queue a notebook for execution.")
    async def submit_execution(
        self,
        info: Info,
        input: SubmitExecutionInput,
    ) -> SubmitExecutionPayload:
        service = _service(info.context.submission_service)
        try:
            execution = await service.submit(
                input.notebook,
                kernel_name=input.kernel_name,
                timeout_seconds=input.timeout_seconds,
                parameters=input.parameters,
                queue=input.queue,
                cache=None
                if input.cache is None
                else CachePolicy(
                    mode=input.cache.mode,
                    max_age_seconds=input.cache.max_age_seconds,
                ),
                cell_timeout_seconds=input.cell_timeout_seconds,
                no_output_timeout_seconds=input.no_output_timeout_seconds,
                webhook=None
                if input.webhook is None
                else WebhookRequest(url=input.webhook.url, secret=input.webhook.secret),
            )
        except ClientError as exc:
            return payload_for(exc)
        return Execution.from_domain(execution)

    @strawberry.mutation(
        description=(
            "Cancel an execution. A queued one ends CANCELLED at once; a "
            "running one is interrupted by its worker and ends CANCELLED with "
            "the notebook as far as it got (the returned execution may still "
            "be RUNNING, with cancelRequested true: the executionStatus "
            "subscription delivers the terminal event). Cancelling a finished "
            "execution returns it unchanged."
        )
    )
    async def cancel_execution(
        self, info: Info, id: strawberry.ID
    ) -> CancelExecutionPayload:
        service = _service(info.context.execution_service)
        try:
            execution = await service.cancel(str(id))
        except ExecutionNotFoundError as exc:
            return ExecutionNotFound(message=exc.message, id=id)
        return Execution.from_domain(execution)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description=(
            "The execution's current state at once (or every event after "
            "afterSequence), then every change until it ends; then completes."
        )
    )
    async def execution_status(
        self,
        info: Info,
        id: strawberry.ID,
        after_sequence: int | None = None,
        kinds: Annotated[
            list[EventKind] | None,
            strawberry.argument(
                description=(
                    "Only events of these kinds (the terminal FINISHED event "
                    "always comes, and ends the subscription); null: every "
                    "event. A page waiting for a result passes [QUEUED, "
                    "RUNNING, LAB_STARTING] and is spared the cell events, "
                    "which are most of a run's events; [] waits for the end."
                )
            ),
        ] = None,
    ) -> AsyncGenerator[ExecutionEvent, None]:
        service = _service(info.context.watcher)
        try:
            async for watched in service.watch(
                str(id), after_sequence=after_sequence, kinds=kinds
            ):
                yield ExecutionEvent.from_domain(watched.event, watched.execution)
        except ClientError as exc:
            raise UserFacingError(exc) from exc


class _MaskErrors(MaskErrors):
    """Mask unexpected errors; explain outages (see :mod:`.errors`)."""

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        return unavailable_error(error) or super().anonymise_error(error)


class _Schema(strawberry.Schema):
    """Log only unexpected errors; client and validation errors are answers.

    An unexpected error reaches the client as "Unexpected error." (see
    :func:`should_mask_error`); the log gets its traceback with what an
    operator needs to find the request: the operation, the field path and
    the caller (never the variables, which may hold a notebook).
    """

    def process_errors(
        self,
        errors: list[GraphQLError],
        execution_context: ExecutionContext | None = None,
    ) -> None:
        operation = None
        user = None
        if execution_context is not None:
            operation = execution_context.operation_name
            context = execution_context.context
            caller = getattr(context, "caller", None)
            user = getattr(caller, "user", None)
        for error in errors:
            if not should_mask_error(error):
                continue
            original = error.original_error
            if isinstance(original, ServiceUnavailableError):
                _logger.warning(
                    "GraphQL operation interrupted: service unavailable",
                    operation=operation,
                    path=".".join(str(part) for part in error.path or ()),
                    user=user,
                    error=str(original),
                )
                continue
            _logger.error(
                "Unexpected error in a GraphQL operation",
                operation=operation,
                path=".".join(str(part) for part in error.path or ()),
                user=user,
                error_type=type(original).__name__,
                exc_info=original,
            )


DOCUMENT_CACHE_SIZE = 128
"""Distinct GraphQL documents whose parse and validation are remembered."""


def create_schema(limits: GraphQLSettings | None = None) -> strawberry.Schema:
    """Build the schema with its error masking and document limits.

    The limits (``config.graphql``) bound how big a GraphQL document may
    be, so none can exhaust the server.  Introspection fields do not count
    towards the depth (GraphiQL's introspection query is deep but
    harmless).  Notebooks belong in variables, which are not tokens; a
    notebook written inline as a GraphQL literal counts every bracket and
    word.

    Clients send the same few documents over and over (the notebook is a
    variable), and parsing plus validating one is CPU work that would
    otherwise be repeated on every request, on the path of its answer.  So
    both are cached (bounded LRU, keyed by the document text, then by the
    parsed document and the rules).  The limit rules are built once per
    schema, not per operation, so that the validation cache key stays the
    same; they keep no state between validations.
    """
    limits = limits or GraphQLSettings()
    limit_rules = [
        *QueryDepthLimiter(max_depth=limits.max_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=limits.max_aliases).validation_rules,
    ]
    return _Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[
            lambda: _MaskErrors(should_mask_error=should_mask_error),
            # Factories, not instances: an extension keeps per-operation state.
            lambda: MaxTokensLimiter(max_token_count=limits.max_tokens),
            lambda: AddValidationRules(limit_rules),
            lambda: ParserCache(maxsize=DOCUMENT_CACHE_SIZE),
            lambda: ValidationCache(maxsize=DOCUMENT_CACHE_SIZE),
        ],
        config=StrawberryConfig(),
    )


schema = create_schema()
"""The schema with default limits (what ``schema.graphql`` is exported from)."""
