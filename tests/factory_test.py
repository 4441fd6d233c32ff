"""The factory's wiring of a hub worker: leased identity, and its take-over.

A worker that stalls past its identity lease can find that another worker
took the identity over.  It must then stop driving that lab (the new holder
drives it now) and carry on as a newly leased identity.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest

from noteburst.factory import WorkerContext, create_broker
from noteburst.jupyter.execute import execute_notebook
from noteburst.jupyter.hub import HubLabBackend, JupyterHubClient
from noteburst.storage.database import Database
from noteburst.storage.events import LocalEventBus
from tests.support.app import make_config
from tests.support.hub import HubInfo

WAIT = 60


@pytest.mark.asyncio
async def test_identity_taken_over_moves_the_worker_to_another_lab(
    tmp_path: Path, jupyter_server: Any, jupyterhub: HubInfo, postgres_url: str
) -> None:
    first, second = (f"nbtest-{uuid.uuid4().hex[:8]}" for _ in range(2))
    config = make_config(
        tmp_path,
        jupyter_server,
        database_url=postgres_url,
        lab_backend="jupyterhub",
        hub_url=jupyterhub.hub_url,
        hub_token=jupyterhub.token,
        hub_identities=[first, second],
        worker_lease_seconds=1.5,  # renewed every 0.5 s
        warm_kernels={},
    )
    database = Database.from_url(postgres_url)
    await database.upgrade()
    context = await WorkerContext.build(
        config, broker=create_broker(config), bus=LocalEventBus()
    )
    async with httpx.AsyncClient(trust_env=False) as http:
        hub = JupyterHubClient(
            http=http, hub_url=jupyterhub.hub_url, token=jupyterhub.token, timeout=10
        )
        try:
            backend = context.backend
            assert isinstance(backend, HubLabBackend)
            assert backend.username == first
            first_url = await hub.server_url(first)
            assert first_url is not None  # spawned at start

            # Another worker takes the identity over (as if this one had
            # stalled past its lease).
            later = datetime.now(UTC) + timedelta(hours=1)
            async with database.transaction() as tx:
                taken = await tx.identities.claim(
                    [first],
                    holder="thief",
                    now=later,
                    lease_until=later + timedelta(hours=1),
                )
            assert taken == first

            async with asyncio.timeout(WAIT):
                while backend.username != second:
                    await asyncio.sleep(0.05)
                async with backend.kernel("python3") as conn:
                    nb = nbformat.v4.new_notebook(
                        cells=[
                            nbformat.v4.new_code_cell(
                                "import os; os.environ['JUPYTERHUB_USER']"
                            )
                        ]
                    )
                    assert await execute_notebook(conn, nb) is None
            assert nb.cells[0].outputs[0].data["text/plain"] == repr(second)
            async with database.transaction() as tx:
                assert await tx.identities.holder_of(first) == "thief"
                assert await tx.identities.holder_of(second) not in {None, "thief"}
        finally:
            async with asyncio.timeout(WAIT):
                await context.aclose()
            # The surrendered lab was left to its new holder; ours stopped.
            assert await hub.server_url(first) == first_url
            assert await hub.server_url(second) is None
            async with database.transaction() as tx:
                assert await tx.identities.holder_of(second) is None  # released
            await database.aclose()
            async with asyncio.timeout(WAIT):
                await hub.stop_server(first)
                await hub.delete_user(first)
                await hub.delete_user(second)
