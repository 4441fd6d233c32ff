"""Code loaded *by jupyter_server*, not by Noteburst: a faster kernel websocket.

tornado leaves Nagle's algorithm on for websocket connections and
jupyter_server never turns it off, so after the first iopub message of a
cell the rest wait for the client's delayed ACK (40 ms on Linux): even a
``1+1`` round trip pays it, many times the cell's own cost
(``jupyter-on-loopback.md``, G1; ``tests/jupyter/kernel_test.py`` checks it).
A client-side fix does not help behind JupyterHub's proxy, where the hop
that waits is tornado to node; the fix has to be in the server.

:class:`NoDelayConnection` is that fix.  :class:`~.local.LocalJupyterServer`
passes it on the command line; operators of a JupyterHub add the same
argument to their spawner, with Noteburst installed in the single-user
environment (or this file on its ``PYTHONPATH``)::

    c.Spawner.args = [
        "--ServerApp.kernel_websocket_connection_class="
        "noteburst.jupyter.server_settings.NoDelayConnection",
        "--ZMQChannelsWebsocketConnection.limit_rate=False",
        "--MappingKernelManager.kernel_manager_class="
        "noteburst.jupyter.server_settings.LowLatencyKernelManager",
    ]

The second argument matters as much: with the default IOPub rate limits the
server silently drops large outputs (G3).  The third starts kernels without
jupyter_client's 10 ms pause after each start (see
:class:`LowLatencyKernelManager`), and IPython kernels with
:data:`IPYKERNEL_ARGUMENTS`, two per-cell costs Noteburst does not need:

* History in memory, as nbclient's and papermill's kernels keep it
  (``--HistoryManager.hist_file=:memory:``): otherwise every cell's input
  is written to the history database on disk, a per-cell cost that weighs
  most on notebooks of many small cells.
* No ``time.sleep(0.0005)`` before each ``execute_reply``
  (``--Kernel._execute_sleep=0``, a configurable trait of ipykernel's
  ``Kernel``).  ipykernel sleeps there so that a client that stops at the
  reply has likely seen the cell's outputs; Noteburst ends a cell only when
  both the reply and the iopub ``idle`` (sent after the outputs) are in,
  so the sleep buys it nothing.  The sleep is at least 0.5 ms per cell,
  and a sleeping thread that has to get the interpreter lock back often
  waits longer.

:class:`~.local.LocalJupyterServer` uses the same class, so the embedded
kernels and a hub's labs are tuned alike.

Kernels may also talk to the server over Unix sockets instead of loopback
TCP (``--KernelManager.transport=ipc``, which :class:`~.local.LocalJupyterServer`
passes on Linux).  Not for speed: measured interleaved, a kernel's start and
its messages cost the same on both (the first, unpaired runs had suggested
5-10 % less CPU; bench/README.md, 2026-12-08).  For what TCP gets wrong
here: jupyter_client picks a kernel's five ports by binding and releasing
them, and the kernel binds them later, so on a busy host another process
can take one first ("Address already in use", the kernel dead before its
first reply); ipykernel also warns about unencrypted TCP.  On Linux,
:class:`LowLatencyKernelManager` names a kernel's sockets in the abstract
namespace (``@`` and the connection file's name, as
jupyter_client would name the files): no file is created, so none is left
behind by a server that was killed, and no socket path grows too long
(jupyter_client would put them beside the connection file, whose folder is
often too deep for a socket path's 107 bytes).  Like loopback ports, they
can be reached by any process on the host (in its network namespace);
messages are signed with the connection file's key either way.

The module is also a tiny server extension, the *lifeline*, which
:class:`~.local.LocalJupyterServer` enables: the server stops itself (and so
its kernels) when the process that started it is gone, even if that process
was SIGKILLed and never ran its exit handlers.  It does nothing unless the
``NOTEBURST_JUPYTER_PARENT_PID`` environment variable is set.

This module imports jupyter_server, so nothing else in
:mod:`noteburst.jupyter` imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import weakref
from typing import Any, Final

from jupyter_client.manager import AsyncKernelManager, _get_future
from jupyter_server.services.kernels.connection.channels import (
    ZMQChannelsWebsocketConnection,
)
from jupyter_server.services.kernels.kernelmanager import (
    ServerKernelManager,
    emit_kernel_action_event,
)
from tornado.ioloop import PeriodicCallback
from traitlets import default
from zmq.eventloop.zmqstream import ZMQStream

__all__ = [
    "IPYKERNEL_ARGUMENTS",
    "PARENT_PID_ENV",
    "LowLatencyKernelManager",
    "NoDelayConnection",
    "left_starting",
]

PARENT_PID_ENV: Final = "NOTEBURST_JUPYTER_PARENT_PID"
"""Environment variable with the pid the lifeline watches."""

_LIFELINE_INTERVAL_MS: Final = 1000

RENUDGE_SECONDS: Final = 0.5
"""How often jupyter_server's nudge asks a silent kernel again."""

