"""Queues and the result cache end to end, over GraphQL, on real components.

Real Noteburst (uvicorn on loopback) with its in-process worker, on
Postgres + Redis and on the embedded default, executing on the session's
jupyter_server.  Notebooks record each run by appending to a file and hold
still by waiting for a gate file the test creates, so the tests can fill
the worker and count kernel runs without timing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gql import Client
from gql.graphql_request import GraphQLRequest
from gql.transport.websockets import WebsocketsTransport

from tests.support.app import CANCEL, Noteburst, make_config, running
from tests.support.notebooks import notebook
from tests.support.waiting import wait_until

FIELDS = """
  id status queue queuePosition cacheHit cachedFrom sharesRunOf attempts
  progress { cellsTotal cellsDone }
  error { code message }
"""

SUBMIT = f"""
mutation Submit($input: SubmitExecutionInput!) {{
  submitExecution(input: $input) {{
    __typename
    ... on Execution {{ {FIELDS} }}
    ... on InvalidInput {{ message field }}
  }}
}}
"""

GET = f"""
query Get($id: ID!) {{ execution(id: $id) {{ {FIELDS} notebook }} }}
"""

WATCH = f"""
subscription Watch($id: ID!) {{
  executionStatus(id: $id) {{
    sequence kind status cellsDone
    execution {{ {FIELDS} }}
  }}
}}
"""


def gated(name: str, log: Path, gate: Path | None, *extra: str) -> dict[str, Any]:
    """A notebook that logs ``name`` when it runs, then waits for ``gate``."""
    cells = [f"with open({str(log)!r}, 'a') as f:\n    f.write({name!r} + '\\n')"]
    if gate is not None:
        cells.append(
            "import os, time\n"
            "deadline = time.monotonic() + 120\n"
            f"while not os.path.exists({str(gate)!r}):\n"
            "    assert time.monotonic() < deadline, 'the test never opened the gate'\n"
            "    time.sleep(0.02)"
        )
    return notebook(*cells, *extra)


def runs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


async def submit(
    nb: Noteburst, source: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    data = await nb.execute(SUBMIT, input={"notebook": source, **fields})
    payload: dict[str, Any] = data["submitExecution"]
    assert payload["__typename"] == "Execution", payload
    return payload


async def get(nb: Noteburst, execution_id: str) -> dict[str, Any]:
    data = await nb.execute(GET, id=execution_id)
    found: dict[str, Any] = data["execution"]
    return found


async def wait_status(nb: Noteburst, execution_id: str, *statuses: str) -> None:
    async def reached() -> bool:
        return (await get(nb, execution_id))["status"] in statuses

    await wait_until(reached, f"{execution_id} is {' or '.join(statuses)}")


async def wait_logged(log: Path, *names: str) -> None:
    async def logged() -> bool:
        return runs(log) == list(names)

    await wait_until(logged, f"the runs logged are {names}")


@contextlib.asynccontextmanager
async def watching(
    nb: Noteburst, execution_id: str
) -> AsyncIterator[asyncio.Task[list[dict[str, Any]]]]:
    """Subscribe; yield (once the first event arrived) a task collecting all."""
    first = asyncio.Event()

    async def collect() -> list[dict[str, Any]]:
        transport = WebsocketsTransport(
            url=nb.ws_url,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            connect_timeout=30,
            ack_timeout=30,
        )
        events: list[dict[str, Any]] = []
        async with Client(transport=transport, execute_timeout=120) as session:
            request = GraphQLRequest(WATCH, variable_values={"id": execution_id})
            async for result in session.subscribe(request):
                events.append(result["executionStatus"])
                first.set()
        return events

    task = asyncio.create_task(collect())
    try:
        done, _ = await asyncio.wait(
            [task, asyncio.create_task(first.wait())],
            timeout=60,
            return_when=asyncio.FIRST_COMPLETED,
        )
        assert done, "no first event on the subscription"
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.asyncio
async def test_a_free_worker_takes_interactive_before_batch(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = make_config(tmp_path, jupyter_server, worker_threads=1, **backend_urls)
    log = tmp_path / "runs.log"
    gates = {name: tmp_path / f"gate-{name}" for name in ("first", "interactive")}
    async with running(config) as nb:
        first = await submit(nb, gated("first", log, gates["first"]))
        await wait_status(nb, first["id"], "RUNNING")  # the only worker is busy
        batch = await submit(nb, gated("batch", log, None), queue="BATCH")
        interactive = await submit(nb, gated("interactive", log, gates["interactive"]))
        assert (batch["queue"], interactive["queue"]) == ("BATCH", "INTERACTIVE")
        # Submitted later, the interactive one is first in line.
        assert (await get(nb, interactive["id"]))["queuePosition"] == 1
        assert (await get(nb, batch["id"]))["queuePosition"] == 2
        assert (await get(nb, first["id"]))["queuePosition"] is None

        gates["first"].touch()
        await wait_logged(log, "first", "interactive")
        assert (await get(nb, interactive["id"]))["queuePosition"] is None
        assert (await get(nb, batch["id"]))["queuePosition"] == 1

        gates["interactive"].touch()
        await wait_status(nb, batch["id"], "SUCCEEDED")
        assert runs(log) == ["first", "interactive", "batch"]
        for execution in (first, interactive, batch):
            assert (await get(nb, execution["id"]))["status"] == "SUCCEEDED"
        assert (await get(nb, batch["id"]))["queuePosition"] is None


@pytest.mark.asyncio
async def test_cache_use_refresh_bypass_and_max_age(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = make_config(tmp_path, jupyter_server, **backend_urls)
    log = tmp_path / "runs.log"
    source = gated("run", log, None, "print('answer', 42)")
    use = {"mode": "USE"}
    async with running(config) as nb:
        first = await submit(nb, source, cache=use)
        assert not first["cacheHit"]
        await wait_status(nb, first["id"], "SUCCEEDED")
        result = (await get(nb, first["id"]))["notebook"]
        assert result["cells"][1]["outputs"][0]["text"] == "answer 42\n"

        # USE: a new execution, succeeded at once with the stored result.
        hit = await submit(nb, source, cache=use)
        assert hit["id"] != first["id"]
        assert (hit["status"], hit["cacheHit"], hit["cachedFrom"]) == (
            "SUCCEEDED",
            True,
            first["id"],
        )
        assert hit["progress"] == {"cellsTotal": 2, "cellsDone": 2}
        assert (await get(nb, hit["id"]))["notebook"] == result
        events = await asyncio.wait_for(nb.watch(hit["id"]), 60)
        assert [(e["kind"], e["status"]) for e in events] == [("FINISHED", "SUCCEEDED")]
        assert runs(log) == ["run"]

        # An entry older than maxAgeSeconds is not used: it runs again...
        too_old = await submit(nb, source, cache={"mode": "USE", "maxAgeSeconds": 0})
        assert not too_old["cacheHit"]
        await wait_status(nb, too_old["id"], "SUCCEEDED")
        assert runs(log) == ["run", "run"]
        # ...and the newest success is the one reused afterwards.
        recent = await submit(nb, source, cache={"mode": "USE", "maxAgeSeconds": 3600})
        assert (recent["cacheHit"], recent["cachedFrom"]) == (True, too_old["id"])

        # BYPASS, the default, runs and does not replace the cached result.
        bypass = await submit(nb, source)
        assert not bypass["cacheHit"]
        await wait_status(nb, bypass["id"], "SUCCEEDED")
        assert runs(log) == ["run"] * 3
        after_bypass = await submit(nb, source, cache=use)
        assert after_bypass["cachedFrom"] == too_old["id"]

        # REFRESH runs although a result is cached, and its result is reused.
        refresh = await submit(nb, source, cache={"mode": "REFRESH"})
        assert not refresh["cacheHit"]
        await wait_status(nb, refresh["id"], "SUCCEEDED")
        assert runs(log) == ["run"] * 4
        after_refresh = await submit(nb, source, cache=use)
        assert after_refresh["cachedFrom"] == refresh["id"]

        # Another parameter value, or another notebook, is another key.
        other = await submit(nb, gated("other", log, None), cache=use)
        assert not other["cacheHit"]
        await wait_status(nb, other["id"], "SUCCEEDED")

        bad = await nb.execute(
            SUBMIT,
            input={"notebook": source, "cache": {"mode": "USE", "maxAgeSeconds": -1}},
        )
        assert bad["submitExecution"]["__typename"] == "InvalidInput"
        assert bad["submitExecution"]["field"] == "cache.maxAgeSeconds"


@pytest.mark.asyncio
async def test_only_successes_are_cached(
    tmp_path: Path, jupyter_server: Any, postgres_url: str, redis_url: str
) -> None:
    config = make_config(
        tmp_path, jupyter_server, database_url=postgres_url, redis_url=redis_url
    )
    log = tmp_path / "runs.log"
    source = gated("run", log, None, "1 / 0")
    async with running(config) as nb:
        for attempt in (1, 2):
            failed = await submit(nb, source, cache={"mode": "USE"})
            assert not failed["cacheHit"]
            await wait_status(nb, failed["id"], "FAILED")
            assert runs(log) == ["run"] * attempt


@pytest.mark.asyncio
async def test_identical_submissions_share_one_run(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    config = make_config(tmp_path, jupyter_server, **backend_urls)
    log = tmp_path / "runs.log"
    gate = tmp_path / "gate"
    source = gated("run", log, gate, "print('shared', 42)")
    async with running(config) as nb:
        submitted = await asyncio.gather(
            *(submit(nb, source, cache={"mode": "USE"}) for _ in range(5))
        )
        assert len({s["id"] for s in submitted}) == 5
        leaders = [s for s in submitted if s["sharesRunOf"] is None]
        assert len(leaders) == 1
        leader = leaders[0]["id"]
        followers = [s for s in submitted if s["sharesRunOf"] is not None]
        assert {f["sharesRunOf"] for f in followers} == {leader}
        await wait_logged(log, "run")  # the one run is under way

        follower = followers[0]["id"]
        async with watching(nb, follower) as watch:
            shown = await get(nb, follower)
            assert (shown["status"], shown["sharesRunOf"]) == ("RUNNING", leader)

            # The run's progress shows through the follower (progress events
            # are written in batches, so the first cell's may lag its log line).
            async def first_cell_done() -> bool:
                shown = await get(nb, follower)
                done: int = shown["progress"]["cellsDone"]
                return done >= 1

            await wait_until(first_cell_done, "the follower shows the first cell done")
            gate.touch()
            events = await asyncio.wait_for(watch, 120)
        # The follower's subscriber saw the shared run's progress and end.
        assert "CELL_FINISHED" in [e["kind"] for e in events]
        assert (events[-1]["kind"], events[-1]["status"]) == ("FINISHED", "SUCCEEDED")
        assert {e["execution"]["id"] for e in events} == {follower}
        assert events[-1]["execution"]["status"] == "SUCCEEDED"

        for execution in submitted:
            done = await get(nb, execution["id"])
            assert done["status"] == "SUCCEEDED"
            assert done["notebook"]["cells"][2]["outputs"][0]["text"] == "shared 42\n"
        assert runs(log) == ["run"]  # one kernel run for five submissions


@pytest.mark.asyncio
async def test_followers_get_the_shared_runs_failure(
    tmp_path: Path, jupyter_server: Any, postgres_url: str, redis_url: str
) -> None:
    """A failure is shared too; REFRESH shares only a run not started yet."""
    config = make_config(
        tmp_path,
        jupyter_server,
        database_url=postgres_url,
        redis_url=redis_url,
        worker_threads=1,
    )
    log = tmp_path / "runs.log"
    gate = tmp_path / "gate"
    source = gated("run", log, gate, "1 / 0")
    async with running(config) as nb:
        leader = await submit(nb, source, cache={"mode": "USE"})
        await wait_logged(log, "run")
        # REFRESH does not share a run that has started; USE does.
        follower = await submit(nb, source, cache={"mode": "USE"})
        refresh = await submit(nb, source, cache={"mode": "REFRESH"})
        assert follower["sharesRunOf"] == leader["id"]
        assert refresh["sharesRunOf"] is None
        # The only worker is busy, so that REFRESH waits in the queue, and an
        # identical REFRESH shares it: its result will be as fresh.
        assert (await get(nb, refresh["id"]))["status"] == "QUEUED"
        queued_refresh = await submit(nb, source, cache={"mode": "REFRESH"})
        assert queued_refresh["sharesRunOf"] == refresh["id"]
        assert (await get(nb, queued_refresh["id"]))["queuePosition"] == 1
        gate.touch()
        for execution in (leader, follower, refresh, queued_refresh):
            await wait_status(nb, execution["id"], "FAILED")
        shown = await get(nb, follower["id"])
        assert shown["error"]["code"] == "CELL_ERROR"
        assert shown["error"] == (await get(nb, leader["id"]))["error"]
        assert runs(log) == ["run", "run"]


@pytest.mark.asyncio
async def test_a_follower_cancelled_alone_leaves_the_shared_run(
    tmp_path: Path, jupyter_server: Any, backend_urls: dict[str, str | None]
) -> None:
    """Cancelling one submitter's follower ends only it; the run goes on."""
    config = make_config(tmp_path, jupyter_server, **backend_urls)
    log = tmp_path / "runs.log"
    gate = tmp_path / "gate"
    source = gated("run", log, gate, "print('shared', 7)")
    async with running(config) as nb:
        leader = await submit(nb, source, cache={"mode": "USE"})
        await wait_logged(log, "run")
        follower = await submit(nb, source, cache={"mode": "USE"})
        other = await submit(nb, source, cache={"mode": "USE"})
        assert follower["sharesRunOf"] == other["sharesRunOf"] == leader["id"]

        async with watching(nb, follower["id"]) as watch:
            data = await nb.execute(CANCEL, id=follower["id"])
            assert data["cancelExecution"]["__typename"] == "Execution"
            events = await asyncio.wait_for(watch, 120)
        # The follower's subscriber saw its own end, while the run still runs.
        assert (events[-1]["kind"], events[-1]["status"]) == ("FINISHED", "CANCELLED")
        assert (await get(nb, follower["id"]))["status"] == "CANCELLED"
        assert (await get(nb, leader["id"]))["status"] == "RUNNING"

        gate.touch()
        for execution in (leader, other):
            await wait_status(nb, execution["id"], "SUCCEEDED")
        # The run's end did not overwrite the follower that left it.
        assert (await get(nb, follower["id"]))["status"] == "CANCELLED"
        # After its end, a new subscriber gets the follower's own end at once.
        async with watching(nb, follower["id"]) as watch:
            late = await asyncio.wait_for(watch, 60)
        assert [(e["kind"], e["status"]) for e in late] == [("FINISHED", "CANCELLED")]
        assert runs(log) == ["run"]
