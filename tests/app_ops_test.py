"""The API's operator endpoints: ``/healthz``, ``/readyz`` and ``/metrics``.

A real Noteburst (API with its worker) on the session's Jupyter server:

* ``/metrics`` is Prometheus' text format, and counts what happened: one
  more submission per queue, one more end per status and error code, the
  end's duration and queue wait, kernel starts, the pool's ready kernels,
  the queue depth read at the scrape, and the websocket operations open
  while a subscription runs (back down once it completes);
* ``/readyz`` answers 200 while the database and Redis answer, and 503
  naming the one that does not, on a PostgreSQL and a Redis of the test's
  own that it stops and kills (why goes to the log, not into the answer,
  which needs no credentials); ``/healthz`` answers throughout (a pod whose
  database is down is taken out of service, not restarted); both recover
  unaided.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import make_config, running
from tests.support.notebooks import held_until, notebook
from tests.support.servers import private_postgres, private_redis
from tests.support.waiting import wait_until

TIMEOUT = 120.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _scrape(http: httpx.AsyncClient, url: str) -> Samples:
    response = await http.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    found: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _total(samples: Samples, name: str) -> float:
    return sum(value for (found, _), value in samples.items() if found == name)


@pytest.mark.asyncio
async def test_metrics_count_what_happened(
    tmp_path: Path, jupyter_server: Any, database_url: str
) -> None:
    config = make_config(tmp_path, jupyter_server, database_url=database_url)
    async with (
        asyncio.timeout(TIMEOUT),
        running(config) as nb,
        httpx.AsyncClient(timeout=10) as http,
    ):
        before = await _scrape(http, nb.url)
        release = tmp_path / "release"
        succeeding = await nb.submit(notebook(held_until(release), "1 + 1"))
        failing = await nb.submit(notebook("1 / 0"))
        during: Samples = {}

        async def on_event(event: dict[str, Any]) -> None:
            # The execution waits for the release: the subscription is open.
            if not during:
                during.update(await _scrape(http, nb.url))
                release.touch()

        await nb.watch(succeeding["id"], after=0, on_event=on_event)
        await nb.watch(failing["id"], after=0)
        after = await _scrape(http, nb.url)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("noteburst_executions_submitted_total", queue="interactive") == 2
    assert (
        grew("noteburst_executions_finished_total", status="succeeded", error_code="")
        == 1
    )
    assert (
        grew(
            "noteburst_executions_finished_total",
            status="failed",
            error_code="cell_error",
        )
        == 1
    )
    assert grew("noteburst_execution_duration_seconds_count", status="succeeded") == 1
    assert grew("noteburst_queue_wait_seconds_count", queue="interactive") == 2
    assert _total(after, "noteburst_kernel_start_seconds_count") > _total(
        before, "noteburst_kernel_start_seconds_count"
    )
    assert ("noteburst_kernel_pool_ready", (("kernel_name", "python3"),)) in after
    # Read from the database at the scrape: nothing waits now.
    assert _value(after, "noteburst_queue_depth", queue="interactive") == 0
    assert _value(after, "noteburst_queue_depth", queue="batch") == 0
    # One subscription was open while the first event arrived, none after.
    open_before = _value(before, "noteburst_subscriptions_open")
    assert _value(during, "noteburst_subscriptions_open") == open_before + 1
    assert _value(after, "noteburst_subscriptions_open") == open_before
    # Bounded labels: no execution id anywhere.
    labels = {value for (_, pairs) in after for (_, value) in pairs}
    assert succeeding["id"] not in labels
    assert failing["id"] not in labels


@pytest.mark.asyncio
async def test_readiness_names_the_dependency_that_is_down(
    tmp_path: Path, jupyter_server: Any
) -> None:
    with private_postgres() as postgres, private_redis() as redis_server:
        database_url = await asyncio.to_thread(postgres.create_database)
        config = make_config(
            tmp_path,
            jupyter_server,
            database_url=database_url,
            redis_url=redis_server.url,
        )
        try:
            async with (
                asyncio.timeout(TIMEOUT),
                running(config, run_worker=False) as nb,
                httpx.AsyncClient(timeout=10) as http,
            ):

                async def readiness() -> tuple[int, dict[str, str]]:
                    response = await http.get(nb.url + "/readyz")
                    checks: dict[str, str] = response.json()["checks"]
                    return response.status_code, checks

                async def ready() -> bool:
                    return (await readiness())[0] == 200

                assert await readiness() == (200, {"database": "ok", "queue": "ok"})

                await asyncio.to_thread(redis_server.kill)
                status, checks = await readiness()
                assert status == 503
                assert checks == {"database": "ok", "queue": "unavailable"}
                assert (await http.get(nb.url + "/healthz")).status_code == 200

                await asyncio.to_thread(redis_server.start)
                await wait_until(ready, "ready again once Redis is back")

                await asyncio.to_thread(postgres.stop, "fast")
                status, checks = await readiness()
                assert status == 503
                # Why is in the log: a driver's message names hosts.
                assert checks == {"database": "unavailable", "queue": "ok"}
                assert (await http.get(nb.url + "/healthz")).status_code == 200
                # /metrics still answers (its queue depths are stale).
                assert (await http.get(nb.url + "/metrics")).status_code == 200

                await asyncio.to_thread(postgres.start)
                await wait_until(ready, "ready again once PostgreSQL is back")
        finally:
            if not postgres.is_running():
                await asyncio.to_thread(postgres.start)
