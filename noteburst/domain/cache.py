"""What makes two submissions the same computation: the result cache's key.

Two submissions give the same result when they run the same code with the
same parameters on the same kernel in the same environment.  The key also
names the submitting user, so the cache and the sharing of runs never
cross users: one user's submission can neither be answered by another's
result nor reveal (by a fast cache hit, or ``cachedFrom``/``sharesRunOf``
ids) that someone else ran the same code.  Markdown,
outputs already in the notebook, metadata and cell ids do not change what
runs, so they are left out: re-saving a notebook in JupyterLab must not
miss the cache.  The environment tag is the operator's statement that the
image (packages, data) is the same; changing it invalidates every entry.

Each submission says how it uses the cache (:class:`CachePolicy`).  The
default is :attr:`CacheMode.BYPASS`: a notebook may read the clock, live
data or random numbers, so a client that did not ask for reuse must never
silently get an old result.  A dashboard that renders the same page for
many viewers asks for :attr:`CacheMode.USE`, usually with a maximum age.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .notebook import cell_source

__all__ = ["CacheMode", "CachePolicy", "cache_key"]


class CacheMode(enum.StrEnum):
    """How one submission uses the result cache."""

    USE = "use"
    """Reuse a stored successful result of the same key (no older than the
    policy's maximum age), else share a run of the same key already queued
    or running, else run; a success is stored for later submissions."""
    REFRESH = "refresh"
    """Run anyway (sharing only a run of the same key that has not started
    yet, whose result is as fresh as a new one); a success replaces the
    stored result."""
    BYPASS = "bypass"
    """Neither read nor write the cache, nor share a run."""


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """A submission's cache mode and, for USE, the oldest result it accepts.

    The submission service refuses a negative or non-finite maximum age.
    """

    mode: CacheMode = CacheMode.BYPASS
    max_age_seconds: float | None = None
    """Results finished longer ago than this are not reused; None: any age."""

    def oldest_usable(self, now: datetime) -> datetime | None:
        """Return the earliest finish time of a reusable result; None: no limit."""
        if self.max_age_seconds is None:
            return None
        return now - timedelta(seconds=self.max_age_seconds)


_KEY_VERSION = 2
"""Bumped when the key's recipe changes, so old entries stop matching."""


def cache_key(
    notebook: Mapping[str, Any],
    *,
    parameters: Mapping[str, Any] | None,
    kernel_name: str,
    environment: str,
    owner: str,
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
    owner
        The submitting user: each user has a cache of their own.
    """
    code = [
        cell_source(cell)
        for cell in notebook.get("cells", [])
        if cell.get("cell_type") == "code"
    ]
    document = {
        "version": _KEY_VERSION,
        "code": code,
        "parameters": dict(parameters or {}),
        "kernel": kernel_name,
        "environment": environment,
        "owner": owner,
    }
    canonical = json.dumps(
        document, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
