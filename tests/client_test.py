"""The project's own client against a real embedded Noteburst.

What matters beyond the CLI's use (``cli_test``): every watch of a client
shares one websocket, watches run concurrently on it, one left early stops
only itself, and a lost connection is reported and replaced.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from noteburst.client import NoteburstClient, NoteburstClientError
from tests.support.app import CANCEL, make_config, running
from tests.support.notebooks import notebook

QUICK = notebook("x = 20", "print(x + 1)")
SLOW = notebook("import time; time.sleep(30)")


async def _statuses(client: NoteburstClient, execution_id: str) -> list[str]:
    return [e["status"] async for e in client.watch(execution_id, after_sequence=0)]


@pytest.mark.asyncio
async def test_watches_share_one_connection(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(tmp_path, jupyter_server)
    async with running(config) as app, NoteburstClient(app.url, timeout=60) as client:
        ids = [(await client.submit(QUICK))["id"] for _ in range(2)]
        together = await asyncio.wait_for(
            asyncio.gather(*(_statuses(client, i) for i in ids)), 120
        )
        socket = client._socket
        assert socket is not None
        again = await asyncio.wait_for(_statuses(client, ids[0]), 60)
        assert client._socket is socket, "the second watch opened a new websocket"
        status_only = [
            e["kind"]
            async for e in client.watch(
                ids[1], after_sequence=0, kinds=["queued", "running"]
            )
        ]
    assert status_only == ["QUEUED", "RUNNING", "FINISHED"]
    for statuses in [*together, again]:
        assert statuses[0] == "QUEUED"
        assert statuses[-1] == "SUCCEEDED"


@pytest.mark.asyncio
async def test_leaving_a_watch_early_stops_only_it(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(tmp_path, jupyter_server)
    async with running(config) as app, NoteburstClient(app.url, timeout=60) as client:
        slow = await client.submit(SLOW)
        stream = client.watch(slow["id"], after_sequence=0)
        first = await asyncio.wait_for(anext(stream), 60)
        assert first["kind"] == "QUEUED"
        await stream.aclose()  # sends "complete" for this operation only
        quick = await client.submit(QUICK)
        statuses = await asyncio.wait_for(_statuses(client, quick["id"]), 120)
        assert statuses[-1] == "SUCCEEDED"
        with pytest.raises(NoteburstClientError, match="no execution with id"):
            await asyncio.wait_for(
                _statuses(client, "00000000-0000-0000-0000-000000000000"), 60
            )
        await app.execute(CANCEL, id=slow["id"])


@pytest.mark.asyncio
async def test_a_lost_connection_is_reported_and_replaced(
    tmp_path: Path, jupyter_server: Any
) -> None:
    config = make_config(tmp_path, jupyter_server)
    async with running(config) as app, NoteburstClient(app.url, timeout=60) as client:
        slow = await client.submit(SLOW)
        stream = client.watch(slow["id"], after_sequence=0)
        await asyncio.wait_for(anext(stream), 60)
        socket = client._socket
        assert socket is not None
        await socket._ws.close()  # as if the server or the network dropped it

        async def drain() -> None:
            async for _ in stream:  # events already received, then the loss
                pass

        with pytest.raises(NoteburstClientError, match="connection was lost"):
            await asyncio.wait_for(drain(), 60)
        quick = await client.submit(QUICK)
        statuses = await asyncio.wait_for(_statuses(client, quick["id"]), 120)
        assert statuses[-1] == "SUCCEEDED"
        assert client._socket is not socket
        await app.execute(CANCEL, id=slow["id"])
