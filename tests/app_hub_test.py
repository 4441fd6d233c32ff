"""End to end on the production shape: Postgres, Redis and JupyterHub labs.

The worker leases a bot identity, spawns that user's lab through the hub's
REST API, runs notebooks there over the kernel websocket (through
configurable-http-proxy), reuses the lab, runs several executions in it at
once, stops it when idle (and reports the respawn on the next execution's
events), retries an execution whose lab was killed under it, and stops the
lab on shutdown.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from noteburst.config import Config
from noteburst.jupyter.hub import JupyterHubClient
from tests.support.app import make_config, running
from tests.support.hub import HubInfo
from tests.support.notebooks import notebook
from tests.support.waiting import wait_until

WAIT = 120
"""Upper bound of one execution's events (may include a lab spawn)."""


def hub_config(
    tmp_path: Path,
    jupyter_server: Any,
    jupyterhub: HubInfo,
    postgres_url: str,
    redis_url: str,
    **overrides: Any,
) -> tuple[Config, str]:
    identity = f"nbtest-{uuid.uuid4().hex[:8]}"
    options: dict[str, Any] = {
        "lab_backend": "jupyterhub",
        "hub_url": jupyterhub.hub_url,
        "hub_token": jupyterhub.token,
        "hub_identities": [identity],
        "kernel_names": ["python3"],
        "spawn_timeout": 60,
    }
    options.update(overrides)
    config = make_config(
        tmp_path,
        jupyter_server,
        database_url=postgres_url,
        redis_url=redis_url,
        **options,
    )
    return config, identity


