"""The kernel manager Noteburst's Jupyter servers use, in process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jupyter_client.manager
import pytest
import pytest_asyncio
import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.session import Session
from jupyter_events import EventLogger
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from traitlets import HasTraits, Unicode
from traitlets.config import Configurable

from noteburst.jupyter.kernel import KernelConnection
from noteburst.jupyter.local import LocalJupyterServer
from noteburst.jupyter.rest import JupyterRestClient
from noteburst.jupyter.server_settings import (
    IPYKERNEL_ARGUMENTS,
    LowLatencyKernelManager,
    NoDelayConnection,
    left_starting,
)
from tests.support.waiting import wait_until

WAIT = 60
KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"


def ready(manager: LowLatencyKernelManager) -> asyncio.Future[None]:
    """The manager's ``ready`` future (an asyncio one, on a running loop)."""
    future = manager.ready
    assert isinstance(future, asyncio.Future)
    return future


class SleepWatch:
    """``asyncio`` as jupyter_client.manager sees it, noting its sleeps."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.sleeps.append(delay)
        return await asyncio.sleep(delay, result)


@pytest_asyncio.fixture
async def manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LowLatencyKernelManager]:
    """A kernel manager of the embedded server's kind, its kernel shut down after."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    kernels = LowLatencyKernelManager(kernel_name="python3")
    yield kernels
    if kernels.has_kernel and await kernels.is_alive():
        await asyncio.wait_for(kernels.shutdown_kernel(now=True), WAIT)
    kernels.context.destroy(linger=0)


