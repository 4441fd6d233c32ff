"""accept_notebook: every malformed notebook is an InvalidNotebookError.

Each case here once escaped as another exception (TypeError,
AssertionError, RecursionError from nbformat, json or copy), which the
API masks as "Unexpected error.": the notebook was read before it was
checked.  Found by ``tests/api/notebook_fuzz_test.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from noteburst.domain.notebook import MAX_NESTING, accept_notebook
from noteburst.exceptions import InvalidNotebookError
from tests.support.notebooks import notebook

MAX_BYTES = 16 * 1024 * 1024


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _with(**fields: Any) -> dict[str, Any]:
    return {**notebook("1 + 1"), **fields}


def _code_cell(**fields: Any) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "id": "a",
        "cell_type": "code",
        "metadata": {},
        "execution_count": None,
        "source": "1",
        "outputs": [],
    }
    return {**cell, **fields}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(cells=7), "at cells: expected an array, got a number"),
        (_with(cells=["x"]), "at cells/0: expected an object, got a string"),
        (_with(cells=[_code_cell(id=[1])]), "at cells/0/id: expected a string"),
        (
            _with(cells=[_code_cell(cell_type=7)]),
            "at cells/0/cell_type: expected a string",
        ),
        (
            _with(cells=[_code_cell(outputs=[{"output_type": None}])]),
            "at cells/0/outputs/0/output_type: expected a string",
        ),
        (_with(nbformat="4"), "at nbformat: '4' is not an integer"),
        (_with(nbformat_minor=99), "at nbformat_minor: 99 is not an integer from 0"),
        (_with(nbformat_minor=-1), "at nbformat_minor: -1"),
        (_with(nbformat_minor=4.0), "at nbformat_minor: 4.0"),
        (_with(nbformat_minor=[4]), "at nbformat_minor: [4]"),
        (_with(nbformat_minor=True), "at nbformat_minor: True"),
        (
            _with(metadata={"deep": _nested(10_000)}),
            "nested too deeply at metadata/deep/0/0/0/0/0/0/…",
        ),
        (_with(metadata={"deep": _nested(MAX_NESTING)}), "nested too deeply"),
    ],
)
def test_malformed_notebooks_are_refused_by_path(data: Any, message: str) -> None:
    with pytest.raises(InvalidNotebookError) as refused:
        accept_notebook(data, max_bytes=MAX_BYTES)
    assert message in refused.value.message


def test_a_deep_notebook_sent_as_text_is_refused() -> None:
    text = '{"nbformat": 4, "metadata": ' + "[" * 10_000 + "]" * 10_000 + "}"
    with pytest.raises(InvalidNotebookError, match="nested too deeply"):
        accept_notebook(text, max_bytes=MAX_BYTES)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    # The notebook object is level 0, its metadata 1: this value's
    # innermost list is at depth MAX_NESTING - 1.
    accepted = accept_notebook(
        _with(metadata={"deep": _nested(MAX_NESTING - 2)}), max_bytes=MAX_BYTES
    )
    assert json.loads(accepted.text)["metadata"]["deep"] == _nested(MAX_NESTING - 2)


def test_validation_messages_do_not_quote_huge_values() -> None:
    data = _with(cells=[_code_cell(execution_count="x" * 100_000)])
    with pytest.raises(InvalidNotebookError) as refused:
        accept_notebook(data, max_bytes=MAX_BYTES)
    assert refused.value.message.startswith("invalid nbformat at cells/0")
    assert len(refused.value.message) < 1_000


def test_older_notebooks_without_cell_ids_are_still_accepted() -> None:
    cell = _code_cell()
    del cell["id"]
    for minor in (4, 5):
        accepted = accept_notebook(
            _with(nbformat_minor=minor, cells=[cell]), max_bytes=MAX_BYTES
        )
        assert accepted.notebook["cells"][0]["source"] == "1"
