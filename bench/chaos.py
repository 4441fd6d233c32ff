"""Chaos harness: Noteburst as deployed, with its parts killed while it works.

Issue 16 reports what an operator saw when processes died under load
(lost executions failed with INTERNAL, finished runs repeated).  Unit tests
cannot show that: only real processes, killed with SIGKILL, lose what a
crash loses.  So this harness starts everything itself, on loopback and in
one temporary folder:

* its own PostgreSQL cluster (``initdb`` + ``pg_ctl`` on a free port, as the
  ``postgres`` user when run as root, since ``initdb`` refuses root);
* its own ``redis-server`` (no persistence: a restart comes back empty);
* the API (``noteburst serve --without-worker``) and two workers
  (``noteburst worker``, each with its local Jupyter server and kernels) as
  separate processes;

submits executions of a short notebook over GraphQL, follows each one with
its own graphql-transport-ws subscriber (which resumes with
``afterSequence`` after any disconnect, as a client should), and injects
faults while they run: SIGKILL of a worker and everything it started,
``pg_ctl restart -m fast``, SIGKILL of Redis and a restart with no data,
SIGKILL of the API and a restart on the same port.

The notebook's last cell appends ``<token> <worker>`` to a shared file, so a
finished run that ran again shows up as a token written twice.  When a
worker is killed, the tokens it had written whose executions are still
RUNNING are runs it finished but could not commit: the kill landed between
the last cell and the commit, the one case in which a run may legitimately
repeat.  Such repeats are counted apart.

Every process carries ``CHAOS_RUN=<id>`` in its environment, and so does
everything it starts (Jupyter servers and kernels start sessions of their
own, so process groups do not hold them): a kill and the final teardown
find processes by that tag in /proc, and check that none survives.

``python -m bench.chaos --executions 36 --scenario all`` runs the three
scenarios of the issue, each on a fresh stack, and prints the table;
``tests/chaos_test.py`` runs a short form in the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
import redis
import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from noteburst.config import Config
from noteburst.storage.database import Database

__all__ = [
    "SCENARIOS",
    "ChaosError",
    "ChaosOptions",
    "ChaosResult",
    "format_table",
    "main",
    "run_scenario",
]

NOTEBURST = [sys.executable, "-m", "noteburst.cli"]
TAG = "CHAOS_RUN"
"""Environment variable marking every process a run starts, and its children."""
WORKER_TAG = "CHAOS_WORKER"
"""The worker a process belongs to (its kernels write it beside the token)."""

START_TIMEOUT = 120.0
"""Bound on one component's start (initdb, a worker with its Jupyter server)."""
KILL_TIMEOUT = 15.0
PG_TIMEOUT = 60
HTTP_TIMEOUT = 15.0
SUBSCRIBER_END_TIMEOUT = 30.0
"""How long subscribers may take to see the end once every execution has one."""
BACKOFF_MAX = 2.0
POLL = 0.05

TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")

FAULTS = ("kill-worker", "restart-postgres", "restart-redis", "kill-api")
SCENARIOS: dict[str, tuple[str, ...]] = {
    # The issue's three rows.
    "workers": ("kill-worker", "kill-worker", "kill-worker"),
    "stores": ("restart-postgres", "restart-redis", "restart-postgres"),
    "everything": (
        "kill-worker",
        "restart-postgres",
        "kill-api",
        "kill-worker",
        "restart-redis",
        "restart-postgres",
        "kill-worker",
    ),
    # The test's short form: one of each.
    "one-each": ("kill-worker", "restart-postgres", "restart-redis", "kill-api"),
}
ISSUE_ROWS = ("workers", "stores", "everything")
"""What ``--scenario all`` runs."""

SUBMIT = """
mutation Submit($input: SubmitExecutionInput!) {
  submitExecution(input: $input) {
    __typename
    ... on Execution { id status }
    ... on InvalidNotebook { message }
    ... on InvalidInput { message }
    ... on InvalidParameters { message }
    ... on LimitExceeded { message }
  }
}
"""

GET = """
query Get($id: ID!) {
  execution(id: $id) { id status attempts error { code message } }
}
"""

WATCH = """
subscription Watch($id: ID!, $after: Int) {
  executionStatus(id: $id, afterSequence: $after) { sequence kind status }
}
"""


