"""Tables of executions and their events.

``executions`` holds one row per submitted notebook, including the submitted
and executed notebook JSON as text (up to 16 MiB each; storage never loads
them unless asked).  ``execution_events`` is the gap-free, per-execution
sequence of changes that subscriptions replay; ``executions.last_sequence``
is the counter it is allocated from, bumped in the same ``UPDATE`` that
changes the row so that concurrent writers serialise on the row lock.

Statuses and event kinds are stored as the lowercase values of
:class:`noteburst.domain.execution.ExecutionStatus` and
:class:`~noteburst.domain.execution.EventKind` in plain strings rather than
database enums, so adding a value needs no ``ALTER TYPE`` (nor SQLite batch
rebuild).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime

__all__ = ["ExecutionEventRow", "ExecutionRow"]

_CLAIMABLE = text("status = 'queued' AND shares_run_of IS NULL")
"""Which rows ``ix_executions_claim_order`` holds: queued, and not a
follower of a shared run (followers are never claimed)."""


class ExecutionRow(Base):
    """One execution (``executions``)."""

    __tablename__ = "executions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    """UUID in canonical text form."""
    status: Mapped[str] = mapped_column(String(16), index=True)
    kernel_name: Mapped[str] = mapped_column(String(255))
    timeout_seconds: Mapped[float] = mapped_column(Float)
    source_notebook: Mapped[str] = mapped_column(Text)
    """Submitted notebook, JSON text."""
    result_notebook: Mapped[str | None] = mapped_column(Text)
    """Executed notebook, JSON text; set when the execution finishes."""
    cells_total: Mapped[int] = mapped_column(Integer)
    cells_done: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """``ExecutionFailure.to_json()``, or NULL."""
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    """How many times a worker has claimed it."""
    last_sequence: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    """Sequence of the newest row in ``execution_events``."""
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """While running: when the worker's claim lapses unless renewed."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    queue: Mapped[str] = mapped_column(String(16), server_default=text("'interactive'"))
    """``ExecutionQueue`` value: workers claim interactive before batch."""
    queue_rank: Mapped[int] = mapped_column(Integer)
    """``ExecutionQueue.rank`` of ``queue``, written with it: the claim
    order's first key, stored so that ``ix_executions_claim_order`` can
    serve the order (an index on the ``CASE`` expression would do too, but
    Alembic cannot compare expression indexes on either backend)."""
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """A queued retry in backoff: not claimed by other wake-ups before this."""
    cache_key: Mapped[str | None] = mapped_column(String(64), index=True)
    """``domain.cache.cache_key`` of an execution that runs with cache mode
    USE or REFRESH (its success is the cached result); NULL otherwise."""
    cached_from: Mapped[str | None] = mapped_column(String(36))
    """For a cache hit: the id of the execution whose result was copied."""
    shares_run_of: Mapped[str | None] = mapped_column(String(36), index=True)
    """For a single-flight follower: the id of the execution that runs."""
    cell_timeout_seconds: Mapped[float | None] = mapped_column(Float)
    """Limit per cell; NULL for none."""
    no_output_timeout_seconds: Mapped[float | None] = mapped_column(Float)
    """Limit on a cell's silence; NULL for none."""
    outputs_truncated: Mapped[bool] = mapped_column(
        Boolean, server_default=text("false")
    )
    """Whether the executed notebook's outputs were cut under the limits."""
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When cancellation of the running execution was asked for; its worker
    is told with a notification and ends it ``cancelled``."""
    owner: Mapped[str] = mapped_column(String(255))
    """User who submitted it; only they (and admins) see it.  Executions
    from before owners existed belong to ``constants.LOCAL_USER``."""

    __table_args__ = (
        # Keyset pagination newest first: ORDER BY created_at DESC, id DESC.
        Index("ix_executions_created_at_id", "created_at", "id"),
        # A user's own page of executions, and their submissions per minute.
        Index("ix_executions_owner_created_at_id", "owner", "created_at", "id"),
        # A user's queued and running counts (per-user limits).
        Index("ix_executions_owner_status", "owner", "status"),
        # The retention purge (retention.RetentionStore): finished
        # executions oldest first, in keyset batches of (finished_at, id).
        # Only finished executions have a finish time; the others sit
        # together under NULL, which the purge's range never reads.
        Index("ix_executions_finished_at_id", "finished_at", "id"),
        # The claim order (claims.ClaimStore.claim_next), of the executions a
        # claim can take: a claim reads the first entries, not the queue.
        # The claim spells the predicate out with constants, which both
        # databases need to know that the partial index covers the query.
        # status, constant here, leads all the same: without statistics
        # SQLite prefers an index matching an equality of the query
        # (ix_executions_status) to one serving its order, unless one does
        # both.
        Index(
            "ix_executions_claim_order",
            "status",
            "queue_rank",
            "created_at",
            "id",
            postgresql_where=_CLAIMABLE,
            sqlite_where=_CLAIMABLE,
        ),
    )


class ExecutionEventRow(Base):
    """One change to an execution (``execution_events``)."""

    __tablename__ = "execution_events"

    execution_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("executions.id", ondelete="CASCADE"),
        primary_key=True,
    )
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    """1, 2, 3... per execution, without gaps."""
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    """The execution's status after this event."""
    cell_index: Mapped[int | None] = mapped_column(Integer)
    cells_done: Mapped[int] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)
    """Human-readable detail (a lab's spawn progress), or NULL."""
    output_start: Mapped[int | None] = mapped_column(Integer)
    """CELL_OUTPUTS: how many of the cell's earlier outputs are kept."""
    outputs: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON(none_as_null=True)
    )
    """CELL_OUTPUTS: the nbformat outputs replacing the rest, or NULL."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