IPYKERNEL_ARGUMENTS: Final = (
    "--HistoryManager.hist_file=:memory:",
    "--Kernel._execute_sleep=0",
)
"""What :class:`LowLatencyKernelManager` adds to an ipykernel command line.

The first is what nbclient adds to the IPython kernels it starts.
"""


class NoDelayConnection(ZMQChannelsWebsocketConnection):
    """A kernel websocket with ``TCP_NODELAY``, opened with one ``kernel_info``.

    jupyter_server opens a websocket to a kernel in two steps, each with its
    own ``kernel_info`` round trip: :meth:`prepare` asks the kernel for its
    protocol version (once per kernel) on a socket of its own, then
    :meth:`nudge` opens two more sockets and asks twice again, to be sure
    the client's iopub subscription is in place (ZMQ drops what a kernel
    publishes before a subscriber is known to it).  On the first
    connection to a kernel, this class subscribes the connection's iopub
    *before* that first request, so its reply and the iopub message it
    causes prove both: the nudge is then not needed.  Every kernel
    Noteburst starts is opened this way once, on its start's path
    (``bench/README.md``, 2026-12-08: the first ``kernel_info`` after the
    open 15 ms, 5 ms without the nudge).  Other connections (a second one
    to the same kernel, a reconnect, a kernel whose first reply was not
    seen on iopub) are nudged as jupyter_server nudges them.
    """

    _early_iopub: ZMQStream | None = None
    """The iopub stream subscribed before the first ``kernel_info``, if any."""
    _early_iopub_heard = False
    _unopened_timer: asyncio.TimerHandle | None = None

    def request_kernel_info(self) -> Any:
        """Subscribe iopub first if this is the kernel's first ``kernel_info``.

        jupyter_server sends a request only if no other connection has yet
        (it keeps the answer on the kernel's manager).
        """
        first = not hasattr(self.kernel_manager, "_kernel_info_future")
        if first and not self.channels:
            self.create_stream()
            self._early_iopub = iopub = self.channels["iopub"]

            def heard(_msg: Any) -> None:
                self._early_iopub_heard = True
                iopub.stop_on_recv()

            iopub.on_recv(heard)
            # If the websocket is never opened (its handshake refused after
            # this), nothing else closes these streams.
            self._unopened_timer = asyncio.get_running_loop().call_later(
                self.kernel_info_timeout, self._close_unopened
            )
        return super().request_kernel_info()  # type: ignore[no-untyped-call]

    def _close_unopened(self) -> None:
        self._unopened_timer = None
        for stream in self.channels.values():
            if not stream.closed():
                stream.close()
        self.channels = {}
        self._early_iopub = None

    def create_stream(self) -> None:
        """Create the streams, unless :meth:`request_kernel_info` has already."""
        if self._early_iopub is not None and self.channels.get("iopub") is (
            self._early_iopub
        ):
            return
        super().create_stream()  # type: ignore[no-untyped-call] # untyped upstream

    def connect(self) -> Any:
        """Turn Nagle's algorithm off, then connect as usual."""
        if self._unopened_timer is not None:
            self._unopened_timer.cancel()
            self._unopened_timer = None
        early = dict(self.channels) if self._early_iopub is not None else {}
        self.websocket_handler.set_nodelay(True)
        connected = super().connect()
        # A reconnect takes over the streams jupyter_server buffered for it.
        for name, stream in early.items():
            if self.channels.get(name) is not stream and not stream.closed():
                stream.close()
        return connected

    def nudge(self) -> asyncio.Future[None]:
        """Skip the nudge if the first ``kernel_info`` was heard on our iopub.

        Like jupyter_server's nudge, wait until its activity watcher has
        seen the kernel leave ``starting`` (:meth:`_activity_seen`).
        """
        early = self._early_iopub
        if early is None or self.channels.get("iopub") is not early:
            return super().nudge()
        if not self._early_iopub_heard:
            self.channels["iopub"].stop_on_recv()
            return super().nudge()
        return asyncio.ensure_future(self._activity_seen())

    async def _activity_seen(self) -> None:
        """Wait until the server saw the kernel leave ``starting``.

        Its activity watcher may have missed the first request's status
        (its own subscription raced the kernel's start, as ours could):
        then ask again, every :data:`RENUDGE_SECONDS` as the nudge does,
        on a shell socket of its own (the replies are not the client's).
        Gives up after ``kernel_info_timeout``, as the nudge does.
        """
        if getattr(self.kernel_manager, "execution_state", None) != "starting":
            return
        shell = self.kernel_manager.connect_shell()
        try:
            async with asyncio.timeout(self.kernel_info_timeout):
                while True:
                    self.session.send(shell, "kernel_info_request")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RENUDGE_SECONDS):
                            await left_starting(self.kernel_manager)
                            return
        except TimeoutError:
            pass
        finally:
            shell.close()


