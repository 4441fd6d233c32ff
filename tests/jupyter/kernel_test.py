"""KernelConnection against the session's real jupyter_server.

Faults a real server cannot produce on demand (a malformed frame) come from
a tiny websockets server on loopback; everything else is real: both wire
protocols, interrupts, unknown kernels, a server that goes away, outputs
larger than the websockets default frame limit, and a kernel that dies.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nbformat
import pytest
import pytest_asyncio
import websockets
from websockets.asyncio.server import ServerConnection, serve

from noteburst.jupyter import protocol
from noteburst.jupyter.backend import LocalLabBackend
from noteburst.jupyter.exceptions import (
    KernelDiedError,
    KernelProtocolError,
    KernelStartError,
    LabUnavailableError,
)
from noteburst.jupyter.execute import execute_notebook
from noteburst.jupyter.kernel import KernelConnection
from noteburst.jupyter.local import LocalJupyterServer
from noteburst.jupyter.protocol import Message, WireProtocol
from noteburst.jupyter.rest import JupyterRestClient
from tests.support.jupyter import JupyterServerInfo

WAIT = 30


@pytest_asyncio.fixture
async def rest(jupyter_server: JupyterServerInfo) -> AsyncIterator[JupyterRestClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield JupyterRestClient(
            http=http,
            base_url=jupyter_server.url,
            token=jupyter_server.token,
            timeout=30,
        )


async def run_code(conn: KernelConnection, code: str) -> list[Message]:
    """Execute ``code``; return its messages up to both the reply and idle."""
    msg_id = await conn.execute(code)
    messages: list[Message] = []
    try:
        async with asyncio.timeout(WAIT):
            while not (
                any(m["msg_type"] == "execute_reply" for m in messages)
                and any(
                    m["msg_type"] == "status"
                    and m["content"]["execution_state"] == "idle"
                    for m in messages
                )
            ):
                messages.append(await conn.receive(msg_id))
    finally:
        conn.forget(msg_id)
    return messages


def reply_of(messages: list[Message]) -> Message:
    return next(m for m in messages if m["msg_type"] == "execute_reply")


@pytest.mark.asyncio
@pytest.mark.parametrize("wire", list(WireProtocol))
async def test_execute_over_both_protocols(
    rest: JupyterRestClient, wire: WireProtocol
) -> None:
    kernel_id = await rest.create_kernel("python3")
    try:
        async with await KernelConnection.open(
            rest, kernel_id, wire_protocol=wire
        ) as conn:
            assert conn.protocol is wire
            assert conn.kernel_id == kernel_id
            messages = await run_code(conn, "1 + 1")
            result = next(m for m in messages if m["msg_type"] == "execute_result")
            assert result["content"]["data"] == {"text/plain": "2"}
            assert reply_of(messages)["content"]["status"] == "ok"
            assert {m["channel"] for m in messages} == {"shell", "iopub"}
            async with asyncio.timeout(WAIT):
                info = await conn.kernel_info()
            assert info["content"]["language_info"]["name"] == "python"
            sock = conn._ws.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with pytest.raises(Exception, match="closed by the client"):
            await conn.execute("1")
    finally:
        await rest.delete_kernel(kernel_id)


@pytest.mark.asyncio
async def test_round_trips_are_not_delayed_by_nagle(rest: JupyterRestClient) -> None:
    """With the server's NoDelayConnection a round trip is ~5 ms, not ~48 ms (G1)."""
    kernel_id = await rest.create_kernel("python3")
    try:
        async with await KernelConnection.open(rest, kernel_id) as conn:
            await run_code(conn, "1 + 1")
            durations = []
            for _ in range(15):
                start = time.perf_counter()
                await run_code(conn, "1 + 1")
                durations.append(time.perf_counter() - start)
        assert statistics.median(durations) < 0.030
    finally:
        await rest.delete_kernel(kernel_id)


@pytest.mark.asyncio
async def test_interrupt_ends_the_running_cell(rest: JupyterRestClient) -> None:
    kernel_id = await rest.create_kernel("python3")
    try:
        async with await KernelConnection.open(rest, kernel_id) as conn:
            msg_id = await conn.execute(
                "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"
            )
            async with asyncio.timeout(WAIT):
                # Interrupt once the cell's own code runs: ipykernel may drop a
                # SIGINT that lands between execute_input and the user code.
                while (await conn.receive(msg_id))["msg_type"] != "stream":
                    pass
                await conn.interrupt()
                while (msg := await conn.receive(msg_id))[
                    "msg_type"
                ] != "execute_reply":
                    pass
            assert msg["content"]["status"] == "error"
            assert msg["content"]["ename"] == "KeyboardInterrupt"
            conn.forget(msg_id)
            # The kernel still answers.  (An execute_request sent right after an
            # error may be answered "aborted": ipykernel's stop_on_error window.)
            async with asyncio.timeout(WAIT):
                info = await conn.kernel_info()
            assert info["content"]["status"] == "ok"
    finally:
        await rest.delete_kernel(kernel_id)


@pytest.mark.asyncio
async def test_unknown_kernel_name(jupyter_backend: LocalLabBackend) -> None:
    with pytest.raises(KernelStartError) as caught:
        async with jupyter_backend.kernel("no-such-kernel"):
            pass
    assert caught.value.kernel_name == "no-such-kernel"
    assert "500" in str(caught.value)


