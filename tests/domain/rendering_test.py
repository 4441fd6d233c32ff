"""HTML rendering with nbconvert: with code, and outputs only, with no CDN."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import nbformat
import pytest

from noteburst.domain.rendering import (
    MATHJAX,
    REQUIREJS,
    SCRIPTS,
    HtmlVariant,
    VendoredScript,
    needs_mathjax,
    needs_mermaid,
    needs_requirejs,
    render_html,
)


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


def with_cells(*cells: Any) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    data: dict[str, Any] = nbformat.from_dict(nb)
    return data


def output_cell(data: dict[str, Any]) -> Any:
    return nbformat.v4.new_code_cell(
        "x",
        execution_count=1,
        outputs=[nbformat.v4.new_output("display_data", data=data)],
    )


class _Loads(HTMLParser):
    """URLs that tags make the browser load (script text is not markup)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v or "" for k, v in attrs if k in {"src", "href"}]


def loaded_urls(page: str) -> list[str]:
    parser = _Loads()
    parser.feed(page)
    return parser.urls


MATH = with_cells(nbformat.v4.new_markdown_cell(r"Euler: $e^{i\pi} + 1 = 0$"))
LATEX_OUTPUT = with_cells(output_cell({"text/latex": r"$\frac{a}{b}$"}))
JAVASCRIPT = with_cells(output_cell({"application/javascript": "element.x = 1"}))
WIDGET = with_cells(
    output_cell(
        {
            "application/vnd.jupyter.widget-view+json": {"model_id": "m"},
            "text/plain": "IntSlider(value=0)",
        }
    )
)
AMD_HTML = with_cells(
    output_cell({"text/html": "<div></div><script>require(['plotly'], f)</script>"})
)


@pytest.mark.parametrize(
    "notebook",
    [executed_notebook(), MATH, LATEX_OUTPUT, JAVASCRIPT, WIDGET, AMD_HTML],
    ids=["plain", "math", "latex", "javascript", "widget", "amd-html"],
)
@pytest.mark.parametrize("variant", list(HtmlVariant))
def test_page_loads_nothing_from_another_host(
    notebook: dict[str, Any], variant: HtmlVariant
) -> None:
    page = render_html(notebook, variant)
    for url in loaded_urls(page):
        assert not re.match(r"\s*(?:[a-z][a-z0-9+.-]*:)?//", url, re.I), url
    assert "cdnjs" not in page
    assert "unpkg" not in page


def test_plain_notebook_carries_neither_script() -> None:
    page = render_html(executed_notebook(), HtmlVariant.WITH_CODE)
    assert "MathJax" not in page
    assert "requirejs" not in page
    assert len(page.encode()) < 300_000  # nbconvert's inline CSS is most of it


@pytest.mark.parametrize("notebook", [MATH, LATEX_OUTPUT], ids=["markdown", "latex"])
def test_math_brings_mathjax_inline(notebook: dict[str, Any]) -> None:
    page = render_html(notebook, HtmlVariant.WITHOUT_CODE)
    assert "window.MathJax = {" in page
    assert 'inlineMath: [["$", "$"]' in page
    assert MATHJAX.path.read_text()[:2000] in page
    assert "requirejs" not in page


@pytest.mark.parametrize(
    ("source", "math"),
    [
        (r"$x^2$", True),
        (r"$$\sum_i i$$", True),
        (r"\(a\) and \[b\]", True),
        (r"\begin{align} a &= b \end{align}", True),
        (r"costs \$5, not \$6", False),
        ("no math here", False),
    ],
)
def test_needs_mathjax_in_markdown(source: str, math: bool) -> None:
    notebook = with_cells(nbformat.v4.new_markdown_cell(source))
    assert needs_mathjax(notebook) is math


def test_math_in_code_is_not_math() -> None:
    notebook = with_cells(nbformat.v4.new_code_cell("price = '$5 $6'"))
    assert not needs_mathjax(notebook)


@pytest.mark.parametrize(
    "notebook",
    [JAVASCRIPT, WIDGET, AMD_HTML],
    ids=["javascript", "widget", "amd-html"],
)
def test_javascript_brings_requirejs_inline(notebook: dict[str, Any]) -> None:
    assert needs_requirejs(notebook)
    page = render_html(notebook, HtmlVariant.WITH_CODE)
    assert REQUIREJS.path.read_text()[-2000:] in page
    assert "MathJax" not in page


def test_plain_html_output_needs_no_requirejs() -> None:
    notebook = with_cells(output_cell({"text/html": "<b>bold</b><script>x()</script>"}))
    assert not needs_requirejs(notebook)


REPO = Path(__file__).parents[2]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.package)
def test_vendored_scripts_are_the_pinned_npm_files(script: VendoredScript) -> None:
    """After a version bump, this says to re-run the vendoring script."""
    pins = json.loads((REPO / "package.json").read_text())["dependencies"]
    assert pins[script.package] == script.version
    npm_copy = REPO / "node_modules" / script.package / script.file
    assert sri(script.path.read_bytes()) == sri(npm_copy.read_bytes()), (
        "run `npm ci && npm run vendor-rendering`"
    )
    license_text = script.path.parents[len(Path(script.file).parts) - 1] / "LICENSE"
    assert re.search(
        r"Permission is hereby granted|Apache License", license_text.read_text()
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.package)
def test_inlined_scripts_cannot_end_their_element(script: VendoredScript) -> None:
    page = render_html(MATH if script is MATHJAX else JAVASCRIPT, HtmlVariant.WITH_CODE)
    start = page.index(script.path.read_text()[:200])
    end = page.index("</script>", start)
    inlined = page[start:end]
    assert "<!--" not in inlined
    assert len(inlined) > 0.99 * script.path.stat().st_size


def sri(body: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()


@pytest.mark.parametrize(
    ("notebook", "diagram"),
    [
        (
            with_cells(
                nbformat.v4.new_markdown_cell("```mermaid\ngraph TD; A-->B\n```")
            ),
            True,
        ),
        (with_cells(output_cell({"text/vnd.mermaid": "graph TD; A-->B"})), True),
        (executed_notebook(), False),
        (MATH, False),
    ],
    ids=["markdown", "output", "plain", "math"],
)
def test_mermaid_loader_only_with_a_diagram(
    notebook: dict[str, Any], diagram: bool
) -> None:
    assert needs_mermaid(notebook) is diagram
    page = render_html(notebook, HtmlVariant.WITH_CODE)
    assert ("mermaid.initialize" in page) is diagram
