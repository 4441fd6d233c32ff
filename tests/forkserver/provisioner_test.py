"""Kernels forked from a template, through jupyter_client's own kernel manager.

Each test writes kernel specs naming the provisioner into a private
``JUPYTER_PATH`` and starts kernels with :class:`AsyncKernelManager`, as
jupyter_server does: the provisioner is found through its entry point.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
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
