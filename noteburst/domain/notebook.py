"""Accepting a submitted notebook: parse, bound, validate, pick its kernel.

Every rule a submission must pass lives here so that the API refuses bad
input before anything is stored, with a message that says exactly what is
wrong (the JSON error position, the failing nbformat path, the size).

The notebook is checked completely before anything else reads it, and in
an order where no check can trip over the input: first its nesting depth
(without recursion: the JSON decoder, ``copy.deepcopy``, nbformat and
jsonschema all recurse, and a 10,000-deep value in metadata would end in
``RecursionError``), then the version fields, then the few shapes that
nbformat's own repair step and error reporting assume before its schema
has been applied (cells are objects, a cell id is a string, a cell or
output type is a string), and only then nbformat's validation.  Every
refusal is an :class:`InvalidNotebookError` naming the failing path.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nbformat
from nbformat.v4.rwbase import rejoin_lines
from nbformat.validator import ValidationError, normalize
from nbformat.warnings import DuplicateCellId, MissingIDFieldWarning

from ..exceptions import InvalidNotebookError

__all__ = [
    "MAX_NESTING",
    "AcceptedNotebook",
    "accept_notebook",
    "cell_source",
    "code_cell_indices",
    "kernel_name_of",
    "runnable_cell_count",
]


MAX_NESTING = 100
"""Deepest nesting of arrays and objects accepted in a notebook.

Real notebooks nest a few levels (widget state and Vega specs a few
dozen); every layer that handles the notebook afterwards (copying,
validation, parameter injection, the worker) recurses, so the bound keeps
them all far from Python's recursion limit.
"""


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
        except RecursionError as exc:
            raise InvalidNotebookError(
                f"nested too deeply: more than {MAX_NESTING} levels of arrays "
                "and objects"
            ) from exc
    else:
        data = raw
    if not isinstance(data, dict):
        raise InvalidNotebookError(
            f"not a notebook: expected a JSON object, got {_json_kind(data)}"
        )
    _check_nesting(data)
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode("utf-8"))
    _check_size(size, max_bytes)
    minor = _check_version(data)
    _check_shapes(data)
    try:
        # normalize() adds the cell ids nbformat 4.5 requires, so that an
        # older writer's notebook is accepted (and stored) in valid form
        # instead of raising a deprecation warning on every validation.
        # It works on a copy parsed from the text: the caller's data stays
        # as given, and parsing is faster than copy.deepcopy.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingIDFieldWarning)
            warnings.simplefilter("ignore", DuplicateCellId)
            _, normalized = normalize(json.loads(text), version=4, version_minor=minor)
        node = nbformat.from_dict(normalized)
        nbformat.validate(node, version=4, version_minor=minor)
    except ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise InvalidNotebookError(
            f"invalid nbformat at {path}: {_shortened(exc.message)}"
        ) from exc
    # On disk, sources and stream texts are often lists of lines; in memory
    # nbformat (and nbclient) work with joined strings.  Join them once, here,
    # so every layer above sees the in-memory form.
    data = dict(rejoin_lines(nbformat.from_dict(normalized)))
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return AcceptedNotebook(
        notebook=data, text=text, size_bytes=len(text.encode("utf-8"))
    )


def _check_nesting(data: dict[str, Any]) -> None:
    """Refuse arrays and objects nested more than MAX_NESTING deep.

    Iterative (an explicit stack), so that any depth is measured safely.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) >= MAX_NESTING:
            raise InvalidNotebookError(
                f"nested too deeply at {_path(path[:8])}/…: more than {MAX_NESTING} "
                "levels of arrays and objects"
            )
        if isinstance(value, dict):
            stack.extend(
                (item, (*path, key))
                for key, item in value.items()
                if isinstance(item, dict | list)
            )
        elif isinstance(value, list):
            stack.extend(
                (item, (*path, index))
                for index, item in enumerate(value)
                if isinstance(item, dict | list)
            )


def _check_version(data: dict[str, Any]) -> int:
    """Check ``nbformat`` and ``nbformat_minor``; return the minor version."""
    major = data.get("nbformat")
    if "cells" not in data or major is None:
        raise InvalidNotebookError(
            "not a notebook: an nbformat document needs 'nbformat' and 'cells'"
        )
    if not _is_int(major):
        raise InvalidNotebookError(
            f"invalid nbformat at nbformat: {major!r} is not an integer"
        )
    if major != 4:  # noqa: PLR2004 - the nbformat major version we run
        raise InvalidNotebookError(
            f"nbformat {major} is not supported: convert the notebook to "
            "nbformat 4 (jupyter nbconvert --to notebook)"
        )
    newest = nbformat.v4.nbformat_minor
    minor = data.get("nbformat_minor", 0)
    if not _is_int(minor) or not 0 <= minor <= newest:
        raise InvalidNotebookError(
            f"invalid nbformat at nbformat_minor: {minor!r} is not an integer "
            f"from 0 to {newest} (nbformat 4.{newest} is the newest supported)"
        )
    result: int = minor
    return result


def _check_shapes(data: dict[str, Any]) -> None:
    """Check what nbformat reads before its schema applies.

    ``normalize`` iterates the cells and hashes their ids; on a failed
    ``oneOf`` the validator picks the schema of a cell or output by its
    ``cell_type`` or ``output_type``.  Anything else is the schema's.
    """
    cells = data["cells"]
    if not isinstance(cells, list):
        raise InvalidNotebookError(
            f"invalid nbformat at cells: expected an array, got {_json_kind(cells)}"
        )
    for index, cell in enumerate(cells):
        where = ("cells", index)
        if not isinstance(cell, dict):
            raise InvalidNotebookError(
                f"invalid nbformat at {_path(where)}: expected an object, "
                f"got {_json_kind(cell)}"
            )
        _check_string_field(cell, "id", where)
        _check_string_field(cell, "cell_type", where)
        outputs = cell.get("outputs")
        if isinstance(outputs, list):
            for number, output in enumerate(outputs):
                if isinstance(output, dict):
                    _check_string_field(
                        output, "output_type", (*where, "outputs", number)
                    )


def _check_string_field(
    value: dict[str, Any], key: str, where: tuple[str | int, ...]
) -> None:
    if key in value and not isinstance(value[key], str):
        raise InvalidNotebookError(
            f"invalid nbformat at {_path((*where, key))}: expected a string, "
            f"got {_json_kind(value[key])}"
        )


_MAX_MESSAGE_CHARS = 500


def _shortened(message: str) -> str:
    """Cut a validation message (it quotes the failing value, maybe megabytes)."""
    if len(message) <= _MAX_MESSAGE_CHARS:
        return message
    return message[: _MAX_MESSAGE_CHARS - 1] + "…"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _path(path: tuple[str | int, ...]) -> str:
    return "/".join(str(part) for part in path) or "(root)"


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