@pytest.mark.asyncio
async def test_start_kernel_skips_the_pause_and_keeps_the_rest(
    manager: LowLatencyKernelManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[dict[str, Any]] = []

    async def on_event(logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        events.append(data)

    manager.event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=on_event)
    watch = SleepWatch()
    monkeypatch.setattr(jupyter_client.manager, "asyncio", watch)
    async with asyncio.timeout(WAIT):
        await manager.start_kernel()
        await ready(manager)  # resolved, as in_pending_state resolves it
    assert watch.sleeps == []  # in_pending_state's sleep(0.01) is gone
    assert await manager.is_alive()
    command = manager.format_kernel_cmd()
    assert all(argument in command for argument in IPYKERNEL_ARGUMENTS)
    async with asyncio.timeout(WAIT):
        while not events:  # listeners run in tasks of their own
            await asyncio.sleep(0.01)
    assert events[0]["action"] == "start"
    assert events[0]["status"] == "success"


@pytest.mark.asyncio
async def test_a_failed_start_fails_ready_too(
    manager: LowLatencyKernelManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no kernel today")

    monkeypatch.setattr(manager, "_async_pre_start_kernel", refuse)
    with pytest.raises(RuntimeError, match="no kernel today"):
        await asyncio.wait_for(manager.start_kernel(), WAIT)
    with pytest.raises(RuntimeError, match="no kernel today"):
        await asyncio.wait_for(ready(manager), WAIT)


def test_kernel_event_schemas_are_registered_with_the_server_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Server(Configurable):
        event_logger = EventLogger()

    kernels = Configurable(parent=Server())

    registered: list[str] = []
    register = EventLogger.register_event_schema

    def counting(self: EventLogger, schema: Any) -> Any:
        registered.append(str(schema))
        return register(self, schema)

    monkeypatch.setattr(EventLogger, "register_event_schema", counting)
    first = LowLatencyKernelManager(kernel_name="python3", parent=kernels)
    assert first.event_logger is Server.event_logger
    assert registered  # the first kernel registers them
    registered.clear()
    second = LowLatencyKernelManager(kernel_name="python3", parent=kernels)
    assert second.event_logger is Server.event_logger
    assert registered == []  # the next ones do not read them again
    first.context.destroy(linger=0)
    second.context.destroy(linger=0)


@pytest.mark.skipif(sys.platform != "linux", reason="the abstract namespace is Linux's")
def test_ipc_sockets_are_named_in_the_abstract_namespace(tmp_path: Path) -> None:
    """No socket file: nothing left behind, no path too long for a socket."""
    deep = tmp_path / ("d" * 120) / "kernel-0123.json"
    tcp = LowLatencyKernelManager(connection_file=str(deep))
    assert tcp.ip == "127.0.0.1"
    ipc = LowLatencyKernelManager(transport="ipc", connection_file=str(deep))
    assert ipc.ip == "@kernel-0123-ipc"


# -- NoDelayConnection: a kernel's first websocket ---------------------------


@dataclass
class Served:
    local: LocalJupyterServer
    http: httpx.AsyncClient
    rest: JupyterRestClient


@asynccontextmanager
async def serving(root: Path, kernel_info_timeout: float = 60) -> AsyncIterator[Served]:
    """The embedded default's Jupyter server (forked kernels), and its clients."""
    local = LocalJupyterServer(
        root_dir=root,
        start_timeout=60,
        fork_kernels="",
        extra_args=[
            f"--MappingKernelManager.kernel_info_timeout={kernel_info_timeout}"
        ],
    )
    await local.start()
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            yield Served(
                local,
                http,
                JupyterRestClient(
                    http=http, base_url=local.url, token=local.token, timeout=WAIT
                ),
            )
    finally:
        await local.stop()


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[Served]:
    """:func:`serving`, with jupyter_server's own ``kernel_info_timeout``."""
    async with serving(tmp_path / "served") as served:
        yield served


def connection_info(server: LocalJupyterServer, kernel_id: str) -> dict[str, Any]:
    """A kernel's connection file, as its server wrote it."""
    path = server.state_dir / "runtime" / f"kernel-{kernel_id}.json"
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def iopub_name(server: LocalJupyterServer, kernel_id: str) -> str:
    """The abstract Unix socket name of a kernel's iopub."""
    info = connection_info(server, kernel_id)
    return f"{info['ip']}-{info['iopub_port']}"


class IopubWatch:
    """A subscriber of a kernel's iopub of our own.

    It subscribes to ``kernel``, a topic no one else uses (jupyter_server
    subscribes to everything), so that ipykernel welcomes it: a kernel
    sends ``iopub_welcome`` only for a topic new to it.  That is the sign
    that the subscription is in, before the kernel is asked anything.
    """

    def __init__(self, server: LocalJupyterServer, kernel_id: str) -> None:
        info = connection_info(server, kernel_id)
        self.session = Session(key=info["key"].encode())
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"kernel")
        self.socket.connect(f"ipc://{iopub_name(server, kernel_id)}")
        self.seen: list[dict[str, Any]] = []

    async def until(self, done: Callable[[dict[str, Any]], bool]) -> None:
        """Read messages until ``done(msg)``, within :data:`WAIT` seconds."""
        async with asyncio.timeout(WAIT):
            while True:
                received = await self.socket.recv_multipart()
                _, frames = self.session.feed_identities(received)
                msg = self.session.deserialize(frames)
                self.seen.append(msg)
                if done(msg):
                    return

    def kernel_info_requests(self) -> int:
        """The ``kernel_info`` requests the kernel answered (its busy statuses)."""
        return sum(
            1
            for msg in self.seen
            if msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "busy"
            and msg["parent_header"].get("msg_type") == "kernel_info_request"
        )

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


async def kernel_info_through(conn: KernelConnection, watch: IopubWatch) -> None:
    """Ask through ``conn``; read ``watch`` up to that request's idle."""
    reply = await asyncio.wait_for(conn.kernel_info(), WAIT)
    ours = reply["parent_header"]["msg_id"]
    await watch.until(
        lambda msg: (
            msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
            and msg["parent_header"].get("msg_id") == ours
        )
    )


HOLD_STARTUP = """\
# Holds a starting kernel until the test opens this pipe for writing.
with open({fifo!r}) as fifo:
    fifo.read()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/net/unix")
@pytest.mark.asyncio
async def test_a_kernels_first_websocket_costs_it_one_kernel_info(
    server: Served, tmp_path: Path
) -> None:
    """jupyter_server asks three times (``prepare``, and ``nudge`` twice); we once.

    The first request's reply and its iopub status, heard on the
    connection's own iopub subscribed before it, prove what the nudge
    checks.  As on the pool's path, the websocket is opened while the
    kernel is still starting: here an IPython startup file holds it until
    the server's streams are connected.  A second websocket to the same
    kernel is nudged as jupyter_server nudges.
    """
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    startup = server.local.state_dir / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-hold.py").write_text(HOLD_STARTUP.format(fifo=str(fifo)))
    rest = server.rest
    kernel_id = await rest.create_kernel("python3")
    iopub = iopub_name(server.local, kernel_id)
    watch = IopubWatch(server.local, kernel_id)
    try:
        await watch.until(lambda msg: msg["msg_type"] == "iopub_welcome")
        opening = asyncio.ensure_future(KernelConnection.open(rest, kernel_id))

        async def server_streams_connected() -> bool:
            # The activity watcher's, ours, and the new connection's.
            return accepted_connections(iopub) == 3

        await wait_until(
            server_streams_connected, "the server subscribes", timeout=WAIT
        )
        # The kernel is blocked opening the pipe: this open does not block.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        async with await asyncio.wait_for(opening, WAIT) as first:
            await kernel_info_through(first, watch)
            assert watch.kernel_info_requests() == 2  # the server's and ours
            async with await KernelConnection.open(rest, kernel_id) as second:
                await kernel_info_through(second, watch)
                # The nudge's two (or more, if it retried), and ours.
                assert watch.kernel_info_requests() >= 5
            await kernel_info_through(first, watch)
    finally:
        watch.close()
        await rest.delete_kernel(kernel_id)


def accepted_connections(name: str) -> int:
    """Connections accepted on the abstract Unix socket ``name`` (not the listener)."""
    count = 0
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        # Flags 00010000 (__SO_ACCEPTCON) mark the listening socket itself.
        if len(fields) == 8 and fields[7] == name and fields[3] != "00010000":
            count += 1
    return count


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/net/unix")
@pytest.mark.asyncio
async def test_a_refused_handshake_does_not_leave_streams_open(
    tmp_path: Path,
) -> None:
    """The streams made before the handshake close if it is refused.

    jupyter_server prepares a connection before tornado checks the
    handshake's headers (version, origin).
    """
    async with serving(tmp_path, kernel_info_timeout=2) as server:
        rest = server.rest
        kernel_id = await rest.create_kernel("python3")
        try:
            iopub = iopub_name(server.local, kernel_id)

            async def only_the_activity_watcher() -> bool:
                return accepted_connections(iopub) == 1

            await wait_until(only_the_activity_watcher, "the server watches iopub")
            url = rest.ws_url(kernel_id, uuid.uuid4().hex).replace("ws", "http", 1)
            response = await server.http.get(
                url,
                headers={
                    **rest.auth_headers,
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "99",  # refused: "426 Upgrade Required"
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
            )
            assert response.status_code == 426
            assert accepted_connections(iopub) == 2  # the refused connection's
            await wait_until(  # after kernel_info_timeout: 2 s here
                only_the_activity_watcher, "the refused connection's streams close"
            )
            # The kernel still opens normally.
            async with await KernelConnection.open(rest, kernel_id) as conn:
                await asyncio.wait_for(conn.kernel_info(), WAIT)
        finally:
            await rest.delete_kernel(kernel_id)


@pytest.mark.asyncio
async def test_a_missed_first_status_is_asked_for_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The activity watcher missed the kernel's first statuses: ask again.

    Waiting for a status that never comes would hold the websocket's
    ``open`` (and its pings) until ``kernel_info_timeout``.
    """
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    kernels = AsyncMappingKernelManager(  # type: ignore[no-untyped-call]
        kernel_manager_class=(
            "noteburst.jupyter.server_settings.LowLatencyKernelManager"
        ),
        root_dir=str(tmp_path),
    )
    kernel_id = await asyncio.wait_for(
        kernels.start_kernel(kernel_name="python3"), WAIT
    )
    try:
        kernel = kernels.get_kernel(kernel_id)
        assert isinstance(kernel, LowLatencyKernelManager)
        client = AsyncKernelClient(context=kernel.context)
        client.load_connection_info(kernel.get_connection_info())
        client.start_channels()
        await asyncio.wait_for(client.wait_for_ready(), WAIT)
        client.stop_channels()
        # As if the watcher had heard nothing yet: the kernel is idle and
        # sends nothing unless asked.
        kernel.execution_state = "starting"
        conn = NoDelayConnection(parent=kernel, kernel_info_timeout=WAIT)
        conn.session.key = kernel.session.key
        await asyncio.wait_for(conn._activity_seen(), WAIT)
        assert kernel.execution_state == "idle"
    finally:
        await asyncio.wait_for(kernels.shutdown_all(now=True), WAIT)
        kernels.context.destroy(linger=0)


class State(HasTraits):
    execution_state = Unicode("starting")


@pytest.mark.asyncio
async def test_left_starting_waits_for_the_activity_watcher() -> None:
    kernel = State()
    waiting = asyncio.ensure_future(left_starting(kernel))
    await asyncio.sleep(0)
    assert not waiting.done()
    kernel.execution_state = "starting"  # no change yet
    await asyncio.sleep(0)
    assert not waiting.done()
    kernel.execution_state = "idle"
    await asyncio.wait_for(waiting, WAIT)
    assert not kernel._trait_notifiers["execution_state"]["change"]  # unobserved

    kernel.execution_state = "busy"  # already left: at once
    await asyncio.wait_for(left_starting(kernel), WAIT)

    stuck = State()  # a timeout stops the wait and unobserves too
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(left_starting(stuck), 0.01)
    assert not stuck._trait_notifiers["execution_state"]["change"]
