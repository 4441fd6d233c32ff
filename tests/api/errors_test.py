"""Error mapping at the GraphQL edge: typed payloads, user-facing errors, masking."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import structlog
from graphql import ExecutionResult

from noteburst.api.schema import schema
from noteburst.domain.auth import Caller
from noteburst.exceptions import ServiceUnavailableError
from tests.support.app import make_config, running


class _BoomError(RuntimeError):
    pass


@dataclass
class _Context:
    """A fault a real component cannot produce on demand: a bug in a service."""

    request: Any
    caller: Caller | None = None

    def execution_service(self) -> Any:
        raise _BoomError("secret internal detail: password=hunter2")


@pytest.mark.asyncio
async def test_unexpected_errors_are_masked() -> None:
    caller = Caller(user="alice", scopes=frozenset({"exec:notebook"}))
    with structlog.testing.capture_logs() as logs:
        result = await schema.execute(
            'query Mine { execution(id: "x") { id } }',
            context_value=_Context(request=None, caller=caller),
        )
    assert result.errors is not None
    assert [e.message for e in result.errors] == ["Unexpected error."]
    assert "hunter2" not in str(result.errors[0].formatted)
    # ...but the operator sees what happened, and for whom.
    (entry,) = [e for e in logs if e["log_level"] == "error"]
    assert entry["event"] == "Unexpected error in a GraphQL operation"
    assert entry["user"] == "alice"
    assert entry["operation"] == "Mine"
    assert entry["path"] == "execution"
    assert entry["error_type"] == "_BoomError"
    assert "hunter2" in str(entry["exc_info"])


@pytest.mark.asyncio
async def test_validation_errors_are_shown_and_not_logged() -> None:
    with structlog.testing.capture_logs() as logs:
        result = await schema.execute("{ nope }", context_value=_Context(request=None))
    assert result.errors is not None
    assert "Cannot query field 'nope'" in result.errors[0].message
    assert not [e for e in logs if e["log_level"] == "error"]


@dataclass
class _OutageContext:
    """Every service call meets a database outage (the real one is in
    ``tests/app_outage_test.py``; here each kind of operation is covered)."""

    request: Any
    caller: Caller | None = None

    def _down(self) -> Any:
        raise ServiceUnavailableError("database", "ConnectionRefusedError: 10.0.0.7")

    execution_service = _down
    submission_service = _down
    watcher = _down


@pytest.mark.asyncio
async def test_an_outage_is_a_typed_retryable_error_not_a_masked_one() -> None:
    expected = {
        "code": "service_unavailable",
        "retryable": True,
        "retryAfterSeconds": 5,
    }
    context = _OutageContext(request=None)
    with structlog.testing.capture_logs() as logs:
        query = await schema.execute(
            '{ execution(id: "x") { id } }', context_value=context
        )
        mutation = await schema.execute(
            'mutation { submitExecution(input: {notebook: "{}"}) { __typename } }',
            context_value=context,
        )
        subscription = await schema.subscribe(
            'subscription { executionStatus(id: "x") { sequence } }',
            context_value=context,
        )
        assert not isinstance(subscription, ExecutionResult)
        results = [result async for result in subscription]
    for result in (query, mutation, *results):
        assert result.errors is not None
        [error] = result.errors
        assert error.extensions == expected
        assert "10.0.0.7" not in error.message
    # An outage is worth a warning, not a traceback of a bug.
    assert not [e for e in logs if e["log_level"] == "error"]


@pytest.mark.asyncio
async def test_a_body_too_deep_to_decode_is_a_bad_request(tmp_path: Path) -> None:
    """json.loads raises RecursionError past ~1,000 levels: a 400, not a 500."""
    config = make_config(
        tmp_path, SimpleNamespace(url=None, token=None), kernel_names=["python3"]
    )
    body = '{"query": "{ __typename }", "variables": ' + "[" * 10_000 + "]" * 10_000
    async with (
        running(config, run_worker=False) as nb,
        httpx.AsyncClient(base_url=nb.url, timeout=30) as client,
    ):
        response = await client.post(
            "/graphql",
            content=body + "}",
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 400
    assert "JSON" in response.text
