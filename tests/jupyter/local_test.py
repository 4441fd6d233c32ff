"""LocalJupyterServer: start, stop, and leave nothing behind."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import nbformat
import pytest

from noteburst.jupyter import local
from noteburst.jupyter.exceptions import JupyterError, LabUnavailableError
from noteburst.jupyter.execute import execute_notebook
from noteburst.jupyter.kernel import KernelConnection
from noteburst.jupyter.local import LocalJupyterServer
from noteburst.jupyter.rest import JupyterRestClient

WAIT = 30


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.asyncio
async def test_lifecycle_leaves_nothing_behind(tmp_path: Path) -> None:
    server = LocalJupyterServer(root_dir=tmp_path, start_timeout=60)
    with pytest.raises(JupyterError):
        _ = server.url
    await server.start()
    pid = server.pid
    assert pid is not None
    assert server.running
    assert server.url.startswith("http://127.0.0.1:")
    with pytest.raises(JupyterError):
        await server.start()

    # The token is in the environment, never on the command line.
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert server.token.encode() not in cmdline
    assert b"--ServerApp.port_retries=0" in cmdline
    if os.geteuid() == 0:
        assert b"--allow-root" in cmdline
    # Hermetic runtime directory.
    assert list((server.state_dir / "runtime").iterdir())

    async with httpx.AsyncClient(trust_env=False) as http:
        rest = JupyterRestClient(http=http, base_url=server.url, token=server.token, timeout=30)
        assert "python3" in await rest.kernelspecs()
        kernel_id = await rest.create_kernel("python3")
        async with await KernelConnection.open(rest, kernel_id) as conn:
            nb = nbformat.v4.new_notebook(
                cells=[nbformat.v4.new_code_cell("import os\nprint(os.getpid(), os.getcwd())")]
            )
            async with asyncio.timeout(WAIT):
                assert await execute_notebook(conn, nb) is None
        kernel_pid_text, kernel_cwd = nb.cells[0].outputs[0].text.split()
        kernel_pid = int(kernel_pid_text)
        assert Path(kernel_cwd) == tmp_path
        assert alive(kernel_pid)

        # Stop with a kernel still running: the server shuts it down.
        await server.stop()
        assert not server.running
        assert server.pid is None
        assert not alive(pid)
        assert not alive(kernel_pid)
        with pytest.raises(LabUnavailableError):
            await rest.status()

    await server.stop()  # idempotent
    assert "Jupyter Server" in server.log_tail()


@pytest.mark.asyncio
async def test_early_exit_fails_fast_with_the_log(tmp_path: Path) -> None:
    server = LocalJupyterServer(
        root_dir=tmp_path, start_timeout=60, extra_args=["--ServerApp.no_such_option=1x"]
    )
    server.extra_args = ["--ServerApp.port=not-a-number"]
    async with asyncio.timeout(WAIT):
        with pytest.raises(LabUnavailableError) as caught:
            await server.start()
    assert "exited with status" in str(caught.value)
    assert "not-a-number" in str(caught.value)
    assert not server.running
    assert server.pid is None


@pytest.mark.asyncio
async def test_start_timeout_stops_the_process(tmp_path: Path) -> None:
    server = LocalJupyterServer(root_dir=tmp_path, start_timeout=0.2)
    async with asyncio.timeout(WAIT):
        with pytest.raises(LabUnavailableError, match="not ready after"):
            await server.start()
    assert server.pid is None


@pytest.mark.asyncio
async def test_taken_port_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port taken between choosing and binding it makes the start retry (G19)."""
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = iter([taken])
        real_free_port = local._free_port
        monkeypatch.setattr(local, "_free_port", lambda: next(ports, None) or real_free_port())

        server = LocalJupyterServer(root_dir=tmp_path, start_timeout=60)
        await server.start()
        try:
            assert server.url != f"http://127.0.0.1:{taken}/"
            assert "is not available" in server.log_tail(100_000)
        finally:
            await server.stop()


def test_finalizer_kills_a_forgotten_server(tmp_path: Path) -> None:
    """If stop() is never called, the finalizer (also run at exit) stops the process."""
    server = LocalJupyterServer(root_dir=tmp_path, start_timeout=60)
    asyncio.run(server.start())
    process = server._process
    assert process is not None
    finalizer = server._finalizer
    assert finalizer is not None
    assert finalizer.atexit
    finalizer()
    assert process.poll() is not None
    assert not alive(process.pid)
    asyncio.run(server.stop())
