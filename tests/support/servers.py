"""PostgreSQL and Redis servers of a test's own, to stop and restart at will.

The shared servers on 5432 and 6379 serve every test at once, so a test
that needs the database or the queue to go away (a restart, a crash, a
failover) starts its own: a PostgreSQL cluster made with ``initdb`` and run
with ``pg_ctl`` on a free loopback port, and a ``redis-server`` holding
nothing on disk.  Both are torn down when the ``with`` block ends, however
it ends.

PostgreSQL refuses to run as root, so as root its commands run as the
``postgres`` user (``runuser``), in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.waiting import free_port

__all__ = ["PrivatePostgres", "PrivateRedis", "private_postgres", "private_redis"]

START_TIMEOUT = 60.0
"""Bound on a server's start, and on waiting for it to answer."""


def _postgres_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    path = shutil.which(name)
    if path is None:
        msg = f"PostgreSQL's {name} is not installed"
        raise RuntimeError(msg)
    return path


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary folder, on a free loopback port.

    Parameters
    ----------
    root
        Folder for the cluster's data and log (removed by the caller).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        self._as_postgres = (
            ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        )

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the cluster's ``postgres`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self) -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        name = f"nb_{secrets.token_hex(4)}"
        self._run(
            _postgres_bin("createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            name,
        )
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, *command: str, timeout: float = START_TIMEOUT) -> None:
        subprocess.run(
            [*self._as_postgres, *command],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def init(self) -> None:
        """Create the cluster (trust authentication, loopback only)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            # The postgres user must reach the folder through its parent.
            self.root.parent.chmod(0o755)
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            _postgres_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
        )

    def _options(self) -> str:
        return (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=off "
            "-c max_connections=200"
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            _postgres_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            self._options(),
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect everyone; ``immediate``: crash)."""
        self._run(
            _postgres_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            mode,
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "stop",
        )

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again (every connection is dropped)."""
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        """Whether the server's postmaster is up."""
        pg_ctl = _postgres_bin("pg_ctl")
        result = subprocess.run(
            [*self._as_postgres, pg_ctl, "-D", str(self.data), "status"],
            check=False,
            timeout=START_TIMEOUT,
            capture_output=True,
        )
        return result.returncode == 0


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started cluster of the test's own; stopped and removed at the end."""
    with tempfile.TemporaryDirectory(prefix="noteburst-pg-") as folder:
        server = PrivatePostgres(Path(folder) / "cluster")
        server.init()
        server.start()
        try:
            yield server
        finally:
            if server.is_running():
                server.stop("immediate")


class PrivateRedis:
    """A ``redis-server`` on a free loopback port that keeps nothing on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Redis URL of the server."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server (empty) and wait until it answers."""
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            msg = "redis-server is not installed"
            raise RuntimeError(msg)
        self.process = subprocess.Popen(
            [
                redis_server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                msg = f"redis-server did not start on port {self.port}"
                raise RuntimeError(msg)
            time.sleep(0.05)  # polling a starting server: nothing to wait on

    def _answers(self) -> bool:
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), "ping"],
            check=False,
            timeout=5,
            capture_output=True,
        )
        return result.stdout.strip() == b"PONG"

    def kill(self) -> None:
        """kill -9 the server (everything it held is gone)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=START_TIMEOUT)
        self.process = None


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """A started Redis of the test's own; killed at the end."""
    with tempfile.TemporaryDirectory(prefix="noteburst-redis-") as folder:
        server = PrivateRedis(Path(folder))
        server.start()
        try:
            yield server
        finally:
            server.kill()
