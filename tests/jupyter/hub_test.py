"""HubLabBackend and JupyterHubClient against a real JupyterHub.

One hub runs for the session (``tests.support.hub``); each test uses its own
bot users, so labs are never shared between tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import nbformat
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from noteburst.jupyter.backend import LabBackend
from noteburst.jupyter.exceptions import KernelStartError, LabUnavailableError
from noteburst.jupyter.execute import execute_notebook
from noteburst.jupyter.hub import (
    HubLabBackend,
    JupyterHubClient,
    LabSpawnError,
    SpawnProgress,
)
from tests.support.hub import HubInfo
from tests.support.waiting import wait_until

WAIT = 60
"""Upper bound of any one step that spawns a lab or runs a notebook."""
LAB_GONE_WITHIN = 15
"""A lab that disappears must surface as an error within this many seconds."""


def bot_name() -> str:
    return f"bot-{uuid.uuid4().hex[:10]}"


def make_backend(
    http: httpx.AsyncClient, hub: HubInfo, username: str, **kwargs: Any
) -> HubLabBackend:
    options: dict[str, Any] = {
        "spawn_timeout": 30,
        "kernel_start_timeout": 30,
        "request_timeout": 10,
    }
    options.update(kwargs)
    return HubLabBackend(
        http=http,
        hub_url=hub.hub_url,
        proxy_url=hub.proxy_url,
        token=hub.token,
        username=username,
        **options,
    )


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@pytest_asyncio.fixture
async def hub_client(
    http: httpx.AsyncClient, jupyterhub: HubInfo
) -> AsyncIterator[JupyterHubClient]:
    yield JupyterHubClient(
        http=http, hub_url=jupyterhub.hub_url, token=jupyterhub.token, timeout=10
    )


async def server_pid(hub: JupyterHubClient, name: str) -> int:
    user = await hub.user(name)
    assert user is not None
    pid = user["servers"][""]["state"]["pid"]
    assert isinstance(pid, int)
    return pid


async def delete_users(hub: JupyterHubClient, *names: str) -> None:
    async with asyncio.timeout(WAIT):
        for name in names:
            await hub.delete_user(name)


def small_notebook(*sources: str) -> nbformat.NotebookNode:
    nb: nbformat.NotebookNode = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in sources]
    )
    return nb


def _spawns_counted() -> float:
    return REGISTRY.get_sample_value("noteburst_lab_spawn_seconds_count") or 0.0


@pytest.mark.asyncio
async def test_spawn_execute_and_reuse_the_lab(
    http: httpx.AsyncClient, jupyterhub: HubInfo, hub_client: JupyterHubClient
) -> None:
    name = bot_name()
    events: list[SpawnProgress] = []

    async def record(event: SpawnProgress) -> None:
        events.append(event)

    backend = make_backend(http, jupyterhub, name, on_progress=record)
    assert isinstance(backend, LabBackend)
    spawns_counted = _spawns_counted()
    try:
        started = time.monotonic()
        async with asyncio.timeout(WAIT):
            await backend.start()
        spawn_seconds = time.monotonic() - started
        print(f"spawn took {spawn_seconds:.2f} s")
        assert backend.spawns == 1
        assert _spawns_counted() == spawns_counted + 1  # the metric
        assert events, "no progress events"
        assert events[-1].ready
        assert events[-1].url == f"/user/{name}/"
        assert any(not event.ready for event in events), events
        assert backend.lab_url == f"{jupyterhub.proxy_url}user/{name}/"
        assert await hub_client.server_url(name) == backend.lab_url

        await backend.start()  # idempotent: no second spawn
        assert "python3" in await backend.kernel_names()

        async with asyncio.timeout(WAIT):
            async with backend.kernel("python3") as first:
                nb = small_notebook("leak = 1", "print('hello', leak)")
                assert await execute_notebook(first, nb) is None
                assert nb.cells[1].outputs[0].text == "hello 1\n"
            async with backend.kernel("python3") as second:
                assert second.kernel_id != first.kernel_id
                nb = small_notebook("'leak' in dir()")
                assert await execute_notebook(second, nb) is None
                assert nb.cells[0].outputs[0].data["text/plain"] == "False"
        assert backend.spawns == 1  # the lab was reused

        with pytest.raises(KernelStartError):  # the lab stays usable
            async with asyncio.timeout(WAIT), backend.kernel("no-such-kernel"):
                pass
        assert backend.lab_url is not None

        lab_url = backend.lab_url
        async with asyncio.timeout(WAIT):
            await backend.aclose(stop_lab=False)
        assert backend.pending_shutdowns == 0
        assert await hub_client.server_url(name) == lab_url  # left running

        # Another backend for the same bot user finds the lab: no spawn.
        backend = make_backend(http, jupyterhub, name, on_progress=record)
        events.clear()
        async with asyncio.timeout(WAIT):
            async with backend.kernel("python3") as conn:
                nb = small_notebook("1 + 1")
                assert await execute_notebook(conn, nb) is None
            assert backend.spawns == 0
            assert _spawns_counted() == spawns_counted + 1  # found, not spawned
            assert backend.lab_url == lab_url
            assert [event.ready for event in events] == [True]
            await backend.aclose()
        assert await hub_client.server_url(name) is None  # stopped
    finally:
        async with asyncio.timeout(WAIT):
            await backend.aclose()
        await delete_users(hub_client, name)


@pytest.mark.asyncio
async def test_two_bot_users_at_once(
    http: httpx.AsyncClient, jupyterhub: HubInfo, hub_client: JupyterHubClient
) -> None:
    names = [bot_name(), bot_name()]
    backends = [make_backend(http, jupyterhub, name) for name in names]

    async def run(backend: HubLabBackend) -> str:
        async with backend.kernel("python3") as conn:
            nb = small_notebook("import os", "os.environ['HOME']")
            assert await execute_notebook(conn, nb) is None
            home: str = nb.cells[1].outputs[0].data["text/plain"]
            return home.strip("'")

    try:
        async with asyncio.timeout(WAIT):
            homes = await asyncio.gather(*(run(backend) for backend in backends))
        assert homes == [str(jupyterhub.homes / name) for name in names]
        assert [backend.spawns for backend in backends] == [1, 1]
        assert backends[0].lab_url != backends[1].lab_url
    finally:
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(backend.aclose() for backend in backends))
        await delete_users(hub_client, *names)


async def stop_with_hub_api(hub: JupyterHubClient, name: str) -> None:
    assert await hub.stop_server(name)


async def kill_server_process(hub: JupyterHubClient, name: str) -> None:
    os.kill(await server_pid(hub, name), signal.SIGKILL)


Kill = Callable[[JupyterHubClient, str], Awaitable[None]]


@pytest.mark.asyncio
@pytest.mark.parametrize("kill", [stop_with_hub_api, kill_server_process])
async def test_lab_gone_mid_execution_then_next_kernel_respawns(
    http: httpx.AsyncClient,
    jupyterhub: HubInfo,
    hub_client: JupyterHubClient,
    kill: Kill,
) -> None:
    name = bot_name()
    backend = make_backend(http, jupyterhub, name)
    try:
        async with asyncio.timeout(WAIT):
            await backend.start()
        first_pid = await server_pid(hub_client, name)
        sleeping = asyncio.Event()

        async def cell_started(index: int) -> None:
            if index == 1:
                sleeping.set()

        nb = small_notebook("x = 1", "import time; time.sleep(120)")
        raw: list[BaseException] = []
        killed = 0.0

        async def run_and_lose_the_lab() -> None:
            nonlocal killed
            async with asyncio.timeout(WAIT), backend.kernel("python3") as conn:
                run = asyncio.create_task(
                    execute_notebook(conn, nb, on_cell_started=cell_started)
                )
                await sleeping.wait()
                await kill(hub_client, name)
                killed = time.monotonic()
                try:
                    async with asyncio.timeout(LAB_GONE_WITHIN):
                        await run
                except BaseException as exc:
                    raw.append(exc)
                    raise

        with pytest.raises(LabUnavailableError) as caught:
            await run_and_lose_the_lab()
        noticed = time.monotonic() - killed
        print(
            f"{kill.__name__}: execute_notebook raised {raw[0]!r} after "
            f"{noticed:.2f} s; the backend raised {caught.value!r}"
        )
        assert noticed < LAB_GONE_WITHIN
        assert backend.lab_url is None  # forgotten: the next kernel respawns

        async with asyncio.timeout(WAIT), backend.kernel("python3") as conn:
            nb = small_notebook("1 + 1")
            assert await execute_notebook(conn, nb) is None
            assert nb.cells[0].outputs[0].data["text/plain"] == "2"
        assert backend.spawns == 2
        second_pid = await server_pid(hub_client, name)
        assert second_pid != first_pid

        # A lab lost between executions is noticed by the next kernel().
        await kill(hub_client, name)
        async with asyncio.timeout(WAIT), backend.kernel("python3") as conn:
            nb = small_notebook("2 + 2")
            assert await execute_notebook(conn, nb) is None
            assert nb.cells[0].outputs[0].data["text/plain"] == "4"
        assert backend.spawns == 3
        assert await server_pid(hub_client, name) not in {first_pid, second_pid}
    finally:
        async with asyncio.timeout(WAIT):
            await backend.aclose()
        await delete_users(hub_client, name)


@pytest.mark.asyncio
async def test_hub_client_spawn_cycle(hub_client: JupyterHubClient) -> None:
    name = bot_name()
    try:
        async with asyncio.timeout(WAIT):
            assert await hub_client.user(name) is None
            assert await hub_client.server_url(name) is None
            await hub_client.ensure_user(name)
            await hub_client.ensure_user(name)  # 409: fine
            with pytest.raises(LabSpawnError, match="not starting"):
                async for _event in hub_client.follow_spawn(name, timeout=5):
                    pass
            assert await hub_client.start_server(name) is True
            assert await hub_client.start_server(name) is True  # still pending
            events = [
                event async for event in hub_client.follow_spawn(name, timeout=30)
            ]
            assert events[-1].ready
            assert all(not event.failed for event in events)
            assert await hub_client.start_server(name) is False  # running
            ready = [event async for event in hub_client.follow_spawn(name, timeout=5)]
            assert len(ready) == 1  # already running: at once
            assert ready[0].ready
            url = await hub_client.server_url(name)
            assert url == f"{hub_client.proxy_url}user/{name}/"
            assert await hub_client.stop_server(name) is True
            assert await hub_client.server_url(name) is None
    finally:
        await delete_users(hub_client, name)


@dataclass(frozen=True)
class SpawnFailure:
    user_options: dict[str, Any]
    spawn_timeout: float
    message: str
    progress: bool
    """Whether progress events arrive before the failure."""


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            SpawnFailure(
                {"cmd": ["/nonexistent/jupyterhub-singleuser"]},
                spawn_timeout=30,
                message="Spawn failed: .*No such file or directory",
                progress=False,  # fails before the progress stream is read
            ),
            id="missing-command",
        ),
        pytest.param(
            SpawnFailure(
                {
                    "cmd": [sys.executable, "-c", "raise SystemExit(3)"],
                    "http_timeout": 2,
                },
                spawn_timeout=30,
                message="Spawn failed: .*didn't respond in 2 seconds",
                progress=True,
            ),
            id="server-exits",
        ),
        pytest.param(
            SpawnFailure(
                {"cmd": [sys.executable, "-c", "import time; time.sleep(60)"]},
                spawn_timeout=1.5,
                message="not ready after 1.5 s",
                progress=True,
            ),
            id="spawn-timeout",
        ),
    ],
)
async def test_spawn_failure(
    http: httpx.AsyncClient,
    jupyterhub: HubInfo,
    hub_client: JupyterHubClient,
    case: SpawnFailure,
) -> None:
    name = bot_name()
    events: list[SpawnProgress] = []

    async def record(event: SpawnProgress) -> None:
        events.append(event)

    backend = make_backend(
        http,
        jupyterhub,
        name,
        user_options=case.user_options,
        spawn_timeout=case.spawn_timeout,
        on_progress=record,
    )
    try:
        started = time.monotonic()
        with pytest.raises(LabSpawnError, match=case.message) as caught:
            async with asyncio.timeout(WAIT):
                await backend.start()
        elapsed = time.monotonic() - started
        print(f"{caught.value} after {elapsed:.2f} s")
        assert elapsed < case.spawn_timeout + 10  # + cancelling a pending spawn
        assert caught.value.username == name
        assert bool(events) == case.progress, events
        assert not any(event.ready for event in events)
        assert backend.lab_url is None
        async with asyncio.timeout(WAIT):
            assert await hub_client.server_pending(name) is None  # nothing left
            assert await hub_client.server_url(name) is None
    finally:
        async with asyncio.timeout(WAIT):
            await backend.aclose()
        await delete_users(hub_client, name)


WARM_UP = "import colorsys as _noteburst_warm"


@pytest.mark.asyncio
async def test_warm_pool_in_the_lab(
    http: httpx.AsyncClient, jupyterhub: HubInfo, hub_client: JupyterHubClient
) -> None:
    name = bot_name()
    backend = make_backend(
        http,
        jupyterhub,
        name,
        warm_kernels={"python3": 1},
        warm_up_code={"python3": WARM_UP},
    )
    try:
        async with asyncio.timeout(WAIT):
            await backend.start()
            pool = backend.pool
            assert pool is not None
            await pool.wait_full("python3")
            seen: set[str] = set()
            for round_ in range(3):
                ready = pool.ready_kernel_ids("python3")
                assert len(ready) == 1
                async with backend.kernel("python3") as conn:
                    # The warm kernel is handed out, never one used before.
                    assert conn.kernel_id == ready[0]
                    assert conn.kernel_id not in seen
                    seen.add(conn.kernel_id)
                    nb = small_notebook(
                        "'_noteburst_warm' in dir(), len(Out)",
                        f"leak{round_} = 1",
                        # The lab's server setting: no history file on
                        # disk, no sleep before each reply.
                        "ip = get_ipython()\n"
                        "ip.history_manager.hist_file, ip.kernel._execute_sleep",
                    )
                    assert await execute_notebook(conn, nb) is None
                    assert nb.cells[0].outputs[0].data["text/plain"] == "(True, 0)"
                    tuned = nb.cells[2].outputs[0].data["text/plain"]
                    assert tuned == "(':memory:', 0.0)", tuned
                await pool.wait_full("python3")  # refilled
            assert pool.handed_out("python3") == 3
        assert backend.spawns == 1

        async def settled() -> bool:
            return backend.pending_shutdowns == 0

        # Used kernels are shut down: the lab keeps only the warm one.
        await wait_until(settled, "used kernels are shut down", timeout=WAIT)
        running = await http.get(
            f"{backend.lab_url}api/kernels", headers=hub_client.auth_headers
        )
        assert [kernel["id"] for kernel in running.json()] == (
            pool.ready_kernel_ids("python3")
        )
    finally:
        async with asyncio.timeout(WAIT):
            await backend.aclose()
        await delete_users(hub_client, name)


@pytest.mark.asyncio
async def test_several_executions_share_the_lab_at_once(
    http: httpx.AsyncClient, jupyterhub: HubInfo, hub_client: JupyterHubClient
) -> None:
    name = bot_name()
    backend = make_backend(http, jupyterhub, name)
    both_running = asyncio.Barrier(2)

    async def run() -> tuple[str, str]:
        async with backend.kernel("python3") as conn:
            # Both kernels are in use at the same time before either ends.
            async with asyncio.timeout(WAIT):
                await both_running.wait()
            assert backend.kernels_in_use == 2
            nb = small_notebook("import os; os.getpid()")
            assert await execute_notebook(conn, nb) is None
            return conn.kernel_id, nb.cells[0].outputs[0].data["text/plain"]

    try:
        async with asyncio.timeout(WAIT):
            (id1, pid1), (id2, pid2) = await asyncio.gather(run(), run())
        assert id1 != id2
        assert pid1 != pid2
        assert backend.spawns == 1
        assert backend.kernels_in_use == 0
    finally:
        async with asyncio.timeout(WAIT):
            await backend.aclose()
        await delete_users(hub_client, name)


@pytest.mark.asyncio
async def test_idle_lab_is_stopped_and_respawned_on_demand(
    http: httpx.AsyncClient, jupyterhub: HubInfo, hub_client: JupyterHubClient
) -> None:
    name = bot_name()
    backend = make_backend(
        http, jupyterhub, name, idle_timeout=0.5, warm_kernels={"python3": 1}
    )

    async def stopped() -> bool:
        return backend.idle_stops == 1 and await hub_client.server_url(name) is None

    try:
        async with asyncio.timeout(WAIT), backend.kernel("python3") as conn:
            assert await execute_notebook(conn, small_notebook("1")) is None
        await wait_until(stopped, "the idle lab is stopped", timeout=WAIT)
        assert backend.lab_url is None
        assert backend.pool is None

        lines: list[str] = []

        async def record(line: str) -> None:
            lines.append(line)

        async with asyncio.timeout(WAIT):
            async with backend.kernel("python3", on_progress=record) as conn:
                assert await execute_notebook(conn, small_notebook("2")) is None
                # In use: the timer is off, however long the execution takes.
                assert backend.idle_stops == 1
        assert backend.spawns == 2
        # The execution that waited for the spawn was told how it went.
        assert lines, "no spawn progress reported"
        assert lines[-1] == f"lab of {name} is ready"
        assert any(line.startswith(f"starting the lab of {name}") for line in lines)
    finally:
        async with asyncio.timeout(WAIT):
            await backend.aclose()
        await delete_users(hub_client, name)


@pytest.mark.asyncio
async def test_surrendered_identity_leaves_the_lab_to_its_new_holder(
    http: httpx.AsyncClient, jupyterhub: HubInfo, hub_client: JupyterHubClient
) -> None:
    first, second = bot_name(), bot_name()
    backend = make_backend(http, jupyterhub, first, warm_kernels={"python3": 1})

    async def whoami() -> str:
        async with backend.kernel("python3") as conn:
            nb = small_notebook("import os; os.environ['JUPYTERHUB_USER']")
            assert await execute_notebook(conn, nb) is None
            user: str = nb.cells[0].outputs[0].data["text/plain"]
            return user.strip("'")

    try:
        async with asyncio.timeout(WAIT):
            assert await whoami() == first
            first_url = backend.lab_url
            backend.surrender_identity("taken over by another worker")
            with pytest.raises(LabUnavailableError, match="no longer holds"):
                await whoami()
            backend.assume_identity(second)
            assert await whoami() == second
            await backend.aclose()
            # The surrendered lab is left running for its new holder, and
            # its warm kernel was shut down.
            assert await hub_client.server_url(first) == first_url
            kernels = await http.get(
                f"{first_url}api/kernels", headers=hub_client.auth_headers
            )
            assert kernels.json() == []
    finally:
        async with asyncio.timeout(WAIT):
            await backend.aclose()
            await hub_client.stop_server(first)
            await hub_client.stop_server(second)
        await delete_users(hub_client, first, second)
