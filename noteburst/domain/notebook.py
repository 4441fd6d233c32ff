"""Accepting a submitted notebook: parse, bound, validate, pick its kernel.

Every rule a submission must pass lives here so that the API refuses bad
input before anything is stored, with a message that says exactly what is
wrong (the JSON error position, the failing nbformat path, the size).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nbformat
from nbformat.v4.rwbase import rejoin_lines
from nbformat.validator import ValidationError, normalize
from nbformat.warnings import MissingIDFieldWarning

from ..exceptions import InvalidNotebookError

__all__ = [
    "AcceptedNotebook",
    "accept_notebook",
    "cell_source",
    "code_cell_indices",
    "kernel_name_of",
    "runnable_cell_count",
]


@dataclass(frozen=True, slots=True)
class AcceptedNotebook:
    """A submission that passed every check."""

    notebook: dict[str, Any]
    """The notebook as plain JSON data (nbformat v4)."""
    text: str
    """Its canonical JSON text, as stored."""
    size_bytes: int


def accept_notebook(
    raw: str | dict[str, Any] | Any, *, max_bytes: int
) -> AcceptedNotebook:
    """Check a submitted notebook and return it in canonical form.

    Parameters
    ----------
    raw
        A JSON object, or a string holding one.
    max_bytes
        Largest accepted size of the notebook's JSON text, in bytes.

    Raises
    ------
    InvalidNotebookError
        Raised if the notebook is not JSON, not an object, too large, not
        nbformat 4, or fails nbformat validation.
    """
    if isinstance(raw, str):
        size = len(raw.encode("utf-8"))
        _check_size(size, max_bytes)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidNotebookError(
                f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
    else:
        data = raw
    if not isinstance(data, dict):
        raise InvalidNotebookError(
            f"not a notebook: expected a JSON object, got {_json_kind(data)}"
        )
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode("utf-8"))
    _check_size(size, max_bytes)
    major = data.get("nbformat")
    if "cells" not in data or major is None:
        raise InvalidNotebookError(
            "not a notebook: an nbformat document needs 'nbformat' and 'cells'"
        )
    if major != 4:  # noqa: PLR2004 - the nbformat major version we run
        raise InvalidNotebookError(
            f"nbformat {major} is not supported: convert the notebook to "
            "nbformat 4 (jupyter nbconvert --to notebook)"
        )
    try:
        # normalize() adds the cell ids nbformat 4.5 requires, so that an
        # older writer's notebook is accepted (and stored) in valid form
        # instead of raising a deprecation warning on every validation.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingIDFieldWarning)
            _, normalized = normalize(copy.deepcopy(data))
        node = nbformat.from_dict(normalized)
        nbformat.validate(node, version=4)
    except ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise InvalidNotebookError(
            f"invalid nbformat at {path}: {exc.message}"
        ) from exc
    # On disk, sources and stream texts are often lists of lines; in memory
    # nbformat (and nbclient) work with joined strings.  Join them once, here,
    # so every layer above sees the in-memory form.
    data = dict(rejoin_lines(nbformat.from_dict(normalized)))
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return AcceptedNotebook(
        notebook=data, text=text, size_bytes=len(text.encode("utf-8"))
    )


def kernel_name_of(notebook: dict[str, Any]) -> str | None:
    """Return the kernel named by the notebook's kernelspec, if any."""
    spec = notebook.get("metadata", {}).get("kernelspec")
    if isinstance(spec, dict):
        name = spec.get("name")
        if isinstance(name, str) and name:
            return name
    return None


def code_cell_indices(notebook: dict[str, Any]) -> list[int]:
    """Return the indices of the notebook's code cells, in order."""
    return [
        i
        for i, cell in enumerate(notebook.get("cells", []))
        if cell.get("cell_type") == "code"
    ]


def cell_source(cell: Mapping[str, Any]) -> str:
    """Return a cell's source as one string (nbformat allows a list of lines)."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def runnable_cell_count(notebook: dict[str, Any]) -> int:
    """Count the code cells that will run (empty ones are skipped, as nbclient does)."""
    cells = notebook.get("cells", [])
    return sum(1 for i in code_cell_indices(notebook) if cell_source(cells[i]).strip())


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InvalidNotebookError(f"too large: {size} bytes > {max_bytes}")


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__
