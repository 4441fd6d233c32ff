"""Executed notebooks as HTML, with nbconvert's own exporter.

Dashboards show a result as a page; nbconvert's ``HTMLExporter`` (the
``lab`` template, the one JupyterLab users know) is the reference renderer,
so we call it instead of templating outputs ourselves.  ``hide_code`` drops
the input areas and prompts (what a report reader wants), keeping every
output.  Rendering is CPU-bound (nbconvert's templates and filters over the
whole notebook) and long enough to stall other tasks: callers run it off the
event loop.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import nbformat
from nbconvert import HTMLExporter

__all__ = ["HtmlVariant", "render_html"]


class HtmlVariant(enum.StrEnum):
    """The stored HTML views of an executed notebook."""

    WITH_CODE = "html"
    WITHOUT_CODE = "html-no-code"

    @classmethod
    def of(cls, *, hide_code: bool) -> HtmlVariant:
        """Return the variant for the ``hideCode`` argument."""
        return cls.WITHOUT_CODE if hide_code else cls.WITH_CODE


def render_html(notebook: Mapping[str, Any], variant: HtmlVariant) -> str:
    """Render an executed notebook to a standalone HTML page."""
    hide = variant is HtmlVariant.WITHOUT_CODE
    # A new exporter per call: exporters keep per-render state and this runs
    # on worker threads.
    exporter = HTMLExporter(
        template_name="lab", exclude_input=hide, exclude_input_prompt=hide
    )
    node = nbformat.from_dict(dict(notebook))
    body, _resources = exporter.from_notebook_node(node)
    return str(body)
