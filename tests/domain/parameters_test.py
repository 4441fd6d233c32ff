"""Parameters: papermill's injection conventions and the checks at submit."""

from __future__ import annotations

import re
from typing import Any

import nbformat
import pytest

from noteburst.domain.parameters import (
    INJECTED_TAG,
    check_parameters,
    inject_parameters,
    parameter_defaults,
)
from noteburst.exceptions import InvalidParametersError

DEFAULTS = """\
count = 3
ratio = 0.5  # a float
name = "world"
verbose = False
items = [1, 2]
options = {"a": 1}
anything = None
computed = len("abc")
"""


def make_notebook(*cells: tuple[str, list[str]]) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook()
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    data: dict[str, Any] = nbformat.from_dict(nb)
    return data


def sources(nb: dict[str, Any]) -> list[str]:
    return [cell["source"] for cell in nb["cells"]]


def test_injected_after_the_parameters_cell() -> None:
    nb = make_notebook(
        ("import os", []), (DEFAULTS, ["parameters"]), ("print(count)", [])
    )
    injected = inject_parameters(
        nb, {"count": 7, "name": 'a "quoted" one', "items": [1, None]}, "python3"
    )
    assert sources(injected)[:2] == sources(nb)[:2]
    assert sources(injected)[3:] == sources(nb)[2:]
    cell = injected["cells"][2]
    assert cell["metadata"]["tags"] == [INJECTED_TAG]
    assert cell["source"] == (
        '# Parameters\ncount = 7\nname = "a \\"quoted\\" one"\nitems = [1, None]\n'
    )
    nbformat.validate(nbformat.from_dict(injected))
    assert "papermill" not in injected["metadata"]
    assert len(nb["cells"]) == 3  # the input is not changed


def test_injected_at_the_top_without_a_parameters_cell() -> None:
    nb = make_notebook(("print(x)", []))
    injected = inject_parameters(nb, {"x": 1.5}, "python3")
    assert sources(injected) == ["# Parameters\nx = 1.5\n", "print(x)"]


def test_an_earlier_injected_cell_is_replaced() -> None:
    nb = make_notebook(
        ("x = 0", ["parameters"]), ("x = 1", [INJECTED_TAG]), ("print(x)", [])
    )
    injected = inject_parameters(nb, {"x": 2}, "python3")
    assert sources(injected) == ["x = 0", "# Parameters\nx = 2\n", "print(x)"]


def test_no_parameters_no_cell() -> None:
    nb = make_notebook(("x = 0", ["parameters"]))
    assert inject_parameters(nb, {}, "python3") == nb


def test_defaults_are_read_from_the_parameters_cell() -> None:
    defaults = parameter_defaults(make_notebook((DEFAULTS, ["parameters"])))
    assert {name: d.value for name, d in defaults.items() if d.is_literal} == {
        "count": 3,
        "ratio": 0.5,
        "name": "world",
        "verbose": False,
        "items": [1, 2],
        "options": {"a": 1},
        "anything": None,
    }
    assert not defaults["computed"].is_literal
    assert parameter_defaults(make_notebook(("x = 1", []))) == {}


@pytest.mark.parametrize(
    "parameters",
    [
        {"count": 10, "ratio": 2, "name": "x", "verbose": True},
        {"ratio": 0.25, "items": [], "options": {"b": [1]}},
        {"anything": {"deep": [1, "two"]}, "computed": "whatever"},
        {"not_in_the_cell": 1},
    ],
)
def test_compatible_values_are_accepted(parameters: dict[str, Any]) -> None:
    defaults = parameter_defaults(make_notebook((DEFAULTS, ["parameters"])))
    check_parameters(parameters, defaults)


@pytest.mark.parametrize(
    ("parameters", "name", "message"),
    [
        (
            {"count": "3"},
            "count",
            "'count' expects an integer (its default is 3), got a string",
        ),
        ({"count": 1.5}, "count", "expects an integer"),
        ({"count": True}, "count", "got a boolean"),
        ({"ratio": "0.5"}, "ratio", "expects a number"),
        ({"verbose": 1}, "verbose", "expects a boolean"),
        ({"name": None}, "name", "got null"),
        ({"items": {"a": 1}}, "items", "expects a list"),
        ({"options": [1]}, "options", "expects an object"),
        ({"1st": 1}, "1st", "not a valid Python identifier"),
        ({"class": 1}, "class", "not a valid Python identifier"),
        ({"a-b": 1}, "a-b", "not a valid Python identifier"),
    ],
)
def test_incompatible_values_are_refused(
    parameters: dict[str, Any], name: str, message: str
) -> None:
    defaults = parameter_defaults(make_notebook((DEFAULTS, ["parameters"])))
    with pytest.raises(InvalidParametersError, match=re.escape(message)) as caught:
        check_parameters(parameters, defaults)
    assert caught.value.name == name
    assert caught.value.code == "invalid_parameters"
