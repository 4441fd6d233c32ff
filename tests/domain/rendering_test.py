"""HTML rendering with nbconvert: with code, and outputs only."""

from __future__ import annotations

from typing import Any

import nbformat

from noteburst.domain.rendering import HtmlVariant, render_html


def executed_notebook() -> dict[str, Any]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A *report*"),
        nbformat.v4.new_code_cell(
            "squares_total = 1 + 4\nprint('sum_of_squares =', squares_total)",
            execution_count=1,
            outputs=[
                nbformat.v4.new_output(
                    "stream", name="stdout", text="sum_of_squares = 5\n"
                )
            ],
        ),
    ]
    data: dict[str, Any] = nbformat.from_dict(nb)
    return data


def test_with_code() -> None:
    page = render_html(executed_notebook(), HtmlVariant.WITH_CODE)
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert "sum_of_squares = 5" in page  # the output
    assert "squares_total" in page  # the code
    assert "<em>report</em>" in page  # markdown rendered


def test_without_code() -> None:
    page = render_html(executed_notebook(), HtmlVariant.WITHOUT_CODE)
    assert "sum_of_squares = 5" in page
    assert "squares_total" not in page
    assert "In&nbsp;[1]" not in page
    assert "<em>report</em>" in page


def test_variant_of_hide_code() -> None:
    assert HtmlVariant.of(hide_code=True) is HtmlVariant.WITHOUT_CODE
    assert HtmlVariant.of(hide_code=False) is HtmlVariant.WITH_CODE
