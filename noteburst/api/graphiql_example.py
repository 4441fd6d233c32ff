"""The example GraphiQL opens on, so a first visitor runs something real.

GraphiQL's own welcome text explains GraphQL in general; a visitor to
Noteburst wants to see a notebook run.  The page therefore opens on two
operations of one document: ``Submit`` queues a tiny notebook (held in the
Variables pane, as any client should send a notebook: variables are not
counted as document tokens) and is what the run button executes first;
``Watch`` streams that execution's events, once the visitor has pasted the
id ``Submit`` answered into the ``id`` variable: all of them from the first
(``afterSequence: 0``), since the tiny notebook is usually done by then and
without it the subscription would answer only the final state.

Kept apart from :mod:`noteburst.api.graphiql`, which knows nothing of
Noteburst's schema; ``tests/api/graphiql_example_test.py`` validates the
document against the schema and runs it end to end, so a schema change that
breaks the example fails a test instead of a visitor's first click.
"""

from __future__ import annotations

import json
from typing import Any, Final

from .graphiql import GraphiQLExample

__all__ = ["EXAMPLE", "EXAMPLE_NOTEBOOK", "ID_PLACEHOLDER"]

EXAMPLE_NOTEBOOK: Final[dict[str, Any]] = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {
        "kernelspec": {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
    },
    "cells": [
        {
            "cell_type": "code",
            "id": "hello",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": "print('Hello from Noteburst')\n6 * 7",
        }
    ],
}
"""A one-cell nbformat v4 notebook: a printed line and a result, ``42``."""

ID_PLACEHOLDER: Final = "paste the id that Submit answered here"
"""The ``id`` variable until the visitor replaces it."""

_QUERY: Final = """\
# Noteburst executes Jupyter notebooks. Try it:
#
# 1. Press the run button (or Ctrl-Enter): Submit
#    queues the small notebook held in the Variables
#    pane below and answers its id.
# 2. Paste that id into "id" in the Variables pane
#    and run Watch (the run button now asks which
#    operation; or Ctrl-Enter with the cursor in
#    Watch): the execution's events stream in, the
#    cell's outputs included, until it ends.
#
# With token authentication, first add a header in
# the Headers tab:
#   {"Authorization": "Bearer <your token>"}

mutation Submit($notebook: JSON!) {
  submitExecution(input: {notebook: $notebook}) {
    __typename
    ... on Execution {
      id
      status
      kernelName
    }
    ... on InvalidNotebook { message }
    ... on UnknownKernel { message availableKernels }
    ... on InvalidInput { field message }
    ... on LimitExceeded { limit maximum message }
  }
}

subscription Watch($id: ID!) {
  # afterSequence 0: every event, even once it ended.
  executionStatus(id: $id, afterSequence: 0) {
    sequence
    kind
    status
    cellIndex
    outputs
    execution {
      status
      error { code message }
    }
  }
}
"""

EXAMPLE: Final = GraphiQLExample(
    query=_QUERY,
    variables=json.dumps(
        {"notebook": EXAMPLE_NOTEBOOK, "id": ID_PLACEHOLDER}, indent=2
    ),
    operation_name="Submit",
)
"""What `noteburst.app` passes to `~noteburst.api.graphiql.render_graphiql`."""
