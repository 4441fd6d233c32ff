"""End to end on the production shape: Postgres, Redis and JupyterHub labs.

The worker leases a bot identity, spawns that user's lab through the hub's
REST API, runs notebooks there over the kernel websocket (through
configurable-http-proxy), reuses the lab, and stops it on shutdown.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import make_config, running
from tests.support.notebooks import notebook


@pytest.mark.asyncio
async def test_executions_run_in_a_hub_lab(
    tmp_path: Path,
    jupyter_server: Any,
    jupyterhub: Any,
    postgres_url: str,
    redis_url: str,
) -> None:
    identity = f"nbtest-{uuid.uuid4().hex[:8]}"
    config = make_config(
        tmp_path,
        jupyter_server,
        database_url=postgres_url,
        redis_url=redis_url,
        lab_backend="jupyterhub",
        hub_url=jupyterhub.hub_url,
        hub_token=jupyterhub.token,
        hub_identities=[identity],
        kernel_names=["python3"],
    )
    async with running(config) as nb:
        results = []
        for _ in range(2):  # the second reuses the lab
            submitted = await nb.submit(
                notebook("import os; print(os.environ.get('JUPYTERHUB_USER'))")
            )
            events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), 120)
            assert events[-1]["status"] == "SUCCEEDED", events[-1]
            fetched = await nb.get(submitted["id"])
            assert fetched is not None
            results.append(fetched["notebook"]["cells"][0]["outputs"][0]["text"])
    assert results == [f"{identity}\n", f"{identity}\n"]
