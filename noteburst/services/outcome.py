"""How an execution ended: the status and failure the runner stores.

A failing notebook is an answer, not a fault: each way an attempt can end
(a cell's error, a timeout of the execution or of a cell, a cancellation,
a kernel that would not start or died, a message too large, a lab gone
away) becomes an :class:`Outcome` with a stable
:class:`~noteburst.domain.execution.ErrorCode` and a message naming the
cell.  Kept apart from :mod:`.runner`, which decides *when* an attempt
ends; this module only says what that end means.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..domain.execution import ErrorCode, ExecutionFailure, ExecutionStatus
from ..jupyter.exceptions import (
    CellTimeoutError,
    JupyterError,
    KernelDiedError,
    KernelMessageTooLargeError,
    KernelStartError,
    LabUnavailableError,
    NoOutputTimeoutError,
)
from ..jupyter.execute import CellFailure

__all__ = [
    "HANDED_BACK",
    "SUCCEEDED",
    "Outcome",
    "cancelled",
    "cell_failed",
    "cell_timed_out",
    "execution_timed_out",
    "failed",
    "jupyter_failed",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an execution ended."""

    status: ExecutionStatus
    error: ExecutionFailure | None
    retryable: bool = False
    """An infrastructure failure (the lab went away): worth another attempt."""


SUCCEEDED = Outcome(ExecutionStatus.SUCCEEDED, None)

HANDED_BACK = Outcome(ExecutionStatus.QUEUED, None)
"""Not an end: a stopping worker gave the execution back to the queue."""


def failed(code: ErrorCode, message: str, cell_index: int | None) -> Outcome:
    """Return a FAILED outcome."""
    return Outcome(
        ExecutionStatus.FAILED,
        ExecutionFailure(code=code, message=message, cell_index=cell_index),
    )


def cancelled(current_cell: int | None) -> Outcome:
    """Return the outcome of a cancellation, naming the cell it stopped."""
    return Outcome(
        ExecutionStatus.CANCELLED,
        ExecutionFailure(
            code=ErrorCode.CANCELLED,
            message=(
                "cancelled"
                if current_cell is None
                else f"cancelled while cell {current_cell} was running"
            ),
            cell_index=current_cell,
        ),
    )


def execution_timed_out(timeout_seconds: float, current_cell: int | None) -> Outcome:
    """Return the outcome of the whole execution's timeout."""
    return Outcome(
        ExecutionStatus.TIMED_OUT,
        ExecutionFailure(
            code=ErrorCode.TIMEOUT,
            message=f"execution exceeded its timeout of {timeout_seconds:g} s"
            + (
                ""
                if current_cell is None
                else f" while cell {current_cell} was running"
            ),
            cell_index=current_cell,
        ),
    )


def cell_timed_out(exc: CellTimeoutError) -> Outcome:
    """Return the outcome of a cell's timeout or no-output timeout."""
    which = (
        "no-output timeout" if isinstance(exc, NoOutputTimeoutError) else "cell timeout"
    )
    return Outcome(
        ExecutionStatus.TIMED_OUT,
        ExecutionFailure(
            code=ErrorCode.TIMEOUT,
            message=(
                f"cell {exc.cell_index} exceeded its {which} of {exc.timeout:g} s"
            ),
            cell_index=exc.cell_index,
        ),
    )


def jupyter_failed(exc: JupyterError, current_cell: int | None) -> Outcome:
    """Return the outcome of a failure of the kernel or the lab.

    A lab that went away is retryable (another attempt may find it back);
    the rest are final.
    """
    if isinstance(exc, KernelStartError):
        return failed(ErrorCode.KERNEL_START_FAILED, str(exc), None)
    if isinstance(exc, KernelDiedError):
        # The kernel's own account names the cell even when the dying
        # cell's start was never reported (its messages died with it).
        died_in = exc.cell_index if exc.cell_index is not None else current_cell
        return failed(ErrorCode.KERNEL_DIED, str(exc), died_in)
    if isinstance(exc, KernelMessageTooLargeError):
        return failed(
            ErrorCode.OUTPUT_TOO_LARGE,
            f"cell {current_cell}: {exc}" if current_cell is not None else str(exc),
            current_cell,
        )
    lost = failed(ErrorCode.LAB_UNAVAILABLE, str(exc), current_cell)
    if isinstance(exc, LabUnavailableError):
        return Outcome(lost.status, lost.error, retryable=True)
    return lost


def cell_failed(failure: CellFailure) -> Outcome:
    """Return the outcome of a cell that raised."""
    return Outcome(
        ExecutionStatus.FAILED,
        ExecutionFailure(
            code=ErrorCode.CELL_ERROR,
            message=(
                f"cell {failure.cell_index} raised {failure.ename}: {failure.evalue}"
            ),
            cell_index=failure.cell_index,
            ename=failure.ename,
            evalue=failure.evalue,
            traceback=list(failure.traceback),
        ),
    )