@pytest.mark.asyncio
async def test_unknown_kernel_id(rest: JupyterRestClient) -> None:
    with pytest.raises(KernelStartError):
        await KernelConnection.open(rest, "00000000-0000-0000-0000-000000000000")


@pytest.mark.asyncio
async def test_output_larger_than_one_mebibyte(
    jupyter_backend: LocalLabBackend,
) -> None:
    size = 3 * 1024 * 1024
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(f"print('x' * {size})"),
            nbformat.v4.new_code_cell(
                f"from IPython.display import HTML\nHTML('<p>' + 'y' * {size} + '</p>')"
            ),
        ]
    )
    async with jupyter_backend.kernel("python3") as conn, asyncio.timeout(WAIT):
        assert await execute_notebook(conn, nb) is None
    assert nb.cells[0].outputs[0].text == "x" * size + "\n"
    assert len(nb.cells[1].outputs[0].data["text/html"]) == size + 7


@pytest.mark.asyncio
async def test_kernel_death_is_reported(jupyter_backend: LocalLabBackend) -> None:
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("print('alive')"),
            nbformat.v4.new_markdown_cell("between"),
            nbformat.v4.new_code_cell("import os\nos._exit(1)"),
            nbformat.v4.new_code_cell("print('never')"),
        ]
    )
    async with jupyter_backend.kernel("python3") as conn:
        with pytest.raises(KernelDiedError) as caught:
            async with asyncio.timeout(WAIT):
                # Sequential: which cell died is exact here; the pipelined
                # attribution is tested in pipeline_test.py.
                await execute_notebook(conn, nb, pipelined=False)
        assert caught.value.cell_index == 2
        assert nb.cells[0].outputs[0].text == "alive\n"
        assert nb.cells[3].outputs == []
        # The connection stays failed: nothing hangs on a dead kernel.
        with pytest.raises(KernelDiedError):
            await conn.execute("1")


@pytest.mark.asyncio
async def test_server_gone_and_legacy_fallback(tmp_path: Path) -> None:
    """A server that picks no subprotocol gets legacy; a stopped one is unavailable."""
    server = LocalJupyterServer(
        root_dir=tmp_path,
        start_timeout=60,
        extra_args=["--ZMQChannelsWebsocketConnection.kernel_ws_protocol="],
    )
    await server.start()
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            rest = JupyterRestClient(
                http=http, base_url=server.url, token=server.token, timeout=30
            )
            kernel_id = await rest.create_kernel("python3")
            conn = await KernelConnection.open(
                rest, kernel_id, wire_protocol=WireProtocol.V1
            )
            try:
                assert conn.protocol is WireProtocol.LEGACY
                assert reply_of(await run_code(conn, "1"))["content"]["status"] == "ok"
                nb = nbformat.v4.new_notebook(
                    cells=[
                        nbformat.v4.new_code_cell(
                            "print('started', flush=True)\nimport time\ntime.sleep(60)"
                        )
                    ]
                )

                async def stop_when_started(index: int) -> None:
                    assert index == 0
                    stopper.set()

                stopper = asyncio.Event()

                async def stop_server() -> None:
                    await stopper.wait()
                    await server.stop()

                async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tasks:
                    tasks.create_task(stop_server())
                    with pytest.raises(LabUnavailableError):
                        await execute_notebook(
                            conn, nb, on_cell_started=stop_when_started
                        )
                with pytest.raises(LabUnavailableError):
                    await conn.execute("1")
            finally:
                await conn.aclose()
            with pytest.raises(LabUnavailableError):
                await rest.status()
            with pytest.raises(LabUnavailableError):
                await KernelConnection.open(rest, kernel_id)
    finally:
        await server.stop()


async def _serve_garbage(websocket: ServerConnection) -> None:
    await websocket.recv()  # answer the first request with an undecodable frame
    await websocket.send(b"\x01\x00\x00\x00\x00\x00\x00\x00garbage")
    await websocket.wait_closed()


@pytest.mark.asyncio
async def test_reader_errors_reach_waiters() -> None:
    """A frame that cannot be decoded fails pending and later calls; nothing hangs."""
    async with serve(
        _serve_garbage,
        "127.0.0.1",
        0,
        subprotocols=[websockets.Subprotocol(protocol.V1_SUBPROTOCOL)],
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with httpx.AsyncClient(trust_env=False) as http:
            rest = JupyterRestClient(
                http=http, base_url=f"http://127.0.0.1:{port}/", token="t", timeout=5
            )
            async with await KernelConnection.open(rest, "k") as conn:
                msg_id = await conn.execute("1")
                async with asyncio.timeout(WAIT):
                    with pytest.raises(KernelProtocolError):
                        await conn.receive(msg_id)
                assert isinstance(conn.failure, KernelProtocolError)
                with pytest.raises(KernelProtocolError):
                    await conn.execute("1")


async def _close_abruptly(websocket: ServerConnection) -> None:
    await websocket.recv()
    websocket.transport.abort()


@pytest.mark.asyncio
async def test_dropped_websocket_reaches_waiters() -> None:
    async with serve(_close_abruptly, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with httpx.AsyncClient(trust_env=False) as http:
            rest = JupyterRestClient(
                http=http, base_url=f"http://127.0.0.1:{port}/", token=None, timeout=5
            )
            async with await KernelConnection.open(rest, "k") as conn:
                assert conn.protocol is WireProtocol.LEGACY
                msg_id = await conn.execute("1")
                async with asyncio.timeout(WAIT):
                    with pytest.raises(LabUnavailableError):
                        await conn.receive(msg_id)
