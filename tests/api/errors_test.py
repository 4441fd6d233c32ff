"""Error mapping at the GraphQL edge: typed payloads, user-facing errors, masking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from noteburst.api.schema import schema


class _BoomError(RuntimeError):
    pass


@dataclass
class _BrokenFactory:
    """A fault a real component cannot produce on demand: a bug in a service."""

    def create_execution_service(self) -> Any:
        raise _BoomError("secret internal detail: password=hunter2")


@dataclass
class _Context:
    request: Any
    factory: Any


@pytest.mark.asyncio
async def test_unexpected_errors_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    result = await schema.execute(
        '{ execution(id: "x") { id } }',
        context_value=_Context(request=None, factory=_BrokenFactory()),
    )
    assert result.errors is not None
    assert [e.message for e in result.errors] == ["Unexpected error."]
    assert "hunter2" not in str(result.errors[0].formatted)
    # ...but the operator sees what happened.
    assert "hunter2" in caplog.text


@pytest.mark.asyncio
async def test_validation_errors_are_shown_and_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    result = await schema.execute(
        "{ nope }", context_value=_Context(request=None, factory=_BrokenFactory())
    )
    assert result.errors is not None
    assert "Cannot query field 'nope'" in result.errors[0].message
    assert "nope" not in caplog.text
