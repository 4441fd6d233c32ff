"""Small notebooks built in code, for tests that need a particular shape."""

from __future__ import annotations

from pathlib import Path
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


def held_until(release: Path) -> str:
    """Source of a cell that runs until ``release`` exists (at most 60 s)."""
    return (
        "import os, time\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(release)!r}):\n"
        "    assert time.monotonic() < deadline, 'never released'\n"
        "    time.sleep(0.01)"
    )
