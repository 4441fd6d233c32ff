"""The checked-in schema.graphql is what the code exports."""

from __future__ import annotations

import re
from pathlib import Path

from noteburst.api.export_schema import sdl

SCHEMA_FILE = Path(__file__).parents[2] / "schema.graphql"


def test_schema_graphql_is_current() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == sdl(), (
        "schema.graphql is stale: run `uv run python -m noteburst.api.export_schema`"
    )


def test_contract_names_are_present() -> None:
    # Descriptions out and whitespace folded: an argument's description
    # spreads its field over several lines.
    text = re.sub(r"\s+", " ", re.sub(r'"""(?s:.*?)"""', "", sdl()))
    text = text.replace("( ", "(").replace(" )", ")")
    for needle in (
        "submitExecution(input: SubmitExecutionInput!): SubmitExecutionPayload!",
        "execution(id: ID!): Execution",
        "executions(first: Int = 20, after: String = null, "
        "status: ExecutionStatus = null): ExecutionConnection!",
        "executionStatus(id: ID! afterSequence: Int = null "
        "kinds: [EventKind!] = null): ExecutionEvent!",
        "union SubmitExecutionPayload = "
        "Execution | InvalidNotebook | UnknownKernel | InvalidInput",
    ):
        assert needle in text, needle
