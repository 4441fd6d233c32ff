"""Run a private jupyter_server on loopback: development, tests, small deployments.

:class:`LocalJupyterServer` starts ``python -m jupyter_server`` as a child
process with the settings measured to matter (``jupyter-on-loopback.md``):

* bound to 127.0.0.1 on a free port, with ``port_retries=0`` so a port taken
  in the meantime fails the start instead of silently moving (G19; the start
  is then retried on another port);
* a random token passed in the environment (``JUPYTER_TOKEN``), never on the
  command line where ``ps`` shows it;
* ``--allow-root`` when running as root (G2), no browser, no terminals,
  extensions slimmed (a Python-literal dict, G15);
* IOPub rate limits off (G3), :class:`~.server_settings.NoDelayConnection`
  for the kernel websockets (G1) and
  :class:`~.server_settings.LowLatencyKernelManager` for the kernels (their
  IPython history in memory, as nbclient keeps it, and no sleep before each
  reply): the arguments a hub operator gives the spawner;
* with ``fork_kernels``, a ``python3`` kernelspec in its own data directory
  that names Noteburst's forking provisioner (:mod:`noteburst.forkserver`),
  with that warm-up code: kernels are forked from a preloaded template;
* on Linux, kernels on Unix sockets in the abstract namespace
  (``--KernelManager.transport=ipc``, see :mod:`.server_settings`): no
  kernel ports chosen, released, and possibly taken by another process
  before the kernel binds them, and no socket file to clean up;
* hermetic ``JUPYTER_CONFIG_DIR``, ``JUPYTER_DATA_DIR``,
  ``JUPYTER_RUNTIME_DIR`` and ``IPYTHONDIR`` under ``root_dir``.  Only the
  *user* directories move: kernelspecs installed in the environment
  (``sys.prefix/share/jupyter/kernels``, where ipykernel puts ``python3``)
  are still found.

The process runs in its own process group with its output in a log file
(no pipe to drain).  :meth:`LocalJupyterServer.stop` sends SIGTERM, which
makes jupyter_server shut its kernels down, and SIGKILLs the group only as a
last resort; a finalizer does the same at interpreter exit if ``stop`` was
never called.  Exit handlers do not run when this process is killed
(SIGKILL, or a SIGTERM nobody handles), so the server also carries a
lifeline (:mod:`.server_settings`): it stops itself within a second once
its parent is gone.  The object is not tied to an event loop: ``start`` and
``stop`` may run on different loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import httpx
from ipykernel.kernelspec import get_kernel_dict

from .exceptions import JupyterError, JupyterWebError, LabUnavailableError
from .rest import JupyterRestClient

__all__ = ["KERNEL_TRANSPORT", "LocalJupyterServer"]

_DISABLED_EXTENSIONS: Final = (
    "jupyterlab",
    "jupyter_lsp",
    "notebook",
    "notebook_shim",
    "nbclassic",
    "jupyter_server_terminals",
    "voila",
)
_SETTINGS_MODULE: Final = "noteburst.jupyter.server_settings"
_CONNECTION_CLASS: Final = f"{_SETTINGS_MODULE}.NoDelayConnection"
_KERNEL_MANAGER_CLASS: Final = f"{_SETTINGS_MODULE}.LowLatencyKernelManager"
_PARENT_PID_ENV: Final = "NOTEBURST_JUPYTER_PARENT_PID"
"""Same as ``server_settings.PARENT_PID_ENV`` (that module imports jupyter_server)."""
_PORT_ATTEMPTS: Final = 3
_POLL_INTERVAL: Final = 0.05
_LOG_TAIL: Final = 2000


KERNEL_TRANSPORT: Final = "ipc" if sys.platform == "linux" else "tcp"
"""How the server talks to its kernels: Unix sockets where they can be abstract."""

FORKED_KERNEL_NAME: Final = "python3"
FORK_PROVISIONER: Final = "noteburst-fork-provisioner"


def forked_kernel_spec(python: str, warmup: str) -> dict[str, Any]:
    """Return ipykernel's ``python3`` kernelspec, forked from a template."""
    spec: dict[str, Any] = get_kernel_dict()
    spec["argv"] = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec["metadata"] = {
        **spec.get("metadata", {}),
        "kernel_provisioner": {
            "provisioner_name": FORK_PROVISIONER,
            "config": {"warmup": warmup},
        },
    }
    return spec


