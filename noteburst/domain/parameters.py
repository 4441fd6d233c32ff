"""Notebook parameters, injected exactly as papermill injects them.

Users bring notebooks written for papermill: a cell tagged ``parameters``
holds defaults, and papermill adds a cell tagged ``injected-parameters``
right after it (at the top when there is none, replacing an earlier
injected cell) that assigns the given values.  We call papermill's own
``parameterize_notebook`` and ``PythonTranslator`` rather than imitate
them, so the injected source is byte for byte what papermill writes and
values keep their JSON types in the kernel.

What papermill does not do, and a service must, is refuse bad parameters
at submission instead of failing in a cell minutes later: names must be
identifiers, and where the parameters cell assigns a literal default, the
value must have a compatible type (an ``int`` default takes an integer, a
``float`` default any number, ``None`` or a non-literal default anything).
"""

from __future__ import annotations

import ast
import keyword
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import nbformat
from papermill.parameterize import parameterize_notebook
from papermill.translators import PythonTranslator

from ..exceptions import InvalidParametersError

__all__ = [
    "INJECTED_TAG",
    "PARAMETERS_TAG",
    "ParameterDefault",
    "check_parameters",
    "inject_parameters",
    "parameter_defaults",
]

PARAMETERS_TAG: Final = "parameters"
INJECTED_TAG: Final = "injected-parameters"

# papermill warns on every notebook without a parameters cell; for us that
# is an ordinary, supported case (the values go at the top).
logging.getLogger("papermill").setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class ParameterDefault:
    """A default assigned in the ``parameters`` cell.

    Attributes
    ----------
    name
        The variable.
    source
        The assigned expression, as written.
    value
        The literal's value when ``source`` is a Python literal, else `None`
        (see ``is_literal``).
    is_literal
        Whether ``source`` is a literal (so its type can be checked against).
    """

    name: str
    source: str
    value: Any
    is_literal: bool


def parameter_defaults(notebook: Mapping[str, Any]) -> dict[str, ParameterDefault]:
    """Read the defaults of the first cell tagged ``parameters``, if any."""
    cell = _first_tagged(notebook, PARAMETERS_TAG)
    if cell is None:
        return {}
    node = nbformat.from_dict(dict(cell))
    defaults: dict[str, ParameterDefault] = {}
    for found in PythonTranslator.inspect(node):
        try:
            value, literal = ast.literal_eval(found.default), True
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value, literal = None, False
        defaults[found.name] = ParameterDefault(
            name=found.name, source=found.default, value=value, is_literal=literal
        )
    return defaults


def check_parameters(
    parameters: Mapping[str, Any], defaults: Mapping[str, ParameterDefault]
) -> None:
    """Refuse names that are not identifiers and values of the wrong type.

    Raises
    ------
    InvalidParametersError
        Naming the first offending parameter and what was expected.
    """
    for name, value in parameters.items():
        if (
            not isinstance(name, str)
            or not name.isidentifier()
            or keyword.iskeyword(name)
        ):
            raise InvalidParametersError(
                name=str(name),
                message=f"{name!r} is not a valid Python identifier",
            )
        default = defaults.get(name)
        if default is None or not default.is_literal or default.value is None:
            continue
        expected = _type_name(default.value)
        if not _compatible(value, default.value):
            raise InvalidParametersError(
                name=name,
                message=(
                    f"parameter {name!r} expects {_article(expected)} "
                    f"(its default is {default.source}), got {_json_type(value)}"
                ),
            )


def inject_parameters(
    notebook: Mapping[str, Any], parameters: Mapping[str, Any], kernel_name: str
) -> dict[str, Any]:
    """Return a copy of ``notebook`` with the parameters cell papermill adds.

    With no parameters the notebook is returned unchanged (papermill adds no
    cell then either).
    """
    if not parameters:
        return dict(notebook)
    node = nbformat.from_dict(dict(notebook))
    language = str(
        node.metadata.get("language_info", {}).get("name")
        or node.metadata.get("kernelspec", {}).get("language")
        or "python"
    )
    # papermill expects every cell to have tags and the notebook a papermill
    # metadata section (its CLI adds them); add them for the call only.
    node.metadata["papermill"] = {}
    untagged = [cell for cell in node.cells if "tags" not in cell.metadata]
    for cell in untagged:
        cell.metadata["tags"] = []
    injected = parameterize_notebook(
        node, dict(parameters), kernel_name=kernel_name, language=language
    )
    for cell in untagged:
        del cell.metadata["tags"]
    injected.metadata.pop("papermill", None)
    result: dict[str, Any] = injected
    return result


def _first_tagged(notebook: Mapping[str, Any], tag: str) -> Mapping[str, Any] | None:
    for cell in notebook.get("cells", []):
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") == "code" and tag in tags:
            return dict(cell)
    return None


def _compatible(value: object, default: object) -> bool:
    # bool is an int subclass in Python but not a number in JSON terms.
    is_bool = isinstance(value, bool)
    accepts: tuple[tuple[type, bool], ...] = (
        (bool, is_bool),
        (int, isinstance(value, int) and not is_bool),
        (float, isinstance(value, int | float) and not is_bool),
        (str, isinstance(value, str)),
        (list, isinstance(value, list)),
        (tuple, isinstance(value, list)),
        (set, isinstance(value, list)),
        (dict, isinstance(value, dict)),
    )
    for kind, ok in accepts:
        if isinstance(default, kind):
            return ok
    return True  # complex, bytes, ...: leave it to the notebook


def _type_name(value: object) -> str:
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        tuple: "list",
        set: "list",
        dict: "object",
    }
    return names.get(type(value), type(value).__name__)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return _article(_type_name(value))


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"