_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr (pytest shows it only for a failing test)."""
    print(f"[chaos +{time.monotonic() - _T0:6.1f} s] {message}", file=sys.stderr)


class ChaosError(Exception):
    """The harness itself could not do its part (a start, a bound)."""


# --------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _state(pid: int) -> str | None:
    """The process's state letter, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) S ...": comm may hold spaces and parentheses.
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    return _state(pid) not in {None, "Z", "X"}


def tagged_processes(tag: str, value_prefix: str) -> list[int]:
    """Live processes whose environment has ``tag=value_prefix...``."""
    needle = f"{tag}={value_prefix}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(needle) for item in environ.split(b"\0")) and _alive(
            pid
        ):
            found.append(pid)
    return found


def kill_tagged(tag: str, value_prefix: str, timeout: float = KILL_TIMEOUT) -> None:
    """SIGKILL every process tagged so, again until none is left (bounded)."""
    deadline = time.monotonic() + timeout
    while pids := tagged_processes(tag, value_prefix):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            msg = f"processes {pids} ({tag}={value_prefix}…) survived SIGKILL"
            raise ChaosError(msg)
        time.sleep(POLL)


@dataclass
class Service:
    """One Noteburst (or Redis) process, its output in ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    ready: bool = False
    """Set by whoever saw it up (a worker: once it says it is running)."""
    http_port: int | None = None
    """A worker's ``/healthz``, ``/readyz`` and ``/metrics`` port."""
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def tag(self) -> str:
        return self.env[TAG]

    def start(self) -> None:
        self.close_log()
        self._log = self.log_path.open("ab")
        self.starts += 1
        self._log.write(f"\n===== start {self.starts} =====\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.log_path.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and everything it started; check none survives.

        The process and its group first (redis-server rewrites its
        environment area for its process title, so its tag cannot be read),
        then whatever still carries its tag (Jupyter servers and kernels,
        which lead sessions of their own).
        """
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        kill_tagged(TAG, self.tag)
        if self.process is not None:
            self.process.wait(KILL_TIMEOUT)

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, size: int = 2500) -> str:
        return f"--- {self.name} log, tail ---\n{self.text()[-size:]}"

    async def wait_for_output(self, text: str, within: float = START_TIMEOUT) -> None:
        """Wait until the current start has written ``text``."""
        deadline = time.monotonic() + within
        while text not in self.text().rsplit("===== start ", 1)[-1]:
            if not self.running():
                msg = f"{self.name} exited before writing {text!r}\n{self.tail()}"
                raise ChaosError(msg)
            if time.monotonic() > deadline:
                msg = f"{self.name} did not write {text!r} in {within:g} s"
                raise ChaosError(f"{msg}\n{self.tail()}")
            await asyncio.sleep(POLL)


def _postgres_binary(name: str) -> str:
    def version(folder: Path) -> int:
        return int(folder.parent.name) if folder.parent.name.isdigit() else 0

    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version)
    for folder in reversed(folders):
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        msg = f"PostgreSQL's {name} is not installed"
        raise ChaosError(msg)
    return found


def tools_missing() -> str | None:
    """Why this machine cannot run the harness, or None."""
    try:
        _postgres_binary("pg_ctl")
        _postgres_binary("initdb")
    except ChaosError as exc:
        return str(exc)
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs runuser (initdb refuses root)"
    return None


class Postgres:
    """A throwaway cluster: initdb, then pg_ctl start/restart/stop."""

    def __init__(self, root: Path) -> None:
        self.root = root / "postgres"
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.started = False

    def _run(self, *argv: str, timeout: float = PG_TIMEOUT + 10) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*prefix, *argv],
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            msg = (
                f"{' '.join(argv[:1])} {' '.join(argv[-1:])} failed "
                f"({done.returncode}): {done.stdout.decode(errors='replace')}"
                f"{done.stderr.decode(errors='replace')}\n{self.tail()}"
            )
            raise ChaosError(msg)

    def start(self) -> None:
        self.root.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            _postgres_binary("initdb"),
            "-D",
            str(self.data),
            "--auth=trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        self.started = True
        self._pg_ctl("start", "-o", options)

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._run(
            _postgres_binary("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(PG_TIMEOUT),
            *extra,
            action,
        )

    def restart_fast(self) -> None:
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        if not self.started:
            return
        try:
            self._pg_ctl("stop", "-m", "immediate")
        except (ChaosError, subprocess.TimeoutExpired):
            pid_file = self.data / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)

    def tail(self, size: int = 2500) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return f"--- postgres log, tail ---\n{text[-size:]}"


# --------------------------------------------------------------------------
# The stack


def notebook() -> dict[str, Any]:
    """A short notebook whose last cell marks the run as finished."""

    def cell(source: str, tags: list[str] | None = None) -> dict[str, Any]:
        return {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {"tags": tags or []},
            "outputs": [],
            "source": source,
        }

    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "cells": [
            cell('token = ""\nmarks = ""\nwork_seconds = 0.0', ["parameters"]),
            cell("import os\nimport time\nx = sum(range(1000))"),
            cell("time.sleep(work_seconds)\nprint('worked', x)"),
            cell(
                "line = f\"{token} {os.environ.get('CHAOS_WORKER', '?')}\\n\"\n"
                "fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
                "os.write(fd, line.encode())\n"
                "os.close(fd)"
            ),
        ],
    }


@dataclass(frozen=True)
class ChaosOptions:
    """How big a run is and how it is paced."""

    executions: int = 36
    faults: tuple[str, ...] = SCENARIOS["everything"]
    lease_seconds: float = 5.0
    worker_threads: int = 4
    work_seconds: float = 2.0
    min_fault_gap: float = 1.5
    """Least time between two faults (and before the first)."""
    max_fault_gap: float = 10.0
    """Most time between two faults, whatever the progress."""
    settle_timeout: float = 180.0
    """Bound on every execution reaching a terminal state after the last fault."""
    workers: int = 2
    """Workers started with the stack (more with :meth:`Stack.add_worker`)."""
    worker_settings: Mapping[str, Any] = field(default_factory=dict)
    """Settings of every worker beyond the stack's (``Config`` field names)."""


class Stack:
    """PostgreSQL, Redis, the API and two workers; torn down whatever happens."""

    def __init__(self, options: ChaosOptions) -> None:
        self.options = options
        self.run_id = uuid.uuid4().hex[:12]
        self.tmp = Path(tempfile.mkdtemp(prefix="noteburst-chaos-"))
        self.tmp.chmod(0o755)  # the postgres user works in a folder inside
        self.marks = self.tmp / "marks.txt"
        self.marks.touch()
        self.marks.chmod(0o666)
        self.postgres = Postgres(self.tmp)
        self.redis_port = free_port()
        self.api_port = free_port()
        self.redis: Service | None = None
        self.api: Service | None = None
        self.workers: list[Service] = []
        self.retired: list[Service] = []
        self.worker_count = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _env(self, name: str, **extra: Any) -> dict[str, str]:
        config = Config(
            database_url=self.postgres.url,
            redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
            redis_namespace="chaos",
            data_dir=self.tmp / name / "data",
            lab_backend="local",
            auth_mode="none",
            worker_lease_seconds=self.options.lease_seconds,
            worker_threads=self.options.worker_threads,
            **extra,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTEBURST_")}
        env |= config.environment()
        env[TAG] = f"{self.run_id}:{name}"
        env[WORKER_TAG] = name
        return env

    def _service(self, name: str, argv: list[str], **extra: Any) -> Service:
        folder = self.tmp / name
        folder.mkdir()
        return Service(name, argv, self._env(name, **extra), folder / f"{name}.log")

    async def start(self) -> None:
        await asyncio.to_thread(self.postgres.start)
        say(f"postgres up on port {self.postgres.port}")
        self.redis = self._service(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        await self.start_redis()
        database = Database.from_url(self.postgres.url)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await database.upgrade()
        finally:
            await database.aclose()
        self.api = self._service(
            "api",
            [*NOTEBURST, "serve", "--port", str(self.api_port), "--without-worker"],
            port=self.api_port,
        )
        workers = (self.add_worker() for _ in range(self.options.workers))
        await asyncio.gather(self.start_api(), *workers)
        say(f"API and {self.options.workers} workers up")

    async def start_redis(self) -> None:
        assert self.redis is not None
        self.redis.start()
        client = redis.Redis(port=self.redis_port, socket_timeout=1)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                with contextlib.suppress(redis.RedisError):
                    if await asyncio.to_thread(client.ping):
                        return
                if not self.redis.running() or time.monotonic() > deadline:
                    raise ChaosError(f"redis-server did not start\n{self.redis.tail()}")
                await asyncio.sleep(POLL)
        finally:
            client.close()

    async def start_api(self) -> None:
        assert self.api is not None
        self.api.start()
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(self.api_url + "/healthz")).is_success:
                        return
                if not self.api.running() or time.monotonic() > deadline:
                    raise ChaosError(f"the API did not start\n{self.api.tail()}")
                await asyncio.sleep(POLL)

    async def add_worker(self) -> Service:
        self.worker_count += 1
        port = free_port()
        worker = self._service(
            f"worker{self.worker_count}",
            [*NOTEBURST, "worker"],
            worker_http_port=port,
            **self.options.worker_settings,
        )
        worker.http_port = port
        self.workers.append(worker)
        worker.start()
        await worker.wait_for_output("worker running")
        worker.ready = True
        return worker

    def services(self) -> list[Service]:
        found = [self.redis, self.api, *self.workers, *self.retired]
        return [service for service in found if service is not None]

    def close(self) -> None:
        """Kill everything this run started, then remove its folder."""
        errors: list[str] = []
        for service in self.services():
            try:
                service.kill()
            except (ChaosError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
            service.close_log()
        try:
            kill_tagged(TAG, self.run_id)
        except ChaosError as exc:
            errors.append(str(exc))
        self.postgres.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise ChaosError("; ".join(errors))

    def log_tails(self) -> str:
        parts = [service.tail() for service in self.services()]
        parts.append(self.postgres.tail(1500))
        return "\n".join(parts)

    def log_problems(self, limit: int = 40) -> list[str]:
        """Warning and error lines of the Noteburst logs, and each traceback.

        Deduplicated (with a count); a traceback is kept whole, up to the
        next log line, since its last frames say which code path failed.
        """
        level = re.compile(r"\[(warning|error|critical)")
        stamp = re.compile(r"^\d{4}-\d\d-\d\dT")
        seen: Counter[str] = Counter()
        for service in self.services():
            if service.name == "redis":
                continue
            lines = service.text().splitlines()
            index = 0
            while index < len(lines):
                line = lines[index]
                if line.startswith("Traceback"):
                    block = [line]
                    index += 1
                    while index < len(lines) and not stamp.match(lines[index]):
                        block.append(lines[index])
                        index += 1
                    kept = _our_frames(block)
                    seen[f"{service.name}: " + "\n    ".join(kept)] += 1
                    continue
                if level.search(line):
                    # Without the timestamp, so that repeats collapse.
                    seen[f"{service.name}: {line.split(' ', 1)[-1][:300]}"] += 1
                index += 1
        return [
            line + (f"  (x{count})" if count > 1 else "")
            for line, count in list(seen.items())[:limit]
        ]


def _our_frames(block: list[str]) -> list[str]:
    """A traceback cut to Noteburst's own frames and the exception at the end.

    Library frames (SQLAlchemy, asyncpg) are most of a database error's
    traceback; the code path that matters is ours.
    """
    if len(block) <= 30:
        return block
    kept = [block[0]]
    for index, line in enumerate(block[1:-6], start=1):
        if "/noteburst/" in line and "site-packages" not in line:
            kept += block[index : index + 2]
    return [*kept, "    ...", *block[-6:]]


# --------------------------------------------------------------------------
# Clients


@dataclass
class Subscriber:
    """What one execution's subscriber received, over all its connections."""

    execution_id: str
    events: list[tuple[int, str, str]] = field(default_factory=list)
    connections: int = 0
    errors: list[str] = field(default_factory=list)
    ended: bool = False

    @property
    def finished(self) -> int:
        return sum(1 for _, kind, _ in self.events if kind == "FINISHED")

    @property
    def repeated_sequences(self) -> list[int]:
        counts = Counter(sequence for sequence, _, _ in self.events)
        return sorted(sequence for sequence, n in counts.items() if n > 1)

    @property
    def last_sequence(self) -> int:
        return max((sequence for sequence, _, _ in self.events), default=0)


async def follow(ws_url: str, subscriber: Subscriber) -> None:
    """Follow one execution until its end, reconnecting after anything.

    Each connection resumes with ``afterSequence`` = the last sequence
    seen; the backoff between attempts doubles up to ``BACKOFF_MAX``.  The
    caller bounds the whole (it is cancelled at the deadline).
    """
    backoff = 0.1
    while True:
        seen = len(subscriber.events)
        try:
            if await _follow_once(ws_url, subscriber):
                subscriber.ended = True
                return
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            subscriber.errors.append(f"{type(exc).__name__}: {exc}")
        except _ProtocolTroubleError as exc:
            subscriber.errors.append(str(exc))
        if len(subscriber.events) > seen:
            backoff = 0.1
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, BACKOFF_MAX)


class _ProtocolTroubleError(Exception):
    """The server said something other than the next event."""


async def _follow_once(ws_url: str, subscriber: Subscriber) -> bool:
    """Follow on one connection; True once the end was seen and the stream ended."""
    async with ws_connect(
        ws_url,
        subprotocols=[Subprotocol("graphql-transport-ws")],
        open_timeout=10,
        ping_interval=5,
        ping_timeout=10,
        close_timeout=1,
        max_size=None,
    ) as ws:
        subscriber.connections += 1
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        async with asyncio.timeout(10):
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "connection_ack":
                    break
                if message["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
        variables = {"id": subscriber.execution_id, "after": subscriber.last_sequence}
        await ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": WATCH, "variables": variables},
                }
            )
        )
        async for raw in ws:
            message = json.loads(raw)
            kind = message["type"]
            if kind == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            elif kind == "next":
                payload = message["payload"]
                if payload.get("errors"):
                    errors = [e.get("message", "?") for e in payload["errors"]]
                    raise _ProtocolTroubleError(f"next with errors: {errors}")
                event = payload["data"]["executionStatus"]
                subscriber.events.append(
                    (event["sequence"], event["kind"], event["status"])
                )
            elif kind == "error":
                raise _ProtocolTroubleError(f"error: {message.get('payload')}")
            elif kind == "complete":
                if subscriber.finished:
                    return True
                raise _ProtocolTroubleError("complete before FINISHED")
        # Closed by the server: an end already seen is an end.
        return subscriber.finished > 0


