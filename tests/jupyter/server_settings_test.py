"""The kernel manager Noteburst's Jupyter servers use, in process."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jupyter_client.manager
import pytest
import pytest_asyncio
from jupyter_events import EventLogger
from traitlets.config import Configurable

from noteburst.jupyter.server_settings import (
    IPYKERNEL_ARGUMENTS,
    LowLatencyKernelManager,
)

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
