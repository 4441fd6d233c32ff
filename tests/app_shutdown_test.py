"""A rolling upgrade of the API: SIGTERM closes subscriptions, clients resume.

Real processes (``bench.chaos``'s stack).  While a subscriber follows a
running execution, the API process gets SIGTERM: it closes the
subscription's websocket (close code 1012, "service restart"), shuts down
gracefully and promptly, and a new API process takes over.  The subscriber
(:meth:`NoteburstClient.follow`) reconnects with ``afterSequence`` and gets
every event exactly once, FINISHED last: an upgrade loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import ChaosOptions, Stack, tools_missing
from noteburst.client import NoteburstClient
from tests.support.notebooks import held_until, notebook

pytestmark = [pytest.mark.timeout(240)]

TIMEOUT = 200.0
API_EXIT_SECONDS = 40.0
"""Above uvicorn's graceful-shutdown bound (30 s, ``noteburst serve``)."""


@pytest.mark.asyncio
async def test_an_api_restart_loses_no_event_for_a_following_subscriber(
    tmp_path: Path,
) -> None:
    missing = tools_missing()
    if missing is not None:
        pytest.fail(missing)
    stack = Stack(ChaosOptions(executions=0, faults=(), workers=1))
    release = tmp_path / "release"
    try:
        async with asyncio.timeout(TIMEOUT):
            await stack.start()
            async with NoteburstClient(stack.api_url, timeout=30) as client:
                submitted = await client.submit(notebook("1", held_until(release), "2"))
                events: list[dict[str, Any]] = []
                running = asyncio.Event()

                async def follow() -> None:
                    async for event in client.follow(submitted["id"], after_sequence=0):
                        events.append(event)
                        if event["kind"] == "CELL_STARTED" and event["cellIndex"] == 1:
                            running.set()

                follower = asyncio.create_task(follow())
                await running.wait()
                api = stack.api
                assert api is not None
                assert api.process is not None
                os.kill(api.process.pid, signal.SIGTERM)
                returncode = await asyncio.to_thread(api.process.wait, API_EXIT_SECONDS)
                # uvicorn shuts down gracefully, then exits by the signal it
                # caught (its status says SIGTERM, as Kubernetes expects).
                assert returncode in (0, -signal.SIGTERM), api.tail()
                assert "Application shutdown complete" in api.text(), api.tail()
                seen_before_restart = len(events)
                await stack.start_api()
                release.touch()
                async with asyncio.timeout(120):
                    await follower
    finally:
        with contextlib.suppress(Exception):
            stack.close()

    sequences = [event["sequence"] for event in events]
    assert sequences == list(range(1, len(sequences) + 1)), sequences
    kinds = [event["kind"] for event in events]
    assert kinds.count("FINISHED") == 1
    assert kinds[-1] == "FINISHED"
    assert events[-1]["status"] == "SUCCEEDED"
    assert len(events) > seen_before_restart  # it resumed after the restart
