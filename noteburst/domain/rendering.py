r"""Executed notebooks as HTML, with nbconvert's own exporter, needing no CDN.

Dashboards show a result as a page; nbconvert's ``HTMLExporter`` (the
``lab`` template, the one JupyterLab users know) is the reference renderer,
so we call it instead of templating outputs ourselves.  ``hide_code`` drops
the input areas and prompts (what a report reader wants), keeping every
output.  Rendering is CPU-bound (nbconvert's templates and filters over the
whole notebook) and long enough to stall other tasks: callers run it off the
event loop.

The lab template loads require.js and MathJax from cdnjs on every page,
which offline and air-gapped deployments see fail.  The page is also shown
embedded by other applications on their own origin (Times Square), where a
URL relative to Noteburst would not resolve and an absolute one may not be
reachable by the reader's browser, so the page carries what it needs:
``templates/noteburst_lab`` extends the lab template and, through
`render_html`, inlines

* require.js only when an output needs it (JavaScript, a widget view, or
  HTML whose scripts call ``require``/``define``), else nothing;
* MathJax 3 (``es5/tex-svg-full.js``: every TeX extension built in, so
  nothing is fetched on demand, and SVG output, so no font files), with a
  configuration matching nbconvert's (``$``/``$$``, ``\(``/``\[``,
  escapes, environments, AMS numbering), only when the notebook has math,
  else nothing (the build is about 2.2 MB);
* nbconvert's Mermaid loader (which imports Mermaid from a CDN: not
  vendored yet) only when the notebook has a diagram, else nothing.

The scripts are the npm packages pinned in ``package.json``, vendored with
their licenses under ``static/rendering`` by ``npm run vendor-rendering``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

import nbformat
from nbconvert import HTMLExporter

__all__ = [
    "ASSETS_DIR",
    "MATHJAX",
    "REQUIREJS",
    "SCRIPTS",
    "HtmlVariant",
    "VendoredScript",
    "needs_mathjax",
    "needs_mermaid",
    "needs_requirejs",
    "render_html",
]

ASSETS_DIR: Final = Path(__file__).parent / "static" / "rendering"
"""Vendored scripts, as ``<package>@<version>/<file>`` with each LICENSE."""

TEMPLATES_DIR: Final = Path(__file__).parent / "templates"
TEMPLATE_NAME: Final = "noteburst_lab"


@dataclass(frozen=True, slots=True)
class VendoredScript:
    """One script from an npm package, inlined into pages that need it."""

    package: str
    version: str
    file: str

    @property
    def path(self) -> Path:
        """The vendored copy."""
        return ASSETS_DIR / f"{self.package}@{self.version}" / self.file


REQUIREJS: Final = VendoredScript("requirejs", "2.3.8", "require.js")
MATHJAX: Final = VendoredScript("mathjax", "3.2.2", "es5/tex-svg-full.js")
SCRIPTS: Final = (REQUIREJS, MATHJAX)

# Math as JupyterLab finds it: $...$ or $$...$$ (not an escaped \$), \(...\),
# \[...\], or a LaTeX environment.
_MATH_RE: Final = re.compile(
    r"(?<!\\)\$\$?[^$]+?(?<!\\)\$|\\\(.+?\\\)|\\\[.+?\\\]|\\begin\{[A-Za-z*]+\}",
    re.DOTALL,
)
_MATH_MIMETYPES: Final = ("text/latex", "text/markdown", "text/html")
_AMD_RE: Final = re.compile(r"<script\b.*?\b(?:require|requirejs|define)\s*[(.]", re.S)
_WIDGET_VIEW: Final = "application/vnd.jupyter.widget-view+json"
_MERMAID: Final = "text/vnd.mermaid"
_MERMAID_FENCE_RE: Final = re.compile(r"^\s*(?:```|~~~)\s*mermaid", re.MULTILINE)


class HtmlVariant(enum.StrEnum):
    """The stored HTML views of an executed notebook."""

    WITH_CODE = "html"
    WITHOUT_CODE = "html-no-code"

    @classmethod
    def of(cls, *, hide_code: bool) -> HtmlVariant:
        """Return the variant for the ``hideCode`` argument."""
        return cls.WITHOUT_CODE if hide_code else cls.WITH_CODE


def render_html(notebook: Mapping[str, Any], variant: HtmlVariant) -> str:
    """Render an executed notebook to a standalone HTML page that needs no CDN."""
    hide = variant is HtmlVariant.WITHOUT_CODE
    # A new exporter per call: exporters keep per-render state and this runs
    # on worker threads.
    exporter = HTMLExporter(
        template_name=TEMPLATE_NAME,
        extra_template_basedirs=[str(TEMPLATES_DIR)],
        exclude_input=hide,
        exclude_input_prompt=hide,
    )
    node = nbformat.from_dict(dict(notebook))
    resources = {
        "noteburst_requirejs": _inline(REQUIREJS) if needs_requirejs(node) else "",
        "noteburst_mathjax": _inline(MATHJAX) if needs_mathjax(node) else "",
        "noteburst_mermaid": needs_mermaid(node),
    }
    body, _resources = exporter.from_notebook_node(node, resources=resources)
    return str(body)


def needs_mathjax(notebook: Mapping[str, Any]) -> bool:
    """Whether a markdown cell or a LaTeX/Markdown/HTML output holds math."""
    texts = [
        _text(cell.get("source", ""))
        for cell in notebook.get("cells", [])
        if cell.get("cell_type") == "markdown"
    ]
    for data in _output_data(notebook):
        if "text/latex" in data:
            return True
        texts.extend(_text(data[m]) for m in _MATH_MIMETYPES if m in data)
    return any(_MATH_RE.search(text) for text in texts)


def needs_requirejs(notebook: Mapping[str, Any]) -> bool:
    """Whether an output runs JavaScript that may use require.js.

    JavaScript outputs and widget views (nbconvert's lab template renders
    both with script tags; JavaScript reprs commonly call ``require``), and
    HTML outputs whose scripts call ``require``/``define`` (plotting
    libraries' notebook modes do).
    """
    for data in _output_data(notebook):
        if "application/javascript" in data or _WIDGET_VIEW in data:
            return True
        if "text/html" in data and _AMD_RE.search(_text(data["text/html"])):
            return True
    return False


def needs_mermaid(notebook: Mapping[str, Any]) -> bool:
    """Whether the notebook has a Mermaid diagram (a markdown fence or an output)."""
    if any(_MERMAID in data for data in _output_data(notebook)):
        return True
    return any(
        _MERMAID_FENCE_RE.search(_text(cell.get("source", "")))
        for cell in notebook.get("cells", [])
        if cell.get("cell_type") == "markdown"
    )


def _output_data(notebook: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for cell in notebook.get("cells", []):
        for output in (
            cell.get("outputs", ()) if cell.get("cell_type") == "code" else ()
        ):
            data = output.get("data")
            if isinstance(data, Mapping):
                yield data


def _text(value: object) -> str:
    """Join an nbformat multiline string (a string or a list of lines)."""
    if isinstance(value, list):
        return "".join(str(part) for part in value)
    return value if isinstance(value, str) else ""


@cache
def _inline(script: VendoredScript) -> str:
    """Return the script's text, safe between ``<script>`` and ``</script>``.

    ``</script`` would end the element and ``<!--`` may change how the HTML
    parser reads what follows; the escapes mean the same to JavaScript
    inside strings and regular expressions, where such text occurs.
    """
    text = script.path.read_text(encoding="utf-8")
    text = re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE)
    return text.replace("<!--", "<\\!--")
