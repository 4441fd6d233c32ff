"""Structured fuzzing of submitted notebooks: bad input gets a typed answer.

``fuzz_test.py`` lets schemathesis invent arguments from the schema, which
rarely produces anything shaped like a notebook.  This test starts from a
valid nbformat 4.5 notebook that has every part a real one has (code,
markdown and raw cells, stream/result/display/error outputs, notebook and
cell metadata, attachments, a cell tagged ``parameters``) and breaks it
one to three fields at a time: a value of the wrong JSON type at any path,
a missing key, an extra key, a huge value (long strings, thousands of
cells), a deeply nested value (down to 10,000 levels, deeper than the
JSON decoder can follow), odd unicode (astral, NUL, right-to-left,
combining marks), ``nbformat``/``nbformat_minor`` out of range; sometimes
sent as a JSON string instead of an object, with parameters (good and
bad), or with the result cache in use (its key hashes the cells).

Each submission goes through the GraphQL API of a real server on both
backends (embedded SQLite and Postgres + Redis) with no worker: the
mutation only has to be accepted or refused, not run.  Every answer must
be a typed payload (``Execution``, ``InvalidNotebook``, ...), never the
masked "Unexpected error." and never an HTTP 5xx; the one exception is a
request body nested deeper than JSON can be decoded, which is refused
with HTTP 400 before it is a GraphQL request at all (and a body over the
server's size limit, refused with 413).  Hypothesis runs derandomized,
without shrinking: the 9 ``EXPLICIT`` inputs (the bugs it found) plus
``EXAMPLES`` (60) generated ones, 69 inputs per backend, about 2-5 s each
on a loaded 2-CPU machine.  A failure lists every wrong answer with its
input, and the server's tracebacks.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import pytest
import structlog
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.support.app import make_config, running

EXAMPLES = 60
"""Inputs generated per backend (the EXPLICIT ones come on top)."""
FUZZ_TIMEOUT = 90.0
"""Seconds the examples of one backend may take in all."""
MAX_NOTEBOOK_BYTES = 256 * 1024
"""Lowered from 16 MiB so that "huge" inputs fall on both sides of it cheaply."""

BODY_LIMIT = 2 * MAX_NOTEBOOK_BYTES + 1024 * 1024
"""The server's request size limit (``noteburst.app.request_body_limit``)."""

TYPED_PAYLOADS = {
    "Execution",
    "InvalidNotebook",
    "InvalidParameters",
    "InvalidInput",
    "LimitExceeded",
    "UnknownKernel",
}

SUBMIT = """
mutation Submit($input: SubmitExecutionInput!) {
  submitExecution(input: $input) {
    __typename
    ... on Execution { id status }
    ... on InvalidNotebook { message }
    ... on InvalidParameters { message name }
    ... on InvalidInput { message field }
    ... on LimitExceeded { message }
    ... on UnknownKernel { message }
  }
}
"""

_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9"
    "awAAAABJRU5ErkJggg=="
)

BASE: dict[str, Any] = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {
        "kernelspec": {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        },
        "language_info": {"name": "python", "version": "3.11.7"},
        "widgets": {"state": {"a": {"model": {"value": [1, 2, 3]}}}},
        "title": "fuzz",
    },
    "cells": [
        {
            "id": "md-1",
            "cell_type": "markdown",
            "metadata": {"tags": ["intro"]},
            "source": ["# Title\n", "![img](attachment:image.png)"],
            "attachments": {"image.png": {"image/png": _PNG}},
        },
        {
            "id": "params",
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "execution_count": None,
            "source": "alpha = 1\nname = 'x'\nratio = 0.5\n",
            "outputs": [],
        },
        {
            "id": "code-1",
            "cell_type": "code",
            "metadata": {"collapsed": False, "scrolled": True},
            "execution_count": 3,
            "source": ["print(alpha)\n", "alpha * 2"],
            "outputs": [
                {"output_type": "stream", "name": "stdout", "text": ["1\n"]},
                {
                    "output_type": "execute_result",
                    "execution_count": 3,
                    "data": {"text/plain": "2", "application/json": {"a": [1]}},
                    "metadata": {},
                },
                {
                    "output_type": "display_data",
                    "data": {"image/png": _PNG, "text/html": ["<b>hi</b>"]},
                    "metadata": {"image/png": {"width": 1, "height": 1}},
                },
                {
                    "output_type": "error",
                    "ename": "ValueError",
                    "evalue": "bad",
                    "traceback": ["Traceback", "ValueError: bad"],
                },
            ],
        },
        {
            "id": "raw-1",
            "cell_type": "raw",
            "metadata": {"format": "text/restructuredtext"},
            "source": ".. note:: raw",
        },
        {
            "id": "code-2",
            "cell_type": "code",
            "metadata": {},
            "execution_count": None,
            "source": "",
            "outputs": [],
        },
    ],
}

