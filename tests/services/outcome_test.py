"""Outcome: what each way an attempt ends is stored as (pure mapping).

The runner tests (``runner_test.py``) reach each of these ends with a real
kernel and lab; here the mapping itself, case by case.
"""

from __future__ import annotations

from noteburst.domain.execution import ErrorCode, ExecutionStatus
from noteburst.jupyter.exceptions import (
    CellTimeoutError,
    JupyterError,
    KernelDiedError,
    KernelMessageTooLargeError,
    KernelStartError,
    LabUnavailableError,
    NoOutputTimeoutError,
)
from noteburst.services.outcome import (
    cancelled,
    cell_timed_out,
    execution_timed_out,
    jupyter_failed,
)


def test_a_lost_lab_is_the_only_retryable_jupyter_failure() -> None:
    lost = jupyter_failed(LabUnavailableError("lab went away"), 2)
    assert lost.retryable
    assert lost.error is not None
    assert (lost.error.code, lost.error.cell_index) == (ErrorCode.LAB_UNAVAILABLE, 2)
    for final in (
        KernelStartError("no such kernel"),
        KernelDiedError("died", cell_index=1),
        KernelMessageTooLargeError(1024),
        JupyterError("other"),
    ):
        assert not jupyter_failed(final, 1).retryable


def test_a_dead_kernel_names_the_cell_it_died_in() -> None:
    told = jupyter_failed(KernelDiedError("died", cell_index=4), 3)
    unsaid = jupyter_failed(KernelDiedError("died"), 3)
    assert told.error is not None
    assert unsaid.error is not None
    assert (told.error.code, told.error.cell_index) == (ErrorCode.KERNEL_DIED, 4)
    assert unsaid.error.cell_index == 3


def test_timeouts_and_cancellations_say_which_and_where() -> None:
    cell = cell_timed_out(CellTimeoutError(2, 5.0))
    silent = cell_timed_out(NoOutputTimeoutError(2, 5.0))
    whole = execution_timed_out(60, 1)
    assert cell.status is silent.status is whole.status is ExecutionStatus.TIMED_OUT
    assert cell.error is not None
    assert silent.error is not None
    assert whole.error is not None
    assert cell.error.message == "cell 2 exceeded its cell timeout of 5 s"
    assert silent.error.message == "cell 2 exceeded its no-output timeout of 5 s"
    assert whole.error.message == (
        "execution exceeded its timeout of 60 s while cell 1 was running"
    )
    assert cancelled(None).error is not None
    assert cancelled(None).status is ExecutionStatus.CANCELLED
    assert cancelled(0).error.message == "cancelled while cell 0 was running"  # type: ignore[union-attr]
