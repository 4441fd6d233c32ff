"""Document limits at the GraphQL edge: depth, aliases, tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from graphql import get_introspection_query

from noteburst.api.schema import create_schema, schema
from noteburst.config import GraphQLSettings
from tests.support.app import make_config, running

SMALL = create_schema(GraphQLSettings(max_depth=3, max_aliases=2, max_tokens=200))


async def errors_of(document: str, target: Any = SMALL) -> list[str]:
    result = await target.execute(document)
    return [error.message for error in result.errors or []]


@pytest.mark.asyncio
async def test_too_deep_is_refused_saying_so() -> None:
    deep = "{ executions { edges { node { error { code } } } } }"
    assert await errors_of(deep) == ["'anonymous' exceeds maximum operation depth of 3"]


@pytest.mark.asyncio
async def test_too_many_aliases_is_refused_saying_so() -> None:
    aliased = (
        "{ " + " ".join(f'a{i}: execution(id: "{i}") {{ id }}' for i in range(3)) + " }"
    )
    assert await errors_of(aliased) == ["3 aliases found. Allowed: 2"]


@pytest.mark.asyncio
async def test_too_many_tokens_is_refused_saying_so() -> None:
    long = "{ " + " ".join("__typename" for _ in range(300)) + " }"
    messages = await errors_of(long)
    assert len(messages) == 1
    assert "more than 200 tokens" in messages[0]


@pytest.mark.asyncio
async def test_introspection_is_not_limited_by_depth() -> None:
    # GraphiQL's introspection query is deeper than any real query.
    assert await errors_of(get_introspection_query(), target=schema) == []


@pytest.mark.asyncio
async def test_the_configured_limits_apply_to_the_app(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(tmp_path, jupyter_server, graphql_max_depth=2)
    async with running(config) as nb:
        with pytest.raises(Exception, match="maximum operation depth of 2"):
            await nb.execute("{ executions { edges { node { id } } } }")
        assert await nb.execute("{ executions { pageInfo { hasNextPage } } }")
