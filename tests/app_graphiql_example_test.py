"""GraphiQL's opening example, run end to end as GraphiQL sends it.

The same document, with the variables of the Variables pane, against a real
Noteburst and Jupyter: ``Submit`` queues the notebook and ``Watch``, given
the id it answered once the run is over (as a visitor pasting it would),
replays the run with the cell's outputs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from gql import Client
from gql.graphql_request import GraphQLRequest
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport

from noteburst.api.graphiql_example import EXAMPLE
from tests.support.app import make_config, running


@pytest.mark.asyncio
async def test_example_submits_and_watches(tmp_path: Path, jupyter_server: Any) -> None:
    variables = json.loads(EXAMPLE.variables)  # "id" still the placeholder
    async with running(make_config(tmp_path, jupyter_server)) as nb:
        http = HTTPXAsyncTransport(url=nb.url + "/graphql", timeout=60)
        async with Client(transport=http, execute_timeout=60) as session:
            submitted = await session.execute(
                GraphQLRequest(
                    EXAMPLE.query, variable_values=variables, operation_name="Submit"
                )
            )
        execution = submitted["submitExecution"]
        assert execution["__typename"] == "Execution", execution
        assert execution["kernelName"] == "python3"

        # A visitor pastes the id after the tiny notebook is done: Watch must
        # still show the run, outputs included.
        done = await asyncio.wait_for(nb.watch(execution["id"], kinds=[]), 60)
        assert done[-1]["kind"] == "FINISHED"

        ws = WebsocketsTransport(
            url=nb.ws_url,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            connect_timeout=30,
            ack_timeout=30,
        )
        events: list[dict[str, Any]] = []
        async with Client(transport=ws, execute_timeout=120) as session:
            watch = GraphQLRequest(
                EXAMPLE.query,
                variable_values={**variables, "id": execution["id"]},
                operation_name="Watch",
            )
            async for result in session.subscribe(watch):
                events.append(result["executionStatus"])
    assert events[-1]["kind"] == "FINISHED"
    assert events[-1]["execution"] == {"status": "SUCCEEDED", "error": None}
    outputs = [o for e in events if e["outputs"] for o in e["outputs"]]
    assert {
        "name": "stdout",
        "output_type": "stream",
        "text": "Hello from Noteburst\n",
    } in outputs
    assert any(o.get("data", {}).get("text/plain") == "42" for o in outputs)
