"""A kernel provisioner that forks kernels from a preloaded template.

:class:`ForkingProvisioner` is jupyter_client's :class:`LocalProvisioner`
with one change: ``launch_kernel`` asks a template process (see
:mod:`.template`) to fork the kernel instead of starting a new
interpreter.  Everything else (the connection file and ports, the process
group, signals, the restarter's polling) is the local provisioner's, run on
a :class:`ForkedProcess` that stands in for its ``Popen``.

A kernel spec selects it in its metadata::

    "metadata": {"kernel_provisioner": {
        "provisioner_name": "noteburst-fork-provisioner",
        "config": {"warmup": "import numpy, pandas"}}}

One template runs per (interpreter, warm-up code) in this server process,
started on the first kernel that needs it and again if it has died.  A
kernel is started the plain way, with a log line that says why, when its
command is not ``python -m ipykernel_launcher ...``, when the launch asks
for its own stdio, when the template cannot start (Noteburst not installed
in that interpreter, a failing warm-up), or when the warm-up leaves
threads or a ZMQ context behind (a fork would copy them half-alive).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from traitlets import Unicode

from . import wire

__all__ = [
    "ForkedProcess",
    "ForkingProvisioner",
    "TemplateUnavailableError",
    "stop_templates",
]

TEMPLATE_START_SECONDS: Final = 120.0
"""How long a template may take to import ipykernel and run the warm-up."""
FORK_SECONDS: Final = 10.0
"""How long a fork request may take to be answered."""
LISTEN_SECONDS: Final = 20.0
"""How long to wait for a forked kernel to bind its ports before going on."""
LAUNCHER_MODULES: Final = frozenset({"ipykernel_launcher", "ipykernel"})
"""``python -m X`` commands that start an IPython kernel."""


class TemplateUnavailableError(Exception):
    """No template can fork this kernel; the message says why."""


class ForkedProcess:
    """A forked kernel, with the part of ``Popen``'s interface provisioners use.

    The template is the kernel's parent, so only it can reap the kernel:
    it sends the exit status on the kernel's connection, which
    :meth:`poll` reads without blocking.  If the template dies first, the
    kernel is reparented and its status cannot be known: once the process
    is gone, :attr:`returncode` is then -9 (as if killed), so that the
    restarter treats it as a kernel that died.
    """

    stdin = None
    stdout = None
    stderr = None

    def __init__(self, pid: int, connection: socket.socket, pending: bytes) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.from_standby = False
        """Whether the template's standby child became this kernel."""
        self._connection: socket.socket | None = connection
        self._buffer = pending
        connection.setblocking(False)

    def poll(self) -> int | None:
        """Return the exit status if the kernel has exited, else None."""
        if self.returncode is not None:
            return self.returncode
        template_gone = self._read()
        self._parse()
        if self.returncode is None and template_gone and not _alive(self.pid):
            self.returncode = -signal.SIGKILL
        if self.returncode is not None:
            self._close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the kernel has exited; return its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(["forked kernel"], timeout or 0)
            if self._connection is not None:
                select.select([self._connection], [], [], 0.1)
            else:
                time.sleep(0.1)
        return code

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the kernel, unless it has been reaped."""
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def _read(self) -> bool:
        """Read what the template sent; whether it closed the connection."""
        if self._connection is None:
            return True
        while True:
            try:
                data = self._connection.recv(65536)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not data:
                return True
            self._buffer += data

    def _parse(self) -> None:
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            with contextlib.suppress(ValueError):
                message = wire.decode(line)
                if message.get("exited") == self.pid:
                    self.returncode = int(message["status"])

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _Lines:
    """The messages of a template connection, read one line at a time.

    What :meth:`read_until` reads past is kept: an ``exited`` line read
    while waiting for another goes on to :class:`ForkedProcess`.
    """

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = b""
        self.read: list[dict[str, Any]] = []

    def read_until(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Return the first message ``wanted`` accepts, reading as needed.

        Raises TemplateUnavailableError if the connection ends first, and
        OSError (a timeout) as the socket's own timeout says.
        """
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                with contextlib.suppress(ValueError):
                    message = wire.decode(line)
                    self.read.append(message)
                    if wanted(message):
                        return message
            data = self.connection.recv(65536)
            if not data:
                msg = "the template closed the connection"
                raise TemplateUnavailableError(msg)
            self.buffer += data

    def seen(self, kind: str, pid: int) -> bool:
        """Whether a ``kind`` message about ``pid`` has been read."""
        return any(message.get(kind) == pid for message in self.read)

    def unread(self) -> bytes:
        """Return the exits read so far and the bytes not yet parsed."""
        exits = [message for message in self.read if "exited" in message]
        return b"".join(wire.encode(message) for message in exits) + self.buffer


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Template:
    """One template process, for one interpreter and warm-up code."""

    def __init__(self, python: str, warmup: str) -> None:
        self.python = python
        self.warmup = warmup
        self.process: subprocess.Popen[bytes] | None = None
        self.unusable: str | None = None
        """Why this template cannot fork (then it is not started again)."""
        self.folder = tempfile.mkdtemp(prefix="noteburst-fork-")
        self.socket_path = str(Path(self.folder) / "template.sock")
        self.starts = 0
        self.lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def ensure_running(self, env: dict[str, str]) -> None:
        """Start the template unless it runs; raise TemplateUnavailableError."""
        async with self.lock:
            if self.unusable is not None:
                raise TemplateUnavailableError(self.unusable)
            if self.running:
                return
            await asyncio.to_thread(self._start, env)

    def _start(self, env: dict[str, str]) -> None:
        # A template removes its folder when it leaves: a restart makes it again.
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        status_read, status_write = os.pipe()
        command = [
            self.python,
            "-m",
            "noteburst.forkserver.template",
            "--socket",
            self.socket_path,
            "--status-fd",
            str(status_write),
            "--parent-pid",
            str(os.getpid()),
            "--warmup",
            self.warmup,
        ]
        try:
            self.process = subprocess.Popen(  # noqa: S603 - the kernel spec's interpreter
                command,
                pass_fds=(status_write,),
                env=env,
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(status_read)
            self.unusable = f"the template could not be started: {exc}"
            raise TemplateUnavailableError(self.unusable) from exc
        finally:
            os.close(status_write)
        self.starts += 1
        with os.fdopen(status_read, "rb") as status:
            ready, _, _ = select.select([status], [], [], TEMPLATE_START_SECONDS)
            line = status.readline(wire.MAX_LINE) if ready else b""
        message: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            message = wire.decode(line)
        if message == wire.READY:
            return
        self.stop()
        if "unsafe" in message:
            self.unusable = f"forking is unsafe: {message['unsafe']}"
        elif not ready:
            self.unusable = (
                f"the template did not start within {TEMPLATE_START_SECONDS:.0f} s"
            )
        else:
            self.unusable = (
                f"the template exited before it was ready (is noteburst "
                f"installed for {self.python}?)"
            )
        raise TemplateUnavailableError(self.unusable)

    def fork(self, request: wire.ForkRequest) -> ForkedProcess:
        """Ask the template for a kernel (blocking; run it off the loop).

        Returns once the kernel has bound its ports (or has exited, or
        :data:`LISTEN_SECONDS` have passed): see ``template._launch`` for
        what connecting any sooner costs a client.
        """
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lines = _Lines(connection)
        try:
            connection.settimeout(FORK_SECONDS)
            connection.connect(self.socket_path)
            connection.sendall(wire.encode(request))
            reply = lines.read_until(
                lambda message: "pid" in message or "error" in message
            )
        except (OSError, TemplateUnavailableError) as exc:
            connection.close()
            msg = f"the template did not fork the kernel: {exc}"
            raise TemplateUnavailableError(msg) from exc
        if "pid" not in reply:
            connection.close()
            msg = f"the template refused: {reply.get('error', reply)}"
            raise TemplateUnavailableError(msg)
        pid = int(reply["pid"])
        if reply.get("reports_listening") and not lines.seen("listening", pid):
            with contextlib.suppress(OSError, TemplateUnavailableError):
                connection.settimeout(LISTEN_SECONDS)
                lines.read_until(
                    lambda message: (
                        pid in (message.get("listening"), message.get("exited"))
                    )
                )
        process = ForkedProcess(pid, connection, lines.unread())
        process.from_standby = bool(reply.get("standby"))
        return process

    def stop(self) -> None:
        """Stop the template (its kernels see their parent change and stop)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


_templates: dict[tuple[str, str], _Template] = {}


def template_for(python: str, warmup: str) -> _Template:
    """Return this process's template for ``python`` and ``warmup``."""
    key = (python, warmup)
    template = _templates.get(key)
    if template is None:
        template = _templates[key] = _Template(python, warmup)
    return template


@atexit.register
def stop_templates() -> None:
    """Stop every template of this process."""
    for template in list(_templates.values()):
        template.stop()
    _templates.clear()


def _unforkable(cmd: list[str], kwargs: dict[str, Any]) -> str | None:
    """Return why this launch cannot be a fork, or None."""
    if cmd[1:2] != ["-m"] or cmd[2:3] == [] or cmd[2] not in LAUNCHER_MODULES:
        return f"not an ipykernel command: {' '.join(cmd[:3])}"
    for stream in ("stdin", "stdout", "stderr"):
        if kwargs.get(stream) is not None:
            return f"the launch asks for its own {stream}"
    return None


class ForkingProvisioner(LocalProvisioner):
    """Provision kernels as forks of a template; see the module docstring."""

    warmup = Unicode(
        "",
        config=True,
        help="Code the template runs once before forking kernels (imports).",
    )

    fallback_reason: str | None = None
    """Why this provisioner's last kernel was started the plain way."""

    async def launch_kernel(
        self, cmd: list[str], **kwargs: Any
    ) -> KernelConnectionInfo:
        """Fork the kernel from the template, or start it the plain way."""
        env = dict(kwargs.get("env") or os.environ)
        cwd = str(kwargs.get("cwd") or Path.cwd())
        reason = _unforkable(cmd, kwargs)
        if reason is None:
            template = template_for(cmd[0], self.warmup)
            try:
                await template.ensure_running(env)
                request: wire.ForkRequest = {"argv": cmd[3:], "env": env, "cwd": cwd}
                process = await asyncio.to_thread(template.fork, request)
            except TemplateUnavailableError as exc:
                reason = str(exc)
            else:
                self.fallback_reason = None
                self.log.info(
                    "Kernel %s forked from template %s as pid %s%s",
                    self.kernel_id,
                    template.process.pid if template.process else None,
                    process.pid,
                    " (its standby)" if process.from_standby else "",
                )
                # Popen's interface, as far as LocalProvisioner uses it.
                self.process = process  # type: ignore[assignment]
                self.pid = process.pid
                self.pgid = process.pid  # the child made its own session
                self.cwd = cwd
                return self.connection_info
        self.fallback_reason = reason
        self.log.warning(
            "Kernel %s started without forking: %s", self.kernel_id, reason
        )
        return await super().launch_kernel(cmd, **kwargs)
