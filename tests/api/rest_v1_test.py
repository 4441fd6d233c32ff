"""The pure parts of Rubin's REST API v1: status and outcome mapping, timeouts.

Each Noteburst state and error code is shown as Rubin's clients expect
(docs/rest-v1.md has the table these tests pin down); timeouts are parsed
as Rubin's ``HumanTimedelta`` accepts them.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from noteburst.api.rest_v1 import (
    NotebookRequest,
    job_status,
    notebook_response,
    outcome_fields,
    parse_timeout,
)
from noteburst.domain.execution import (
    ErrorCode,
    Execution,
    ExecutionFailure,
    ExecutionStatus,
    Progress,
)

NOW = datetime(2024, 1, 2, 19, 53, 15, tzinfo=UTC)
NOTEBOOK: dict[str, Any] = {"cells": [], "metadata": {}, "nbformat": 4}

QUEUED = Execution(
    id="e1",
    status=ExecutionStatus.QUEUED,
    kernel_name="python3",
    timeout_seconds=300.0,
    created_at=NOW,
    progress=Progress(cells_total=1, cells_done=0),
)


def _ended(
    status: ExecutionStatus, code: ErrorCode | None = None, **failure: Any
) -> Execution:
    error = None
    if code is not None:
        error = ExecutionFailure(code=code, message=f"{code.value} happened", **failure)
    return replace(
        QUEUED,
        status=status,
        attempts=1,
        started_at=NOW,
        finished_at=NOW,
        error=error,
    )


def test_job_status() -> None:
    assert job_status(QUEUED) == "queued"
    assert job_status(replace(QUEUED, attempts=1)) == "deferred"
    assert job_status(replace(QUEUED, status=ExecutionStatus.RUNNING)) == "in_progress"
    for status in ExecutionStatus:
        if status.is_terminal:
            assert job_status(_ended(status)) == "complete"


def test_unfinished_has_no_outcome() -> None:
    assert outcome_fields(QUEUED) == (None, None, None)
    running = replace(QUEUED, status=ExecutionStatus.RUNNING)
    assert outcome_fields(running) == (None, None, None)


def test_success_and_cell_error_are_success() -> None:
    assert outcome_fields(_ended(ExecutionStatus.SUCCEEDED)) == (True, None, None)
    cell = _ended(
        ExecutionStatus.FAILED, ErrorCode.CELL_ERROR, ename="ValueError", evalue="x"
    )
    success, ipynb_error, error = outcome_fields(cell)
    assert success is True
    assert error is None
    assert ipynb_error is not None
    assert ipynb_error.name == "ValueError"
    assert ipynb_error.message == "cell_error happened"


@pytest.mark.parametrize(
    ("status", "code", "rubin_code", "exception_type"),
    [
        (ExecutionStatus.TIMED_OUT, ErrorCode.TIMEOUT, "timeout", None),
        (ExecutionStatus.TIMED_OUT, None, "timeout", None),
        (
            ExecutionStatus.FAILED,
            ErrorCode.KERNEL_DIED,
            "jupyter_error",
            "noteburst.kernel_died",
        ),
        (
            ExecutionStatus.FAILED,
            ErrorCode.KERNEL_START_FAILED,
            "jupyter_error",
            "noteburst.kernel_start_failed",
        ),
        (
            ExecutionStatus.FAILED,
            ErrorCode.LAB_UNAVAILABLE,
            "jupyter_error",
            "noteburst.lab_unavailable",
        ),
        (
            ExecutionStatus.FAILED,
            ErrorCode.WORKER_LOST,
            "unknown",
            "noteburst.worker_lost",
        ),
        (
            ExecutionStatus.CANCELLED,
            ErrorCode.CANCELLED,
            "unknown",
            "noteburst.cancelled",
        ),
        (ExecutionStatus.CANCELLED, None, "unknown", "noteburst.cancelled"),
        (
            ExecutionStatus.FAILED,
            ErrorCode.OUTPUT_TOO_LARGE,
            "unknown",
            "noteburst.output_too_large",
        ),
        (ExecutionStatus.FAILED, ErrorCode.INTERNAL, "unknown", "noteburst.internal"),
        (ExecutionStatus.FAILED, None, "unknown", "noteburst.internal"),
    ],
)
def test_failures_are_not_success(
    status: ExecutionStatus,
    code: ErrorCode | None,
    rubin_code: str,
    exception_type: str | None,
) -> None:
    success, ipynb_error, error = outcome_fields(_ended(status, code))
    assert success is False
    assert ipynb_error is None
    assert error is not None
    assert error.code == rubin_code
    assert error.exception_type == exception_type
    assert error.message


def test_every_error_code_is_mapped() -> None:
    for code in ErrorCode:
        success, _, error = outcome_fields(_ended(ExecutionStatus.FAILED, code))
        assert success is (code is ErrorCode.CELL_ERROR)
        assert (error is None) is (code is ErrorCode.CELL_ERROR)


def test_response_omits_nulls_and_shows_ipynb_only_on_success() -> None:
    queued = notebook_response(QUEUED, self_url="http://x/j").to_json()
    assert queued == {
        "job_id": "e1",
        "kernel_name": "python3",
        "enqueue_time": "2024-01-02T19:53:15Z",
        "status": "queued",
        "self_url": "http://x/j",
        "timeout": 300.0,
    }
    done = notebook_response(
        _ended(ExecutionStatus.SUCCEEDED), self_url="u", ipynb=NOTEBOOK, source=NOTEBOOK
    ).to_json()
    assert done["success"] is True
    assert isinstance(done["ipynb"], str)
    assert isinstance(done["source"], str)
    assert done["finish_time"] == "2024-01-02T19:53:15Z"
    ended = _ended(ExecutionStatus.TIMED_OUT, ErrorCode.TIMEOUT)
    timed_out = notebook_response(ended, self_url="u", ipynb=NOTEBOOK).to_json()
    assert "ipynb" not in timed_out
    assert timed_out["error"] == {"code": "timeout", "message": "timeout happened"}


def test_naive_times_are_utc() -> None:
    naive = replace(QUEUED, created_at=NOW.replace(tzinfo=None))
    body = notebook_response(naive, self_url="u").to_json()
    assert body["enqueue_time"] == "2024-01-02T19:53:15Z"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (60, 60.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1w 2d 3h 4m 5s", 788645.0),
        ("2 minutes", 120.0),
        ("PT5M", 300.0),
        ("00:05:00", 300.0),
    ],
)
def test_parse_timeout(value: object, seconds: float | None) -> None:
    assert parse_timeout(value) == seconds


@pytest.mark.parametrize("value", ["soon", "", "5 parsecs", True, [1]])
def test_parse_timeout_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_timeout(value)


def test_request_validation_names_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        NotebookRequest.model_validate({"ipynb": "{}", "timeout": "soon"})
    assert [e["loc"] for e in info.value.errors()] == [("timeout",)]
    with pytest.raises(ValidationError) as info:
        NotebookRequest.model_validate({"timeout": 5})
    assert [e["loc"] for e in info.value.errors()] == [("ipynb",)]
    request = NotebookRequest.model_validate({"ipynb": NOTEBOOK, "timeout": "5m"})
    assert request.timeout == 300.0
    assert request.enable_retry is True
    assert request.kernel_name is None