_F = TypeVar("_F", bound=Callable[..., None])

_BASE_TEXT = json.dumps(BASE)
_CELL_TEXT = json.dumps(BASE["cells"][2])
"""Copies are made by parsing these: faster than ``copy.deepcopy``."""

Path_ = tuple[str | int, ...]


def _paths(value: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every path in ``value`` (the root included), parents first."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@dataclass(frozen=True)
class _Deep:
    """A value nested ``depth`` levels deep, written straight into the JSON text.

    Python's json module (and our client) cannot encode one past its
    recursion limit, so the request body is assembled around it as text.
    """

    depth: int
    kind: str  # "list" or "dict"

    def text(self) -> str:
        if self.kind == "list":
            return "[" * self.depth + "]" * self.depth
        return '{"a":' * self.depth + "null" + "}" * self.depth


def _get(value: Any, path: Path_) -> Any:
    for part in path:
        value = value[part]
    return value


ODD_STRINGS = [
    "\U0001d518\U0001d52b\U0001d526 \U0001f600\U0001f3f3\ufe0f\u200d\U0001f308",
    "a\x00b\x00",
    "\u202eabc\u202c \u05e9\u05dc\u05d5\u05dd \u0627\u0644\u0633\u0644\u0627\u0645",
    "e" + "\u0301" * 50 + "\u0328\u0336",
    "\ufeff\uffff\ufffe\u2028\u2029\x7f\x1b[31m",
    "",
    "\n" * 3,
]

WRONG_TYPES: list[Any] = [7, "str", None, [], {}, True, 1.5, [1, "a"], {"k": 1}, -1]

_unicode_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]), min_size=0, max_size=12
)
_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _unicode_text
)
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(_unicode_text, children, max_size=3)
    ),
    max_leaves=6,
)
_deep = st.builds(
    _Deep,
    depth=st.sampled_from([30, 200, 900, 10_000]),
    kind=st.sampled_from(["list", "dict"]),
)
_huge_string = st.sampled_from([10_000, 300_000]).map(lambda n: "x" * (n - 1) + "\n")
_replacement = (
    # Copies: a later mutation may change the value in place.
    st.sampled_from(WRONG_TYPES).map(copy.deepcopy)
    | st.sampled_from(ODD_STRINGS)
    | _unicode_text
    | _json
    | _deep
    | _huge_string
)


@dataclass
class Submission:
    """One generated submission and the text of its GraphQL request."""

    notebook: Any
    as_string: bool = False
    parameters: Any = None
    cache: str | None = None
    deep: list[_Deep] = field(default_factory=list)

    def body(self) -> str:
        """The request body, deep values spliced into the JSON text."""
        deep: dict[str, str] = {}

        def encode(value: Any) -> Any:
            if isinstance(value, _Deep):
                # ASCII, so that it reads the same however it is escaped.
                marker = f"@@noteburst-fuzz-deep-{len(deep)}@@"
                deep[json.dumps(marker)] = value.text()
                return marker
            if isinstance(value, dict):
                return {k: encode(v) for k, v in value.items()}
            if isinstance(value, list):
                return [encode(v) for v in value]
            return value

        notebook = encode(self.notebook)
        parameters = encode(self.parameters)

        def splice(text: str) -> str:
            for marker, replacement in deep.items():
                text = text.replace(marker, replacement)
            return text

        variables: dict[str, Any] = {}
        if self.as_string:
            variables["notebook"] = splice(json.dumps(notebook, ensure_ascii=False))
        else:
            variables["notebook"] = notebook
        if self.parameters is not None:
            variables["parameters"] = parameters
        if self.cache is not None:
            variables["cache"] = {"mode": self.cache}
        request = json.dumps({"query": SUBMIT, "variables": {"input": variables}})
        return splice(request)

    @property
    def depth(self) -> int:
        """Deepest nesting spliced in (0: none)."""
        found = [0]

        def walk(value: Any) -> None:
            if isinstance(value, _Deep):
                found.append(value.depth)
            elif isinstance(value, dict):
                for item in value.values():
                    walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)

        walk(self.notebook)
        walk(self.parameters)
        return max(found)


