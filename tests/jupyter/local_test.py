"""LocalJupyterServer: start, stop, and leave nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
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


def is_running(server: LocalJupyterServer) -> bool:
    return server.running


def command_line(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def abstract_sockets() -> set[str]:
    """Names of the Unix sockets bound in the abstract namespace, ``@`` first."""
    names = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[7].startswith("@"):
            names.add(fields[7])
    return names


@pytest.mark.asyncio
@pytest.mark.parametrize("fork_kernels", [None, "import json"], ids=["plain", "forked"])
async def test_lifecycle_leaves_nothing_behind(
    tmp_path: Path, fork_kernels: str | None
) -> None:
    server = LocalJupyterServer(
        root_dir=tmp_path, start_timeout=60, fork_kernels=fork_kernels
    )
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
    cmdline = command_line(pid)
    assert server.token.encode() not in cmdline
    assert b"--ServerApp.port_retries=0" in cmdline
    if os.geteuid() == 0:
        assert b"--allow-root" in cmdline
    # Hermetic runtime directory.
    assert list((server.state_dir / "runtime").iterdir())
    assert b"--KernelManager.transport=ipc" in cmdline

    async with httpx.AsyncClient(trust_env=False) as http:
        rest = JupyterRestClient(
            http=http, base_url=server.url, token=server.token, timeout=30
        )
        assert "python3" in await rest.kernelspecs()
        kernel_id = await rest.create_kernel("python3")
        # Unix sockets in the abstract namespace: no file to leave behind.
        connection_file = server.state_dir / "runtime" / f"kernel-{kernel_id}.json"
        connection = json.loads(connection_file.read_text())
        assert connection["transport"] == "ipc"
        assert connection["ip"] == f"@kernel-{kernel_id}-ipc"
        async with await KernelConnection.open(rest, kernel_id) as conn:
            nb = nbformat.v4.new_notebook(
                cells=[
                    nbformat.v4.new_code_cell(
                        "import os\nprint(os.getpid(), os.getcwd(), os.getppid())"
                    ),
                    # LowLatencyKernelManager's arguments reached the kernel.
                    nbformat.v4.new_code_cell(
                        "ip = get_ipython()\n"
                        "ip.history_manager.hist_file, ip.kernel._execute_sleep"
                    ),
                ]
            )
            async with asyncio.timeout(WAIT):
                assert await execute_notebook(conn, nb) is None
        tuned = nb.cells[1].outputs[0].data["text/plain"]
        assert tuned == "(':memory:', 0.0)", tuned
        kernel_pid_text, kernel_cwd, parent_text = nb.cells[0].outputs[0].text.split()
        kernel_pid, kernel_parent = int(kernel_pid_text), int(parent_text)
        assert Path(kernel_cwd) == tmp_path
        assert alive(kernel_pid)
        assert f"@kernel-{kernel_id}-ipc-1" in abstract_sockets()
        if fork_kernels is None:
            assert kernel_parent == pid
        else:
            # A fork of the template, which the server started.
            assert kernel_parent != pid
            assert b"noteburst.forkserver.template" in command_line(kernel_parent)

        # Stop with a kernel still running: the server shuts it down.
        await server.stop()
        assert not is_running(server)
        assert server.pid is None
        assert not alive(pid)
        assert not alive(kernel_pid)
        assert not any(kernel_id in name for name in abstract_sockets())
        if fork_kernels is not None:
            async with asyncio.timeout(WAIT):
                await wait_for_exit(kernel_parent)
        with pytest.raises(LabUnavailableError):
            await rest.status()

    await server.stop()  # idempotent
    assert "Jupyter Server" in server.log_tail()


@pytest.mark.asyncio
async def test_early_exit_fails_fast_with_the_log(tmp_path: Path) -> None:
    server = LocalJupyterServer(
        root_dir=tmp_path,
        start_timeout=60,
        extra_args=["--ServerApp.port=not-a-number"],
    )
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
async def test_taken_port_is_retried_and_finalizer_stops_a_forgotten_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port taken between choosing and binding it makes the start retry (G19).

    Then the server is "forgotten": its finalizer, which also runs at
    interpreter exit, stops it.
    """
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = iter([taken])
        real_free_port = local._free_port
        monkeypatch.setattr(
            local, "_free_port", lambda: next(ports, None) or real_free_port()
        )

        server = LocalJupyterServer(root_dir=tmp_path, start_timeout=60)
        await server.start()
        try:
            assert server.url != f"http://127.0.0.1:{taken}/"
            assert "is not available" in server.log_tail(100_000)
            process = server._process
            finalizer = server._finalizer
            assert process is not None
            assert finalizer is not None
            assert finalizer.atexit
            await asyncio.to_thread(finalizer)
            assert process.poll() is not None
            assert not alive(process.pid)
        finally:
            await server.stop()


@pytest.mark.asyncio
async def test_a_port_another_http_server_took_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another server bound the chosen port first and answers 404 (seen in CI)."""

    async def not_found(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    other = await asyncio.start_server(not_found, "127.0.0.1", 0)
    async with other:
        taken = other.sockets[0].getsockname()[1]
        ports = iter([taken])
        real_free_port = local._free_port
        monkeypatch.setattr(
            local, "_free_port", lambda: next(ports, None) or real_free_port()
        )
        server = LocalJupyterServer(root_dir=tmp_path, start_timeout=60)
        try:
            async with asyncio.timeout(WAIT):
                await server.start()
            assert server.url != f"http://127.0.0.1:{taken}/"
            assert "is not available" in server.log_tail(100_000)
        finally:
            await server.stop()


ORPHAN_PARENT = """
import asyncio, sys
from pathlib import Path
import httpx, nbformat
from noteburst.jupyter import LocalLabBackend, execute_notebook

async def main():
    async with httpx.AsyncClient() as http:
        backend = LocalLabBackend(http=http, root_dir=Path(sys.argv[1]))
        await backend.start()
        async with backend.kernel("python3") as conn:
            nb = nbformat.v4.new_notebook(
                cells=[nbformat.v4.new_code_cell("import os; print(os.getpid())")]
            )
            await execute_notebook(conn, nb)
            print(backend.server.pid, nb.cells[0].outputs[0].text.strip(), flush=True)
            await asyncio.Event().wait()

asyncio.run(main())
"""


async def wait_for_exit(pid: int) -> None:
    """Wait until a process that is not our child exits (pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(fd, exited.set_result, None)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@pytest.mark.asyncio
async def test_server_and_kernels_stop_when_the_parent_is_killed(
    tmp_path: Path,
) -> None:
    """SIGKILL runs no exit handler; the server's lifeline stops it anyway."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ORPHAN_PARENT,
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
    )
    assert parent.stdout is not None
    try:
        async with asyncio.timeout(60):
            line = await parent.stdout.readline()
        server_pid, kernel_pid = (int(word) for word in line.split())
        assert alive(server_pid)
        assert alive(kernel_pid)
    finally:
        parent.kill()
        await parent.wait()
    async with asyncio.timeout(WAIT):
        await wait_for_exit(server_pid)
        await wait_for_exit(kernel_pid)
    log = (tmp_path / ".noteburst-jupyter" / "jupyter-server.log").read_text()
    assert "is gone, stopping" in log