@pytest_asyncio.fixture
async def hub_admin(jupyterhub: HubInfo) -> AsyncIterator[JupyterHubClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield JupyterHubClient(
            http=http, hub_url=jupyterhub.hub_url, token=jupyterhub.token, timeout=10
        )


def cell_output(execution: dict[str, Any], index: int = 0) -> str:
    text: str = execution["notebook"]["cells"][index]["outputs"][0]["text"]
    return text


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


def wait_for_file(path: Path, other: Path) -> str:
    """A cell that creates ``path``, then waits (bounded) for ``other``."""
    return (
        "import os, pathlib, time\n"
        f"pathlib.Path({str(path)!r}).touch()\n"
        "deadline = time.monotonic() + 60\n"
        f"while not pathlib.Path({str(other)!r}).exists():\n"
        "    assert time.monotonic() < deadline, 'the other execution never ran'\n"
        "    time.sleep(0.02)\n"
        "print(os.environ['JUPYTERHUB_USER'], os.getpid())"
    )


@pytest.mark.asyncio
async def test_one_lab_runs_several_executions_at_once(
    tmp_path: Path,
    jupyter_server: Any,
    jupyterhub: HubInfo,
    postgres_url: str,
    redis_url: str,
) -> None:
    config, identity = hub_config(
        tmp_path, jupyter_server, jupyterhub, postgres_url, redis_url, worker_threads=2
    )
    a, b = tmp_path / "a", tmp_path / "b"
    async with running(config) as nb:
        # Each waits for the other to have started: both finish only if the
        # lab runs them at the same time.
        first = await nb.submit(notebook(wait_for_file(a, b)))
        second = await nb.submit(notebook(wait_for_file(b, a)))
        async with asyncio.timeout(WAIT):
            watched = await asyncio.gather(
                nb.watch(first["id"], after=0), nb.watch(second["id"], after=0)
            )
        for events in watched:
            assert events[-1]["status"] == "SUCCEEDED", events[-1]
        outputs = []
        for submitted in (first, second):
            fetched = await nb.get(submitted["id"])
            assert fetched is not None
            outputs.append(cell_output(fetched).split())
    users = {user for user, _pid in outputs}
    pids = {pid for _user, pid in outputs}
    assert users == {identity}  # one lab ...
    assert len(pids) == 2  # ... two kernels


@pytest.mark.asyncio
async def test_idle_lab_is_stopped_and_the_next_execution_sees_it_start(
    tmp_path: Path,
    jupyter_server: Any,
    jupyterhub: HubInfo,
    hub_admin: JupyterHubClient,
    postgres_url: str,
    redis_url: str,
) -> None:
    config, identity = hub_config(
        tmp_path,
        jupyter_server,
        jupyterhub,
        postgres_url,
        redis_url,
        lab_idle_seconds=1.0,
    )
    async with running(config) as nb:
        first = await nb.submit(notebook("print(1)"))
        events = await asyncio.wait_for(nb.watch(first["id"], after=0), WAIT)
        assert events[-1]["status"] == "SUCCEEDED"
        assert "LAB_STARTING" not in [event["kind"] for event in events]

        async def lab_stopped() -> bool:
            return await hub_admin.server_url(identity) is None

        await wait_until(lab_stopped, "the idle lab is stopped")

        second = await nb.submit(notebook("print(2)"))
        events = await asyncio.wait_for(nb.watch(second["id"], after=0), WAIT)
        assert events[-1]["status"] == "SUCCEEDED", events[-1]
        kinds = [event["kind"] for event in events]
        starting = [e["message"] for e in events if e["kind"] == "LAB_STARTING"]
        # The spawn is reported between the claim and the first cell.
        assert starting, kinds
        assert kinds.index("RUNNING") < kinds.index("LAB_STARTING")
        assert kinds.index("LAB_STARTING") < kinds.index("CELL_STARTED")
        assert starting[-1] == f"lab of {identity} is ready"
        assert await hub_admin.server_url(identity) is not None
    assert await hub_admin.server_url(identity) is None  # stopped on shutdown


@pytest.mark.asyncio
@pytest.mark.parametrize("max_attempts", [3, 1], ids=["retried", "fails-clearly"])
async def test_lab_killed_mid_execution(
    tmp_path: Path,
    jupyter_server: Any,
    jupyterhub: HubInfo,
    hub_admin: JupyterHubClient,
    postgres_url: str,
    redis_url: str,
    max_attempts: int,
) -> None:
    config, identity = hub_config(
        tmp_path,
        jupyter_server,
        jupyterhub,
        postgres_url,
        redis_url,
        max_attempts=max_attempts,
    )
    marker = tmp_path / "first-attempt"
    # The first attempt marks itself and hangs; a retry finds the mark.
    source = (
        "import pathlib, time\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        "    time.sleep(120)\n"
        "print('done')"
    )
    async with running(config) as nb:
        submitted = await nb.submit(notebook(source))
        watching = asyncio.create_task(nb.watch(submitted["id"], after=0))

        async def hanging() -> bool:
            return marker.exists()

        await wait_until(hanging, "the first attempt runs")
        user = await hub_admin.user(identity)
        assert user is not None
        os.kill(user["servers"][""]["state"]["pid"], signal.SIGKILL)
        events = await asyncio.wait_for(watching, WAIT)
        final = events[-1]["execution"]
        kinds = [event["kind"] for event in events]
        if max_attempts > 1:
            assert final["status"] == "SUCCEEDED", final
            assert final["attempts"] == 2
            # Back in the queue, then on a new lab whose start is reported.
            assert kinds.count("RUNNING") == 2, kinds
            assert "QUEUED" in kinds[kinds.index("RUNNING") :]
            assert "LAB_STARTING" in kinds
            fetched = await nb.get(submitted["id"])
            assert fetched is not None
            assert cell_output(fetched) == "done\n"
        else:
            assert final["status"] == "FAILED", final
            assert final["error"]["code"] == "LAB_UNAVAILABLE"
            assert identity in final["error"]["message"]
            assert final["attempts"] == 1
        # Either way the next execution runs, on a new lab.
        following = await nb.submit(notebook("print('healthy')"))
        events = await asyncio.wait_for(nb.watch(following["id"], after=0), WAIT)
        assert events[-1]["status"] == "SUCCEEDED", events[-1]


@pytest.mark.asyncio
async def test_a_lab_that_cannot_spawn_fails_executions_clearly(
    tmp_path: Path,
    jupyter_server: Any,
    jupyterhub: HubInfo,
    postgres_url: str,
    redis_url: str,
) -> None:
    config, identity = hub_config(
        tmp_path,
        jupyter_server,
        jupyterhub,
        postgres_url,
        redis_url,
        hub_user_options={"cmd": ["/nonexistent/jupyterhub-singleuser"]},
        spawn_timeout=20,
    )
    # The worker starts all the same (its first spawn fails and is logged).
    async with running(config) as nb:
        started = asyncio.get_running_loop().time()
        submitted = await nb.submit(notebook("print(1)"))
        events = await asyncio.wait_for(nb.watch(submitted["id"], after=0), WAIT)
        elapsed = asyncio.get_running_loop().time() - started
    final = events[-1]["execution"]
    assert final["status"] == "FAILED", final
    assert final["error"]["code"] == "LAB_UNAVAILABLE"
    assert identity in final["error"]["message"]
    assert "No such file or directory" in final["error"]["message"]
    # Bounded: a bad command fails at once, not at the spawn timeout.
    print(f"spawn failure reported after {elapsed:.2f} s")
    assert elapsed < config.hub.spawn_timeout