def _mutate(draw: st.DrawFn, notebook: Any) -> Any:  # noqa: PLR0911, PLR0912 - one branch per kind
    """Apply one mutation to a copy of ``notebook`` (which may already be broken)."""
    paths = list(_paths(notebook))
    # Weighted: many cells make nbformat's validation slow, so they are rare.
    kind = draw(
        st.sampled_from(
            [
                *["replace"] * 5,
                *["delete"] * 2,
                *["extra"] * 2,
                "version",
                "huge",
                "many_cells",
            ]
        )
    )
    if kind == "version":
        key = draw(st.sampled_from(["nbformat", "nbformat_minor"]))
        version: Any = draw(
            st.sampled_from([3, 5, 0, -1, 99, 4.0, 4.5, "4", True, 2**70, None, [4]])
        )
        if isinstance(notebook, dict):
            notebook[key] = version
        return notebook
    if kind == "many_cells":
        if isinstance(notebook, dict) and isinstance(notebook.get("cells"), list):
            # 60 cells stay under MAX_NOTEBOOK_BYTES, 2,000 do not.
            count = draw(st.sampled_from([60, 2_000]))
            cells = json.loads("[" + ",".join([_CELL_TEXT] * count) + "]")
            for i, cell in enumerate(cells):
                cell["id"] = f"c{i}"
            notebook["cells"] = cells
        return notebook
    path = draw(st.sampled_from(paths))
    if kind == "replace" or (not path and kind in {"delete", "huge"}):
        value = draw(_replacement)
        if not path:
            return value if value is not None else 7
        parent = _get(notebook, path[:-1])
        parent[path[-1]] = value
        return notebook
    if kind == "huge":
        parent = _get(notebook, path[:-1])
        parent[path[-1]] = draw(_huge_string | st.just(list(range(20_000))))
        return notebook
    if kind == "delete":
        parent = _get(notebook, path[:-1])
        del parent[path[-1]]
        return notebook
    # extra: a new key (or item) in a container on the path
    target = _get(notebook, path)
    if isinstance(target, dict):
        target[draw(_unicode_text | st.sampled_from(ODD_STRINGS))] = draw(_replacement)
    elif isinstance(target, list):
        target.append(draw(_replacement))
    else:
        parent = _get(notebook, path[:-1]) if path else None
        if isinstance(parent, dict):
            parent[draw(_unicode_text)] = draw(_replacement)
    return notebook


_parameters = st.sampled_from(
    [
        None,
        {},
        {"alpha": 2},
        {"alpha": "two"},
        {"ratio": 1},
        {"name": ODD_STRINGS[1]},
        {"not an identifier": 1},
        {"class": 1},
        [1, 2],
        7,
        "alpha=1",
    ]
) | st.dictionaries(
    st.sampled_from(["alpha", "name", "ratio", "new"]), _replacement, max_size=2
)


@st.composite
def submissions(draw: st.DrawFn) -> Submission:
    """A valid notebook broken in one to three places, and how it is sent."""
    notebook: Any = json.loads(_BASE_TEXT)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        notebook = _mutate(draw, notebook)
    return Submission(
        notebook=notebook,
        as_string=draw(st.sampled_from([False, False, False, True])),
        parameters=draw(st.none() | _parameters),
        cache=draw(st.sampled_from([None, None, "USE", "REFRESH"])),
    )


