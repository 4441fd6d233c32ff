"""GraphQL output types, each built from a domain object.

Names follow the GraphQL type they define (no ``Type`` suffix).  Field
descriptions land in schema.graphql, which is what GraphiQL users read.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, cast

import strawberry
from strawberry.scalars import JSON

from ..domain import cache, webhook
from ..domain import execution as domain

if TYPE_CHECKING:
    from .context import GraphQLContext

__all__ = [
    "CacheMode",
    "ErrorCode",
    "EventKind",
    "Execution",
    "ExecutionConnection",
    "ExecutionEdge",
    "ExecutionError",
    "ExecutionEvent",
    "ExecutionQueue",
    "ExecutionStatus",
    "PageInfo",
    "Progress",
    "Webhook",
    "WebhookDelivery",
    "WebhookState",
]

ExecutionStatus = strawberry.enum(
    domain.ExecutionStatus,
    name="ExecutionStatus",
    description="Lifecycle of an execution; all but QUEUED and RUNNING are terminal.",
)
EventKind = strawberry.enum(
    domain.EventKind, name="EventKind", description="What an ExecutionEvent announces."
)
ExecutionQueue = strawberry.enum(
    domain.ExecutionQueue,
    name="ExecutionQueue",
    description=(
        "Which line an execution waits in: a free worker takes INTERACTIVE "
        "(someone waits for a page) before BATCH (documentation CI, bulk "
        "runs); within a queue, oldest first."
    ),
)
CacheMode = strawberry.enum(
    cache.CacheMode,
    name="CacheMode",
    description=(
        "How a submission uses the result cache, keyed by the code cells' "
        "source, the parameters, the kernel and the deployment's environment "
        "tag. USE: reuse a stored success (no older than maxAgeSeconds) as a "
        "new execution with cacheHit true, else share an identical run "
        "already queued or running, else run and store a success. REFRESH: "
        "run (sharing only an identical run that has not started yet) and "
        "store a success as the cached result. BYPASS: neither."
    ),
)
ErrorCode = strawberry.enum(
    domain.ErrorCode,
    name="ErrorCode",
    description="Why an execution did not succeed; stable, for clients to match on.",
)


WebhookState = strawberry.enum(
    webhook.WebhookState,
    name="WebhookState",
    description=(
        "PENDING (the execution has not ended, or a retry is due), DELIVERED "
        "(a 2xx answer) or FAILED (given up after the attempt limit or the "
        "retry horizon)."
    ),
)


@strawberry.type(description="The webhook of an execution (its secret is never shown).")
class Webhook:
    url: str
    state: webhook.WebhookState
    attempts: int = strawberry.field(description="Delivery attempts so far.")
    next_attempt_at: datetime | None = strawberry.field(
        description="After a failed attempt: when the next one is due."
    )

    @classmethod
    def from_domain(cls, target: webhook.WebhookTarget) -> Webhook:
        """Convert a domain webhook."""
        return cls(
            url=target.url,
            state=target.state,
            attempts=target.attempts,
            next_attempt_at=target.next_attempt_at,
        )


@strawberry.type(description="One attempt to deliver an execution's webhook.")
class WebhookDelivery:
    attempt: int = strawberry.field(description="1, 2, 3...")
    started_at: datetime
    status_code: int | None = strawberry.field(
        description="The receiver's HTTP status, if it answered."
    )
    latency_seconds: float = strawberry.field(
        description="From the start of the attempt to its answer or failure."
    )
    error: str | None = strawberry.field(
        description=(
            "Why it failed: the HTTP status, a timeout, a refused address, "
            "a connection error; null on success."
        )
    )
    succeeded: bool = strawberry.field(description="Whether it got a 2xx answer.")

    @classmethod
    def from_domain(cls, delivery: webhook.WebhookDelivery) -> WebhookDelivery:
        """Convert a domain delivery attempt."""
        return cls(
            attempt=delivery.attempt,
            started_at=delivery.started_at,
            status_code=delivery.status_code,
            latency_seconds=delivery.latency_seconds,
            error=delivery.error,
            succeeded=delivery.succeeded,
        )


@strawberry.type(description="How far through its code cells an execution is.")
class Progress:
    cells_total: int = strawberry.field(description="Code cells that will run.")
    cells_done: int = strawberry.field(description="Code cells finished so far.")


@strawberry.type(description="Why an execution ended without success.")
class ExecutionError:
    code: domain.ErrorCode
    message: str
    cell_index: int | None = strawberry.field(
        description="Index in the notebook's cells of the cell involved, if any."
    )
    ename: str | None = strawberry.field(description="Exception class, for CELL_ERROR.")
    evalue: str | None = strawberry.field(
        description="Exception value, for CELL_ERROR."
    )
    traceback: list[str] = strawberry.field(
        description="Traceback lines (with ANSI colours, as the kernel sent them)."
    )

    @classmethod
    def from_domain(cls, error: domain.ExecutionFailure) -> ExecutionError:
        """Convert a domain error."""
        return cls(
            code=error.code,
            message=error.message,
            cell_index=error.cell_index,
            ename=error.ename,
            evalue=error.evalue,
            traceback=list(error.traceback),
        )


@strawberry.type(
    description="One submitted notebook and everything known about running it."
)
class Execution:
    id: strawberry.ID
    status: domain.ExecutionStatus
    kernel_name: str
    timeout_seconds: float = strawberry.field(description="Whole-execution timeout.")
    created_at: datetime
    started_at: datetime | None = strawberry.field(
        description="When a worker last started it."
    )
    finished_at: datetime | None
    attempts: int = strawberry.field(description="How many times a worker started it.")
    progress: Progress
    error: ExecutionError | None = strawberry.field(
        description="Why it did not succeed; null while running and on success."
    )
    queue: domain.ExecutionQueue = strawberry.field(
        description="The queue it was submitted to."
    )
    cache_hit: bool = strawberry.field(
        description=(
            "Whether its result was reused from the cache (it did not run; "
            "see cachedFrom)."
        )
    )
    cached_from: strawberry.ID | None = strawberry.field(
        description="For a cache hit: the execution whose result it reuses."
    )
    shares_run_of: strawberry.ID | None = strawberry.field(
        description=(
            "Set when an identical submission was queued or running when this "
            "one arrived: the execution whose run this one shares. Its status, "
            "progress, events (with that run's sequences) and result are that "
            "run's."
        )
    )

    @strawberry.field(
        description=(
            "While queued: 1 + how many queued executions a free worker will "
            "take before this one (interactive before batch, then oldest "
            "first); null when not queued. Read it again to see it change."
        )
    )
    async def queue_position(
        self, info: strawberry.Info[GraphQLContext, None]
    ) -> int | None:
        if self.status is not domain.ExecutionStatus.QUEUED:
            return None
        service = info.context.execution_service()
        return await service.queue_position(str(self.id))

    cell_timeout_seconds: float | None = strawberry.field(
        description="Timeout for each cell; null for none."
    )
    no_output_timeout_seconds: float | None = strawberry.field(
        description="How long a cell may produce no output; null for no limit."
    )
    outputs_truncated: bool = strawberry.field(
        description=(
            "Whether outputs were cut or dropped under the output limits (each "
            "cut is marked in the notebook with '[Noteburst: output truncated')."
        )
    )
    cancel_requested: bool = strawberry.field(
        description="Whether cancelExecution was called while it was running."
    )
    owner: str = strawberry.field(
        description="The user who submitted it (only they and administrators see it)."
    )

    @strawberry.field(
        description=(
            "The executed notebook (nbformat v4), once terminal; after a failure "
            "it has the outputs up to and including the failing cell."
        )
    )
    async def notebook(
        self, info: strawberry.Info[GraphQLContext, None]
    ) -> JSON | None:
        if not self.status.is_terminal:
            return None
        service = info.context.execution_service()
        return cast("JSON", await service.get_notebook(str(self.id)))

    @strawberry.field(
        description=(
            "The executed notebook as a standalone HTML page (nbconvert's lab "
            "template), once terminal; null before. Rendered on first request "
            "and stored, per variant."
        )
    )
    async def html(
        self,
        info: strawberry.Info[GraphQLContext, None],
        hide_code: Annotated[
            bool,
            strawberry.argument(
                description="Leave out code cells' input (outputs only)."
            ),
        ] = False,
    ) -> str | None:
        if not self.status.is_terminal:
            return None
        service = info.context.factory.create_rendering_service()
        return await service.html(str(self.id), hide_code=hide_code)

    @strawberry.field(
        description="The webhook given at submission (URL and state), or null."
    )
    async def webhook(
        self, info: strawberry.Info[GraphQLContext, None]
    ) -> Webhook | None:
        service = info.context.factory.create_webhook_service()
        found = await service.get(str(self.id))
        return None if found is None else Webhook.from_domain(found)

    @strawberry.field(
        description=(
            "Every attempt to deliver the webhook, oldest first (empty without "
            "a webhook or before the execution ends)."
        )
    )
    async def webhook_deliveries(
        self, info: strawberry.Info[GraphQLContext, None]
    ) -> list[WebhookDelivery]:
        service = info.context.factory.create_webhook_service()
        return [
            WebhookDelivery.from_domain(delivery)
            for delivery in await service.deliveries(str(self.id))
        ]

    @classmethod
    def from_domain(cls, execution: domain.Execution) -> Execution:
        """Convert a domain execution."""
        return cls(
            id=strawberry.ID(execution.id),
            status=execution.status,
            kernel_name=execution.kernel_name,
            timeout_seconds=execution.timeout_seconds,
            created_at=execution.created_at,
            started_at=execution.started_at,
            finished_at=execution.finished_at,
            attempts=execution.attempts,
            progress=Progress(
                cells_total=execution.progress.cells_total,
                cells_done=execution.progress.cells_done,
            ),
            error=ExecutionError.from_domain(execution.error)
            if execution.error
            else None,
            queue=execution.queue,
            cache_hit=execution.cache_hit,
            cached_from=None
            if execution.cached_from is None
            else strawberry.ID(execution.cached_from),
            shares_run_of=None
            if execution.shares_run_of is None
            else strawberry.ID(execution.shares_run_of),
            cell_timeout_seconds=execution.cell_timeout_seconds,
            no_output_timeout_seconds=execution.no_output_timeout_seconds,
            outputs_truncated=execution.outputs_truncated,
            cancel_requested=execution.cancel_requested_at is not None,
            owner=execution.owner or "",
        )


@strawberry.type(description="A stored change to an execution.")
class ExecutionEvent:
    sequence: int = strawberry.field(
        description=(
            "Position of this event in the execution's history: 1, 2, 3... "
            "without gaps. Pass the last one seen as afterSequence to resume."
        )
    )
    kind: domain.EventKind
    status: domain.ExecutionStatus
    cell_index: int | None = strawberry.field(
        description="For cell events: index of the cell in the notebook's cells."
    )
    cells_done: int
    message: str | None = strawberry.field(
        description=(
            "Human-readable detail: for LAB_STARTING, how far the start of "
            "the lab the execution waits for has got."
        )
    )
    output_start: int | None = strawberry.field(
        description=(
            "For CELL_OUTPUTS: how many of the cell's outputs so far to keep "
            "before appending `outputs` (see there)."
        )
    )
    outputs: JSON | None = strawberry.field(
        description=(
            "For CELL_OUTPUTS: a list of nbformat v4 outputs (JSON) of the cell "
            "`cellIndex`, as stored in the executed notebook (after output "
            "limits). To draw a notebook while it runs, start every cell of an "
            "attempt (at its RUNNING event) with no outputs and apply each "
            "CELL_OUTPUTS event in sequence order: keep the cell's first "
            "`outputStart` outputs, drop the rest, append `outputs`. "
            "`outputStart` equal to the number of outputs held appends (new "
            "output, streams gathered for a fraction of a second); 0 replaces "
            "them all (clear_output); a smaller number replaces outputs from "
            "there on (update_display_data changed one). After the FINISHED "
            "event the cells hold exactly the executed notebook's outputs. A "
            "cell's events come between its CELL_STARTED and CELL_FINISHED "
            "events, except display updates, which may change a cell later."
        )
    )
    created_at: datetime
    execution: Annotated[Execution, strawberry.field(description="The execution.")]

    @classmethod
    def from_domain(
        cls, event: domain.ExecutionEvent, execution: domain.Execution
    ) -> ExecutionEvent:
        """Convert a domain event and the execution read with it."""
        return cls(
            sequence=event.sequence,
            kind=event.kind,
            status=event.status,
            cell_index=event.cell_index,
            cells_done=event.cells_done,
            message=event.message,
            output_start=event.output_start,
            outputs=cast("JSON", event.outputs),
            created_at=event.created_at,
            execution=Execution.from_domain(execution),
        )


@strawberry.type(description="Relay-style page information.")
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class ExecutionEdge:
    cursor: str
    node: Execution


@strawberry.type(description="A page of executions, newest first.")
class ExecutionConnection:
    edges: list[ExecutionEdge]
    page_info: PageInfo
