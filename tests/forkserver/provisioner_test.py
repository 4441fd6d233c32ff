"""Kernels forked from a template, through jupyter_client's own kernel manager.

Each test writes kernel specs naming the provisioner into a private
``JUPYTER_PATH`` and starts kernels with :class:`AsyncKernelManager`, as
jupyter_server does: the provisioner is found through its entry point.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from jupyter_client.manager import AsyncKernelManager

from noteburst.forkserver import provisioner
from noteburst.forkserver.provisioner import ForkingProvisioner, stop_templates

WAIT = 60

StartKernel = Callable[..., Any]


def write_spec(
    root: Path, name: str, *, warmup: str = "", argv: list[str] | None = None
) -> None:
    folder = root / "kernels" / name
    folder.mkdir(parents=True)
    spec = {
        "argv": argv
        or [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name,
        "language": "python",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "noteburst-fork-provisioner",
                "config": {"warmup": warmup},
            }
        },
    }
    (folder / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture
def jupyter_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "jupyter"
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    write_spec(root, "forked", warmup="import json, decimal")
    yield root
    stop_templates()


class Kernel:
    """A started kernel and a client of it."""

    def __init__(self, manager: AsyncKernelManager) -> None:
        self.manager = manager
        self.client = manager.client()

    @property
    def provisioner(self) -> ForkingProvisioner:
        assert isinstance(self.manager.provisioner, ForkingProvisioner)
        return self.manager.provisioner

    async def run(self, code: str) -> dict[str, Any]:
        """Execute ``code``; return its stdout and the reply's content."""
        stdout: list[str] = []

        def output(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                stdout.append(msg["content"]["text"])

        reply = await self.client.execute_interactive(
            code, timeout=WAIT, output_hook=output
        )
        return {"stdout": "".join(stdout), "reply": reply["content"]}

    async def value(self, expression: str) -> Any:
        result = await self.run(f"import json as _j; print(_j.dumps({expression}))")
        assert result["reply"]["status"] == "ok", result
        return json.loads(result["stdout"])


@pytest_asyncio.fixture
async def start_kernel(jupyter_path: Path) -> AsyncIterator[StartKernel]:
    kernels: list[Kernel] = []

    async def start(name: str = "forked") -> Kernel:
        manager = AsyncKernelManager(kernel_name=name)
        async with asyncio.timeout(WAIT):
            await manager.start_kernel()
            kernel = Kernel(manager)
            kernels.append(kernel)
            kernel.client.start_channels()
            await kernel.client.wait_for_ready(timeout=WAIT)
        return kernel

    yield start
    for kernel in kernels:
        kernel.client.stop_channels()
        if await kernel.manager.is_alive():
            await asyncio.wait_for(kernel.manager.shutdown_kernel(now=True), WAIT)
        kernel.manager.context.destroy(linger=0)


@pytest.mark.asyncio
async def test_a_kernel_is_a_fork_of_the_template(start_kernel: StartKernel) -> None:
    kernel = await start_kernel()
    template = provisioner.template_for(sys.executable, "import json, decimal")
    assert template.process is not None
    assert kernel.provisioner.fallback_reason is None
    parent = await kernel.value("__import__('os').getppid()")
    assert parent == template.process.pid
    assert await kernel.value("1 + 1") == 2
    # The warm-up's imports are there, its names are not.
    assert await kernel.value("'decimal' in __import__('sys').modules") is True
    assert await kernel.value("'decimal' in dir()") is False


@pytest.mark.asyncio
async def test_a_forked_kernel_listens_once_start_kernel_returns(
    jupyter_path: Path,
) -> None:
    # A client connecting before the kernel has bound its ports waits out
    # ZMQ's reconnect interval (100 ms): start_kernel waits for the bind.
    manager = AsyncKernelManager(kernel_name="forked")
    try:
        async with asyncio.timeout(WAIT):
            await manager.start_kernel()
        assert isinstance(manager.provisioner, ForkingProvisioner)
        assert manager.provisioner.fallback_reason is None
        ports = [
            manager.shell_port,
            manager.iopub_port,
            manager.stdin_port,
            manager.control_port,
            manager.hb_port,
        ]
        for port in ports:
            with socket.create_connection((manager.ip, port), timeout=5):
                pass  # refused (ConnectionRefusedError) if not yet bound
    finally:
        if await manager.is_alive():
            await asyncio.wait_for(manager.shutdown_kernel(now=True), WAIT)
        manager.context.destroy(linger=0)


def forked(kernel: Kernel) -> provisioner.ForkedProcess:
    process: object = kernel.provisioner.process
    assert isinstance(process, provisioner.ForkedProcess)
    return process


def children_of(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid``."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            children.append(int(entry.name))
    return children


@pytest.mark.asyncio
async def test_kernels_come_from_a_standby_and_a_dead_one_is_replaced(
    start_kernel: StartKernel,
) -> None:
    first = await start_kernel()
    assert forked(first).from_standby
    template = provisioner.template_for(sys.executable, "import json, decimal")
    assert template.process is not None
    kernels = {first.provisioner.pid}
    standby = await next_standby(template.process.pid, kernels)
    os.kill(standby, signal.SIGKILL)
    replacement = await next_standby(template.process.pid, kernels | {standby})

    second = await start_kernel()
    assert forked(second).from_standby
    assert second.provisioner.pid == replacement
    assert await second.value("1 + 1") == 2
    kernels.add(second.provisioner.pid)
    await next_standby(template.process.pid, kernels)
    third = await start_kernel()
    assert forked(third).from_standby
    assert await third.value("'json' in __import__('sys').modules") is True
    pids = {await k.value("__import__('os').getpid()") for k in (first, second, third)}
    assert len(pids) == 3


async def next_standby(template_pid: int, others: set[int | None]) -> int:
    """Wait for the template's standby (a child not in ``others``); its pid."""
    async with asyncio.timeout(WAIT):
        while not (standbys := set(children_of(template_pid)) - others):
            await asyncio.sleep(0.05)
    assert len(standbys) == 1, standbys
    return standbys.pop()


@pytest.mark.asyncio
async def test_kernels_share_nothing_but_imports(start_kernel: StartKernel) -> None:
    first = await start_kernel()
    await first.run("secret = 42\nimport decimal\ndecimal.Decimal = None")
    assert await first.value("secret") == 42
    assert await first.value("decimal.Decimal is None") is True

    second = await start_kernel()
    assert await second.value("'secret' in dir()") is False
    assert await second.value("__import__('decimal').Decimal is None") is False
    assert await second.value("__import__('os').getpid()") != await first.value(
        "__import__('os').getpid()"
    )


@pytest.mark.asyncio
async def test_random_state_differs_between_kernels(
    start_kernel: StartKernel, jupyter_path: Path
) -> None:
    pytest.importorskip("numpy")
    write_spec(jupyter_path, "numpy", warmup="import random, numpy")
    draw = "[__import__('random').random(), float(__import__('numpy').random.random())]"
    first = await (await start_kernel("numpy")).value(draw)
    second = await (await start_kernel("numpy")).value(draw)
    assert first[0] != second[0]
    assert first[1] != second[1]


@pytest.mark.asyncio
async def test_interrupt_and_kill_work_as_for_a_plain_kernel(
    start_kernel: StartKernel,
) -> None:
    kernel = await start_kernel()
    msg_id = kernel.client.execute("import time\nprint('sleeping')\ntime.sleep(60)")
    async with asyncio.timeout(WAIT):
        # Interrupt once the cell's own code runs (its first output): a
        # signal that lands between execute_input and the cell's code can
        # be caught and dropped by ipykernel, for a plain kernel as well.
        while True:
            msg = await kernel.client.get_iopub_msg(timeout=WAIT)
            if msg["msg_type"] == "stream" and "sleeping" in msg["content"]["text"]:
                break
        await kernel.manager.interrupt_kernel()
        while True:
            reply = await kernel.client.get_shell_msg(timeout=WAIT)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert await kernel.manager.is_alive()

    process = kernel.provisioner.process
    assert process is not None
    await kernel.provisioner.kill()
    async with asyncio.timeout(WAIT):
        status = await kernel.provisioner.wait()
    assert status == -signal.SIGKILL
    assert not await kernel.manager.is_alive()


@pytest.mark.asyncio
async def test_a_dead_template_is_restarted(start_kernel: StartKernel) -> None:
    kernel = await start_kernel()
    template = provisioner.template_for(sys.executable, "import json, decimal")
    assert template.process is not None
    os.kill(template.process.pid, signal.SIGKILL)
    # Its kernel sees its parent change and stops (ipykernel's own poller).
    async with asyncio.timeout(WAIT):
        status = await kernel.provisioner.wait()
    assert status is not None

    again = await start_kernel()
    assert again.provisioner.fallback_reason is None
    assert template.starts == 2
    assert await again.value("1 + 1") == 2


@pytest.mark.asyncio
async def test_a_stopped_template_leaves_nothing_in_tmp_and_starts_again(
    start_kernel: StartKernel,
) -> None:
    """``stop()`` (SIGTERM) removes the socket and its folder; a start remakes them."""
    await start_kernel()
    template = provisioner.template_for(sys.executable, "import json, decimal")
    assert os.path.exists(template.socket_path)  # noqa: ASYNC240 - one stat
    await asyncio.to_thread(template.stop)
    assert template.process is not None
    assert template.process.returncode == 0  # left through its own cleanup
    assert not os.path.exists(template.folder)  # noqa: ASYNC240 - one stat

    again = await start_kernel()
    assert again.provisioner.fallback_reason is None
    assert os.path.exists(template.socket_path)  # noqa: ASYNC240 - one stat
    assert await again.value("1 + 1") == 2


@pytest.mark.asyncio
async def test_a_warmup_that_starts_a_thread_falls_back_to_plain_starts(
    start_kernel: StartKernel, jupyter_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    warmup = (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(600,), daemon=True,"
        " name='poller').start()"
    )
    write_spec(jupyter_path, "threaded", warmup=warmup)
    kernel = await start_kernel("threaded")
    reason = kernel.provisioner.fallback_reason
    assert reason is not None
    assert "1 thread(s) running: poller" in reason
    assert "started without forking" in caplog.text
    assert await kernel.value("1 + 1") == 2


@pytest.mark.asyncio
async def test_a_command_that_is_not_ipykernel_starts_the_plain_way(
    start_kernel: StartKernel, jupyter_path: Path
) -> None:
    # -I: isolated mode, which a fork of the template could not honour.
    argv = [sys.executable, "-I", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    write_spec(jupyter_path, "other", argv=argv)
    kernel = await start_kernel("other")
    assert kernel.provisioner.fallback_reason is not None
    assert "not an ipykernel command" in kernel.provisioner.fallback_reason
    assert await kernel.value("1 + 1") == 2


@pytest.mark.asyncio
async def test_a_failing_warmup_falls_back_with_its_error(
    start_kernel: StartKernel, jupyter_path: Path
) -> None:
    write_spec(jupyter_path, "broken", warmup="raise RuntimeError('no such stack')")
    kernel = await start_kernel("broken")
    reason = kernel.provisioner.fallback_reason
    assert reason is not None
    assert "the warm-up failed: RuntimeError('no such stack')" in reason
    assert await kernel.value("1 + 1") == 2


def _answer_forks_with(
    folder: Path, lines: bytes
) -> tuple[provisioner._Template, threading.Thread]:
    """Stand in for a template that answers one fork request with ``lines``.

    The order of a kernel's ``listening`` line and the template's ``pid``
    line is a race a real template almost never loses: a stand-in makes
    each order happen.
    """
    template = provisioner._Template(sys.executable, "")
    shutil.rmtree(template.folder)
    template.socket_path = str(folder / "t.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(template.socket_path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.makefile("rb").readline()
        conn.sendall(lines)
        conn.recv(1)  # until the test closes its end
        conn.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return template, thread


REQUEST = {"argv": [], "env": {}, "cwd": "/"}


def test_fork_reads_the_listening_line_before_or_after_the_pid(tmp_path: Path) -> None:
    lines = (
        b'{"listening":7}\n'
        b'{"pid":7,"reports_listening":true}\n'
        b'{"exited":7,"status":3}\n'
    )
    template, thread = _answer_forks_with(tmp_path, lines)
    process = template.fork(REQUEST)  # type: ignore[arg-type]
    assert process.pid == 7
    assert process.poll() == 3  # the exit read past is kept
    thread.join(WAIT)


def test_fork_stops_waiting_for_a_kernel_that_exited_before_listening(
    tmp_path: Path,
) -> None:
    lines = b'{"pid":8,"reports_listening":true}\n{"exited":8,"status":-9}\n'
    template, thread = _answer_forks_with(tmp_path, lines)
    process = template.fork(REQUEST)  # type: ignore[arg-type]
    assert process.poll() == -9
    thread.join(WAIT)


def test_fork_does_not_wait_on_a_template_that_never_reports_listening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older Noteburst in the kernel's interpreter: no reports_listening.
    monkeypatch.setattr(provisioner, "LISTEN_SECONDS", 3600.0)
    template, thread = _answer_forks_with(tmp_path, b'{"pid":9}\n')
    forked: list[provisioner.ForkedProcess] = []
    waiter = threading.Thread(target=lambda: forked.append(template.fork(REQUEST)))  # type: ignore[arg-type]
    waiter.start()
    waiter.join(WAIT)
    assert forked, "fork() waited for a line an older template never sends"
    assert forked[0].pid == 9
    forked[0]._close()
    thread.join(WAIT)