def _check(client: httpx.Client, submission: Submission) -> str:
    """Send one submission; return the answer's type (or "undecodable")."""
    body_text = submission.body()
    response = client.post(
        "/graphql",
        content=body_text,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code < 500, response.text[:2000]
    if response.status_code == 400 and submission.depth > 500:
        # Deeper than any JSON decoder with a recursion limit can follow:
        # the request is refused before it is a GraphQL request.
        assert "JSON" in response.text, response.text[:2000]
        return "undecodable"
    if response.status_code == 413 and len(body_text.encode()) > BODY_LIMIT:
        return "too large for HTTP"
    assert response.status_code == 200, response.text[:2000]
    body = response.json()
    assert not body.get("errors"), body["errors"]
    payload = body["data"]["submitExecution"]
    assert payload["__typename"] in TYPED_PAYLOADS, payload
    if payload["__typename"] != "Execution":
        assert payload["message"], payload
    return str(payload["__typename"])


def _with(**fields: Any) -> dict[str, Any]:
    notebook: dict[str, Any] = json.loads(_BASE_TEXT)
    notebook.update(fields)
    return notebook


EXPLICIT = [
    # Each of these once answered "Unexpected error.".
    Submission(_with(cells=7)),
    Submission(_with(nbformat_minor=99)),
    Submission(_with(nbformat_minor=4.0)),
    Submission(_with(cells=["x"])),
    Submission(_with(metadata={"deep": _Deep(10_000, "list")})),
    Submission(_with(metadata={"deep": _Deep(10_000, "dict")}), as_string=True),
    Submission(_with(metadata={"deep": _Deep(200, "dict")}), parameters={"alpha": 2}),
    Submission(_with(cells=[{**BASE["cells"][2], "cell_type": 7}])),
    Submission(_with(title="x" * 300_000)),
]
"""Inputs tried before the generated ones, so every run covers them."""


def _fuzz(url: str, failures: list[str]) -> dict[str, int]:
    """Run the examples against ``url``; return how many got each answer.

    A wrong answer is recorded in ``failures`` (with the input, shortened)
    rather than raised, so one run reports every kind of failure and
    Hypothesis spends no time shrinking against a server.
    """
    answers: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=30) as client:

        @given(submission=submissions())
        @_examples(EXPLICIT)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(submission: Submission) -> None:
            try:
                answer = _check(client, submission)
            except AssertionError as exc:
                answer = "wrong"
                failures.append(f"{exc}\n  input: {submission.body()[:1500]}")
            answers[answer] = answers.get(answer, 0) + 1

        check()
    return answers


def _examples(cases: list[Submission]) -> Callable[[_F], _F]:
    def decorate(test: _F) -> _F:
        for case in reversed(cases):
            test = example(submission=case)(test)
        return test

    return decorate


@pytest.mark.asyncio
async def test_broken_notebooks_get_typed_answers(
    tmp_path: Path, backend_urls: dict[str, str | None]
) -> None:
    config = make_config(
        tmp_path,
        SimpleNamespace(url=None, token=None),  # no worker: nothing runs
        kernel_names=["python3"],
        max_notebook_bytes=MAX_NOTEBOOK_BYTES,
        max_queued_per_user=None,
        max_running_per_user=None,
        max_submissions_per_minute=None,
        **backend_urls,
    )
    failures: list[str] = []
    with structlog.testing.capture_logs() as logs:
        async with running(config, run_worker=False) as nb:
            started = time.monotonic()
            answers = await asyncio.wait_for(
                asyncio.to_thread(_fuzz, nb.url, failures), FUZZ_TIMEOUT
            )
            elapsed = time.monotonic() - started
    print(f"{sum(answers.values())} inputs in {elapsed:.1f} s: {answers}")
    faults = sorted(
        {
            "".join(traceback.format_exception(entry["exc_info"])[-3:])
            if isinstance(entry.get("exc_info"), BaseException)
            else str(entry)
            for entry in logs
            if entry["log_level"] == "error"
        }
    )
    assert not failures, "\n".join([*failures[:5], *faults[:5]])
    assert not faults, faults
    assert sum(answers.values()) >= EXAMPLES + len(EXPLICIT)
    # The mutations are not all refusals: some stay valid notebooks.
    assert answers.get("Execution", 0) > 0
    assert answers.get("InvalidNotebook", 0) > 0
