"""One real JupyterHub for the whole test run (a pytest plugin module).

The session-scoped ``jupyterhub`` fixture runs the ``jupyterhub`` CLI of this
virtualenv with configurable-http-proxy from ``node_modules/.bin`` (installed
by ``npm ci``) and the configuration in :mod:`tests.support.hub_config`: free
loopback ports, an in-memory database, no authentication, labs spawned as
local processes with homes under the session's temporary directory, and a
random service token with ``admin:users, admin:servers, access:servers,
tokens``.  Starting the hub takes about two seconds, a lab about two more;
tests use distinct bot users so they never share a lab by accident.

Teardown sends SIGTERM to the hub and waits: the hub then stops its labs and
its proxy itself.  JupyterHub starts both in their own sessions, so a
SIGKILLed hub leaves them running (G13): only if the hub does not exit in
time is it SIGKILLed, and then the proxy and every lab are killed by the pids
collected before (the proxy's pid file, each server's ``state.pid``).  The
fixture checks that none of them is left running.  If this process dies
without a teardown, the hub notices (a watchdog thread in its config) and
stops itself.

The fixture is synchronous, like ``jupyter_server``, so it works with any
test event loop scope.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import httpx
import pytest

__all__ = ["HubInfo", "TestHub", "jupyterhub"]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
CHP: Final = REPO_ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
CONFIG: Final = Path(__file__).with_name("hub_config.py")
START_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 30.0
_POLL: Final = 0.05
_START_ATTEMPTS: Final = 3


@dataclass(frozen=True)
class HubInfo:
    """Where the session's JupyterHub listens.

    Attributes
    ----------
    hub_url
        Base URL of the hub (the proxy's public URL; ``hub/api/`` is under it).
    proxy_url
        Public URL of the proxy, where labs are reached (``user/NAME/``).
    token
        The ``noteburst`` service's token.
    pid
        Process id of the hub.
    homes
        Directory under which each user's HOME is created.
    log_path
        The hub's log (its stdout and stderr, with the proxy's and the labs').
    """

    hub_url: str
    proxy_url: str
    token: str
    pid: int
    homes: Path
    log_path: Path

    @property
    def auth_headers(self) -> dict[str, str]:
        """``Authorization`` header with the service token."""
        return {"Authorization": f"token {self.token}"}


class TestHub:
    """A JupyterHub process with its proxy and labs; see the module docstring.

    Parameters
    ----------
    workdir
        The hub's working directory; holds its log and the users' homes.
    """

    __test__ = False  # not a test class, despite its name

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.homes = workdir / "homes"
        self.log_path = workdir / "jupyterhub.log"
        self.token = secrets.token_hex(32)
        self.proxy_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0

    @property
    def url(self) -> str:
        """Public URL of the proxy (and of the hub behind it)."""
        return f"http://127.0.0.1:{self.proxy_port}/"

    def info(self) -> HubInfo:
        """Describe the running hub."""
        assert self._process is not None
        return HubInfo(
            hub_url=self.url,
            proxy_url=self.url,
            token=self.token,
            pid=self._process.pid,
            homes=self.homes,
            log_path=self.log_path,
        )

    def start(self) -> None:
        """Start the hub and wait until its API answers through the proxy."""
        if not CHP.exists():
            pytest.fail(
                f"configurable-http-proxy not found at {CHP}: run `npm ci` in "
                f"{REPO_ROOT} (package.json pins it) before the hub tests",
                pytrace=False,
            )
        hub_cli = Path(sys.executable).with_name("jupyterhub")
        if not hub_cli.exists():
            pytest.fail(
                f"{hub_cli} not found: `uv sync` installs jupyterhub (dev group)",
                pytrace=False,
            )
        self.homes.mkdir(parents=True, exist_ok=True)
        for attempt in range(_START_ATTEMPTS):
            self._launch(hub_cli)
            try:
                self._wait_ready()
            except _PortTakenError:
                self.stop()
                if attempt == _START_ATTEMPTS - 1:
                    raise RuntimeError("JupyterHub could not bind free ports") from None
            except BaseException:
                self.stop()
                raise
            else:
                return

    def stop(self) -> None:
        """SIGTERM the hub and wait; kill leftovers by pid only if it hangs."""
        process = self._process
        if process is None:
            return
        leftovers = self._child_pids() if process.poll() is None else set()
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()  # last resort; then its children by pid (G13)
                    process.wait(STOP_TIMEOUT)
                    for pid in leftovers:
                        _kill(pid, signal.SIGKILL)
            still_running = {pid for pid in leftovers if not _gone(pid, 10.0)}
            for pid in still_running:
                _kill(pid, signal.SIGKILL)
            if still_running:
                raise RuntimeError(
                    f"JupyterHub left processes running {sorted(still_running)}; "
                    "killed them"
                )
        finally:
            self._process = None
            if self._log is not None:
                self._log.close()
                self._log = None

    def log_tail(self, size: int = 3000) -> str:
        """Return the end of the hub's log."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode(errors="replace")

    # -- internals -----------------------------------------------------------

    def _launch(self, hub_cli: Path) -> None:
        self.proxy_port, api_port, hub_port = _free_ports(3)
        pythonpath = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        env = dict(os.environ)
        env.update(
            {
                "NOTEBURST_TEST_HUB_PROXY_PORT": str(self.proxy_port),
                "NOTEBURST_TEST_HUB_PROXY_API_PORT": str(api_port),
                "NOTEBURST_TEST_HUB_PORT": str(hub_port),
                "NOTEBURST_TEST_HUB_CHP": str(CHP),
                "NOTEBURST_TEST_HUB_HOMES": str(self.homes),
                "NOTEBURST_TEST_HUB_TOKEN": self.token,
                "NOTEBURST_TEST_HUB_PYTHONPATH": pythonpath,
                "NOTEBURST_TEST_HUB_PARENT_PID": str(os.getpid()),
                "PYTHONPATH": pythonpath,
                "PYTHONUNBUFFERED": "1",
            }
        )
        self._log = self.log_path.open("ab")
        self._log_start = self._log.seek(0, os.SEEK_END)
        self._process = subprocess.Popen(
            [str(hub_cli), "-f", str(CONFIG)],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(trust_env=False, timeout=2) as http:
            while True:
                if self._process.poll() is not None:
                    log = self._log_since_launch()
                    if any(
                        sign in log.lower()
                        for sign in ("address already in use", "eaddrinuse")
                    ):
                        raise _PortTakenError
                    raise RuntimeError(
                        f"JupyterHub exited with status {self._process.returncode} "
                        f"while starting; log tail:\n{log[-3000:]}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    response = http.get(f"{self.url}hub/api/")
                    if response.status_code == 200:
                        return
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"JupyterHub not ready after {START_TIMEOUT} s; "
                        f"log tail:\n{self.log_tail()}"
                    )
                time.sleep(_POLL)

    def _log_since_launch(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _child_pids(self) -> set[int]:
        """Pids of the proxy and of every running lab (for the G13 backstop)."""
        pids: set[int] = set()
        with contextlib.suppress(OSError, ValueError):
            pid_file = self.workdir / "jupyterhub-proxy.pid"
            pids.add(int(pid_file.read_text().strip()))
        try:
            with httpx.Client(trust_env=False, timeout=5) as http:
                response = http.get(
                    f"{self.url}hub/api/users",
                    headers={"Authorization": f"token {self.token}"},
                )
                response.raise_for_status()
                users = response.json()
        except (httpx.HTTPError, ValueError):
            return pids
        for user in users:
            for server in (user.get("servers") or {}).values():
                pid = (server.get("state") or {}).get("pid")
                if isinstance(pid, int) and pid > 0:
                    pids.add(pid)
        return pids


class _PortTakenError(Exception):
    """One of the chosen ports was taken before the hub or proxy bound it."""


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is as good as gone
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return status != "Z"
    return True


def _gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for a process that is not our child to exit."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


@pytest.fixture(scope="session")
def jupyterhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubInfo]:
    """Run one JupyterHub (with its proxy) for the session; stop it at the end."""
    hub = TestHub(tmp_path_factory.mktemp("jupyterhub"))
    hub.start()
    try:
        yield hub.info()
    finally:
        hub.stop()
