"""GraphiQL's opening example is valid against the schema, as served and as exported."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
from graphql import OperationDefinitionNode, build_schema, parse, validate

from noteburst.api.graphiql import render_graphiql
from noteburst.api.graphiql_example import EXAMPLE, EXAMPLE_NOTEBOOK, ID_PLACEHOLDER
from noteburst.api.schema import create_schema

SCHEMA_FILE = Path(__file__).parents[2] / "schema.graphql"


def test_example_validates_against_the_served_schema() -> None:
    schema = create_schema()._schema
    assert validate(schema, parse(EXAMPLE.query)) == []


def test_example_validates_against_schema_graphql() -> None:
    schema = build_schema(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert validate(schema, parse(EXAMPLE.query)) == []


def test_submit_comes_first_then_watch() -> None:
    """GraphiQL's run button runs the first operation until the cursor picks another."""
    operations = [
        (node.operation.value, node.name.value if node.name else None)
        for node in parse(EXAMPLE.query).definitions
        if isinstance(node, OperationDefinitionNode)
    ]
    assert operations == [("mutation", "Submit"), ("subscription", "Watch")]


def test_variables_hold_a_valid_notebook_and_the_id_to_paste() -> None:
    variables = json.loads(EXAMPLE.variables)
    assert variables == {"notebook": EXAMPLE_NOTEBOOK, "id": ID_PLACEHOLDER}
    nbformat.validate(nbformat.from_dict(variables["notebook"]))


def test_page_opens_on_the_example() -> None:
    page = render_graphiql("/graphiql-static", EXAMPLE)
    # JSON string literals, "<" escaped so that no "</script>" ends the script.
    query = re.search(r'const EXAMPLE_QUERY = ("[^\n]*");\n', page)
    variables = re.search(r'const EXAMPLE_VARIABLES = ("[^\n]*");\n', page)
    assert query is not None
    assert variables is not None
    assert "<" not in query[1] + variables[1]
    assert json.loads(query[1]) == EXAMPLE.query
    assert json.loads(variables[1]) == EXAMPLE.variables
    assert "Welcome to GraphiQL" not in page
