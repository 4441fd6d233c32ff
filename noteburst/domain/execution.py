"""What an execution is, the states it moves through, and its events.

These value objects are shared by storage (which persists them), services
(which change them) and the GraphQL layer (which shows them).  Keeping them
free of any framework lets each layer be tested on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "ErrorCode",
    "EventKind",
    "Execution",
    "ExecutionEvent",
    "ExecutionFailure",
    "ExecutionQueue",
    "ExecutionStatus",
    "Progress",
]


class ExecutionStatus(enum.StrEnum):
    """Lifecycle of an execution; the last four are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        """Whether no further change can happen."""
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


class ExecutionQueue(enum.StrEnum):
    """Which line an execution waits in; a free worker serves INTERACTIVE first.

    Interactive work is someone waiting for a page (a dashboard view);
    batch work is documentation CI and other bulk runs, which care about
    throughput, not latency.  Within one queue executions run oldest first.
    """

    INTERACTIVE = "interactive"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """Claim order: lower ranks are claimed first."""
        return 0 if self is ExecutionQueue.INTERACTIVE else 1


class EventKind(enum.StrEnum):
    """What an :class:`ExecutionEvent` announces."""

    QUEUED = "queued"
    RUNNING = "running"
    LAB_STARTING = "lab_starting"
    """The execution waits for its lab to start; the message says how far."""
    CELL_STARTED = "cell_started"
    CELL_FINISHED = "cell_finished"
    CELL_OUTPUTS = "cell_outputs"
    """New or changed outputs of one cell (see ``ExecutionEvent.outputs``)."""
    FINISHED = "finished"
    """The execution reached a terminal status (see the event's status)."""


class ErrorCode(enum.StrEnum):
    """Why an execution did not succeed; stable, for clients to match on."""

    CELL_ERROR = "cell_error"
    """A cell raised; ``ename``, ``evalue`` and ``traceback`` say what."""
    TIMEOUT = "timeout"
    """A timeout expired: the whole execution's, a cell's, or a cell's
    no-output timeout; the message says which, with the cell index."""
    KERNEL_DIED = "kernel_died"
    """The kernel process exited while a cell ran."""
    KERNEL_START_FAILED = "kernel_start_failed"
    """The lab could not start a kernel of the requested name."""
    LAB_UNAVAILABLE = "lab_unavailable"
    """The Jupyter server could not be reached or went away."""
    WORKER_LOST = "worker_lost"
    """Workers died running it more times than the retry limit allows."""
    CANCELLED = "cancelled"
    """Someone cancelled it (``cancelExecution``); ``cell_index`` is the cell
    that was running, if it had started."""
    OUTPUT_TOO_LARGE = "output_too_large"
    """A single kernel message was too large to receive at all."""
    INTERNAL = "internal"
    """An unexpected fault in Noteburst; details are in the service logs."""


@dataclass(frozen=True, slots=True)
class ExecutionFailure:
    """Why an execution ended without success: a value, not an exception.

    A failing notebook is an outcome the runner records on the execution
    (and GraphQL shows as the ``ExecutionError`` type); the exceptions
    Noteburst raises are in :mod:`noteburst.exceptions`.
    """

    code: ErrorCode
    message: str
    cell_index: int | None = None
    ename: str | None = None
    evalue: str | None = None
    traceback: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Serialise for storage."""
        return {
            "code": self.code.value,
            "message": self.message,
            "cell_index": self.cell_index,
            "ename": self.ename,
            "evalue": self.evalue,
            "traceback": list(self.traceback),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecutionFailure:
        """Rebuild from :meth:`to_json` output."""
        return cls(
            code=ErrorCode(data["code"]),
            message=data["message"],
            cell_index=data.get("cell_index"),
            ename=data.get("ename"),
            evalue=data.get("evalue"),
            traceback=list(data.get("traceback") or []),
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """How far through its code cells an execution is."""

    cells_total: int
    cells_done: int


@dataclass(frozen=True, slots=True)
class Execution:
    """One submitted notebook and everything known about running it.

    ``notebook`` is the executed notebook, present once the execution is
    terminal (also after a failure, with outputs up to the failing cell).
    The submitted notebook is not part of this object: it is large, and only
    the worker reads it (see ``ExecutionRecordStore.get_source_notebook``).
    """

    id: str
    status: ExecutionStatus
    kernel_name: str
    timeout_seconds: float
    created_at: datetime
    progress: Progress
    attempts: int = 0
    last_sequence: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    notebook: dict[str, Any] | None = None
    error: ExecutionFailure | None = None
    queue: ExecutionQueue = ExecutionQueue.INTERACTIVE
    cached_from: str | None = None
    """For a cache hit: the execution whose stored result this one reuses."""
    shares_run_of: str | None = None
    """For a single-flight follower: the execution whose run it shares.

    Until it finishes, a follower shows that run's status, progress and
    event sequence; its events are that run's events.
    """

    @property
    def cache_hit(self) -> bool:
        """Whether the result came from the cache, without running."""
        return self.cached_from is not None

    cell_timeout_seconds: float | None = None
    """Limit per cell, or `None` for none."""
    no_output_timeout_seconds: float | None = None
    """Limit on a cell's silence, or `None` for none."""
    outputs_truncated: bool = False
    """Whether outputs were cut or dropped under the output limits."""
    cancel_requested_at: datetime | None = None
    """When cancellation of the running execution was asked for, if it was."""
    owner: str | None = None
    """The user who submitted it (None only where storage did not read it)."""


@dataclass(frozen=True, slots=True)
class ExecutionEvent:
    """One stored change to an execution.

    Sequences start at 1 per execution and have no gaps, so a subscriber that
    remembers the last sequence it saw can resume without loss or repeats.
    """

    execution_id: str
    sequence: int
    kind: EventKind
    status: ExecutionStatus
    created_at: datetime
    cell_index: int | None = None
    cells_done: int = 0
    message: str | None = None
    """Human-readable detail, e.g. a lab's spawn progress."""
    output_start: int | None = None
    """For CELL_OUTPUTS: how many of the cell's outputs so far are kept."""
    outputs: list[dict[str, Any]] | None = None
    """For CELL_OUTPUTS: nbformat v4 outputs that follow the kept ones.

    Replaying a run's CELL_OUTPUTS events of a cell in sequence order, each
    doing ``outputs[output_start:] = event.outputs`` on a list that starts
    empty at the attempt's RUNNING event, yields the cell's outputs.
    """
