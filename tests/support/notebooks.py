"""Small notebooks built in code, for tests that need a particular shape."""

from __future__ import annotations

from typing import Any

import nbformat


def notebook(*sources: str, kernel: str | None = "python3") -> dict[str, Any]:
    """A notebook whose code cells have these sources ("# md: ..." for markdown)."""
    nb = nbformat.v4.new_notebook()
    for source in sources:
        if source.startswith("# md:"):
            nb.cells.append(nbformat.v4.new_markdown_cell(source.removeprefix("# md:")))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(source))
    if kernel:
        nb.metadata["kernelspec"] = {
            "name": kernel,
            "display_name": kernel,
            "language": "python",
        }
    data: dict[str, Any] = nbformat.from_dict(nb)
    return dict(data)
