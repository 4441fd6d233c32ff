"""Fuzzing the GraphQL API with schemathesis: no input takes it down.

schemathesis reads the schema by introspection and sends queries and
mutations with generated arguments (every field, every argument, random
notebooks, parameters and ids) to a real ``noteburst serve`` process on
the embedded default.  Whatever arrives, the answer must be a GraphQL
answer: never an HTTP 5xx, never the masked "Unexpected error." that an
exception inside Noteburst turns into.  The number of examples is bounded
so the run stays a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from graphql import language as ast
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support.notebooks import notebook
from tests.support.waiting import free_port

EXAMPLES_PER_OPERATION = 25
START_TIMEOUT = 60.0


def _to_node(value: Any) -> ast.ValueNode:  # noqa: PLR0911 - one per JSON type
    """A JSON value as a GraphQL literal (how schemathesis sends scalars)."""
    if value is None:
        return ast.NullValueNode()
    if isinstance(value, bool):
        return ast.BooleanValueNode(value=value)
    if isinstance(value, int):
        return ast.IntValueNode(value=str(value))
    if isinstance(value, float):
        return ast.FloatValueNode(value=repr(value))
    if isinstance(value, str):
        return ast.StringValueNode(value=value)
    if isinstance(value, list):
        return ast.ListValueNode(values=tuple(_to_node(item) for item in value))
    return ast.ObjectValueNode(
        fields=tuple(
            ast.ObjectFieldNode(name=ast.NameNode(value=key), value=_to_node(item))
            for key, item in value.items()
        )
    )


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
# Random JSON, and now and then a notebook that is valid (it then runs).
schemathesis.graphql.scalar(
    "JSON",
    (
        _JSON_VALUES
        | st.just(notebook("1 + 1"))
        | st.just(notebook("raise ValueError"))
    ).map(_to_node),
)


@pytest.fixture(scope="module")
def server_url(
    tmp_path_factory: pytest.TempPathFactory, jupyter_server: Any
) -> Iterator[str]:
    """A ``noteburst serve`` process (embedded default, the session's Jupyter)."""
    home = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTEBURST_")}
    env.update(
        HOME=str(home),
        NOTEBURST_DATA_DIR=str(home / "data"),
        NOTEBURST_JUPYTER_URL=jupyter_server.url,
        NOTEBURST_JUPYTER_TOKEN=jupyter_server.token,
        NOTEBURST_WARM_KERNELS="{}",
        NOTEBURST_LOG_LEVEL="WARNING",
    )
    log = (home / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "noteburst.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, (home / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "noteburst serve did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def _fuzz(operation: Any, check_case: Callable[[Any], None]) -> int:
    """Send generated cases for one operation; return how many were sent."""
    sent = 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        nonlocal sent
        sent += 1
        check_case(case)

    check()
    return sent


def _graphql_answer(case: Any) -> None:
    """A GraphQL answer: no 5xx, no masked unexpected error."""
    response = case.call(timeout=30)
    assert response.status_code < 500, response.text[:2000]
    body = response.json()
    messages = [error.get("message") for error in body.get("errors") or []]
    assert "Unexpected error." not in messages, (case.body, body)


def _documented_answer(case: Any) -> None:
    """schemathesis' default checks: no 5xx, and the status code, content
    type, headers and body each as the OpenAPI document says.  But not
    "schema-valid data is accepted": JSON Schema cannot say what a valid
    notebook is, so a schema-valid ``ipynb`` may rightly get 422."""
    case.call_and_validate(timeout=30, excluded_checks=[positive_data_acceptance])


def test_no_input_breaks_the_api(server_url: str) -> None:
    schema = schemathesis.graphql.from_url(f"{server_url}/graphql")
    operations: list[Any] = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    sent = {op.label: _fuzz(op, _graphql_answer) for op in operations}
    print(sent)
    assert set(sent) >= {
        "Query.execution",
        "Query.executions",
        "Mutation.submitExecution",
    }
    assert all(count >= EXAMPLES_PER_OPERATION // 2 for count in sent.values())


def test_the_rest_api_answers_as_its_openapi_document_says(server_url: str) -> None:
    """Rubin's REST API v1 against its own ``/noteburst/openapi.json``."""
    schema = schemathesis.openapi.from_url(f"{server_url}/noteburst/openapi.json")
    operations: list[Any] = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    sent = {op.label: _fuzz(op, _documented_answer) for op in operations}
    print(sent)
    assert set(sent) == {
        "GET /noteburst/",
        "POST /noteburst/v1/notebooks/",
        "GET /noteburst/v1/notebooks/{job_id}",
    }
    assert sent["GET /noteburst/"] >= 1  # nothing to vary
    assert sent["POST /noteburst/v1/notebooks/"] >= EXAMPLES_PER_OPERATION // 2
    assert sent["GET /noteburst/v1/notebooks/{job_id}"] >= EXAMPLES_PER_OPERATION // 2
    # Generated notebooks are refused (422); a valid one is accepted, and the
    # job it returns, then its completed state, match the document too.
    post = schema["/noteburst/v1/notebooks/"]["POST"]
    accepted = post.Case(body={"ipynb": notebook("6 * 7"), "timeout": "1m"})
    job = accepted.call_and_validate(timeout=30).json()
    assert job["status"] in {"queued", "in_progress", "complete"}
    get = schema["/noteburst/v1/notebooks/{job_id}"]["GET"]
    deadline = time.monotonic() + START_TIMEOUT
    while job["status"] != "complete":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        polled = get.Case(path_parameters={"job_id": job["job_id"]})
        job = polled.call_and_validate(timeout=30).json()
    assert job["success"] is True