async def left_starting(kernel_manager: Any) -> None:
    """Return once ``kernel_manager.execution_state`` is not ``starting``.

    jupyter_server's activity watcher sets it from the kernel's iopub
    status messages; its nudge waits for that too (polling).  Bound it with
    `asyncio.timeout`.
    """
    if getattr(kernel_manager, "execution_state", None) != "starting":
        return
    changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_change(change: Any) -> None:
        if change["new"] != "starting" and not changed.done():
            changed.set_result(None)

    kernel_manager.observe(on_change, "execution_state")
    try:
        await changed
    finally:
        kernel_manager.unobserve(on_change, "execution_state")


_LOGGERS_WITH_SCHEMAS: weakref.WeakSet[Any] = weakref.WeakSet()
"""Server event loggers that have the kernel event schemas registered."""


class LowLatencyKernelManager(ServerKernelManager):
    """Start IPython kernels with :data:`IPYKERNEL_ARGUMENTS`, without a pause.

    Only commands that run ipykernel get the arguments: another kernel
    would refuse options it does not know.

    jupyter_client's ``in_pending_state`` (the decorator of
    ``start_kernel``) sleeps 10 ms after a start "to ensure tests can
    capture the state before done": every kernel start paid it, a sixth of
    a forked kernel's whole start (bench/kernel_start.py).
    :meth:`start_kernel` does what that decorator does, but the sleep.
    """

    @default("event_logger")
    def _event_logger_registered_once(self) -> Any:
        """Return the server's event logger, its schemas registered once.

        jupyter_server's own default registers the kernel event schemas
        with the server's logger again for every kernel, and each try
        reads and validates the schema files (YAML) before finding them
        registered: milliseconds of every kernel start.
        """
        server = getattr(self.parent, "parent", None)
        logger = getattr(server, "event_logger", None)
        if logger is not None and logger in _LOGGERS_WITH_SCHEMAS:
            return logger
        logger = ServerKernelManager._default_event_logger(self)
        if logger is getattr(server, "event_logger", None):
            _LOGGERS_WITH_SCHEMAS.add(logger)
        return logger

    @emit_kernel_action_event(success_msg="Kernel {kernel_id} was started.")
    async def start_kernel(self, *args: Any, **kwargs: Any) -> None:
        """Start the kernel; resolve :attr:`ready` with the outcome."""
        start = getattr(AsyncKernelManager.start_kernel, "__wrapped__", None)
        if start is None:  # jupyter_client changed: its own way, pause included
            # (undecorated: this method's decorator emits the event)
            plain_start = ServerKernelManager.start_kernel.__wrapped__
            await plain_start(self, *args, **kwargs)
            return
        if self._attempted_start or not self._ready:
            self._ready = _get_future()
        try:
            await start(self, *args, **kwargs)
        except Exception as exc:
            self._ready.set_exception(exc)
            self.log.exception(exc)
            raise
        if self.owns_kernel:
            self._ready.set_result(None)

    def _ip_default(self) -> str:
        """Return the kernel's address: for ipc on Linux, an abstract name.

        jupyter_client's default is the connection file's path (``-ipc``
        added), each socket a file beside it; here, its name in the
        abstract namespace instead (see the module docstring).
        """
        default: str = super()._ip_default()
        if self.transport != "ipc" or sys.platform != "linux":
            return default
        return "@" + os.path.basename(default)

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        """Return the kernelspec's command, plus the arguments for ipykernel."""
        command: list[str] = super().format_kernel_cmd(extra_arguments)
        if any("ipykernel" in part for part in command):
            command.extend(IPYKERNEL_ARGUMENTS)
        return command


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Declare this module as a jupyter_server extension (the lifeline)."""
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Stop ``serverapp`` once its parent process is gone.

    When the parent dies the server is re-parented, so ``os.getppid()``
    changes; checking it every second is what ipykernel does for kernels.
    """
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected:
        return
    parent = int(expected)

    def check_parent() -> None:
        if os.getppid() != parent:
            serverapp.log.critical("Parent process %s is gone, stopping", parent)
            lifeline.stop()
            serverapp.stop()

    lifeline = PeriodicCallback(check_parent, _LIFELINE_INTERVAL_MS)
    lifeline.start()