async def graphql(
    http: httpx.AsyncClient, url: str, query: str, **variables: Any
) -> dict[str, Any]:
    response = await http.post(
        url + "/graphql", json={"query": query, "variables": variables}
    )
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise ChaosError(f"GraphQL errors: {body['errors']}")
    data: dict[str, Any] = body["data"]
    return data


async def with_retries(
    make: Callable[[], Awaitable[dict[str, Any]]], what: str, within: float = 60
) -> dict[str, Any]:
    """Retry ``make`` on transport errors for up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await make()
        except (httpx.HTTPError, ChaosError) as exc:
            if time.monotonic() > deadline:
                msg = f"{what} kept failing for {within:g} s: {exc}"
                raise ChaosError(msg) from exc
            await asyncio.sleep(0.5)


async def db_statuses(dsn: str, ids: list[str]) -> dict[str, str]:
    """Statuses straight from the database (the API may be the one down)."""
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT id, status FROM executions WHERE id = ANY($1::text[])",
            ids,
            timeout=10,
        )
    finally:
        await connection.close(timeout=5)
    return {row["id"]: row["status"] for row in rows}


# --------------------------------------------------------------------------
# A run


@dataclass
class FaultRecord:
    """One injected fault and what was in flight when it landed."""

    fault: str
    at: float
    in_flight: int
    seconds: float
    detail: str = ""


@dataclass
class ChaosResult:
    """Everything a run measured."""

    scenario: str
    executions: int
    faults: list[FaultRecord]
    statuses: dict[str, dict[str, Any]]
    """Execution id -> its final ``execution`` (status, attempts, error)."""
    marks: Counter[str]
    """Token -> how many times the last cell ran to completion."""
    mark_workers: dict[str, list[str]]
    tokens: dict[str, str]
    """Execution id -> token."""
    subscribers: list[Subscriber]
    window_hits: list[tuple[str, str]]
    """(worker, execution id): kills between the last cell and the commit."""
    seconds: float
    problems: list[str]
    logs: str

    @property
    def lost(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.statuses.items() if v["status"] != "SUCCEEDED"}

    @property
    def repeated(self) -> dict[str, int]:
        """Execution id -> times its last cell completed, when more than once."""
        return {
            execution: self.marks[token]
            for execution, token in self.tokens.items()
            if self.marks[token] > 1
        }

    @property
    def repeated_unexplained(self) -> dict[str, int]:
        """Repeats not accounted for by a kill in the last-cell→commit window."""
        hits = Counter(execution for _, execution in self.window_hits)
        return {
            execution: count
            for execution, count in self.repeated.items()
            if count - 1 > hits[execution]
        }

    @property
    def without_end(self) -> list[Subscriber]:
        return [s for s in self.subscribers if s.finished == 0]

    @property
    def finished_twice(self) -> list[Subscriber]:
        return [s for s in self.subscribers if s.finished > 1]

    @property
    def with_repeated_sequences(self) -> list[Subscriber]:
        return [s for s in self.subscribers if s.repeated_sequences]

    @property
    def succeeded_unmarked(self) -> list[str]:
        return [
            execution
            for execution, found in self.statuses.items()
            if found["status"] == "SUCCEEDED" and self.marks[self.tokens[execution]] < 1
        ]

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.repeated_unexplained
            or self.without_end
            or self.finished_twice
            or self.with_repeated_sequences
        )

    def lost_summary(self) -> str:
        codes = Counter(
            f"{v['status']}" + (f", {v['error']['code']}" if v.get("error") else "")
            for v in self.lost.values()
        )
        return ", ".join(f"{n} {what}" for what, n in codes.items()) or "0"

    def row(self) -> list[str]:
        faults = Counter(record.fault for record in self.faults)
        repeated = len(self.repeated)
        explained = repeated - len(self.repeated_unexplained)
        return [
            self.scenario,
            ", ".join(f"{f} x{n}" for f, n in faults.items()),
            str(self.executions),
            self.lost_summary(),
            f"{repeated}" + (f" ({explained} in window)" if explained else ""),
            str(len(self.without_end)),
            str(len(self.with_repeated_sequences) + len(self.finished_twice)),
            str(len(self.window_hits)),
            f"{self.seconds:.1f} s",
        ]

    def report(self) -> str:
        """The table row, then what went wrong, for a failure message."""
        lines = [format_table([self]), "", "faults:"]
        lines += [
            f"  +{r.at:5.1f} s {r.fault:<17} in flight {r.in_flight:>3}, "
            f"took {r.seconds:.1f} s {r.detail}"
            for r in self.faults
        ]
        for execution, found in self.lost.items():
            lines.append(f"lost {execution}: {json.dumps(found)}")
        for execution, count in self.repeated.items():
            workers = self.mark_workers.get(self.tokens[execution], [])
            lines.append(f"repeated {execution}: last cell ran {count}x on {workers}")
        for subscriber in self.without_end + self.with_repeated_sequences:
            lines.append(
                f"subscriber {subscriber.execution_id}: finished "
                f"{subscriber.finished}x, repeated sequences "
                f"{subscriber.repeated_sequences}, {subscriber.connections} "
                f"connections, errors {subscriber.errors[-3:]}, "
                f"events {subscriber.events[-6:]}"
            )
        if self.succeeded_unmarked:
            lines.append(f"SUCCEEDED without a mark: {self.succeeded_unmarked}")
        lines.append(f"window hits (worker, execution): {self.window_hits}")
        reconnects = sum(s.connections - 1 for s in self.subscribers)
        lines.append(f"subscriber reconnections: {reconnects}")
        if self.problems:
            lines += ["error lines in the Noteburst logs:", *self.problems]
        return "\n".join(lines)


HEADER = [
    "scenario",
    "faults",
    "executions",
    "lost (not SUCCEEDED)",
    "finished runs repeated",
    "subscribers without the end",
    "subscribers with repeated sequence/FINISHED",
    "kills in last-cell→commit window",
    "time",
]


def format_table(results: list[ChaosResult]) -> str:
    """A Markdown table, one row per scenario run."""
    rows = [HEADER, *(result.row() for result in results)]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(HEADER))
    return "\n".join(lines)


class _Run:
    """One scenario on one stack: submit, follow, inject faults, collect."""

    def __init__(self, stack: Stack, scenario: str) -> None:
        self.stack = stack
        self.scenario = scenario
        self.options = stack.options
        self.tokens: dict[str, str] = {}
        self.subscribers: dict[str, Subscriber] = {}
        self.window_hits: list[tuple[str, str]] = []
        self.faults: list[FaultRecord] = []
        self.pending: set[asyncio.Task[Service]] = set()
        self.t0 = 0.0

    async def submit_all(self, http: httpx.AsyncClient) -> None:
        document = notebook()
        for _ in range(self.options.executions):
            token = uuid.uuid4().hex
            parameters = {
                "token": token,
                "marks": str(self.stack.marks),
                "work_seconds": self.options.work_seconds,
            }
            data = await graphql(
                http,
                self.stack.api_url,
                SUBMIT,
                input={"notebook": document, "parameters": parameters},
            )
            payload = data["submitExecution"]
            if payload["__typename"] != "Execution":
                raise ChaosError(f"submission refused: {payload}")
            self.tokens[payload["id"]] = token
            self.subscribers[payload["id"]] = Subscriber(payload["id"])

    async def pace(self, index: int) -> None:
        """Wait until fault ``index`` of F is due.

        Faults are spread over the run by progress: fault k lands once
        k/(F+1) of the executions have ended, so each finds executions in
        flight; but never sooner than ``min_fault_gap`` after the previous
        one, nor later than ``max_fault_gap``.
        """
        count = len(self.options.faults)
        due = self.options.executions * index // (count + 1)
        await asyncio.sleep(self.options.min_fault_gap)
        deadline = time.monotonic() + self.options.max_fault_gap
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
                if self.options.executions - await self.in_flight() >= due:
                    return
            await asyncio.sleep(0.2)

    async def settle_workers(self) -> None:
        """Wait for the replacement workers still starting (bounded)."""
        pending, self.pending = self.pending, set()
        for task in pending:
            await task  # add_worker bounds its wait, and raises on failure

    async def in_flight(self) -> int:
        statuses = await db_statuses(self.stack.postgres.dsn, list(self.tokens))
        return sum(1 for status in statuses.values() if status not in TERMINAL)

    def read_marks(self) -> list[tuple[str, str]]:
        lines = self.stack.marks.read_text().splitlines()
        return [(line.split()[0], line.split()[1]) for line in lines if line.strip()]

    async def inject(self, fault: str) -> FaultRecord:
        in_flight = await self.in_flight()
        say(f"{fault} ({in_flight} executions in flight)")
        start = time.monotonic()
        detail = ""
        stack = self.stack
        if fault == "kill-worker":
            # The oldest worker that is up: a replacement still starting is
            # not a victim (unless none is up, and then wait for one).
            if not any(worker.ready for worker in stack.workers):
                await self.settle_workers()
            victim = next(worker for worker in stack.workers if worker.ready)
            stack.workers.remove(victim)
            await asyncio.to_thread(victim.kill)
            stack.retired.append(victim)
            detail = await self._window_after_kill(victim)
            # The replacement starts while the run goes on (as an
            # orchestrator would restart it); the next faults do not wait.
            self.pending.add(asyncio.create_task(stack.add_worker()))
        elif fault == "restart-postgres":
            await asyncio.to_thread(stack.postgres.restart_fast)
        elif fault == "restart-redis":
            assert stack.redis is not None
            await asyncio.to_thread(stack.redis.kill)
            await stack.start_redis()
        elif fault == "kill-api":
            assert stack.api is not None
            await asyncio.to_thread(stack.api.kill)
            await stack.start_api()
        else:
            raise ChaosError(f"unknown fault {fault!r}")
        return FaultRecord(
            fault,
            start - self.t0,
            in_flight,
            time.monotonic() - start,
            detail,
        )

    async def _window_after_kill(self, victim: Service) -> str:
        """Count the victim's finished-but-uncommitted runs.

        Its whole process tree is gone, so nothing it did can still commit:
        a token it wrote whose execution is RUNNING now is a run whose last
        cell completed and whose result was never committed.
        """
        by_token = {token: execution for execution, token in self.tokens.items()}
        written = [
            by_token[token]
            for token, worker in self.read_marks()
            if worker == victim.name and token in by_token
        ]
        if not written:
            return f"({victim.name})"
        statuses = await db_statuses(self.stack.postgres.dsn, written)
        hits = [e for e in written if statuses.get(e) == "running"]
        self.window_hits += [(victim.name, execution) for execution in hits]
        return f"({victim.name}, {len(hits)} in window)"

    async def wait_terminal(self) -> None:
        deadline = time.monotonic() + self.options.settle_timeout
        while True:
            with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
                if await self.in_flight() == 0:
                    return
            if time.monotonic() > deadline:
                return  # reported as lost (still QUEUED/RUNNING)
            await asyncio.sleep(0.25)

    async def run(self) -> ChaosResult:
        ws_url = "ws" + self.stack.api_url.removeprefix("http") + "/graphql"
        followers: list[asyncio.Task[None]] = []
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
            self.t0 = time.monotonic()
            try:
                await self.submit_all(http)
                followers = [
                    asyncio.create_task(follow(ws_url, subscriber))
                    for subscriber in self.subscribers.values()
                ]
                for index, fault in enumerate(self.options.faults, start=1):
                    await self.pace(index)
                    self.faults.append(await self.inject(fault))
                say("faults done; waiting for every execution to end")
                await self.wait_terminal()
                say("every execution ended (or the bound passed)")
                seconds = time.monotonic() - self.t0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SUBSCRIBER_END_TIMEOUT):
                        await asyncio.gather(*followers)
            finally:
                for task in [*followers, *self.pending]:
                    task.cancel()
                await asyncio.gather(*followers, *self.pending, return_exceptions=True)
            statuses = {}
            for execution in self.tokens:
                data = await with_retries(
                    lambda e=execution: graphql(  # type: ignore[misc]
                        http, self.stack.api_url, GET, id=e
                    ),
                    f"reading {execution}",
                )
                statuses[execution] = data["execution"]
        marks = self.read_marks()
        mark_workers: dict[str, list[str]] = {}
        for token, worker in marks:
            mark_workers.setdefault(token, []).append(worker)
        return ChaosResult(
            scenario=self.scenario,
            executions=self.options.executions,
            faults=self.faults,
            statuses=statuses,
            marks=Counter(token for token, _ in marks),
            mark_workers=mark_workers,
            tokens=self.tokens,
            subscribers=list(self.subscribers.values()),
            window_hits=self.window_hits,
            seconds=seconds,
            problems=self.stack.log_problems(),
            logs=self.stack.log_tails(),
        )


@contextlib.contextmanager
def _stack(options: ChaosOptions) -> Iterator[Stack]:
    stack = Stack(options)
    try:
        yield stack
    finally:
        stack.close()


def run_scenario(scenario: str, options: ChaosOptions) -> ChaosResult:
    """Start a fresh stack, run one scenario on it, tear everything down.

    Synchronous on purpose: the teardown must run even when the event loop
    is interrupted (KeyboardInterrupt cancels the run; the stack is then
    killed from here).
    """

    async def go(stack: Stack) -> ChaosResult:
        await stack.start()
        return await _Run(stack, scenario).run()

    with _stack(options) as stack:
        return asyncio.run(go(stack))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=36)
    parser.add_argument(
        "--scenario",
        default="all",
        choices=["all", *SCENARIOS],
        help="all: the issue's three rows (workers, stores, everything)",
    )
    parser.add_argument("--lease-seconds", type=float, default=5.0)
    parser.add_argument("--worker-threads", type=int, default=4)
    parser.add_argument("--work-seconds", type=float, default=2.0)
    parser.add_argument("--min-fault-gap", type=float, default=1.5)
    parser.add_argument("--max-fault-gap", type=float, default=10.0)
    parser.add_argument("--settle-timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path, default=None, help="also write results")
    parser.add_argument("-v", "--verbose", action="store_true", help="full reports")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (missing := tools_missing()) is not None:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 2
    names = ISSUE_ROWS if args.scenario == "all" else (args.scenario,)
    results = []
    for name in names:
        options = ChaosOptions(
            executions=args.executions,
            faults=SCENARIOS[name],
            lease_seconds=args.lease_seconds,
            worker_threads=args.worker_threads,
            work_seconds=args.work_seconds,
            min_fault_gap=args.min_fault_gap,
            max_fault_gap=args.max_fault_gap,
            settle_timeout=args.settle_timeout,
        )
        print(f"scenario {name}: {', '.join(options.faults)}", flush=True)
        result = run_scenario(name, options)
        results.append(result)
        print(result.report() if args.verbose or not result.ok else "", flush=True)
        print(format_table([result]), flush=True)
    print("\n" + format_table(results))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "row": dict(zip(HEADER, r.row(), strict=True)),
                        "lost": r.lost,
                        "repeated": r.repeated,
                        "window_hits": r.window_hits,
                        "faults": [vars(f) for f in r.faults],
                        "problems": r.problems,
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
