"""What makes two submissions the same computation: the result cache's key.

Two submissions give the same result when they run the same code with the
same parameters on the same kernel in the same environment.  Markdown,
outputs already in the notebook, metadata and cell ids do not change what
runs, so they are left out: re-saving a notebook in JupyterLab must not
miss the cache.  The environment tag is the operator's statement that the
image (packages, data) is the same; changing it invalidates every entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["cache_key"]

_KEY_VERSION = 1
"""Bumped when the key's recipe changes, so old entries stop matching."""


def cache_key(
    notebook: Mapping[str, Any],
    *,
    parameters: Mapping[str, Any] | None,
    kernel_name: str,
    environment: str,
) -> str:
    """Return the hex SHA-256 key of a submission.

    Parameters
    ----------
    notebook
        The submitted notebook (before parameters are injected), as JSON
        data with cell sources joined into strings.
    parameters
        The submitted parameters; `None` and ``{}`` are the same.
    kernel_name
        The kernel it runs on.
    environment
        The deployment's environment tag.
    """
    code = [
        _source(cell)
        for cell in notebook.get("cells", [])
        if cell.get("cell_type") == "code"
    ]
    document = {
        "version": _KEY_VERSION,
        "code": code,
        "parameters": dict(parameters or {}),
        "kernel": kernel_name,
        "environment": environment,
    }
    canonical = json.dumps(
        document, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _source(cell: Mapping[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)