class LocalJupyterServer:
    """A jupyter_server child process on 127.0.0.1.

    Parameters
    ----------
    root_dir
        Directory served (kernels start in it); created if missing.  The
        server's own config, data, runtime and IPython directories and its log
        file (``jupyter-server.log``) go in ``root_dir/.noteburst-jupyter``.
    start_timeout
        Seconds :meth:`start` may take until ``GET /api/status`` answers.
    python
        Interpreter that runs the server; it must be able to import
        ``jupyter_server`` and ``noteburst.jupyter.server_settings``.
    stop_timeout
        Seconds :meth:`stop` waits after SIGTERM before it SIGKILLs.
    extra_args
        More command-line options for jupyter_server.
    env
        Extra environment variables for the server (and its kernels).
    fork_kernels
        Warm-up code (``""`` for none) to fork ``python3`` kernels from a
        template that ran it (see :mod:`noteburst.forkserver`); None:
        kernels are started the plain way.
    """

    def __init__(
        self,
        *,
        root_dir: Path,
        start_timeout: float,
        python: str = sys.executable,
        stop_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        fork_kernels: str | None = None,
    ) -> None:
        self.root_dir = root_dir
        self.fork_kernels = fork_kernels
        self.start_timeout = start_timeout
        self.python = python
        self.stop_timeout = stop_timeout
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.state_dir = root_dir / ".noteburst-jupyter"
        self.log_path = self.state_dir / "jupyter-server.log"
        self._token = secrets.token_urlsafe(32)
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0
        self._finalizer: (
            weakref.finalize[[subprocess.Popen[bytes]], LocalJupyterServer] | None
        ) = None

    @property
    def url(self) -> str:
        """Base URL of the running server, with a trailing slash."""
        if self._port is None:
            raise JupyterError("the local Jupyter server is not running")
        return f"http://127.0.0.1:{self._port}/"

    @property
    def token(self) -> str:
        """The server's API token."""
        return self._token

    @property
    def pid(self) -> int | None:
        """Process id of the server, while it runs."""
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        """Start the server and wait until it answers ``GET /api/status``.

        Raises
        ------
        LabUnavailableError
            If the process exits early (the message ends with its log) or
            does not answer within ``start_timeout``.
        """
        if self._process is not None:
            raise JupyterError("the local Jupyter server is already started")
        deadline = time.monotonic() + self.start_timeout
        self._prepare_dirs()
        for attempt in range(_PORT_ATTEMPTS):
            try:
                self._launch(_free_port())
                await self._wait_ready(deadline)
            except _PortTakenError:
                await self.stop()
                if attempt == _PORT_ATTEMPTS - 1:
                    raise LabUnavailableError(
                        "Jupyter server could not bind a free port"
                    ) from None
            except BaseException:
                await self.stop()
                raise
            else:
                return

    async def stop(self) -> None:
        """Stop the server: SIGTERM, wait, SIGKILL as a last resort; idempotent.

        If this is cancelled before the process is gone, the interpreter-exit
        safeguard stays armed, and calling it again resumes the stop.
        """
        process = self._process
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, self.stop_timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                await asyncio.to_thread(process.wait, self.stop_timeout)
        self._forget()

    def log_tail(self, size: int = _LOG_TAIL) -> str:
        """Return the end of the server's log (stdout and stderr)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - size))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    # -- internals -----------------------------------------------------------

    def _prepare_dirs(self) -> None:
        for name in ("config", "data", "runtime", "ipython"):
            (self.state_dir / name).mkdir(parents=True, exist_ok=True)
        spec = self.state_dir / "data" / "kernels" / FORKED_KERNEL_NAME
        if self.fork_kernels is None:
            shutil.rmtree(spec, ignore_errors=True)
        else:
            # In the server's JUPYTER_DATA_DIR, which comes before the
            # environment's, so this python3 replaces ipykernel's.
            spec.mkdir(parents=True, exist_ok=True)
            (spec / "kernel.json").write_text(
                json.dumps(forked_kernel_spec(self.python, self.fork_kernels))
            )

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "JUPYTER_TOKEN": self._token,
                "JUPYTER_CONFIG_DIR": str(self.state_dir / "config"),
                "JUPYTER_DATA_DIR": str(self.state_dir / "data"),
                "JUPYTER_RUNTIME_DIR": str(self.state_dir / "runtime"),
                "IPYTHONDIR": str(self.state_dir / "ipython"),
                "JUPYTER_PLATFORM_DIRS": "1",
                _PARENT_PID_ENV: str(os.getpid()),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.fork_kernels is not None:
            # In a virtualenv, jupyter_core looks in the environment's data
            # directory (ipykernel's python3) before the user's, where the
            # forked python3 is: the hermetic user directories come first.
            env["JUPYTER_PREFER_ENV_PATH"] = "0"
        env.update(self.extra_env)
        return env

    def _command(self, port: int) -> list[str]:
        # A Python literal, not JSON (G15); the last entry is the lifeline.
        switches = [f"{name!r}: False" for name in _DISABLED_EXTENSIONS]
        switches.append(f"{_SETTINGS_MODULE!r}: True")
        extensions = "{" + ", ".join(switches) + "}"
        command = [
            self.python,
            "-m",
            "jupyter_server",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.terminals_enabled=False",
            f"--ServerApp.jpserver_extensions={extensions}",
            "--ZMQChannelsWebsocketConnection.limit_rate=False",
            f"--ServerApp.kernel_websocket_connection_class={_CONNECTION_CLASS}",
            f"--MappingKernelManager.kernel_manager_class={_KERNEL_MANAGER_CLASS}",
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        command.append(f"--KernelManager.transport={KERNEL_TRANSPORT}")
        return command + self.extra_args

    def _launch(self, port: int) -> None:
        self._log = self.log_path.open("ab")
        self._log_start = self._log.seek(0, os.SEEK_END)
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            self._command(port),
            cwd=self.root_dir,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._port = port
        self._finalizer = weakref.finalize(self, _emergency_stop, self._process)

    async def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        process = self._process
        async with httpx.AsyncClient(trust_env=False) as http:
            rest = JupyterRestClient(
                http=http, base_url=self.url, token=self._token, timeout=2
            )
            answer = ""
            while True:
                if process.poll() is not None:
                    tail = self.log_tail()
                    if _port_taken(self._log_since_launch()):
                        raise _PortTakenError
                    raise LabUnavailableError(
                        f"Jupyter server exited with status {process.returncode} "
                        f"while starting; log tail:\n{tail}"
                    )
                try:
                    await rest.status()
                except LabUnavailableError:
                    pass  # not listening yet
                except JupyterWebError as exc:
                    # Another server took the port between our choosing it
                    # and the server binding it (it answered 404 to
                    # /api/status in CI): ours will fail to bind and exit,
                    # and the start is retried on another port.
                    answer = f"; the port answered: {exc}"
                else:
                    return
                if time.monotonic() >= deadline:
                    raise LabUnavailableError(
                        f"Jupyter server not ready after {self.start_timeout} s"
                        f"{answer}; log tail:\n{self.log_tail()}"
                    )
                await asyncio.sleep(_POLL_INTERVAL)

    def _log_since_launch(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _forget(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._process = None
        self._port = None


class _PortTakenError(Exception):
    """The chosen port was taken before the server could bind it."""


def _port_taken(log: str) -> bool:
    return "is not available" in log or "already in use" in log


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the server's process group (it leads it: ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _emergency_stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server from a finalizer or at exit, so it never outlives us."""
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
