"""A rolling upgrade's SIGTERM: a worker finishes what it can and hands back the rest.

Real processes (``bench.chaos``'s stack: a PostgreSQL and a Redis of the
test's own, the API and workers as ``noteburst`` processes).  One worker
runs two executions; a second worker is added; the first gets SIGTERM.
Then:

* the execution that ends within the grace period SUCCEEDS on the stopping
  worker, once;
* the one still running when the grace period ends is handed back: a
  ``QUEUED`` event says so, the second worker runs it to SUCCEEDED, and its
  attempt was given back (``attempts == 1``: a hand-back is not a lost
  worker, so upgrades never use up ``max_attempts``);
* the stopping worker exits 0, well before Kubernetes would kill it;
* a subscriber following the handed-back execution throughout gets every
  event once, FINISHED last;
* meanwhile the worker's own ``/healthz``, ``/readyz`` and ``/metrics``
  (``NOTEBURST_WORKER_HTTP_PORT``) answer, and ``/metrics`` counts the
  hand-back and the success.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.chaos import ChaosOptions, Stack, tools_missing
from noteburst.client import NoteburstClient
from noteburst.services.runner import HAND_BACK_MESSAGE
from tests.support.app import Noteburst
from tests.support.notebooks import held_until, notebook
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.timeout(240)]

GRACE_SECONDS = 6.0
FINISHED_OK = (
    "noteburst_executions_finished_total",
    (("error_code", ""), ("status", "succeeded")),
)
TIMEOUT = 200.0


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def _status(nb: Noteburst, execution_id: str) -> dict[str, Any]:
    found = await nb.get(execution_id)
    assert found is not None
    return found


@pytest.mark.asyncio
async def test_a_stopping_worker_finishes_within_grace_and_hands_back_the_rest(
    tmp_path: Path,
) -> None:
    missing = tools_missing()
    if missing is not None:
        pytest.fail(missing)
    options = ChaosOptions(
        executions=0,
        faults=(),
        lease_seconds=30.0,
        worker_threads=2,
        workers=1,
        worker_settings={"worker_shutdown_grace_seconds": GRACE_SECONDS},
    )
    stack = Stack(options)
    release_short = tmp_path / "release-short"
    release_long = tmp_path / "release-long"
    try:
        async with asyncio.timeout(TIMEOUT):
            await stack.start()
            [stopping] = stack.workers
            nb = Noteburst(stack.api_url)
            async with (
                NoteburstClient(stack.api_url, timeout=30) as client,
                httpx.AsyncClient(timeout=10) as http,
            ):
                worker_url = f"http://127.0.0.1:{stopping.http_port}"
                assert (await http.get(worker_url + "/healthz")).status_code == 200
                ready = await http.get(worker_url + "/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"] == {"database": "ok", "queue": "ok"}

                short = await client.submit(notebook(held_until(release_short)))
                long = await client.submit(notebook(held_until(release_long), "2"))
                short_id, long_id = short["id"], long["id"]

                async def both_running() -> bool:
                    statuses = [
                        (await _status(nb, i))["status"] for i in (short_id, long_id)
                    ]
                    return statuses == ["RUNNING", "RUNNING"]

                await wait_until(both_running, "both run on the first worker")
                events: list[dict[str, Any]] = []

                async def follow() -> None:
                    async for event in client.follow(long_id, after_sequence=0):
                        events.append(event)

                follower = asyncio.create_task(follow())
                await stack.add_worker()

                assert stopping.process is not None
                os.kill(stopping.process.pid, signal.SIGTERM)
                await stopping.wait_for_output("worker stopping")
                # The short one ends within the grace period, on this worker.
                release_short.touch()

                # Its own metrics while it drains: the short one's success.
                async def short_counted() -> bool:
                    response = await http.get(worker_url + "/metrics")
                    return _samples(response.text).get(FINISHED_OK, 0) >= 1

                await wait_until(
                    short_counted, "the stopping worker counts the success"
                )
                returncode = await asyncio.to_thread(
                    stopping.process.wait, GRACE_SECONDS + 30
                )
                assert returncode == 0, stopping.tail()
                assert "handed back" in stopping.text(), stopping.tail()

                # The long one runs again on the second worker.
                release_long.touch()
                async with asyncio.timeout(120):
                    await follower
                short_now = await _status(nb, short_id)
                long_now = await _status(nb, long_id)

    finally:
        with contextlib.suppress(Exception):
            stack.close()

    assert (short_now["status"], short_now["attempts"]) == ("SUCCEEDED", 1)
    assert (long_now["status"], long_now["attempts"]) == ("SUCCEEDED", 1), long_now
    handed_back = [e for e in events if e["message"] == HAND_BACK_MESSAGE]
    assert [(e["kind"], e["status"]) for e in handed_back] == [("QUEUED", "QUEUED")]
    # The subscriber saw it all once: the hand-back, the rerun, one end.
    sequences = [event["sequence"] for event in events]
    assert sequences == sorted(set(sequences))
    kinds = [event["kind"] for event in events]
    assert kinds.count("FINISHED") == 1
    assert kinds[-1] == "FINISHED"
