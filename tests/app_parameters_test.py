"""Parameters end to end: papermill's conventions on a real kernel.

Notebooks written for papermill run unchanged: values arrive in a cell
tagged ``injected-parameters`` after the ``parameters`` cell (or at the top)
and keep their JSON types in the kernel; bad parameters are refused at
submission with a payload that names the parameter.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.support.app import Noteburst, make_config, running
from tests.support.notebooks import notebook

DEFAULTS = 'count = 1\nratio = 0.5\nname = "world"\nflag = True\nitems = []\n'
SHOW_TYPES = (
    "import json\n"
    "print(json.dumps({k: type(v).__name__ for k, v in dict("
    "count=count, ratio=ratio, name=name, flag=flag, items=items,"
    " extra=extra, nothing=nothing).items()}, sort_keys=True))"
)


def with_parameters_cell(*sources: str) -> dict[str, Any]:
    nb = notebook(DEFAULTS, *sources)
    nb["cells"][0]["metadata"]["tags"] = ["parameters"]
    return nb


@pytest_asyncio.fixture
async def nb(tmp_path: Path, jupyter_server: Any) -> AsyncIterator[Noteburst]:
    async with running(make_config(tmp_path, jupyter_server)) as instance:
        yield instance


async def run(nb: Noteburst, notebook: dict[str, Any], **fields: Any) -> dict[str, Any]:
    submitted = await nb.submit(notebook, **fields)
    assert submitted["__typename"] == "Execution", submitted
    events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), 60)
    assert events[-1]["status"] == "SUCCEEDED", events[-1]
    fetched = await nb.get(submitted["id"])
    assert fetched is not None
    return fetched


@pytest.mark.asyncio
async def test_values_keep_their_json_types_after_the_parameters_cell(
    nb: Noteburst,
) -> None:
    parameters = {
        "count": 7,
        "ratio": 2,
        "name": 'say "hi"',
        "flag": False,
        "items": [1, None, {"a": 1.5}],
        "extra": {"nested": [True]},
        "nothing": None,
    }
    done = await run(
        nb,
        with_parameters_cell(SHOW_TYPES, "print(name, items)"),
        parameters=parameters,
    )
    cells = done["notebook"]["cells"]
    assert cells[1]["metadata"]["tags"] == ["injected-parameters"]
    assert cells[1]["source"].startswith("# Parameters\ncount = 7\n")
    types = json.loads(cells[2]["outputs"][0]["text"])
    assert types == {
        "count": "int",
        "ratio": "int",  # JSON 2 stays an integer, as in papermill
        "name": "str",
        "flag": "bool",
        "items": "list",
        "extra": "dict",
        "nothing": "NoneType",
    }
    assert cells[3]["outputs"][0]["text"] == "say \"hi\" [1, None, {'a': 1.5}]\n"
    assert done["progress"]["cellsTotal"] == 4  # the injected cell counts


@pytest.mark.asyncio
async def test_without_a_parameters_cell_values_go_on_top(nb: Noteburst) -> None:
    done = await run(nb, notebook("print(greeting * 2)"), parameters={"greeting": "ab"})
    cells = done["notebook"]["cells"]
    assert cells[0]["metadata"]["tags"] == ["injected-parameters"]
    assert cells[1]["outputs"][0]["text"] == "abab\n"


@pytest.mark.asyncio
async def test_no_parameters_leave_the_notebook_alone(nb: Noteburst) -> None:
    source = with_parameters_cell("print(count)")
    done = await run(nb, source, parameters={})
    assert len(done["notebook"]["cells"]) == 2
    assert done["notebook"]["cells"][1]["outputs"][0]["text"] == "1\n"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("parameters", "typename", "field", "message"),
    [
        (
            {"count": "seven"},
            "InvalidParameters",
            "count",
            "parameter 'count' expects an integer (its default is 1), got a string",
        ),
        ({"flag": 1}, "InvalidParameters", "flag", "expects a boolean"),
        ({"not valid": 1}, "InvalidParameters", "not valid", "not a valid Python"),
        ([1, 2], "InvalidInput", "parameters", "must be a JSON object"),
    ],
)
async def test_bad_parameters_are_refused_at_submit(
    nb: Noteburst, parameters: Any, typename: str, field: str, message: str
) -> None:
    refused = await nb.submit(with_parameters_cell("1"), parameters=parameters)
    assert refused["__typename"] == typename
    assert message in refused["message"]
    assert refused.get("name", refused.get("field")) == field
    listed = await nb.execute("{ executions(first: 5) { edges { node { id } } } }")
    assert listed["executions"]["edges"] == []  # nothing stored
